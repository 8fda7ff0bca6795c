"""The process's price sockets and its one Redis subscription for all of them.

One `WebSocketManager` per process, created and closed by the lifespan. It keeps the
`instrument -> sockets` registry and owns three kinds of task:

- the listener: one Redis pub/sub connection for every instrument. In `channels` mode it
  SUBSCRIBEs to `prices:{instrument}` while this process has a socket on it; in `pattern`
  mode it holds one PSUBSCRIBE `prices:*`. It validates each message, serializes the tick
  once and hands it to every socket's outbox without awaiting anything. When Redis goes
  away it reconnects with backoff and resubscribes to whatever is live then.
- the reconciler: sends SUBSCRIBE/UNSUBSCRIBE so that Redis matches the registry, in
  batches (a connect storm on one instrument costs one SUBSCRIBE).
- the stall watchdog: it closes (1013) a socket whose write has been blocked longer than
  `ws_stall_timeout_seconds`, i.e. whose client has stopped reading, with a log line.

A socket that keeps up has no task of its own here: its ticks are written from the
listener as they are broadcast, and a sender task exists only while it is backed up (see
`PriceSocket`); its handler, which reads from the client, is the task uvicorn runs for it.

A new subscriber is registered first, then waits until Redis confirms the subscription,
then reads the last tick: so no tick published after it connected can fall in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from starlette.websockets import WebSocket

from app.core.config import Settings
from app.core.metrics import REDIS_RECONNECTS, TICKS_DELIVERED, TICKS_RECEIVED
from app.core.redis import pubsub_messages
from app.core.supervisor import stop_tasks, supervise
from app.ws.protocol import FRAME_WRITER, text_frame_bytes
from app.ws.ticks import (
    MalformedTick,
    Tick,
    channel_for,
    parse_tick,
    tick_json,
)

log = logging.getLogger("mt5gate.ws")

SEND = "websocket.send"
# How long a new subscriber waits for Redis to confirm its subscription (longer only
# while Redis is away; then it gets no snapshot and the ticks once Redis is back).
SUBSCRIBE_WAIT_SECONDS = 2.0
RECONNECT_BACKOFF_MIN_SECONDS = 0.1
RECONNECT_BACKOFF_MAX_SECONDS = 3.0
CLOSE_STALLED = 1013
# Concurrent last-tick reads: a connect storm must not drain the shared Redis pool, which
# fails fast (MaxConnectionsError) rather than queueing when it is empty.
LAST_TICK_READS = 8


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for clients, serialized once for every socket: its text for ASGI's
    `send`, and the frame itself for the server's frame writer."""

    text: str
    frame: bytes

    @classmethod
    def of(cls, text: str) -> Outgoing:
        return cls(text, text_frame_bytes(text))


class TooManyInstruments(Exception):
    """A socket asked for more instruments than `ws_max_instruments_per_socket`."""


class Outbox:
    """A socket's bounded FIFO of messages; past `maxsize`, it keeps the newest tick of each
    instrument (and every control message) and drops the rest, oldest first."""

    __slots__ = ("_items", "maxsize", "dropped")

    def __init__(self, maxsize: int) -> None:
        # A list, not a deque: an empty deque costs every idle socket 600 bytes more.
        self._items: list[tuple[str | None, Outgoing]] = []
        self.maxsize = maxsize
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, instrument: str | None, message: Outgoing) -> None:
        """`instrument` None marks a control message, which is never conflated."""
        self._items.append((instrument, message))
        if len(self._items) > self.maxsize:
            self._conflate()

    def pop(self) -> Outgoing | None:
        return self._items.pop(0)[1] if self._items else None

    def peek(self) -> Outgoing | None:
        return self._items[0][1] if self._items else None

    def _conflate(self) -> None:
        items = self._items
        newest = {instrument: index for index, (instrument, _) in enumerate(items)}
        kept = [
            item for index, item in enumerate(items) if item[0] is None or newest[item[0]] == index
        ]
        if len(kept) > self.maxsize:
            del kept[: len(kept) - self.maxsize]
        self.dropped += len(items) - len(kept)
        self._items = kept


