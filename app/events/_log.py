"""The per-connection log of account events in Redis, and the state beside it.

Per broker connection `c` (names through `redis_key`):

- `account_events:{c}`: a Redis Stream of the kept events, each under the explicit id
  `{event id}-0`, fields `e` (the event as JSON) and `t` (server time, epoch ms);
- `account_events:{c}:state`: the connection's state (see `_state`) as JSON;
- `account_events:{c}:deals`: the deal tickets recorded (a sorted set, scored by ticket);
- channel `account_events:{c}`: every event as it is appended, for the live sockets.

Invariants: an append is one optimistic transaction (WATCH the state and the deals, read,
compute, MULTI: XADD + SET state + ZADD + PUBLISH, EXEC; a concurrent append makes it
start over), so ids are consecutive per connection and the same on every process, the
state reflects exactly the events up to its `last_event_id`, and the channel carries every
id in order. A reader gets the state and the stream after `since` in one MULTI, which is
just as consistent.

Trimming keeps every entry that is among the newest `keep_count` or younger than
`keep_seconds`, checked every `TRIM_CHECK_EVERY` ids, in the append's transaction; the
state's `floor` then records the highest id gone.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from app.core.redis import redis_key
from app.events._state import Applier, Draft, Emitted, new_state

log = logging.getLogger("mt5gate.events")

CHANNEL_PREFIX = "account_events:"
TRIM_CHECK_EVERY = 100
# Head entries read per trim check: a trim removes at most this many at once.
TRIM_BATCH = 1000
MAX_APPEND_ATTEMPTS = 50
# {connection id: the data of its last `agent` event}, beside the states (which hold it
# too), for the agent watch to read in one command.
AGENTS_KEY = "account_events_agents"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def stream_key(redis: Redis, connection_id: uuid.UUID | str) -> str:
    """The log's stream, which is also the name of its live channel."""
    return redis_key(redis, f"{CHANNEL_PREFIX}{connection_id}")


def channel_pattern(redis: Redis) -> str:
    return redis_key(redis, f"{CHANNEL_PREFIX}*")


def live_message(events: Sequence[Emitted]) -> str:
    """What an append publishes: one line per event, `{id} {event JSON}` (JSON has no raw
    newline), so a listener splits it without parsing the events."""
    return "\n".join(f"{event.id} {dumps(event.body())}" for event in events)


def parse_live_message(data: bytes | str) -> list[tuple[int, str]]:
    """`[(id, event JSON)]` of a published message; raises ValueError on another shape."""
    text = data.decode() if isinstance(data, bytes) else data
    events = []
    for line in text.split("\n"):
        head, _, body = line.partition(" ")
        events.append((int(head), body))
    return events


def event_id_of(entry_id: bytes) -> int:
    """The event id of a stream entry id (`{id}-0`)."""
    return int(entry_id.split(b"-", 1)[0])


@dataclass(frozen=True, slots=True)
class Replay:
    """The events after a `since` that the log holds, in id order, as JSON texts, and
    the id the replay brings a client to."""

    events: list[tuple[int, str]]
    last_event_id: int


