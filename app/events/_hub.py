"""The process's account sockets and its one Redis subscription for all of them.

One `AccountStreams` per process, created and closed by the lifespan. Its listener holds a
single PSUBSCRIBE `account_events:*`: every process hears every connection's events and
keeps those of the connections it has sockets for. Against a SUBSCRIBE per connection this
costs each process the parse of a line header per event of the platform (the event itself
is not parsed); in exchange a socket joining never waits for, nor races, a subscription of
its own: once the pattern is confirmed, every event published after that reaches it.

A socket starts `syncing`: live events are held in its backlog while it reads the log
(snapshot or replay), then the backlog is played after the last id it read, dropping what
the read already had. Ids are consecutive per connection, so a socket that sees a live id
other than the next one (a message lost while Redis was away) catches up from the log the
same way; after the listener reconnects, every socket does.

A socket that cannot keep up is never dropped an event: when a message is queued for it
while `ws_account_queue_size` wait, or while its write has been blocked for
`ws_stall_timeout_seconds`, it is closed with 1013 (its client resumes with `since`). A
client that stops reading and gets no more events costs only what is queued, until
uvicorn's unanswered pings close it.

The listener runs under `supervise`, which starts it again when Redis goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from starlette.websockets import WebSocket

from app.core.config import Settings
from app.core.metrics import REDIS_RECONNECTS
from app.core.redis import pubsub_messages
from app.core.supervisor import stop_tasks, supervise
from app.events._log import CHANNEL_PREFIX, EventLog, channel_pattern, parse_live_message
from app.ws.manager import PriceSocket

log = logging.getLogger("mt5gate.events")

CLOSE_TRY_AGAIN_LATER = 1013
SUBSCRIBE_WAIT_SECONDS = 2.0


class AccountSocket:
    """One client socket of one connection: its sequence, the id it has reached, and its
    writer (a price socket's: a bounded outbox written at once while the client keeps up,
    with a sender task only while it is backed up). Nothing is ever dropped: the outbox is
    checked before each message, and a full one closes the socket instead."""

    __slots__ = (
        "websocket",
        "connection_id",
        "user_id",
        "seq",
        "last_id",
        "syncing",
        "backlog",
        "writer",
        "max_queued",
        "stall_timeout",
        "close_code",
        "deadline",
    )

    def __init__(
        self,
        websocket: WebSocket,
        connection_id: str,
        user_id: uuid.UUID,
        *,
        max_queued: int,
        stall_timeout: float,
    ) -> None:
        self.websocket = websocket
        self.connection_id = connection_id
        self.user_id = user_id
        self.seq = 0
        # The id of the last event (or snapshot) sent; None before the first read.
        self.last_id: int | None = None
        self.syncing = True
        self.backlog: list[tuple[int, str]] = []
        # One more than may be queued, so that its conflation never runs.
        self.writer = PriceSocket(websocket, max_queued + 1)
        self.max_queued = max_queued
        self.stall_timeout = stall_timeout
        self.close_code: int | None = None
        self.deadline: asyncio.Timeout | None = None

    # -- what is sent ---------------------------------------------------------------------

    def send_snapshot(self, data_json: str, last_event_id: int) -> None:
        self._queue(f'{{"type":"snapshot","seq":{self.seq},"data":{data_json}}}')
        self.seq += 1
        self.last_id = last_event_id

    def send_event(self, event_id: int, event_json: str) -> None:
        self._queue(f'{{"type":"event","seq":{self.seq},"event":{event_json}}}')
        self.seq += 1
        self.last_id = event_id

    def send_control(self, text: str) -> None:
        """A message outside the sequence (pong, error), in order with the events."""
        self._queue(text)

    async def drained(self) -> None:
        """Until the outbox is at most half full (a replay waits for the client here, so
        that thousands of replayed events never overflow it)."""
        while len(self.writer.outbox) > self.max_queued // 2 and self.close_code is None:
            sender = self.writer.sender
            if sender is None:
                return
            await asyncio.shield(sender)

    @property
    def sending_since(self) -> float | None:
        return self.writer.sending_since

    def _queue(self, text: str) -> None:
        if self.close_code is not None:
            return
        queued = len(self.writer.outbox)
        since = self.writer.sending_since
        stalled = (
            since is not None and asyncio.get_running_loop().time() - since > self.stall_timeout
        )
        if queued >= self.max_queued or stalled:
            log.warning(
                "event=account_socket_too_slow connection_id=%s queued=%d stalled=%s",
                self.connection_id,
                queued,
                stalled,
            )
            self.close_now(CLOSE_TRY_AGAIN_LATER)
            return
        self.writer.send_control(text)

    def close_now(self, code: int) -> None:
        """Writes nothing more and ends the socket's handler, which closes with `code`."""
        if self.close_code is None:
            self.close_code = code
        self.stop()
        if self.deadline is not None and not self.deadline.expired():
            self.deadline.reschedule(asyncio.get_running_loop().time())

    def stop(self) -> None:
        self.writer.stop()

    # -- live events ----------------------------------------------------------------------

    def offer(self, events: list[tuple[int, str]]) -> bool:
        """Sends live events in order; False when one is missing (a gap: the caller
        catches the socket up from the log)."""
        if self.syncing:
            self.backlog.extend(events)
            return True
        for event_id, text in events:
            if self.last_id is not None and event_id <= self.last_id:
                continue
            if self.last_id is not None and event_id != self.last_id + 1:
                self.backlog.append((event_id, text))
                return False
            self.send_event(event_id, text)
        return True


