"""Candles: served from Redis when a fresh enough list is cached, else fetched by one job.

Two sources, two caches, so that nothing a user controls is ever served to another user:
- the platform's feed (`source=feed`, the default): the job goes to an online price-source
  agent, and its answer is cached for everyone under `candles:{instrument}:{timeframe}`.
  Only a price source's answer is ever written there.
- the user's own account (`source=account`): the job goes to the connection's agent, and
  its answer is cached for that connection only, `candles:{connection_id}:{instrument}:
  {timeframe}`.
Each key holds the JSON list of candles, oldest first, for `candles_cache_ttl_seconds`.
Redis is an optimisation here: when it is down or holds garbage the call is a miss.

Concurrent misses for the same cache key share one job (a single flight per process): the
first starts a fetch task, the others await it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import TypeAdapter
from redis.asyncio import Redis

from app.core.errors import FeedOffline, NoAgent
from app.core.redis import redis_key
from app.dispatch import create_job_and_wait
from app.models import Agent
from app.schemas.trading import Candle
from app.services.agents import (
    connection_agent,
    is_price_source,
    online_price_source,
    require_online,
)
from app.services.redis_cache import read_cached, write_cached
from app.services.trading import Trading, read_output
from mt5gate_protocol.jobs import JobType

log = logging.getLogger("mt5gate.candles")

CANDLES = TypeAdapter(list[Candle])

# A flight is keyed by the cache key it fills: feed misses of all users share one job.
FlightKey = str


@dataclass(frozen=True)
class CandleSource:
    """Where candles come from: the feed, or the account of one of the caller's
    connections (None: their oldest one)."""

    kind: Literal["feed", "account"] = "feed"
    connection_id: uuid.UUID | None = None


@dataclass(frozen=True)
class CandleQuery:
    """The last `count` bars of `instrument` at `timeframe`, asked by `user_id`."""

    user_id: uuid.UUID
    source: CandleSource
    instrument: str
    timeframe: str
    count: int


def feed_cache_key(instrument: str, timeframe: str) -> str:
    return f"candles:{instrument}:{timeframe}"


def account_cache_key(connection_id: uuid.UUID, instrument: str, timeframe: str) -> str:
    # Symbols have no ':', so this can never be read as a feed key, nor the other way.
    return f"candles:{connection_id}:{instrument}:{timeframe}"


@dataclass
class CandleFlights:
    """In-flight candle fetches of this process, by the cache key they fill.

    Owned by the lifespan: `aclose` cancels and awaits whatever is still in flight.
    """

    _flights: dict[FlightKey, tuple[int, asyncio.Task[list[Candle]]]] = field(default_factory=dict)
    waiting: int = 0  # callers awaiting a flight right now

    async def join(
        self, key: FlightKey, count: int, fetch: Callable[[], Awaitable[list[Candle]]]
    ) -> list[Candle]:
        """The result of the flight for `key` asking for at least `count` candles; starts
        one when none is in the air (or the one in the air asks for fewer)."""
        entry = self._flights.get(key)
        if entry is None or entry[0] < count:
            task = asyncio.create_task(self._run(fetch), name=f"fetch-{key}")
            self._flights[key] = (count, task)
            task.add_done_callback(lambda done: self._landed(key, done))
        else:
            task = entry[1]
        # Shielded: one caller going away must not cancel the fetch the others wait for.
        self.waiting += 1
        try:
            return await asyncio.shield(task)
        finally:
            self.waiting -= 1

    @staticmethod
    async def _run(fetch: Callable[[], Awaitable[list[Candle]]]) -> list[Candle]:
        return await fetch()

    def _landed(self, key: FlightKey, task: asyncio.Task[list[Candle]]) -> None:
        entry = self._flights.get(key)
        if entry is not None and entry[1] is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have gone

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def aclose(self) -> None:
        tasks = [task for _, task in self._flights.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._flights.clear()


async def get_candles(
    trading: Trading,
    redis: Redis,
    flights: CandleFlights,
    *,
    query: CandleQuery,
) -> tuple[list[Candle], bool]:
    """The last `count` candles, oldest first, and whether the cache served them.

    A cache hit creates no job and asks no agent. On a miss: feed_offline (feed), or
    not_found / no_agent / agent_offline (account); then agent_timeout / broker_error.
    """
    if query.source.kind == "feed":
        return await feed_candles(trading, redis, flights, query=query)
    # The connection is resolved even for a hit: it names the cache, and another user's
    # connection is a 404 whatever is cached.
    agent = await connection_agent(
        trading.jobs.db, user_id=query.user_id, connection_id=query.source.connection_id
    )
    if agent is None:  # no agent: nothing was ever fetched for this connection
        raise NoAgent()
    key = redis_key(
        redis, account_cache_key(agent.connection_id, query.instrument, query.timeframe)
    )
    cached = await read_cached(redis, key, CANDLES, what="candles")
    if cached is not None and len(cached) >= query.count:
        return cached[-query.count :], True
    require_online(agent, settings=trading.settings)
    fetch = functools.partial(fetch_candles, trading, redis, agent, key=key, query=query)
    candles = await flights.join(key, query.count, fetch)
    return candles[-query.count :], False


async def feed_candles(
    trading: Trading, redis: Redis, flights: CandleFlights, *, query: CandleQuery
) -> tuple[list[Candle], bool]:
    """Candles from the platform's feed: the shared cache, else an online price source."""
    key = redis_key(redis, feed_cache_key(query.instrument, query.timeframe))
    cached = await read_cached(redis, key, CANDLES, what="candles")
    if cached is not None and len(cached) >= query.count:
        return cached[-query.count :], True
    feed = await online_price_source(trading.jobs.db, settings=trading.settings)
    if feed is None:
        raise FeedOffline()
    fetch = functools.partial(
        fetch_candles, trading, redis, feed, key=key, query=query, shared=True
    )
    candles = await flights.join(key, query.count, fetch)
    return candles[-query.count :], False


async def fetch_candles(
    trading: Trading,
    redis: Redis,
    agent: Agent,
    *,
    key: str,
    query: CandleQuery,
    shared: bool = False,
) -> list[Candle]:
    """One `get_candles` job for `agent` (on behalf of its owner), cached under `key`.

    A `shared` (feed) answer is written only if the agent that gave it is still a price
    source: one unmarked while its job was in flight is no longer trusted for everyone.
    """
    done = await create_job_and_wait(
        trading.jobs,
        user_id=agent.user_id,
        agent_id=agent.id,
        job_type=JobType.GET_CANDLES,
        input_data={"symbol": query.instrument, "timeframe": query.timeframe, "count": query.count},
        ttl_seconds=trading.settings.read_job_ttl_seconds,
        timeout=trading.settings.candles_wait_seconds,
    )
    candles = CANDLES.validate_python(read_output(done)["candles"])
    if shared and not await is_price_source(trading.jobs.db, done.agent_id):
        log.warning("event=feed_answer_refused agent_id=%s reason=not_price_source", agent.id)
        raise FeedOffline()
    ttl = trading.settings.candles_cache_ttl_seconds
    await write_cached(redis, key, CANDLES, candles, ttl=ttl, what="candles")
    return candles
