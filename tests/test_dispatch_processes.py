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

from app import dispatch
from app.core.config import Settings
from app.dispatch import CREATED_CHANNEL
from app.models import Job
from tests.conftest import make_settings
from tests.flows import AgentHandle, Trader, onboard_trader
from tests.log_events import watch_log
from tests.private_redis import private_redis
from tests.servers import RunningApi, ServeProcess, run_api, start_serve
from tests.stores import Store, reset_store
from tests.test_jobs import TRADE_INPUT, TRADE_OUTPUT
from tests.trading_agent import ORDER

pytestmark = pytest.mark.parametrize("store", ["postgres"], indirect=True)

# A fallback poll this slow cannot explain a delivery within a second: only a wake-up can.
SLOW_POLL_SECONDS = 10.0


async def start_serve_async(api: RunningApi, log_path: Path) -> ServeProcess:
    return await asyncio.to_thread(start_serve, api.settings, log_path)


async def create_trade_job(api: RunningApi, user_id: str, agent: AgentHandle) -> uuid.UUID:
    job, _ = await dispatch.create_job(
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
        dispatch.wait_for_job_result(api_a.resources.jobs, job_id=job_id, timeout=20)
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


async def order_placed_on_b_runs_for_an_agent_polling_a(
    api_a: RunningApi, a: httpx.AsyncClient, b: httpx.AsyncClient, trader: Trader
) -> float:
    """The agent long-polls process A (in this test's process, so that the poll is seen
    waiting before the order exists); the order is placed on process B, whose job must
    reach A's poll and whose caller must hear the result, answered through A. Returns the
    round trip's seconds."""
    agent = trader.agent
    with watch_log("mt5gate.agents") as log:
        poll = asyncio.create_task(
            a.get(agent.path("jobs/next"), params={"wait": 20}, headers=agent.headers)
        )
        await log.wait_for("event=job_poll_waiting")  # past its first claim
    started = time.monotonic()
    order = asyncio.create_task(b.post("/orders", json=ORDER, headers=trader.headers))
    delivered = await poll
    assert delivered.status_code == 200, delivered.text
    job_id = delivered.json()["id"]
    answered = await a.post(
        agent.path(f"jobs/{job_id}/result"),
        json={"status": "completed", "output_data": TRADE_OUTPUT},
        headers=agent.headers,
    )
    assert answered.status_code == 200
    placed = await order
    took = time.monotonic() - started
    assert placed.status_code == 201, placed.text
    assert placed.json()["order_id"] == job_id
    assert placed.json()["status"] == "filled"
    return took


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
            round_trip = await order_placed_on_b_runs_for_an_agent_polling_a(api_a, a, b, trader)
    finally:
        process_b.stop()
    # Both ways across processes (the job to A's poll, the result to B's caller).
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
                    channel = redis_key_of(settings, CREATED_CHANNEL)
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


async def test_after_a_redis_restart_a_new_job_is_delivered_by_a_wake_up(
    store: Store, tmp_path: Path
) -> None:
    await reset_store(store)
    with private_redis(tmp_path) as redis_server:
        settings = make_settings(
            store, redis_url=redis_server.url, job_poll_interval_seconds=SLOW_POLL_SECONDS
        )
        channel = redis_key_of(settings, CREATED_CHANNEL)
        async with run_api(settings) as api_a:
            process_b = await start_serve_async(api_a, tmp_path / "serve-b.log")
            try:
                async with (
                    httpx.AsyncClient(base_url=f"{api_a.base_url}/api/v1", timeout=30) as a,
                    httpx.AsyncClient(base_url=f"{process_b.base_url}/api/v1", timeout=30) as b,
                ):
                    trader = await onboard_trader(a)
                    await wait_for_subscribers(redis_server.url, channel, 2)
                    redis_server.stop()
                    redis_server.start()
                    await wait_for_subscribers(redis_server.url, channel, 2)
                    took = await order_placed_on_b_runs_for_an_agent_polling_a(api_a, a, b, trader)
            finally:
                process_b.stop()
    # The publishing connections died with the old server: B's job announcement and A's
    # result announcement went out on new ones, or this would take the slow fallback poll.
    assert took < SLOW_POLL_SECONDS / 2, "after the restart, no wake-up arrived"


def redis_key_of(settings: Settings, name: str) -> str:
    return settings.redis_key_prefix + name
