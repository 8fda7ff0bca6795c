"""Positions and the account: reads time out as 504, writes as 202, broker refusals map."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.flows import Trader
from tests.servers import RunningApi
from tests.stores import Store
from tests.trading_agent import (
    ACCOUNT,
    CLOSED,
    POSITION,
    SHORT_BUDGETS,
    age_heartbeat,
    completed,
    failed,
    fake_agent,
    job_count,
    second_api,
)


async def test_get_positions_returns_what_the_agent_reports(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    asking = asyncio.create_task(client.get("/positions", headers=trader.headers))
    job = await agent.take()
    assert (job["job_type"], job["input_data"]) == ("get_positions", {})
    await agent.answer(job, completed({"positions": [POSITION]}))
    response = await asking
    assert response.status_code == 200
    assert response.json() == [POSITION]


async def test_get_account_returns_balance_equity_and_margin(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    asking = asyncio.create_task(client.get("/account", headers=trader.headers))
    job = await agent.take()
    assert job["job_type"] == "get_account"
    await agent.answer(job, completed(ACCOUNT))
    response = await asking
    assert response.status_code == 200
    assert response.json() == ACCOUNT


@pytest.mark.parametrize("path", ["/positions", "/account"])
async def test_read_without_an_answer_in_time_is_504_agent_timeout(
    store: Store, trader: Trader, path: str
) -> None:
    async with second_api(store, **SHORT_BUDGETS) as short:
        response = await short.client.get(path, headers=trader.headers)
    assert response.status_code == 504
    assert response.json()["detail"] == "agent_timeout"


@pytest.mark.parametrize("path", ["/positions", "/account"])
async def test_read_refused_by_the_terminal_is_422_broker_error(
    client: httpx.AsyncClient, trader: Trader, path: str
) -> None:
    agent = fake_agent(client, trader)
    asking = asyncio.create_task(client.get(path, headers=trader.headers))
    job = await agent.take()
    await agent.answer(job, failed("terminal_disconnected", "The terminal is not connected"))
    response = await asking
    assert response.status_code == 422
    assert response.json() == {
        "detail": "broker_error",
        "message": "The terminal is not connected",
        "error": {"code": "terminal_disconnected", "message": "The terminal is not connected"},
    }


async def test_delete_position_closes_it_and_returns_the_close(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    closing = asyncio.create_task(client.delete("/positions/50123", headers=trader.headers))
    job = await agent.take()
    assert (job["job_type"], job["input_data"]) == ("close_position", {"ticket": 50123})
    await agent.answer(job, completed(CLOSED))
    response = await closing
    assert response.status_code == 200
    assert response.json() == {"position_id": 50123, **CLOSED}


async def test_delete_position_with_volume_closes_part_of_it(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    closing = asyncio.create_task(
        client.delete("/positions/50123", params={"volume": 0.05}, headers=trader.headers)
    )
    job = await agent.take()
    assert job["input_data"] == {"ticket": 50123, "volume": 0.05}
    await agent.answer(job, completed({**CLOSED, "volume": 0.05}))
    response = await closing
    assert response.status_code == 200
    assert response.json()["volume"] == 0.05


async def test_closing_a_position_that_does_not_exist_is_404_position_not_found(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    closing = asyncio.create_task(client.delete("/positions/999", headers=trader.headers))
    job = await agent.take()
    await agent.answer(job, failed("position_not_found", "No position 999"))
    response = await closing
    assert response.status_code == 404
    assert response.json()["detail"] == "position_not_found"


async def test_close_refused_by_the_broker_is_422_with_its_code(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    closing = asyncio.create_task(client.delete("/positions/50123", headers=trader.headers))
    job = await agent.take()
    await agent.answer(job, failed("market_closed", "Market is closed", 10018))
    response = await closing
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "broker_error"
    assert body["error"] == {
        "code": "market_closed",
        "message": "Market is closed",
        "retcode": 10018,
    }


@pytest.mark.parametrize(
    ("method", "body"), [("DELETE", None), ("PATCH", {"sl": 1.05})], ids=["close", "modify"]
)
async def test_write_without_an_answer_in_time_is_202_with_the_job_id(
    store: Store, trader: Trader, method: str, body: dict[str, Any] | None
) -> None:
    async with second_api(store, **SHORT_BUDGETS) as short:
        agent = fake_agent(short.client, trader)
        sending = asyncio.create_task(
            short.client.request(method, "/positions/50123", json=body, headers=trader.headers)
        )
        job = await agent.take()
        response = await sending
        assert response.status_code == 202
        assert response.json() == {"job_id": job["id"], "status": "pending"}


@pytest.mark.parametrize(
    ("body", "sent"),
    [
        ({"sl": 1.05}, {"sl": 1.05}),
        ({"tp": 1.2}, {"tp": 1.2}),
        ({"sl": 1.05, "tp": 1.2}, {"sl": 1.05, "tp": 1.2}),
        ({"sl": None}, {"sl": None}),
    ],
    ids=["sl", "tp", "both", "remove-sl"],
)
async def test_patch_position_sends_only_the_levels_given(
    client: httpx.AsyncClient, trader: Trader, body: dict[str, Any], sent: dict[str, Any]
) -> None:
    agent = fake_agent(client, trader)
    patching = asyncio.create_task(
        client.patch("/positions/50123", json=body, headers=trader.headers)
    )
    job = await agent.take()
    assert (job["job_type"], job["input_data"]) == ("modify_position", {"ticket": 50123, **sent})
    await agent.answer(job, completed({"position": {**POSITION, **sent}}))
    response = await patching
    assert response.status_code == 200
    assert response.json() == {**POSITION, **sent}


async def test_an_empty_patch_is_422_nothing_to_change_as_the_schema_says(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    response = await client.patch("/positions/50123", json={}, headers=trader.headers)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["type"], error["loc"]) == ("nothing_to_change", ["body"])
    assert await job_count(api) == 0
    schema = (await client.get(f"{api.base_url}/openapi.json")).json()
    assert schema["components"]["schemas"]["PositionUpdate"]["minProperties"] == 1


async def test_patching_a_position_that_does_not_exist_is_404_position_not_found(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    patching = asyncio.create_task(
        client.patch("/positions/999", json={"tp": 1.3}, headers=trader.headers)
    )
    job = await agent.take()
    await agent.answer(job, failed("position_not_found", "No position 999"))
    response = await patching
    assert response.status_code == 404
    assert response.json()["detail"] == "position_not_found"


async def test_invalid_stops_from_the_broker_is_422_broker_error(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    patching = asyncio.create_task(
        client.patch("/positions/50123", json={"sl": 2.0}, headers=trader.headers)
    )
    job = await agent.take()
    await agent.answer(job, failed("invalid_stops", "Invalid stops", 10016))
    response = await patching
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_stops"


async def test_position_routes_ask_only_the_callers_own_agent(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    from tests.flows import onboard_trader

    other = await onboard_trader(client)
    mine, theirs = fake_agent(client, trader), fake_agent(client, other)
    closing = asyncio.create_task(client.delete("/positions/777", headers=other.headers))
    job = await theirs.take()
    await mine.expect_no_job()
    await theirs.answer(job, failed("position_not_found", "not on this account"))
    assert (await closing).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/positions", None),
        ("GET", "/account", None),
        ("DELETE", "/positions/50123", None),
        ("PATCH", "/positions/50123", {"sl": 1.05}),
    ],
)
async def test_an_agent_silent_past_the_offline_limit_is_503_agent_offline_and_no_job(
    api: RunningApi,
    client: httpx.AsyncClient,
    trader: Trader,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    await age_heartbeat(api, trader, minutes=10.5)  # AGENT_OFFLINE_AFTER_SECONDS is 600
    response = await client.request(method, path, json=body, headers=trader.headers)
    assert response.status_code == 503, response.text
    assert response.json()["detail"] == "agent_offline"
    assert await job_count(api) == 0
