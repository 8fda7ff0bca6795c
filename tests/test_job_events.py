"""Job wake-ups between processes: two `JobEvents`, as two API processes have, on one Redis.

A new job wakes one idle long-poll of its agent: a local one when there is one (then
nothing goes through Redis), else one on each other process. A poll that was woken but
leaves without the job hands the wake-up on, to another process if none is left here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from fakeredis import FakeAsyncRedis, FakeServer
from redis.asyncio import Redis

from app.core.redis import create_redis, redis_key
from app.dispatch import CREATED_CHANNEL, JobEvents
from tests.stores import Store
from tests.tcp_proxy import silenceable_proxy

AGENT = "agent-1"
WAKE_TIMEOUT_SECONDS = 2


@pytest.fixture
async def redis_clients(store: Store) -> AsyncIterator[tuple[Redis, Redis]]:
    if store.redis_url == "memory://":
        # memory:// is one fake server per app; here the two "processes" share one.
        server = FakeServer()
        first, second = FakeAsyncRedis(server=server), FakeAsyncRedis(server=server)
    else:
        first = create_redis(store.redis_url, key_prefix=store.redis_key_prefix)
        second = create_redis(store.redis_url, key_prefix=store.redis_key_prefix)
    yield first, second
    await first.aclose()
    await second.aclose()


@pytest.fixture
async def processes(
    redis_clients: tuple[Redis, Redis],
) -> AsyncIterator[tuple[JobEvents, JobEvents]]:
    a, b = JobEvents(redis_clients[0]), JobEvents(redis_clients[1])
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


async def woken(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), WAKE_TIMEOUT_SECONDS)


async def test_a_new_job_wakes_a_local_poll_and_publishes_nothing(
    redis_clients: tuple[Redis, Redis], processes: tuple[JobEvents, JobEvents]
) -> None:
    a, _ = processes
    listener = redis_clients[0].pubsub(ignore_subscribe_messages=True)
    await listener.subscribe(redis_key(redis_clients[0], CREATED_CHANNEL))
    try:
        with a.watch_created(AGENT) as poll:
            await a.job_created(AGENT)
            assert poll.is_set()
            # The poll takes its job, as `next_job` does: it clears its wake-up before it
            # claims. Leaving with the wake-up still set would mean "woken, job not taken",
            # which rightly hands it on over Redis (the test below).
            poll.clear()
        # Redis keeps the order of publishes: had job_created published, its message
        # would come before this marker.
        await redis_clients[0].publish(redis_key(redis_clients[0], CREATED_CHANNEL), "marker")
        message = await listener.get_message(timeout=WAKE_TIMEOUT_SECONDS)
        while message is None:
            message = await listener.get_message(timeout=WAKE_TIMEOUT_SECONDS)
        assert message["data"] == b"marker"
    finally:
        await listener.aclose()


async def test_a_new_job_with_no_local_poll_wakes_one_on_another_process(
    processes: tuple[JobEvents, JobEvents],
) -> None:
    a, b = processes
    with b.watch_created(AGENT) as remote_poll:
        await a.job_created(AGENT)
        await woken(remote_poll)


async def test_a_woken_poll_that_leaves_hands_the_job_to_another_process(
    processes: tuple[JobEvents, JobEvents],
) -> None:
    a, b = processes
    with b.watch_created(AGENT) as remote_poll:
        with a.watch_created(AGENT) as local_poll:
            await a.job_created(AGENT)
            assert local_poll.is_set()
            assert not remote_poll.is_set()
        # The local poll left (its client went away, say) without claiming the job.
        await woken(remote_poll)


# -- real Redis, over time ----------------------------------------------------------------------

ONLY_REAL_REDIS = pytest.mark.parametrize("store", ["postgres"], indirect=True)
# Longer than the health-check interval these tests set (1 s), by a margin.
QUIET_SPELL_SECONDS = 3.0


@contextlib.asynccontextmanager
async def two_processes(
    first_url: str, second_url: str
) -> AsyncIterator[tuple[JobEvents, JobEvents]]:
    """Two processes' wake-ups, on Redis clients with a 1 s health-check interval."""
    clients = [create_redis(url, health_check_interval=1) for url in (first_url, second_url)]
    a, b = (JobEvents(client, keepalive=1) for client in clients)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()
        for client in clients:
            await client.aclose()


@ONLY_REAL_REDIS
async def test_a_wakeup_reaches_another_process_after_a_quiet_spell(store: Store) -> None:
    async with two_processes(store.redis_url, store.redis_url) as (a, b):
        for _spell in range(2):
            await asyncio.sleep(QUIET_SPELL_SECONDS)  # the quiet spell itself is the test
            with b.watch_created(AGENT) as remote_poll:
                await a.job_created(AGENT)
                await woken(remote_poll)


@ONLY_REAL_REDIS
async def test_wakeups_resume_after_the_subscription_connection_silently_dies(
    store: Store,
) -> None:
    """A connection that a NAT or firewall dropped is never closed: the listener finds it
    silent, within twice the health-check interval, and subscribes on a new one."""
    async with (
        silenceable_proxy(store.redis_url) as (proxy, proxied_url),
        two_processes(store.redis_url, proxied_url) as (a, b),
    ):
        proxy.blackhole()
        async with asyncio.timeout(10):
            while True:  # each job wakes b once b listens on a live connection again
                with b.watch_created(AGENT) as remote_poll:
                    await a.job_created(AGENT)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(remote_poll.wait(), 0.5)
                    if remote_poll.is_set():
                        break
