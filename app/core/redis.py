"""The Redis client: redis-py's asyncio client, or fakeredis for `memory://`.

Commands and pub/sub use separate pools. Commands get redis-py's health check (a PING
before using a connection silent for `health_check_interval`) and its retries. A pub/sub
connection gets neither, because it is read by one task (its listener) while another may
send on it (the price stream's reconciler SUBSCRIBEs from its own task): redis-py's health
check *reads* the PING's reply in whichever task sends. It runs on a `subscribe()` when
the PubSub has no subscription left and its connection has been silent for longer than
the interval, and there it races the listener for the socket (asyncio's "readuntil()
called while another coroutine is already waiting"), which broke the connection and
killed the reconciler: after a quiet spell, a price socket got the last tick and then
nothing, ever. Likewise redis-py's retries would reconnect and resubscribe behind the
back of a listener that tracks its subscriptions itself. So on a pub/sub connection the
listener alone checks liveness, from its own reads (`pubsub_messages`), and reconnects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from weakref import WeakKeyDictionary

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError, TimeoutError

MEMORY_URL = "memory://"
MAX_CONNECTIONS = 256
# How long a command waits for a free pooled connection before it fails.
POOL_TIMEOUT_SECONDS = 5
CONNECT_TIMEOUT_SECONDS = 2
DEFAULT_HEALTH_CHECK_INTERVAL_SECONDS = 15.0

# Each client's REDIS_KEY_PREFIX, kept beside it (redis-py has no such option).
_KEY_PREFIXES: WeakKeyDictionary[Redis, str] = WeakKeyDictionary()


def redis_key(redis: Redis, name: str) -> str:
    """The key or channel `name` (as the contract spells it: `prices:EURUSD`) as it is
    named on `redis`: behind the client's REDIS_KEY_PREFIX. Every key, channel and
    pattern the app uses is named through here, so deployments (or test runs) sharing one
    Redis see nothing of each other's."""
    return _KEY_PREFIXES.get(redis, "") + name


class GatewayRedis(Redis):
    """A client whose `pubsub()` connections come from a pool of their own, without
    redis-py's health checks and retries (see the module's docstring)."""

    def __init__(self, *, connection_pool: ConnectionPool, pubsub_pool: ConnectionPool) -> None:
        super().__init__(connection_pool=connection_pool)
        self.pubsub_pool = pubsub_pool

    def pubsub(self, **kwargs: Any) -> PubSub:
        return PubSub(self.pubsub_pool, **kwargs)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool=True)
        await self.pubsub_pool.aclose()


def create_redis(
    url: str,
    *,
    health_check_interval: float = DEFAULT_HEALTH_CHECK_INTERVAL_SECONDS,
    key_prefix: str = "",
) -> Redis:
    client = _create_client(url, health_check_interval=health_check_interval)
    if key_prefix:
        _KEY_PREFIXES[client] = key_prefix
    return client


def _create_client(url: str, *, health_check_interval: float) -> Redis:
    if url == MEMORY_URL:
        # One in-process server per app: an embedded stand-in for a single process.
        from fakeredis import FakeAsyncRedis, FakeServer

        return FakeAsyncRedis(server=FakeServer(), decode_responses=False)
    # A blocking pool queues a burst of commands instead of failing past its size; the
    # retry reconnects a pooled connection that a Redis restart left dead, quickly enough
    # (≈ 0.15 s in all) that a Redis that is really down still fails fast.
    commands = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        health_check_interval=health_check_interval,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), retries=3),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    pubsub = ConnectionPool.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        health_check_interval=0,
        # No error is retried (nor the connection reopened) inside redis-py: it reaches
        # the listener, which starts over on a new connection.
        retry=Retry(NoBackoff(), retries=0, supported_errors=()),
    )
    return GatewayRedis(connection_pool=commands, pubsub_pool=pubsub)


async def pubsub_messages(pubsub: PubSub, *, keepalive: float) -> AsyncIterator[dict[str, Any]]:
    """The messages of a connected PubSub, for the one task that reads it.

    A connection silent for `keepalive` seconds gets a PING (sent from the reader, so it
    reads its own reply); one still silent `keepalive` seconds later is dead (a peer
    gone without closing: a NAT or firewall dropped the flow), and ConnectionError is
    raised for the caller to reconnect. A blocking read would wait on it for ever.
    """
    pinged = False
    while True:
        response = await pubsub.parse_response(block=False, timeout=keepalive)
        if response is None:
            if pinged:
                raise ConnectionError(f"no reply from Redis to a PING in {keepalive:g}s")
            await pubsub.ping()
            pinged = True
            continue
        pinged = False
        message = await pubsub.handle_message(response)
        if message is not None and message["type"] != "pong":
            yield message
