"""Candles: served from Redis when a fresh enough list is cached, else fetched by one job.

The cache key is `candles:{instrument}:{timeframe}` (shared by every user, as the contract
says), holding the JSON list of candles, oldest first, for `candles_cache_ttl_seconds`.
Redis is an optimisation here: when it is down or holds garbage the call is a miss.

Concurrent misses for the same agent, instrument and timeframe share one job (a single
flight per process): the first starts a fetch task, the others await it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.redis import redis_key
from app.schemas.trading import Candle
from app.services.agents import connection_agent
from app.services.jobs import run_job
from app.services.orders import Trading
from app.services.trading import online_agent, read_output

log = logging.getLogger("mt5gate.candles")

CANDLES = TypeAdapter(list[Candle])
# A Redis that hangs must not hold a request for long: past this, the cache is skipped.
CACHE_TIMEOUT_SECONDS = 1.0

FlightKey = tuple[uuid.UUID, str, str]


def cache_key(instrument: str, timeframe: str) -> str:
    return f"candles:{instrument}:{timeframe}"


async def read_cache(redis: Redis, key: str) -> list[Candle] | None:
    try:
        async with asyncio.timeout(CACHE_TIMEOUT_SECONDS):
            raw = await redis.get(key)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("event=candles_cache_unavailable op=get reason=%r", exc)
        return None
    if raw is None:
        return None
    try:
        return CANDLES.validate_json(raw)
    except ValidationError:
        log.warning("event=candles_cache_malformed key=%s", key)
        return None


async def write_cache(redis: Redis, key: str, candles: list[Candle], *, ttl: int) -> None:
    try:
        async with asyncio.timeout(CACHE_TIMEOUT_SECONDS):
            await redis.set(key, CANDLES.dump_json(candles), ex=ttl)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("event=candles_cache_unavailable op=set reason=%r", exc)


@dataclass
class CandleFlights:
    """In-flight candle fetches of this process, by (agent, instrument, timeframe).

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
            task = asyncio.create_task(self._run(fetch), name=f"candles-{key[1]}-{key[2]}")
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
    user_id: uuid.UUID,
    connection_id: uuid.UUID | None,
    instrument: str,
    timeframe: str,
    count: int,
) -> tuple[list[Candle], bool]:
    """The last `count` candles, oldest first, and whether the cache served them.

    A cache hit creates no job and asks no agent, but a named `connection_id` must still
    be the caller's. On a miss: no_agent / agent_offline / agent_timeout / broker_error.
    """
    if connection_id is not None:  # another user's connection is a 404 even on a hit
        await connection_agent(trading.jobs.db, user_id=user_id, connection_id=connection_id)
    key = redis_key(redis, cache_key(instrument, timeframe))
    cached = await read_cache(redis, key)
    if cached is not None and len(cached) >= count:
        return cached[-count:], True
    agent = await online_agent(trading, user_id=user_id, connection_id=connection_id)

    async def fetch() -> list[Candle]:
        done = await run_job(
            trading.jobs,
            user_id=user_id,
            agent_id=agent.id,
            job_type="get_candles",
            input_data={"symbol": instrument, "timeframe": timeframe, "count": count},
            ttl_seconds=trading.settings.read_job_ttl_seconds,
            timeout=trading.settings.candles_wait_seconds,
        )
        candles = CANDLES.validate_python(read_output(done)["candles"])
        await write_cache(redis, key, candles, ttl=trading.settings.candles_cache_ttl_seconds)
        return candles

    candles = await flights.join((agent.id, instrument, timeframe), count, fetch)
    return candles[-count:], False
