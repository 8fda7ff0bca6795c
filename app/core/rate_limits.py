"""Rate limits shared by every API process: the `limits` library's moving window in Redis.

`limits` keeps each window as one Redis list and changes it in one Lua script, so a count
is exact across processes (no fixed-window burst at a boundary), and it drives redis-py's
asyncio client over the process's own connection pool. On `memory://` (one process) it
keeps the windows in its in-process storage instead.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis

from app.core.redis import MEMORY_URL, redis_key

KEY_PREFIX = "mt5gate:limits"


class LimiterUnavailable(Exception):
    """The limiter's storage (Redis) cannot be reached."""


class RateLimiter:
    def __init__(self, redis_url: str, redis: Redis) -> None:
        storage: Storage
        if redis_url == MEMORY_URL:
            storage = MemoryStorage(wrap_exceptions=True)
        else:
            storage = RedisStorage(
                "async+redis://",
                implementation="redispy",
                key_prefix=redis_key(redis, KEY_PREFIX),
                wrap_exceptions=True,
                connection_pool=redis.connection_pool,  # type: ignore[arg-type]
            )
        self._windows = MovingWindowRateLimiter(storage)

    async def hit(self, item: RateLimitItem, *key: str) -> bool:
        """Counts one call; False (and nothing counted) when the window is already full."""
        try:
            return await self._windows.hit(item, *key)
        except StorageError as exc:
            raise LimiterUnavailable(str(exc.storage_error)) from exc

    async def remaining(self, item: RateLimitItem, *key: str) -> tuple[int, float]:
        """Calls left in the window now, and when (epoch seconds) its oldest call leaves it."""
        try:
            reset_at, remaining = await self._windows.get_window_stats(item, *key)
        except StorageError as exc:
            raise LimiterUnavailable(str(exc.storage_error)) from exc
        return remaining, reset_at


def seconds_until(epoch_seconds: float) -> int:
    """A `Retry-After` value: whole seconds, at least 1."""
    return max(1, math.ceil(epoch_seconds - time.time()))