class PriceSocket:
    """One client socket: its instruments, its outbox and, while it is backed up, a sender.

    A socket has no task while its client keeps up (a task per socket costs ~2.5 KB, and
    waking one costs CPU per tick): a message is written at once, from whoever queued it,
    through the server's frame writer (see app/ws/protocol.py) while the transport takes
    data. When it does not (the client's buffer is full) or there is no frame writer (a
    server other than ours), a sender task drains the outbox through ASGI `send`, which
    waits for the transport, while the outbox conflates; it ends when the outbox is empty.
    """

    __slots__ = (
        "websocket",
        "instruments",
        "outbox",
        "sending_since",
        "close_code",
        "awaiting_snapshot",
        "deadline",
        "sender",
        "_gone",
        "_write_frame",
    )

    def __init__(self, websocket: WebSocket, queue_size: int) -> None:
        self.websocket = websocket
        self.instruments: set[str] = set()
        self.outbox = Outbox(queue_size)
        # loop.time() when the send in progress started; None while writes go through.
        self.sending_since: float | None = None
        # Set when the server decided to close the socket (1013).
        self.close_code: int | None = None
        # Instruments whose last-known tick is still worth sending: no live one came yet.
        self.awaiting_snapshot: set[str] = set()
        # The handler's deadline (token expiry); the stall watchdog moves it to now.
        self.deadline: asyncio.Timeout | None = None
        # The task draining the outbox while the socket is backed up; None otherwise.
        self.sender: asyncio.Task[None] | None = None
        # Nothing more is written: the client is gone, or the server is closing the socket.
        self._gone = False
        # Our uvicorn protocol's shortcut past `send` (None under another server).
        extension = websocket.scope.get("extensions", {}).get(FRAME_WRITER, {})
        self._write_frame: Callable[[bytes], bool] | None = extension.get("write")

    def offer(self, instrument: str, message: Outgoing) -> None:
        """Queues a tick and writes what it can without blocking."""
        self.awaiting_snapshot.discard(instrument)
        self.outbox.put(instrument, message)
        self._flush()

    def send_control(self, body: str) -> None:
        """Queues a non-tick message (errors, acknowledgements), kept in order with ticks."""
        self.outbox.put(None, Outgoing.of(body))
        self._flush()

    @property
    def blocked(self) -> bool:
        return self.sender is not None

    def stop(self) -> None:
        """Writes nothing more, and abandons the send in progress, if any."""
        self._gone = True
        sender, self.sender = self.sender, None  # a sender cancelled unstarted never clears it
        if sender is not None:
            sender.cancel()

    def _flush(self) -> None:
        if self.sender is not None or self._gone:
            return  # the sender, if any, takes what was queued
        outbox = self.outbox
        write_frame = self._write_frame
        if write_frame is not None:
            while (message := outbox.peek()) is not None and write_frame(message.frame):
                outbox.pop()
        if len(outbox):
            self.sender = asyncio.create_task(self._drain(), name="ws-sender")

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        send = self.websocket.send
        try:
            while (message := self.outbox.pop()) is not None:
                self.sending_since = loop.time()
                await send({"type": SEND, "text": message.text})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client is gone: whatever the server stack raised
            log.debug("event=ws_send_failed error=%r", exc)
            self._gone = True
        finally:
            self.sender = None
            self.sending_since = None


