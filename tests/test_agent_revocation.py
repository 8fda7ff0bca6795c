"""A rotated or deleted agent token: its open long-polls end at once (204), on every process,
and no job is ever handed to it."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest

from app import dispatch
from app.core.security import hash_agent_token
from app.dispatch import REVOKED_CHANNEL
from tests.flows import AgentHandle, Trader, heartbeat, onboard_trader, provision_agent
from tests.servers import RunningApi, start_serve
from tests.stores import Store
from tests.test_dispatch_processes import SLOW_POLL_SECONDS
from tests.test_jobs import TRADE_INPUT
from tests.trading_agent import ORDER, second_api

# Far below the poll's own wait: a poll that ends within this was ended, not timed out.
ENDED_AT_ONCE_SECONDS = 5.0
POLL_WAIT_SECONDS = 20


def long_poll(client: httpx.AsyncClient, agent: AgentHandle) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(
        client.get(
            agent.path("jobs/next"), params={"wait": POLL_WAIT_SECONDS}, headers=agent.headers
        )
    )


async def until_polling(api: RunningApi, agent: AgentHandle, polls: int = 1) -> None:
    """Until `polls` long-polls of the agent wait in this process (nothing else waits here:
    each poll watches two events, new jobs and revocations)."""
    events = api.resources.jobs.events
    while agent.id not in events.watched(REVOKED_CHANNEL) or events.waiter_count < 2 * polls:
        await asyncio.sleep(0.005)


async def ended_at_once(poll: asyncio.Task[httpx.Response]) -> httpx.Response:
    started = time.monotonic()
    response = await asyncio.wait_for(poll, POLL_WAIT_SECONDS + 5)
    assert time.monotonic() - started < ENDED_AT_ONCE_SECONDS, "the poll ran to its end"
    return response


async def takes_the_trade_job(client: httpx.AsyncClient, agent: AgentHandle) -> None:
    job = await client.get(agent.path("jobs/next"), params={"wait": 10}, headers=agent.headers)
    assert job.status_code == 200
    assert job.json()["job_type"] == "trade"


def place_order(client: httpx.AsyncClient, trader: Trader) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(client.post("/orders", json=ORDER, headers=trader.headers))


async def rotate(client: httpx.AsyncClient, trader: Trader) -> AgentHandle:
    new = await provision_agent(client, trader.user, trader.connection_id)
    assert new.id == trader.agent.id
    return new


async def test_a_rotation_ends_the_old_tokens_open_long_poll_at_once(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    old_poll = long_poll(client, trader.agent)
    await until_polling(api, trader.agent)
    new = await rotate(client, trader)
    assert (await ended_at_once(old_poll)).status_code == 204

    placing = place_order(client, trader)
    await takes_the_trade_job(client, new)
    placing.cancel()


async def test_a_connection_delete_ends_its_agents_open_long_poll_at_once(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    poll = long_poll(client, trader.agent)
    await until_polling(api, trader.agent)
    deleted = await client.delete(
        f"/broker-connections/{trader.connection_id}", headers=trader.headers
    )
    assert deleted.status_code == 204
    assert (await ended_at_once(poll)).status_code == 204


async def test_an_order_after_a_rotation_never_reaches_the_old_tokens_poll(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    """The reported attack: a poll opened with T1, a rotation to T2, then an order. The T1
    poll must not get the trade job; the T2 agent does."""
    old_polls = [long_poll(client, trader.agent) for _ in range(3)]
    await until_polling(api, trader.agent, polls=3)
    new = await rotate(client, trader)
    placing = place_order(client, trader)
    for poll in old_polls:
        assert (await ended_at_once(poll)).status_code == 204
    await heartbeat(client, new)
    await takes_the_trade_job(client, new)
    placing.cancel()


async def test_a_replaced_token_claims_nothing_even_without_the_message(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    """The claim checks the token itself: a revocation message that never arrived (another
    process, Redis down) cannot hand a job to the old token."""
    store = api.resources.jobs
    new = await rotate(client, trader)
    job, _ = await dispatch.create_job(
        store,
        user_id=uuid.UUID(trader.user.id),
        agent_id=uuid.UUID(trader.agent.id),
        job_type="trade",
        input_data=dict(TRADE_INPUT),
        ttl_seconds=30,
    )
    agent_id = uuid.UUID(trader.agent.id)
    old_hash, new_hash = hash_agent_token(trader.agent.token), hash_agent_token(new.token)
    assert await dispatch.claim_next_job(store, agent_id=agent_id, token_hash=old_hash) is None
    claimed = await dispatch.claim_next_job(store, agent_id=agent_id, token_hash=new_hash)
    assert claimed is not None
    assert claimed.id == job.id


async def test_a_poll_that_missed_the_revocation_ends_at_the_next_job_without_it(
    store: Store, client: httpx.AsyncClient, trader: Trader
) -> None:
    """A second app on the same store: with memory:// it never hears the first one's
    revocation. Its old-token poll, woken (by its fallback poll) for the job created after
    the rotation, claims nothing and ends; the job stays for the new token."""
    async with second_api(store, job_poll_interval_seconds=0.1) as other:
        poll = long_poll(other.client, trader.agent)
        await until_polling(other.api, trader.agent)
        new = await rotate(client, trader)
        placing = place_order(client, trader)
        assert (await ended_at_once(poll)).status_code == 204
        await takes_the_trade_job(client, new)
        placing.cancel()


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
@pytest.mark.parametrize("revoke", ["rotate", "delete"])
async def test_a_revocation_on_one_process_ends_a_long_poll_on_another(
    store: object, api: RunningApi, client: httpx.AsyncClient, tmp_path: Path, revoke: str
) -> None:
    # A fallback poll this slow cannot end the poll in time: only the message can.
    # At DEBUG, B logs `job_poll_waiting` when its poll waits (and so hears a revocation).
    settings = api.settings.model_copy(
        update={"job_poll_interval_seconds": SLOW_POLL_SECONDS, "log_level": "DEBUG"}
    )
    process_b = await asyncio.to_thread(start_serve, settings, tmp_path / "serve-b.log")
    try:
        async with httpx.AsyncClient(base_url=f"{process_b.base_url}/api/v1", timeout=30) as b:
            trader = await onboard_trader(client)
            poll = long_poll(b, trader.agent)
            await process_b.wait_for_log("event=job_poll_waiting")
            if revoke == "rotate":
                new = await rotate(client, trader)
            else:
                deleted = await client.delete(
                    f"/broker-connections/{trader.connection_id}", headers=trader.headers
                )
                assert deleted.status_code == 204
            assert (await ended_at_once(poll)).status_code == 204
            if revoke == "rotate":  # and B hands the next job to the new token only
                placing = place_order(client, trader)
                await takes_the_trade_job(b, new)
                placing.cancel()
    finally:
        process_b.stop()
