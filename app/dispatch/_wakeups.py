"""Wake-ups for job waiters, across processes, over one Redis subscription per process.

Two channels carry every event: `mt5gate:jobs:created` (payload: the agent id, wakes that
agent's `jobs/next` long-polls) and `mt5gate:jobs:finished` (payload: the job id, wakes the
request waiting for it). Each process subscribes once and dispatches to its waiters in
memory. A new job wakes one idle long-poll of its agent, not all of them (each woken poll
costs a claim attempt, a database write): a local one if there is one, and then nothing is
published; a poll that leaves with an unused wake-up hands it on, through Redis when no
other poll is left here. Messages carry the publishing process's id so that a process,
which already dispatched its own event locally, ignores the echo. A lost message (Redis
down, a restart) delays an answer but never loses it: every `job_poll_interval_seconds`
one query per process finds what its waiters wait for (`recheck_waiters`), however
many they are. A job finished in this process reaches its local
waiter with the wake-up itself (no read back).

A third channel, `mt5gate:agents:revoked` (payload: an agent id whose token was rotated
or deleted with its connection), wakes every long-poll of that agent, here and in every
other process, to check its token and end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.metrics import REDIS_RECONNECTS
from app.core.redis import DEFAULT_HEALTH_CHECK_INTERVAL_SECONDS, pubsub_messages, redis_key
from app.core.supervisor import stop_tasks, supervise

log = logging.getLogger("mt5gate.job_events")

CREATED_CHANNEL = "mt5gate:jobs:created"
FINISHED_CHANNEL = "mt5gate:jobs:finished"
# Payload: an agent id whose token was rotated or deleted; ends its open long-polls.
REVOKED_CHANNEL = "mt5gate:agents:revoked"
CHANNELS = (CREATED_CHANNEL, FINISHED_CHANNEL, REVOKED_CHANNEL)
MAX_BACKOFF_SECONDS = 2.0
STOP_TIMEOUT_SECONDS = 5.0


class Wakeup(asyncio.Event):
    """A waiter's event; a wake-up from this process also carries what it is about (the
    finished job), so the waiter need not read it back from the database."""

    def __init__(self) -> None:
        super().__init__()
        self.payload: object | None = None


class JobEvents:
    def __init__(
        self,
        redis: Redis,
        *,
        enabled: bool = True,
        keepalive: float = DEFAULT_HEALTH_CHECK_INTERVAL_SECONDS,
    ) -> None:
        self.redis = redis
        self.enabled = enabled
        # A subscription silent this long is checked (see app/core/redis.py).
        self._keepalive = keepalive
        # The channels as named on this Redis (behind its key prefix) -> as named here.
        self._channels = {redis_key(redis, name): name for name in CHANNELS}
        self._waiters: dict[tuple[str, str], set[Wakeup]] = defaultdict(set)
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._origin = uuid.uuid4().hex[:12]
        self._sends: set[asyncio.Task[None]] = set()
        # Set when a graceful shutdown begins: every waiter stops waiting and answers.
        self.draining = asyncio.Event()

    async def start(self) -> None:
        if not self.enabled:
            return
        name = "job-events-listener"
        self._listener = asyncio.create_task(supervise(name, self._listen), name=name)
        # Best effort: a Redis that is down now must not keep the API from starting.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=2)

    async def stop(self) -> None:
        for send in list(self._sends):
            send.cancel()
        if self._listener is not None:
            if await stop_tasks([self._listener], timeout=STOP_TIMEOUT_SECONDS):
                log.warning("event=wakeups_listener_not_stopped")
            self._listener = None

    def begin_drain(self) -> None:
        self.draining.set()

    @contextlib.contextmanager
    def _watch(self, channel: str, key: str) -> Iterator[Wakeup]:
        event = Wakeup()
        waiters = self._waiters[(channel, key)]
        waiters.add(event)
        try:
            yield event
        finally:
            waiters.discard(event)
            if not waiters:
                self._waiters.pop((channel, key), None)
            if channel == CREATED_CHANNEL and event.is_set():
                self._pass_on(key)

    def watch_created(self, agent_id: str) -> contextlib.AbstractContextManager[Wakeup]:
        """An event set whenever a job is created for this agent (register before checking)."""
        return self._watch(CREATED_CHANNEL, agent_id)

    def watch_finished(self, job_id: str) -> contextlib.AbstractContextManager[Wakeup]:
        """An event set when this job reaches a final state; its payload is the finished job
        when it finished in this process (None when the news came through Redis)."""
        return self._watch(FINISHED_CHANNEL, job_id)

    def watch_revoked(self, agent_id: str) -> contextlib.AbstractContextManager[Wakeup]:
        """An event set when this agent's token is rotated or its connection deleted."""
        return self._watch(REVOKED_CHANNEL, agent_id)

    def watched(self, channel: str) -> list[str]:
        """The keys (agent ids, job ids) that have waiters on this channel now."""
        return [key for (watched, key) in self._waiters if watched == channel]

    def wake_local(self, channel: str, key: str, times: int = 1) -> None:
        """Wakes this process's waiters as an event would, without telling other processes
        (the fallback poll found what a lost message would have said). On the created
        channel, wakes up to `times` idle long-polls, one per pending job."""
        for _ in range(times):
            if not self._dispatch(channel, key):
                return

    @property
    def waiter_count(self) -> int:
        return sum(len(events) for events in self._waiters.values())

    async def job_created(self, agent_id: str) -> None:
        await self._publish(CREATED_CHANNEL, agent_id)

    async def job_finished(self, job_id: str, job: object | None = None) -> None:
        await self._publish(FINISHED_CHANNEL, job_id, job)

    async def agent_revoked(self, agent_id: str) -> None:
        """Tells every process that this agent's token changed (after the commit)."""
        await self._publish(REVOKED_CHANNEL, agent_id)

    async def _publish(self, channel: str, key: str, payload: object | None = None) -> None:
        if not self.enabled:
            return
        # Local waiters first: they need no round trip, and still wake with Redis down.
        woke_local_poll = self._dispatch(channel, key, payload)
        if woke_local_poll:
            return  # one woken poll per new job is enough; no other process need hear
        await self._send(channel, key)

    async def _send(self, channel: str, key: str) -> None:
        try:
            await self.redis.publish(redis_key(self.redis, channel), f"{self._origin}:{key}")
        except (RedisError, OSError) as exc:
            log.warning("event=wakeup_publish_failed channel=%s reason=%r", channel, exc)

    def _pass_on(self, agent_id: str) -> None:
        """A long-poll woken for a job leaves without it: wake another, here or elsewhere."""
        if self._dispatch(CREATED_CHANNEL, agent_id) or not self.enabled:
            return
        send = asyncio.get_running_loop().create_task(self._send(CREATED_CHANNEL, agent_id))
        self._sends.add(send)  # held until done: the loop keeps only weak references
        send.add_done_callback(self._sends.discard)

    def _dispatch(self, channel: str, key: str, payload: object | None = None) -> bool:
        """Wakes the local waiters of an event; True when it woke an idle long-poll."""
        waiters = self._waiters.get((channel, key))
        if not waiters:
            return False
        if channel == CREATED_CHANNEL:
            idle = next((event for event in waiters if not event.is_set()), None)
            if idle is None:
                return False
            idle.set()
            return True
        for event in waiters:
            event.payload = payload
            event.set()
        return False

    async def _listen(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._channels)
                self._subscribed.set()
                log.info("event=wakeups_subscribed")
                backoff = 0.05
                async for message in pubsub_messages(pubsub, keepalive=self._keepalive):
                    self._on_message(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: fall back to polling, then reconnect
                self._subscribed.clear()
                REDIS_RECONNECTS.labels("jobs").inc()
                log.warning(
                    "event=wakeups_lost reason=%r retry_in=%.2fs fallback=polling", exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _on_message(self, message: dict[str, object]) -> None:
        channel, data = message.get("channel"), message.get("data")
        if not isinstance(channel, bytes | str) or not isinstance(data, bytes | str):
            return
        named = self._channels.get(channel.decode() if isinstance(channel, bytes) else channel)
        if named is None:
            return
        payload = data.decode(errors="replace") if isinstance(data, bytes) else data
        origin, _, key = payload.partition(":")
        if origin != self._origin and key:
            self._dispatch(named, key[:64])
