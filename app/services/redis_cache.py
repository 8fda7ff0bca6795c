"""Values cached in Redis as JSON, as an optimisation only: a Redis that is down, slow
(past `CACHE_TIMEOUT_SECONDS`) or holding garbage is a miss, never an error."""

from __future__ import annotations

import asyncio
import logging
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("mt5gate.cache")

T = TypeVar("T")
CACHE_TIMEOUT_SECONDS = 1.0


async def read_cached(redis: Redis, key: str, adapter: TypeAdapter[T], *, what: str) -> T | None:
    try:
        async with asyncio.timeout(CACHE_TIMEOUT_SECONDS):
            raw = await redis.get(key)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("event=%s_cache_unavailable op=get reason=%r", what, exc)
        return None
    if raw is None:
        return None
    try:
        return adapter.validate_json(raw)
    except ValidationError:
        log.warning("event=%s_cache_malformed key=%s", what, key)
        return None


async def write_cached(
    redis: Redis, key: str, adapter: TypeAdapter[T], value: T, *, ttl: int, what: str
) -> None:
    try:
        async with asyncio.timeout(CACHE_TIMEOUT_SECONDS):
            await redis.set(key, adapter.dump_json(value), ex=ttl)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("event=%s_cache_unavailable op=set reason=%r", what, exc)
