"""POST /orders and the order history, over HTTP, with a fake agent on the agent routes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx

from app import dispatch
from app.dispatch import sweep_jobs
from app.models import Job, utcnow
from app.services.orders import order_from_job
from tests.flows import Trader, add_connection, heartbeat, onboard_trader, provision_agent
from tests.servers import RunningApi
from tests.stores import Store
from tests.trading_agent import (
    FILL,
    ORDER,
    SHORT_BUDGETS,
    FakeAgent,
    age_heartbeat,
    failed,
    fake_agent,
    instant,
    job_count,
    second_api,
)


async def place(client: httpx.AsyncClient, trader: Trader, **fields: Any) -> httpx.Response:
    return await client.post("/orders", json={**ORDER, **fields}, headers=trader.headers)


async def test_post_orders_waits_for_agent_job_completion_and_returns_fill_price(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    placing = asyncio.create_task(place(client, trader, sl=1.07, client_order_id="o-1"))
    job = await agent.take()
    assert job["job_type"] == "trade"
    assert job["input_data"] == {**ORDER, "sl": 1.07, "tp": None, "client_order_id": "o-1"}
    assert not placing.done()  # still waiting for the agent
    await agent.answer(job, {"status": "completed", "output_data": FILL})
    response = await placing
    assert response.status_code == 201, response.text
    assert response.json() == {
        "order_id": job["id"],
        "client_order_id": "o-1",
        "status": "filled",
        "type": "market",
        "symbol": "EURUSD",
        "side": "buy",
        "volume": 0.1,
        "price": None,
        "stop_limit_price": None,
        "expiration": None,
        "sl": 1.07,
        "tp": None,
        "fill_price": 1.08321,
        "ticket": 50123,
        "position_id": 50123,
        "error": None,
        "created_at": job["created_at"],
        "placed_at": None,
        "filled_at": "2026-11-24T21:15:03.120Z",
    }


async def test_post_orders_returns_503_if_agent_has_not_sent_heartbeat_in_10_min(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    await age_heartbeat(api, trader, minutes=10.5)
    response = await place(client, trader)
    assert response.status_code == 503
    assert response.json()["detail"] == "agent_offline"
    assert await job_count(api) == 0


async def test_post_orders_returns_503_if_agent_never_sent_a_heartbeat(
    api: RunningApi, client: httpx.AsyncClient
) -> None:
    silent = await onboard_trader(client, with_heartbeat=False)
    response = await place(client, silent)
    assert response.status_code == 503
    assert response.json()["detail"] == "agent_offline"
    assert await job_count(api) == 0


async def test_agent_seen_9_minutes_ago_is_still_online(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    await age_heartbeat(api, trader, minutes=9)
    agent = fake_agent(client, trader)
    placing = asyncio.create_task(place(client, trader))
    await agent.serve()
    assert (await placing).status_code == 201


async def test_post_orders_without_an_agent_is_409_no_agent(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    # A second connection without an agent, named explicitly.
    bare = await add_connection(client, trader.user, login=777)
    response = await place(client, trader, broker_connection_id=bare)
    assert response.status_code == 409
    assert response.json()["detail"] == "no_agent"
    assert await job_count(api) == 0


async def test_order_not_answered_in_time_is_202_pending_then_shows_the_fill(
    store: Store, trader: Trader
) -> None:
    async with second_api(store, **SHORT_BUDGETS) as short:
        agent = fake_agent(short.client, trader)
        placing = asyncio.create_task(place(short.client, trader))
        job = await agent.take()  # taken, but the broker is slow
        response = await placing
        assert response.status_code == 202, response.text
        order = response.json()
        assert (order["order_id"], order["status"]) == (job["id"], "pending")
        assert order["fill_price"] is None

        await agent.answer(job, {"status": "completed", "output_data": FILL})
        later = await short.client.get(f"/orders/{job['id']}", headers=trader.headers)
        assert later.status_code == 200
        assert later.json()["status"] == "filled"
        assert later.json()["fill_price"] == FILL["fill_price"]


async def test_broker_rejection_is_422_order_rejected_with_the_order(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    placing = asyncio.create_task(place(client, trader, volume=50))
    job = await agent.take()
    await agent.answer(job, failed("no_money", "Not enough money", 10019))
    response = await placing
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "order_rejected"
    assert "Not enough money" in body["message"]
    order = body["order"]
    assert (order["order_id"], order["status"], order["volume"]) == (job["id"], "rejected", 50)
    assert order["error"] == {"code": "no_money", "message": "Not enough money", "retcode": 10019}
    assert order["fill_price"] is None
    assert order["ticket"] is None
    again = await client.get(f"/orders/{job['id']}", headers=trader.headers)
    assert again.json() == order


async def test_twenty_concurrent_identical_orders_make_one_order_and_one_job(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    posts = [
        asyncio.create_task(place(client, trader, client_order_id="same-order")) for _ in range(20)
    ]
    job = await agent.take()
    await agent.answer(job, {"status": "completed", "output_data": FILL})
    responses = await asyncio.gather(*posts)
    assert [r.status_code for r in responses] == [201] * 20
    assert {r.json()["order_id"] for r in responses} == {job["id"]}
    await agent.expect_no_job()
    assert await job_count(api) == 1


async def test_repeat_of_a_filled_order_returns_it_without_a_job_even_offline(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    first = asyncio.create_task(place(client, trader, client_order_id="retry-me"))
    await agent.serve()
    original = (await first).json()
    await age_heartbeat(api, trader, minutes=60)  # a retry after the agent went away
    repeat = await place(client, trader, client_order_id="retry-me")
    assert repeat.status_code == 201
    assert repeat.json() == original
    assert await job_count(api) == 1


async def test_reused_client_order_id_with_another_order_is_409_conflict(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    first = asyncio.create_task(place(client, trader, client_order_id="k1"))
    await agent.serve()
    assert (await first).status_code == 201
    for changed in ({"volume": 0.2}, {"side": "sell"}, {"sl": 1.0}, {"symbol": "GBPUSD"}):
        response = await place(client, trader, client_order_id="k1", **changed)
        assert response.status_code == 409, changed
        assert response.json()["detail"] == "client_order_id_conflict"
    # Naming another of the user's connections is another order too.
    other_connection = await add_connection(client, trader.user, login=778)
    await provision_agent(client, trader.user, other_connection)
    response = await place(
        client, trader, client_order_id="k1", broker_connection_id=other_connection
    )
    assert response.status_code == 409
    # Naming the connection it went to is the same order.
    same = await place(
        client, trader, client_order_id="k1", broker_connection_id=trader.connection_id
    )
    assert same.status_code == 201
    assert await job_count(api) == 1


async def test_client_order_ids_are_per_user(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    other = await onboard_trader(client)
    for who in (trader, other):
        agent = fake_agent(client, who)
        placing = asyncio.create_task(place(client, who, client_order_id="shared-id"))
        await agent.serve()
        assert (await placing).status_code == 201
    assert await job_count(api) == 2


async def test_order_history_is_newest_first_and_pages_with_before(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    placed = []
    async with agent.running():
        for volume in (0.1, 0.2, 0.3):
            response = await place(client, trader, volume=volume)
            assert response.status_code == 201
            placed.append(response.json()["order_id"])
    newest_first = list(reversed(placed))

    listed = await client.get("/orders", headers=trader.headers)
    assert listed.status_code == 200
    assert [o["order_id"] for o in listed.json()] == newest_first
    assert [o["volume"] for o in listed.json()] == [0.3, 0.2, 0.1]

    page = await client.get("/orders", params={"limit": 2}, headers=trader.headers)
    assert [o["order_id"] for o in page.json()] == newest_first[:2]
    rest = await client.get(
        "/orders", params={"limit": 2, "before": newest_first[1]}, headers=trader.headers
    )
    assert [o["order_id"] for o in rest.json()] == newest_first[2:]
    end = await client.get("/orders", params={"before": newest_first[2]}, headers=trader.headers)
    assert end.json() == []


async def test_order_history_leaves_out_other_jobs_and_other_users(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    async with agent.running():
        assert (await place(client, trader)).status_code == 201
        assert (await client.get("/account", headers=trader.headers)).status_code == 200
    other = await onboard_trader(client)
    assert len((await client.get("/orders", headers=trader.headers)).json()) == 1
    assert (await client.get("/orders", headers=other.headers)).json() == []


def trade_job(status: str, **fields: Any) -> Job:
    now = utcnow()
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "agent_id": uuid.uuid4(),
        "job_type": "trade",
        "input_data": {**ORDER, "sl": None, "tp": None, "client_order_id": None},
        "status": status,
        "created_at": now,
        "expires_at": now + timedelta(seconds=30),
        **fields,
    }
    return Job(**values)


def test_order_status_follows_the_job() -> None:
    assert order_from_job(trade_job("pending")).status == "pending"
    assert order_from_job(trade_job("running")).status == "pending"
    assert order_from_job(trade_job("completed", output_data=FILL)).status == "filled"
    rejected = order_from_job(trade_job("failed", error={"code": "requote", "message": "Requote"}))
    assert (rejected.status, rejected.error and rejected.error.code) == ("rejected", "requote")
    expired = order_from_job(trade_job("expired", error={"code": "expired", "message": "late"}))
    assert expired.status == "expired"
    lost = order_from_job(trade_job("lost", error={"code": "agent_lost", "message": "?"}))
    assert (lost.status, lost.error and lost.error.code) == ("unknown", "agent_lost")


def test_pending_order_past_its_expiry_reads_as_expired_before_the_sweep() -> None:
    past = utcnow() - timedelta(seconds=1)
    order = order_from_job(trade_job("pending", expires_at=past))
    assert order.status == "expired"
    assert order.error is not None
    assert order.error.code == "expired"


def test_agent_refusing_an_expired_job_makes_the_order_expired_not_rejected() -> None:
    job = trade_job("failed", error={"code": "expired", "message": "too late, not executed"})
    assert order_from_job(job).status == "expired"


def test_partial_fill_reports_the_executed_volume() -> None:
    job = trade_job("completed", output_data={**FILL, "volume": 0.05})
    assert order_from_job(job).volume == 0.05


async def test_order_whose_agent_died_mid_job_reads_as_unknown(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, store: Store
) -> None:
    async with second_api(store, **SHORT_BUDGETS, job_result_timeout_seconds=0.01) as short:
        agent = fake_agent(short.client, trader)
        placing = asyncio.create_task(place(short.client, trader))
        job = await agent.take()
        assert (await placing).status_code == 202
        await sweep_jobs(short.api.resources.jobs)  # the claim is older than the timeout
        response = await short.client.get(f"/orders/{job['id']}", headers=trader.headers)
        order = response.json()
        assert order["status"] == "unknown"
        assert order["error"]["code"] == "agent_lost"


async def test_an_order_without_a_connection_goes_to_the_users_oldest_of_two(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    second_connection = await add_connection(client, trader.user, login=7007007)
    second_agent = await provision_agent(client, trader.user, second_connection)
    await heartbeat(client, second_agent)
    oldest, newest = fake_agent(client, trader), FakeAgent(client, second_agent)
    placing = asyncio.create_task(place(client, trader))
    job = await oldest.take()
    await newest.expect_no_job()
    await oldest.answer(job, instant(job))
    assert (await placing).status_code == 201
    # Named, the newer connection is used.
    placing = asyncio.create_task(place(client, trader, broker_connection_id=second_connection))
    job = await newest.take()
    await oldest.expect_no_job()
    await newest.answer(job, instant(job))
    assert (await placing).status_code == 201


async def test_order_history_lists_50_orders_unless_told_otherwise(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    for i in range(53):
        await dispatch.create_job(
            api.resources.jobs,
            user_id=uuid.UUID(trader.user.id),
            agent_id=uuid.UUID(trader.agent.id),
            job_type="trade",
            input_data={**ORDER, "sl": None, "tp": None, "client_order_id": f"c-{i}"},
            ttl_seconds=30,
            client_order_id=f"c-{i}",
        )
    listed = await client.get("/orders", headers=trader.headers)
    assert listed.status_code == 200
    assert [o["client_order_id"] for o in listed.json()] == [f"c-{i}" for i in range(52, 2, -1)]
    everything = await client.get("/orders", params={"limit": 500}, headers=trader.headers)
    assert len(everything.json()) == 53
