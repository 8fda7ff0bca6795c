"""Where a tick lives in Redis: `prices:{instrument}` is both the instrument's last-tick key
and the channel its ticks are published on (behind the deployment's key prefix)."""

from __future__ import annotations

from redis.asyncio import Redis

from app.core.redis import redis_key

CHANNEL_PREFIX = "prices:"


def channel_for(redis: Redis, instrument: str) -> str:
    """`prices:{instrument}` on `redis`: the instrument's last-tick key and its channel."""
    return redis_key(redis, CHANNEL_PREFIX + instrument)
