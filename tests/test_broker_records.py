"""History, symbols, quotes and job lookup over real HTTP (the agent on its simulator where
one answers)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.core.redis import redis_key
from tests.flows import TestUser, Trader, onboard_trader
from tests.servers import RunningApi
from tests.sim_agent import SimAgent, sim_agent
from tests.trading_agent import fake_agent, job_count

BUY = {"symbol": "EURUSD", "side": "buy", "volume": 0.1}


@pytest.fixture
async def market(api: RunningApi, trader: Trader) -> AsyncIterator[SimAgent]:
    async with sim_agent(api, trader) as running:
        yield running


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


async def get(client: httpx.AsyncClient, trader: Trader, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params, headers=trader.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_history_is_filtered_by_time_newest_first(
    client: httpx.AsyncClient, trader: Trader, market: SimAgent
) -> None:
    times, tickets, order_ids = [], [], []
    for _ in range(3):
        market.clock.advance(3600)
        times.append(market.clock.now)
        response = await client.post("/orders", json=BUY, headers=trader.headers)
        tickets.append(response.json()["ticket"])
        order_ids.append(response.json()["order_id"])
    # The last two hours: the two newest orders, not the first (nor the deposit).
    window = {"from": iso(times[1] - 1), "to": iso(times[2] + 1)}
    deals = await get(client, trader, "/history/deals", **window)
    assert [d["position_id"] for d in deals] == [tickets[2], tickets[1]]
    assert all(d["reason"] == "mt5gate" and d["entry"] == "in" for d in deals)
    orders = await get(client, trader, "/history/orders", **window)
    assert [(o["ticket"], o["type"], o["state"], o["order_id"]) for o in orders] == [
        (tickets[2], "market", "filled", order_ids[2]),
        (tickets[1], "market", "filled", order_ids[1]),
    ]
    everything = await get(client, trader, "/history/deals", to=iso(times[2] + 1))
    assert [d["position_id"] for d in everything] == [*reversed(tickets), None]
    assert everything[-1]["type"] == "balance"
    assert await get(client, trader, "/history/deals", to=iso(times[2] + 1), limit=1) == deals[:1]


async def test_a_stop_loss_hit_is_a_deal_with_reason_sl(
    client: httpx.AsyncClient, trader: Trader, market: SimAgent
) -> None:
    bid, _ = market.sim.quote("EURUSD")
    response = await client.post(
        "/orders", json={**BUY, "sl": round(bid - 0.002, 5)}, headers=trader.headers
    )
    position_id = response.json()["ticket"]
    market.sim.set_quote("EURUSD", round(bid - 0.003, 5), round(bid - 0.0029, 5))
    closing, opening = await get(client, trader, "/history/deals", position_id=position_id)
    assert (closing["reason"], closing["entry"], closing["side"]) == ("sl", "out", "sell")
    assert closing["price"] == round(bid - 0.003, 5)
    assert closing["profit"] < 0
    assert (opening["reason"], opening["entry"]) == ("mt5gate", "in")
    (order, _) = await get(client, trader, "/history/orders", position_id=position_id)
    assert order["reason"] == "sl"


INVALID_RANGES = {
    "to before from": {"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
    "empty": {"from": "2026-11-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
    "over 366 days": {"from": "2025-01-01T00:00:00Z", "to": "2026-01-03T00:00:00Z"},
    # Past the ends of what a time can hold once the defaults are filled in or made UTC.
    "default from before year 1": {"to": "0001-01-03T00:00:00Z"},
    "default to after year 9999": {"from": "9999-12-31T23:59:59.5Z"},
    "from before year 1 in UTC": {
        "from": "0001-01-01T00:00:00+01:00",
        "to": "0001-01-02T00:00:00Z",
    },
    "to after year 9999 in UTC": {
        "from": "9999-12-31T00:00:00Z",
        "to": "9999-12-31T23:59:59-01:00",
    },
}


@pytest.mark.parametrize("path", ["/history/deals", "/history/orders"])
@pytest.mark.parametrize("window", INVALID_RANGES.values(), ids=INVALID_RANGES.keys())
async def test_an_invalid_range_is_a_422_before_any_job(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, path: str, window: dict[str, str]
) -> None:
    response = await client.get(path, params=window, headers=trader.headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "invalid_range"
    assert await job_count(api) == 0


@pytest.mark.parametrize(
    "params", [{"limit": 1001}, {"limit": 0}, {"from": "yesterday"}, {"before": -1}]
)
async def test_malformed_history_queries_are_a_422_before_any_job(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, params: dict[str, Any]
) -> None:
    response = await client.get("/history/deals", params=params, headers=trader.headers)
    assert response.status_code == 422, response.text
    assert await job_count(api) == 0


async def test_history_defaults_to_the_last_seven_days(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    async with agent.running(lambda job: {"status": "completed", "output_data": {"deals": []}}):
        assert await get(client, trader, "/history/deals") == []
    (job,) = agent.taken
    data = job["input_data"]
    start = datetime.fromisoformat(data["from"])
    end = datetime.fromisoformat(data["to"])
    assert end - start == timedelta(days=7)
    assert abs((end - datetime.now(UTC)).total_seconds()) < 30
    assert (data["kind"], data["limit"]) == ("deals", 100)


async def test_records_outside_the_query_are_dropped_whatever_the_agent_sends(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    def deal(ticket: int, time: str, symbol: str = "EURUSD") -> dict[str, Any]:
        return {"ticket": ticket, "type": "buy", "symbol": symbol, "side": "buy", "entry": "in",
                "volume": 0.1, "price": 1.08, "reason": "client", "time": time}  # fmt: skip

    sloppy = [
        deal(1, "2026-10-31T23:59:59.999Z"),  # before `from`
        deal(2, "2026-11-01T00:00:00.000Z"),
        deal(3, "2026-11-15T00:00:00.000Z", symbol="GBPUSD"),
        deal(4, "2026-11-20T00:00:00.000Z"),
        deal(5, "2026-12-01T00:00:00.000Z"),  # `to` is exclusive
    ]
    agent = fake_agent(client, trader)
    async with agent.running(lambda job: {"status": "completed", "output_data": {"deals": sloppy}}):
        window = {"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}
        deals = await get(client, trader, "/history/deals", **window, symbol="EURUSD")
        assert [d["ticket"] for d in deals] == [4, 2]
        assert [
            d["ticket"] for d in await get(client, trader, "/history/deals", **window, before=4)
        ] == [3, 2]
        assert [
            d["ticket"] for d in await get(client, trader, "/history/deals", **window, limit=1)
        ] == [4]


async def test_symbols_are_listed_and_then_served_from_the_connections_cache(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, market: SimAgent
) -> None:
    symbols = await get(client, trader, "/symbols")
    assert [s["name"] for s in symbols][:2] == ["EURUSD", "GBPUSD"]
    assert await get(client, trader, "/symbols") == symbols
    assert await job_count(api, "get_symbols") == 1
    usd = await get(client, trader, "/symbols", group="*USD*,!XAU*")
    assert "XAUUSD" not in [s["name"] for s in usd]
    gold = await get(client, trader, "/symbols/XAUUSD")
    assert (gold["digits"], gold["stops_level"], gold["freeze_level"]) == (2, 50, 20)
    assert set(gold["filling_modes"]) <= {"fok", "ioc", "return"}
    assert await get(client, trader, "/symbols/XAUUSD") == gold
    assert await job_count(api, "get_symbols") == 3
    redis = api.resources.redis
    keys = sorted(await redis.keys(redis_key(redis, "symbols:*")))
    own = redis_key(redis, f"symbols:{trader.connection_id}:")
    assert len(keys) == 3
    assert all(key.decode().startswith(own) for key in keys)


async def test_a_malformed_symbols_cache_is_a_miss_and_is_replaced(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, market: SimAgent
) -> None:
    redis = api.resources.redis
    key = redis_key(redis, f"symbols:{trader.connection_id}:list:0:")
    await redis.set(key, "not a list of symbols")
    symbols = await get(client, trader, "/symbols")
    assert symbols
    assert await job_count(api, "get_symbols") == 1
    cached = json.loads(await redis.get(key))
    assert [s["name"] for s in cached] == [s["name"] for s in symbols]
    assert 0 < await redis.ttl(key) <= 300


async def test_an_unknown_symbol_is_symbol_not_found(
    client: httpx.AsyncClient, trader: Trader, market: SimAgent
) -> None:
    response = await client.get("/symbols/NOPE", headers=trader.headers)
    assert response.status_code == 404, response.text
    assert response.json()["detail"] == "symbol_not_found"


async def test_one_connections_cache_is_not_anothers(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, market: SimAgent
) -> None:
    await get(client, trader, "/symbols")
    other = await onboard_trader(client)
    agent = fake_agent(client, other)
    async with agent.running(lambda job: {"status": "completed", "output_data": {"symbols": []}}):
        assert await get(client, other, "/symbols") == []
    assert len(agent.taken) == 1


async def test_the_last_tick_is_read_from_the_feed(
    api: RunningApi, client: httpx.AsyncClient, user: TestUser
) -> None:
    tick = {"instrument": "EURUSD", "bid": 1.0845, "ask": 1.0847, "ts": 1764018903120}
    redis = api.resources.redis
    await redis.set(redis_key(redis, "prices:EURUSD"), json.dumps(tick))
    # A valid token is enough: `user` has not onboarded.
    response = await client.get("/prices/EURUSD", headers=user.headers)
    assert response.status_code == 200, response.text
    assert response.json() == tick


@pytest.mark.parametrize(
    "stored", [None, "not json", '{"instrument": "GBPUSD", "bid": 1, "ask": 1, "ts": 1}']
)
async def test_no_valid_tick_is_no_price(
    api: RunningApi, client: httpx.AsyncClient, user: TestUser, stored: str | None
) -> None:
    if stored is not None:
        redis = api.resources.redis
        await redis.set(redis_key(redis, "prices:EURUSD"), stored)
    response = await client.get("/prices/EURUSD", headers=user.headers)
    assert response.status_code == 404, response.text
    assert response.json()["detail"] == "no_price"


async def test_prices_need_a_valid_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/prices/EURUSD", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401


async def test_a_job_is_followed_to_its_end_by_its_owner_only(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    listing = asyncio.create_task(client.get("/pending-orders", headers=trader.headers))
    taken = await agent.take()
    response = await client.get(f"/jobs/{taken['id']}", headers=trader.headers)
    assert response.status_code == 200, response.text
    view = response.json()
    assert (view["job_id"], view["job_type"], view["status"]) == (
        taken["id"],
        "get_pending_orders",
        "running",
    )
    assert view["finished_at"] is None
    await agent.answer(taken, {"status": "completed", "output_data": {"pending_orders": []}})
    assert (await listing).status_code == 200
    view = (await client.get(f"/jobs/{taken['id']}", headers=trader.headers)).json()
    assert (view["status"], view["output_data"]) == ("completed", {"pending_orders": []})
    assert view["finished_at"] is not None

    stranger = await onboard_trader(client)
    response = await client.get(f"/jobs/{taken['id']}", headers=stranger.headers)
    assert response.status_code == 404, response.text
    assert response.json()["detail"] == "not_found"


@pytest.mark.parametrize(
    "path", ["/pending-orders", "/history/deals", "/history/orders", "/symbols", "/symbols/EURUSD",
             "/jobs/00000000-0000-0000-0000-000000000000"],
)  # fmt: skip
async def test_the_new_routes_are_behind_the_onboarding_gate(
    client: httpx.AsyncClient, user: TestUser, path: str
) -> None:
    response = await client.get(path, headers=user.headers)
    assert response.status_code == 403, response.text
    assert response.json()["detail"] == "onboarding_incomplete"