class AccountStreams:
    def __init__(self, redis: Redis, settings: Settings, log_: EventLog) -> None:
        self._redis = redis
        self.log = log_
        self._queue_size = settings.ws_account_queue_size
        self._stall_timeout = settings.ws_stall_timeout_seconds
        self._shutdown_timeout = settings.shutdown_timeout_seconds
        self._keepalive = settings.redis_health_check_interval_seconds
        self.max_sockets_per_user = settings.ws_max_account_sockets_per_user
        self._prefix = channel_pattern(redis)[:-1]
        self._by_connection: dict[str, set[AccountSocket]] = {}
        self._per_user: dict[uuid.UUID, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._syncs: set[asyncio.Task[None]] = set()
        self._live = asyncio.Event()
        self._closing = False

    async def start(self) -> None:
        name = "account-events-listener"
        self._tasks = [asyncio.create_task(supervise(name, self._listen), name=name)]

    async def close(self) -> None:
        self._closing = True
        socks = [s for group in self._by_connection.values() for s in group]
        tasks = (
            self._tasks + list(self._syncs) + [s.writer.sender for s in socks if s.writer.sender]
        )
        for sock in socks:
            sock.stop()
        if pending := await stop_tasks(tasks, timeout=self._shutdown_timeout):
            log.warning("event=account_streams_shutdown_incomplete tasks=%d", pending)
        self._tasks = []

    # -- the registry -------------------------------------------------------------------

    def sockets_of(self, user_id: uuid.UUID) -> int:
        return self._per_user.get(user_id, 0)

    def connect(
        self, websocket: WebSocket, *, connection_id: uuid.UUID, user_id: uuid.UUID
    ) -> AccountSocket | None:
        """Registers a socket (syncing); None when its user has too many open here."""
        if self._per_user.get(user_id, 0) >= self.max_sockets_per_user:
            return None
        sock = AccountSocket(
            websocket,
            str(connection_id),
            user_id,
            max_queued=self._queue_size,
            stall_timeout=self._stall_timeout,
        )
        self._by_connection.setdefault(sock.connection_id, set()).add(sock)
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        return sock

    def disconnect(self, sock: AccountSocket) -> None:
        sock.stop()
        group = self._by_connection.get(sock.connection_id)
        if group is not None and sock in group:
            group.discard(sock)
            if not group:
                del self._by_connection[sock.connection_id]
            left = self._per_user.get(sock.user_id, 1) - 1
            if left > 0:
                self._per_user[sock.user_id] = left
            else:
                self._per_user.pop(sock.user_id, None)

    def stats(self) -> dict[str, int]:
        return {
            "sockets": sum(len(group) for group in self._by_connection.values()),
            "connections": len(self._by_connection),
            "redis_live": int(self._live.is_set()),
        }

    async def wait_live(self) -> bool:
        """Until events published now reach this process (bounded); whether they do."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SUBSCRIBE_WAIT_SECONDS):
                await self._live.wait()
        return self._live.is_set()

    # -- catching a socket up from the log ------------------------------------------------

    async def sync(self, sock: AccountSocket) -> bool:
        """Sends the socket what the log holds after its `last_id`, then its backlog, and
        puts it live. False when the log no longer holds that id (the socket is closed
        with 1013, for its client to resume or start over)."""
        sock.syncing = True
        assert sock.last_id is not None
        replay = await self.log.replay(sock.connection_id, sock.last_id)
        if replay is None:
            sock.close_now(CLOSE_TRY_AGAIN_LATER)
            return False
        await self.send_replay(sock, replay.events)
        sock.last_id = max(sock.last_id, replay.last_event_id)
        return self.go_live(sock)

    async def send_replay(self, sock: AccountSocket, events: list[tuple[int, str]]) -> None:
        for event_id, text in events:
            if sock.last_id is None or event_id > sock.last_id:
                sock.send_event(event_id, text)
                await sock.drained()

    def go_live(self, sock: AccountSocket) -> bool:
        """Ends the socket's sync: plays its backlog after what it was sent."""
        backlog, sock.backlog = sock.backlog, []
        sock.syncing = False
        if not sock.offer(backlog):
            self._schedule_sync(sock)
        return True

    def _schedule_sync(self, sock: AccountSocket) -> None:
        sock.syncing = True

        async def run() -> None:
            try:
                await self.sync(sock)
            except (RedisError, OSError) as exc:
                log.warning("event=account_socket_sync_failed error=%r", exc)
                sock.close_now(CLOSE_TRY_AGAIN_LATER)

        task = asyncio.create_task(run(), name="account-socket-sync")
        self._syncs.add(task)
        task.add_done_callback(self._syncs.discard)

    # -- Redis ----------------------------------------------------------------------------

    async def _listen(self) -> None:
        """One connection's worth of listening; `supervise` starts it again when Redis
        goes away (and the sockets catch up from the log once it is back)."""
        pubsub: PubSub = self._redis.pubsub()
        try:
            await pubsub.connect()
            await pubsub.psubscribe(channel_pattern(self._redis))
            async for message in pubsub_messages(pubsub, keepalive=self._keepalive):
                self._on_message(message)
        finally:
            self._live.clear()
            if not self._closing:
                REDIS_RECONNECTS.labels("account_events").inc()
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "psubscribe":
            self._live.set()
            # Whatever was published while this process was not subscribed: from the log.
            for group in self._by_connection.values():
                for sock in group:
                    if not sock.syncing and sock.last_id is not None:
                        self._schedule_sync(sock)
            log.info("event=account_events_redis_connected")
            return
        if kind != "pmessage":
            return
        channel = message["channel"]
        name = channel.decode("utf-8", "replace") if isinstance(channel, bytes) else channel
        listeners = self._by_connection.get(name[len(self._prefix) :])
        if not listeners:
            return
        try:
            events = parse_live_message(message["data"])
        except ValueError:
            log.warning("event=account_events_malformed channel=%r", name[:80])
            return
        for sock in list(listeners):
            if not sock.offer(events):
                self._schedule_sync(sock)


__all__ = ["CHANNEL_PREFIX", "AccountSocket", "AccountStreams"]