class EventLog:
    def __init__(self, redis: Redis, *, keep_count: int, keep_seconds: float) -> None:
        self.redis = redis
        self.keep_count = keep_count
        self.keep_seconds = keep_seconds
        self._check_every = max(1, min(TRIM_CHECK_EVERY, keep_count // 10))
        self._agents_key = redis_key(redis, AGENTS_KEY)

    def _keys(self, connection_id: uuid.UUID | str) -> tuple[str, str, str]:
        stream = stream_key(self.redis, connection_id)
        return stream, f"{stream}:state", f"{stream}:deals"

    async def append(
        self, connection_id: uuid.UUID | str, drafts: Sequence[Draft]
    ) -> list[Emitted]:
        """Applies the drafts to the connection's state and appends what they emit; returns
        those events (none for repeats of what the state already said)."""
        stream, state_key, deals_key = self._keys(connection_id)
        tickets = sorted({int(d.data["ticket"]) for d in drafts if d.kind == "deal"})
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(MAX_APPEND_ATTEMPTS):
                try:
                    await pipe.watch(state_key, deals_key)
                    raw = await pipe.get(state_key)
                    state = json.loads(raw) if raw is not None else new_state()
                    known: set[int] = set()
                    if tickets:
                        scores = await pipe.zmscore(deals_key, [str(t) for t in tickets])
                        known = {t for t, score in zip(tickets, scores, strict=True) if score}
                    applier = Applier(state, known)
                    for draft in drafts:
                        applier.apply(draft)
                    emitted = applier.emitted
                    if not emitted:
                        await pipe.reset()
                        return []
                    trim_to = await self._trim_point(pipe, stream, state, len(emitted))
                    now_ms = int(time.time() * 1000)
                    pipe.multi()
                    for event in emitted:
                        if event.coalesce is None:
                            pipe.xadd(
                                stream,
                                {"e": dumps(event.body()), "t": now_ms},
                                id=f"{event.id}-0",
                            )
                    if trim_to is not None:
                        pipe.xtrim(stream, minid=f"{trim_to + 1}-0")
                    if applier.new_deals:
                        pipe.zadd(deals_key, {str(t): t for t in applier.new_deals})
                        pipe.zremrangebyrank(deals_key, 0, -self.keep_count - 1)
                    pipe.set(state_key, dumps(state))
                    if any(event.kind == "agent" for event in emitted):
                        pipe.hset(self._agents_key, str(connection_id), dumps(state["agent"]))
                    pipe.publish(stream, live_message(emitted))
                    await pipe.execute()
                    return emitted
                except WatchError:
                    continue
        raise RuntimeError(f"account events of {connection_id}: too many concurrent appends")

    async def _trim_point(
        self, pipe: Any, stream: str, state: dict[str, Any], added: int
    ) -> int | None:
        """The id to trim the stream through (and record as the state's floor), if the
        check is due and something is both old enough and beyond the newest `keep_count`."""
        last = state["last_event_id"] - state["origin"]
        if last // self._check_every == (last - added) // self._check_every:
            return None
        length = await pipe.xlen(stream)
        excess = length - self.keep_count
        if excess <= 0:
            return None
        head = await pipe.xrange(stream, count=min(excess, TRIM_BATCH))
        old_before_ms = (time.time() - self.keep_seconds) * 1000
        through: int | None = None
        for entry_id, fields in head:
            if int(fields[b"t"]) >= old_before_ms:
                break
            through = event_id_of(entry_id)
        if through is not None:
            state["floor"] = max(state["floor"], through)
        return through

    async def state(self, connection_id: uuid.UUID | str) -> dict[str, Any]:
        """The connection's state as it is now (an empty one before its first event)."""
        _, state_key, _ = self._keys(connection_id)
        raw = await self.redis.get(state_key)
        if raw is None:
            raw = await self._create_state(state_key)
        loaded: dict[str, Any] = json.loads(raw)
        return loaded

    async def _create_state(self, state_key: str) -> bytes:
        """Stores an empty state unless one appeared meanwhile; returns the one stored, so
        that every reader of a log without events yet sees the same ids."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(state_key, dumps(new_state()), nx=True)
            pipe.get(state_key)
            _, raw = await pipe.execute()
        stored: bytes = raw
        return stored

    async def replay(self, connection_id: uuid.UUID | str, since: int) -> Replay | None:
        """The events after `since`, or None when the log no longer holds (or never held)
        that id: below its floor, or above its newest.

        The kept events come from the stream; the coalesced ones (profit-only position
        changes, account updates) only as the latest of each, in their place by id."""
        stream, state_key, _ = self._keys(connection_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(state_key)
            pipe.xrange(stream, min=f"({since}-0")
            raw, entries = await pipe.execute()
        if raw is None:  # no event yet: whatever `since` is, this log never held it
            raw = await self._create_state(state_key)
        state = json.loads(raw)
        last = state["last_event_id"]
        if not state["floor"] <= since <= last:
            return None
        events = [
            (int(entry_id.split(b"-")[0]), fields[b"e"].decode()) for entry_id, fields in entries
        ]
        events += [(e["id"], dumps(e)) for e in state["latest"].values() if e["id"] > since]
        events.sort(key=lambda item: item[0])
        return Replay(events, last)

    async def agent_statuses(self) -> dict[str, Any]:
        """{connection id: the data of its last `agent` event}."""
        found = await self.redis.hgetall(self._agents_key)
        return {
            key.decode() if isinstance(key, bytes) else key: json.loads(value)
            for key, value in found.items()
        }

    async def agent_status_of(self, connection_id: uuid.UUID | str) -> dict[str, Any] | None:
        said = await self.redis.hget(self._agents_key, str(connection_id))
        return json.loads(said) if said is not None else None

    async def last_deal_ticket(self, connection_id: uuid.UUID | str) -> int | None:
        _, _, deals_key = self._keys(connection_id)
        newest = await self.redis.zrange(deals_key, -1, -1, withscores=True)
        return int(newest[0][1]) if newest else None
