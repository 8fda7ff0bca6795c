"""The Redis client: redis-py's asyncio client, or fakeredis for `memory://`."""

from __future__ import annotations

from weakref import WeakKeyDictionary

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

MEMORY_URL = "memory://"
MAX_CONNECTIONS = 256
# How long a command waits for a free pooled connection before it fails.
POOL_TIMEOUT_SECONDS = 5

# Each client's REDIS_KEY_PREFIX, kept beside it (redis-py has no such option).
_KEY_PREFIXES: WeakKeyDictionary[Redis, str] = WeakKeyDictionary()


def redis_key(redis: Redis, name: str) -> str:
    """The key or channel `name` (as the contract spells it: `prices:EURUSD`) as it is
    named on `redis`: behind the client's REDIS_KEY_PREFIX. Every key, channel and
    pattern the app uses is named through here, so deployments (or test runs) sharing one
    Redis see nothing of each other's."""
    return _KEY_PREFIXES.get(redis, "") + name


def create_redis(url: str, *, key_prefix: str = "") -> Redis:
    client = _create_client(url)
    if key_prefix:
        _KEY_PREFIXES[client] = key_prefix
    return client


def _create_client(url: str) -> Redis:
    if url == MEMORY_URL:
        # One in-process server per app: an embedded stand-in for a single process.
        from fakeredis import FakeAsyncRedis, FakeServer

        return FakeAsyncRedis(server=FakeServer(), decode_responses=False)
    # A blocking pool queues a burst of commands instead of failing past its size; the
    # retry reconnects a pooled connection that a Redis restart left dead, quickly enough
    # (≈ 0.15 s in all) that a Redis that is really down still fails fast.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT_SECONDS,
        socket_connect_timeout=2,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), retries=3),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    return Redis(connection_pool=pool)
