"""Job dispatch across API processes, and through a Redis outage.

These need a store that several processes share: PostgreSQL + Redis.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from app.models import Job
from app.services import jobs
from tests.conftest import make_settings
from tests.flows import AgentHandle, onboard_trader
from tests.private_redis import private_redis
from tests.servers import RunningApi, ServeProcess, run_api, start_serve
from tests.stores import Store, reset_store
from tests.test_jobs import TRADE_INPUT, TRADE_OUTPUT

pytestmark = pytest.mark.parametrize("store", ["postgres"], indirect=True)

# A fallback poll this slow cannot explain a delivery within a second: only a wake-up can.
SLOW_POLL_SECONDS = 10.0
# Time for a long-poll to reach its wait: the precondition of "created while it waits".
POLL_SETTLE_SECONDS = 0.5


async def start_serve_async(api: RunningApi, log_path: Path) -> ServeProcess:
    return await asyncio.to_thread(start_serve, api.settings, log_path)


async def create_trade_job(api: RunningApi, user_id: str, agent: AgentHandle) -> uuid.UUID:
    job, _ = await jobs.create_job(
        api.resources.jobs,
        user_id=uuid.UUID(user_id),
        agent_id=uuid.UUID(agent.id),
        job_type="trade",
        input_data=dict(TRADE_INPUT),
        ttl_seconds=30,
    )
    return job.id


async def round_trip_across(
    api_a: RunningApi,
    b: httpx.AsyncClient,
    user_id: str,
    agent: AgentHandle,
    poll: asyncio.Task[httpx.Response],
) -> Job:
    """Creates a job on process A, which the agent's `poll` on process B must receive; the
    agent answers through B; returns the job as A's waiter sees it."""
    job_id = await create_trade_job(api_a, user_id, agent)
    waiter = asyncio.create_task(
        jobs.wait_for_job_result(api_a.resources.jobs, job_id=job_id, timeout=20)
    )
    delivered = await poll
    assert delivered.status_code == 200
    assert delivered.json()["id"] == str(job_id)
    answered = await b.post(
        agent.path(f"jobs/{job_id}/result"),
        json={"status": "completed", "output_data": TRADE_OUTPUT},
        headers=agent.headers,
    )
    assert answered.status_code == 200
    return await waiter


@pytest.fixture
async def slow_poll_api(store: Store) -> AsyncIterator[RunningApi]:
    await reset_store(store)
    settings = make_settings(store, job_poll_interval_seconds=SLOW_POLL_SECONDS)
    async with run_api(settings) as running:
        yield running


async def test_job_created_on_one_process_reaches_an_agent_polling_another(
    slow_poll_api: RunningApi, tmp_path: Path
) -> None:
    api_a = slow_poll_api
    process_b = await start_serve_async(api_a, tmp_path / "serve-b.log")
    try:
        async with (
            httpx.AsyncClient(base_url=f"{api_a.base_url}/api/v1", timeout=30) as a,
            httpx.AsyncClient(base_url=f"{process_b.base_url}/api/v1", timeout=30) as b,
        ):
            trader = await onboard_trader(a)
            agent = trader.agent
            poll = asyncio.create_task(
                b.get(agent.path("jobs/next"), params={"wait": 20}, headers=agent.headers)
            )
            await asyncio.sleep(POLL_SETTLE_SECONDS)
            started = time.monotonic()
            job = await round_trip_across(api_a, b, trader.user.id, agent, poll)
            round_trip = time.monotonic() - started
    finally:
        process_b.stop()
    assert job.status == "completed"
    assert round_trip < SLOW_POLL_SECONDS / 2, "woken by the fallback poll, not a wake-up"


async def subscriber_count(redis_url: str, channel: str) -> int:
    redis = Redis.from_url(redis_url)
    try:
        counts = await redis.pubsub_numsub(channel)
    finally:
        await redis.aclose()
    return int(counts[0][1])


async def wait_for_subscribers(redis_url: str, channel: str, count: int) -> None:
    deadline = time.monotonic() + 15
    while await subscriber_count(redis_url, channel) < count:
        assert time.monotonic() < deadline, f"fewer than {count} subscribers on {channel}"
        await asyncio.sleep(0.05)


async def test_waiters_fall_back_to_polling_while_redis_is_down_and_recover(
    store: Store, tmp_path: Path
) -> None:
    await reset_store(store)
    with private_redis(tmp_path) as redis_server:
        settings = make_settings(store, redis_url=redis_server.url, job_poll_interval_seconds=0.2)
        async with run_api(settings) as api_a:
            process_b = await start_serve_async(api_a, tmp_path / "serve-b.log")
            try:
                async with (
                    httpx.AsyncClient(base_url=f"{api_a.base_url}/api/v1", timeout=30) as a,
                    httpx.AsyncClient(base_url=f"{process_b.base_url}/api/v1", timeout=30) as b,
                ):
                    trader = await onboard_trader(a)
                    agent = trader.agent
                    channel = "mt5gate:jobs:created"
                    await wait_for_subscribers(redis_server.url, channel, 2)

                    redis_server.stop()
                    poll = asyncio.create_task(
                        b.get(agent.path("jobs/next"), params={"wait": 20}, headers=agent.headers)
                    )
                    job = await round_trip_across(api_a, b, trader.user.id, agent, poll)
                    assert job.status == "completed"

                    redis_server.start()
                    # Both processes resubscribe on their own.
                    await wait_for_subscribers(redis_server.url, channel, 2)
            finally:
                process_b.stop()