class WebSocketManager:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._channel_prefix = channel_for(redis, "")
        self._queue_size = settings.ws_queue_size
        self.max_instruments = settings.ws_max_instruments_per_socket
        self._stall_timeout = settings.ws_stall_timeout_seconds
        self._shutdown_timeout = settings.shutdown_timeout_seconds
        self._pattern_mode = settings.ws_redis_subscription == "pattern"
        self._keepalive = settings.redis_health_check_interval_seconds

        self._sockets: dict[str, set[PriceSocket]] = {}
        self._all: set[PriceSocket] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

        # Redis-side state, valid for the current pub/sub connection only.
        self._pubsub: PubSub | None = None
        self._requested: set[str] = set()  # SUBSCRIBE sent, no UNSUBSCRIBE since
        self._unconfirmed: dict[str, int] = {}  # SUBSCRIBEs sent but not yet confirmed
        self._confirmed: set[str] = set()  # instruments whose ticks reach this process
        self._pattern_confirmed = False
        self._ready: dict[str, asyncio.Event] = {}  # waiters for an instrument to be live
        self._pattern_ready = asyncio.Event()
        self._reconcile = asyncio.Event()
        self._changed = asyncio.Event()
        self._last_tick_reads = asyncio.Semaphore(LAST_TICK_READS)
        self._malformed = 0
        self._malformed_logged_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(supervise(name, loop), name=name)
            for name, loop in (
                ("ws-redis-listener", self._listen),
                ("ws-redis-reconciler", self._reconcile_subscriptions),
                ("ws-stall-watchdog", self._watch_stalls),
            )
        ]

    async def close(self) -> None:
        """Stops every task this manager started and awaits them, bounded."""
        self._closing = True
        tasks = self._tasks + [sock.sender for sock in self._all if sock.sender is not None]
        for sock in self._all:
            sock.stop()
        if pending := await stop_tasks(tasks, timeout=self._shutdown_timeout):
            log.warning("event=ws_shutdown_incomplete tasks=%d", pending)
        self._tasks = []

    # -- the registry --------------------------------------------------------------------

    def connect(self, websocket: WebSocket) -> PriceSocket:
        """Registers an accepted, authenticated socket."""
        sock = PriceSocket(websocket, self._queue_size)
        self._all.add(sock)
        self._notify()
        return sock

    def disconnect(self, sock: PriceSocket) -> None:
        """Stops writing to the socket, releases its instruments and forgets it."""
        sock.stop()
        self.unsubscribe(sock, list(sock.instruments))
        self._all.discard(sock)
        self._notify()

    async def subscribe(self, sock: PriceSocket, instruments: Iterable[str]) -> list[str]:
        """Adds instruments to a socket and queues the last-known tick of each new one.

        Returns the newly added instruments; raises TooManyInstruments (adding none).
        """
        new = [i for i in dict.fromkeys(instruments) if i not in sock.instruments]
        if len(sock.instruments) + len(new) > self.max_instruments:
            raise TooManyInstruments()
        for instrument in new:
            sock.instruments.add(instrument)
            sock.awaiting_snapshot.add(instrument)
            sockets = self._sockets.get(instrument)
            if sockets is None:
                sockets = self._sockets[instrument] = set()
                self._reconcile.set()
            sockets.add(sock)
        if new:
            self._notify()
            await self._wait_until_live(new)
            await self._send_last_ticks(sock, new)
        return new

    def unsubscribe(self, sock: PriceSocket, instruments: Iterable[str]) -> None:
        for instrument in instruments:
            if instrument not in sock.instruments:
                continue
            sock.instruments.discard(instrument)
            sock.awaiting_snapshot.discard(instrument)
            sockets = self._sockets.get(instrument)
            if sockets is not None:
                sockets.discard(sock)
                if not sockets:
                    del self._sockets[instrument]
                    self._reconcile.set()
        self._notify()

    def broadcast(self, tick: Tick) -> int:
        """Serializes the tick once and queues it for every local socket on its instrument."""
        sockets = self._sockets.get(tick.instrument)
        if not sockets:
            return 0
        message = Outgoing.of(tick_json(tick))
        for sock in sockets:
            sock.offer(tick.instrument, message)
        TICKS_DELIVERED.inc(len(sockets))
        return len(sockets)

    # -- observing it (tests, logs) -----------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {
            "sockets": len(self._all),
            "instruments": len(self._sockets),
            "blocked_writes": sum(1 for s in self._all if s.blocked),
            "redis_subscriptions": len(self._requested),
            "redis_connected": int(self._pubsub is not None),
            "dropped_ticks": sum(s.outbox.dropped for s in self._all),
        }

    def is_live(self, instrument: str) -> bool:
        """Whether ticks published on the instrument now reach this process."""
        return self._pattern_confirmed if self._pattern_mode else instrument in self._confirmed

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Waits (event-driven, bounded) until `predicate()` holds; raises TimeoutError."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- connecting a subscriber ----------------------------------------------------------

    async def _wait_until_live(self, instruments: list[str]) -> None:
        if self._pattern_mode:
            events = [self._pattern_ready]
        else:
            events = [self._ready_event(i) for i in instruments if i not in self._confirmed]
        try:
            async with asyncio.timeout(SUBSCRIBE_WAIT_SECONDS):
                for event in events:
                    await event.wait()
        except TimeoutError:
            log.warning("event=ws_subscribe_unconfirmed instruments=%d", len(instruments))

    def _ready_event(self, instrument: str) -> asyncio.Event:
        event = self._ready.get(instrument)
        if event is None:
            event = self._ready[instrument] = asyncio.Event()
        return event

    async def _send_last_ticks(self, sock: PriceSocket, instruments: list[str]) -> None:
        try:
            async with self._last_tick_reads:
                values = await self._redis.mget([channel_for(self._redis, i) for i in instruments])
        except (RedisError, OSError) as exc:
            log.warning("event=ws_last_tick_unavailable error=%r", exc)
            return
        for instrument, raw in zip(instruments, values, strict=True):
            if raw is None or instrument not in sock.awaiting_snapshot:
                continue
            try:
                tick = parse_tick(raw, instrument=instrument)
            except MalformedTick as exc:
                self._log_malformed(instrument, exc, raw)
                continue
            sock.offer(instrument, Outgoing.of(tick_json(tick)))

    # -- Redis ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = RECONNECT_BACKOFF_MIN_SECONDS
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.connect()
                self._pubsub = pubsub
                self._reconcile.set()
                self._notify()
                log.info("event=ws_redis_connected")
                async for message in pubsub_messages(pubsub, keepalive=self._keepalive):
                    self._on_redis_message(message)
                    backoff = RECONNECT_BACKOFF_MIN_SECONDS
            except (RedisError, OSError) as exc:
                log.warning("event=ws_redis_lost error=%r retry_in=%.1fs", exc, backoff)
            except Exception:
                log.exception("event=ws_listener_failed retry_in=%.1fs", backoff)
            finally:
                self._forget_connection()
                if not self._closing:
                    REDIS_RECONNECTS.labels("prices").inc()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_SECONDS)

    def _forget_connection(self) -> None:
        self._pubsub = None
        self._requested.clear()
        self._unconfirmed.clear()
        self._confirmed.clear()
        self._pattern_confirmed = False
        self._pattern_ready = asyncio.Event()
        # Waiters still waiting keep their events (set on the next connection's confirmation).
        self._ready = {i: event for i, event in self._ready.items() if not event.is_set()}
        self._notify()

    def _on_redis_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message" or kind == "pmessage":
            self._on_tick(message["channel"], message["data"])
            return
        if kind == "subscribe":
            instrument = self._instrument_of(message["channel"])
            left = self._unconfirmed.get(instrument, 0) - 1
            if left > 0:
                self._unconfirmed[instrument] = left
                return
            self._unconfirmed.pop(instrument, None)
            if instrument in self._requested:
                self._confirmed.add(instrument)
                self._ready_event(instrument).set()
                self._notify()
        elif kind == "psubscribe":
            self._pattern_confirmed = True
            self._pattern_ready.set()
            self._notify()
        elif kind == "unsubscribe":
            self._notify()

    def _instrument_of(self, channel: bytes | str) -> str:
        name = channel.decode("utf-8", "replace") if isinstance(channel, bytes) else channel
        prefix = self._channel_prefix
        return name[len(prefix) :] if name.startswith(prefix) else name

    def _on_tick(self, channel: bytes | str, data: bytes | str) -> None:
        instrument = self._instrument_of(channel)
        if instrument not in self._sockets:
            return  # pattern mode: nobody here watches it; don't even parse it
        try:
            tick = parse_tick(data, instrument=instrument)
        except MalformedTick as exc:
            self._log_malformed(instrument, exc, data)
            return
        TICKS_RECEIVED.inc()
        self.broadcast(tick)

    def _log_malformed(self, instrument: str, exc: MalformedTick, data: bytes | str) -> None:
        # Outside input: one line per second at most, however many arrive.
        self._malformed += 1
        now = time.monotonic()
        if now - self._malformed_logged_at >= 1.0:
            self._malformed_logged_at = now
            log.warning(
                "event=ws_malformed_tick instrument=%r reason=%r dropped=%d sample=%r",
                instrument[:40],
                str(exc),
                self._malformed,
                bytes(data[:100]) if isinstance(data, bytes) else data[:100],
            )
            self._malformed = 0

    async def _reconcile_subscriptions(self) -> None:
        """Makes the Redis subscriptions match the registry, in batches."""
        while True:
            await self._reconcile.wait()
            self._reconcile.clear()
            pubsub = self._pubsub
            if pubsub is None:
                continue  # the listener sets the event again once connected
            try:
                await self._apply_subscriptions(pubsub)
            except (RedisError, OSError) as exc:
                # The listener sees the same broken connection and starts over.
                log.warning("event=ws_redis_subscribe_failed error=%r", exc)

    async def _apply_subscriptions(self, pubsub: PubSub) -> None:
        if self._pattern_mode:
            if not self._requested:
                pattern = channel_for(self._redis, "*")
                self._requested.add(pattern)
                await pubsub.psubscribe(pattern)
            return
        wanted = set(self._sockets)
        added = wanted - self._requested
        removed = self._requested - wanted
        if removed:
            self._requested -= removed
            for instrument in removed:
                self._confirmed.discard(instrument)
                event = self._ready.pop(instrument, None)
                if event is not None:
                    event.set()  # nobody here wants it any more: release late waiters
            await pubsub.unsubscribe(*(channel_for(self._redis, i) for i in removed))
        if added:
            self._requested |= added
            for instrument in added:
                self._unconfirmed[instrument] = self._unconfirmed.get(instrument, 0) + 1
            await pubsub.subscribe(*(channel_for(self._redis, i) for i in added))

    async def _watch_stalls(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(self._stall_timeout / 4, 0.05)
        while True:
            await asyncio.sleep(interval)
            deadline = loop.time() - self._stall_timeout
            for sock in list(self._all):
                since = sock.sending_since
                if since is not None and since < deadline and sock.close_code is None:
                    sock.close_code = CLOSE_STALLED
                    log.warning(
                        "event=ws_stalled blocked_seconds=%.1f queued=%d dropped=%d",
                        loop.time() - since,
                        len(sock.outbox),
                        sock.outbox.dropped,
                    )
                    sock.stop()
                    self._notify()
                    if sock.deadline is not None and not sock.deadline.expired():
                        sock.deadline.reschedule(loop.time())  # ends its handler now
