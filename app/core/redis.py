"""The Redis client: redis-py's asyncio client, or fakeredis for `memory://`."""

from __future__ import annotations

from redis.asyncio import Redis

MEMORY_URL = "memory://"


def create_redis(url: str) -> Redis:
    if url == MEMORY_URL:
        # One in-process server per app: an embedded stand-in for a single process.
        from fakeredis import FakeAsyncRedis, FakeServer

        return FakeAsyncRedis(server=FakeServer(), decode_responses=False)
    return Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=None,
        health_check_interval=15,
        retry_on_timeout=False,
    )
