"""Pending orders over real HTTP, executed by the agent on its simulated broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.flows import Trader, onboard_trader
from tests.servers import RunningApi
from tests.sim_agent import SimAgent, sim_agent
from tests.stores import Store
from tests.trading_agent import SHORT_BUDGETS, fake_agent, job_count, second_api

POINT = 0.00001


@pytest.fixture
async def market(api: RunningApi, trader: Trader) -> AsyncIterator[SimAgent]:
    async with sim_agent(api, trader) as running:
        yield running


def pending(kind: str, side: str, price: float, **fields: Any) -> dict[str, Any]:
    return {"symbol": "EURUSD", "side": side, "volume": 0.1, "type": kind, "price": price, **fields}


def away(sim: SimAgent, side: str, kind: str, points: int = 100) -> float:
    """A price `points` from the market on the side where `kind` rests for `side`."""
    bid, ask = sim.sim.quote("EURUSD")
    reference = ask if side == "buy" else bid
    below = (kind == "limit") == (side == "buy")
    return round(reference - points * POINT if below else reference + points * POINT, 5)


async def place(client: httpx.AsyncClient, trader: Trader, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/orders", json=body, headers=trader.headers)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


async def listed(client: httpx.AsyncClient, trader: Trader) -> list[dict[str, Any]]:
    response = await client.get("/pending-orders", headers=trader.headers)
    assert response.status_code == 200, response.text
    orders: list[dict[str, Any]] = response.json()
    return orders


@pytest.mark.parametrize(
    ("kind", "side"),
    [
        ("limit", "buy"),
        ("limit", "sell"),
        ("stop", "buy"),
        ("stop", "sell"),
        ("stop_limit", "buy"),
        ("stop_limit", "sell"),
    ],
)
async def test_a_pending_order_is_placed_listed_modified_and_cancelled(
    client: httpx.AsyncClient, trader: Trader, market: SimAgent, kind: str, side: str
) -> None:
    price = away(market, side, kind)
    # A stop-limit's limit: under its trigger for a buy, over it for a sell.
    limit_offset = -20 * POINT if side == "buy" else 20 * POINT
    extra: dict[str, Any] = {}
    if kind == "stop_limit":
        extra["stop_limit_price"] = round(price + limit_offset, 5)
    order = await place(client, trader, pending(kind, side, price, **extra))
    assert order["status"] == "placed"
    assert (order["type"], order["price"], order["expiration"]) == (
        kind,
        price,
        {"type": "gtc", "at": None},
    )
    assert order["ticket"] is not None
    assert order["placed_at"] is not None
    assert order["fill_price"] is None

    (resting,) = await listed(client, trader)
    assert resting["ticket"] == order["ticket"]
    assert resting["order_id"] == order["order_id"]
    assert (resting["type"], resting["side"], resting["price"]) == (kind, side, price)
    assert resting["stop_limit_price"] == extra.get("stop_limit_price")

    new_price = away(market, side, kind, points=150)
    changes: dict[str, Any] = {"price": new_price}
    if kind == "stop_limit":
        changes["stop_limit_price"] = round(new_price + limit_offset, 5)
    response = await client.patch(
        f"/pending-orders/{order['ticket']}", json=changes, headers=trader.headers
    )
    assert response.status_code == 200, response.text
    assert (response.json()["price"], response.json()["order_id"]) == (
        new_price,
        order["order_id"],
    )
    response = await client.get(f"/orders/{order['order_id']}", headers=trader.headers)
    assert response.json()["price"] == new_price

    response = await client.delete(f"/pending-orders/{order['ticket']}", headers=trader.headers)
    assert response.status_code == 200, response.text
    assert response.json()["ticket"] == order["ticket"]
    assert await listed(client, trader) == []
    response = await client.get(f"/orders/{order['order_id']}", headers=trader.headers)
    assert response.json()["status"] == "cancelled"
    assert market.sim.history_orders[-1].state == "cancelled"


async def test_a_buy_limit_fills_when_the_price_comes_down_to_it(
    client: httpx.AsyncClient, trader: Trader, market: SimAgent
) -> None:
    price = away(market, "buy", "limit")
    order = await place(client, trader, pending("limit", "buy", price, sl=round(price - 0.005, 5)))
    market.sim.set_quote("EURUSD", round(price - 10 * POINT, 5), round(price - 2 * POINT, 5))

    assert await listed(client, trader) == []
    response = await client.get("/positions", headers=trader.headers)
    (position,) = response.json()
    assert position["position_id"] == order["ticket"]
    assert position["open_price"] == round(price - 2 * POINT, 5)
    assert position["open_price"] <= price
    assert position["sl"] == round(price - 0.005, 5)
    response = await client.get(
        "/history/deals", params={"position_id": order["ticket"]}, headers=trader.headers
    )
    assert response.status_code == 200, response.text
    (deal,) = response.json()
    assert (deal["type"], deal["entry"], deal["side"], deal["reason"]) == (
        "buy",
        "in",
        "buy",
        "mt5gate",
    )
    assert deal["order_ticket"] == order["ticket"]
    assert deal["price"] == position["open_price"]


async def test_a_specified_expiration_passes(
    client: httpx.AsyncClient, trader: Trader, market: SimAgent
) -> None:
    at = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    order = await place(
        client,
        trader,
        pending(
            "stop", "buy", away(market, "buy", "stop"), expiration={"type": "specified", "at": at}
        ),
    )
    assert order["expiration"]["type"] == "specified"
    assert len(await listed(client, trader)) == 1
    market.clock.advance(6 * 60)

    assert await listed(client, trader) == []
    response = await client.get(
        "/history/orders",
        params={"to": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
        headers=trader.headers,
    )
    (record,) = [o for o in response.json() if o["ticket"] == order["ticket"]]
    assert (record["state"], record["type"], record["volume_filled"]) == ("expired", "stop", 0.0)


async def test_a_buy_limit_above_the_ask_is_refused_by_the_broker(
    client: httpx.AsyncClient, trader: Trader, market: SimAgent
) -> None:
    _, ask = market.sim.quote("EURUSD")
    response = await client.post(
        "/orders", json=pending("limit", "buy", round(ask + 0.001, 5)), headers=trader.headers
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"] == "order_rejected"
    assert body["order"]["status"] == "rejected"
    assert (body["order"]["error"]["code"], body["order"]["error"]["retcode"]) == (
        "invalid_price",
        10015,
    )


async def test_a_modification_the_broker_refuses_is_a_broker_error(
    client: httpx.AsyncClient, trader: Trader, market: SimAgent
) -> None:
    price = away(market, "buy", "limit")
    order = await place(client, trader, pending("limit", "buy", price))
    response = await client.patch(
        f"/pending-orders/{order['ticket']}",
        json={"sl": round(price + 0.001, 5)},
        headers=trader.headers,
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "broker_error"
    assert response.json()["error"]["code"] == "invalid_stops"


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_an_unknown_ticket_is_pending_order_not_found(
    client: httpx.AsyncClient, trader: Trader, market: SimAgent, method: str
) -> None:
    body = {"price": 1.0} if method == "PATCH" else None
    response = await client.request(
        method, "/pending-orders/123", json=body, headers=trader.headers
    )
    assert response.status_code == 404, response.text
    assert response.json()["detail"] == "pending_order_not_found"


async def test_a_repeated_pending_client_order_id_returns_the_same_order(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, market: SimAgent
) -> None:
    body = pending("limit", "buy", away(market, "buy", "limit"), client_order_id="grid-1")
    first = await place(client, trader, body)
    again = await place(client, trader, body)
    assert again["order_id"] == first["order_id"]
    assert again["ticket"] == first["ticket"]
    assert await job_count(api, "place_pending_order") == 1
    assert len(market.sim.pending_orders) == 1
    for changed in (
        {"price": round(body["price"] - POINT, 5)},
        {"type": "stop"},
        {"type": "market", "price": None},
    ):
        response = await client.post(
            "/orders",
            json={k: v for k, v in {**body, **changed}.items() if v is not None},
            headers=trader.headers,
        )
        assert response.status_code == 409, (changed, response.text)
        assert response.json()["detail"] == "client_order_id_conflict"
    response = await client.post(
        "/orders", json={**body, "expiration": {"type": "day"}}, headers=trader.headers
    )
    assert response.status_code == 409, response.text


FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()
INVALID_ORDERS = {
    "limit without price": {"type": "limit"},
    "stop without price": {"type": "stop"},
    "market with price": {"price": 1.05},
    "market with stop_limit_price": {"stop_limit_price": 1.05},
    "market with expiration": {"expiration": {"type": "gtc"}},
    "limit with stop_limit_price": {"type": "limit", "price": 1.05, "stop_limit_price": 1.04},
    "stop_limit without stop_limit_price": {"type": "stop_limit", "price": 1.2},
    "buy stop_limit above its trigger": {
        "type": "stop_limit", "price": 1.2, "stop_limit_price": 1.21,
    },
    "sell stop_limit below its trigger": {
        "side": "sell", "type": "stop_limit", "price": 1.0, "stop_limit_price": 0.99,
    },
    "expiration at in the past": {
        "type": "limit", "price": 1.05,
        "expiration": {"type": "specified", "at": "2020-01-01T00:00:00Z"},
    },
    "specified without at": {"type": "limit", "price": 1.05, "expiration": {"type": "specified"}},
    "at on gtc": {"type": "limit", "price": 1.05, "expiration": {"type": "gtc", "at": FUTURE}},
    "at on day": {"type": "limit", "price": 1.05, "expiration": {"type": "day", "at": FUTURE}},
    "at without a zone": {
        "type": "limit", "price": 1.05,
        "expiration": {"type": "specified", "at": "2099-01-01T00:00:00"},
    },
    "at after year 9999 in UTC": {
        "type": "limit", "price": 1.05,
        "expiration": {"type": "specified", "at": "9999-12-31T23:59:59-05:00"},
    },
    "unknown expiration": {"type": "limit", "price": 1.05, "expiration": {"type": "week"}},
    "unknown type": {"type": "trailing", "price": 1.05},
    "price not positive": {"type": "limit", "price": 0},
    "price as a string": {"type": "limit", "price": "1.05"},
}  # fmt: skip


@pytest.mark.parametrize("fields", INVALID_ORDERS.values(), ids=INVALID_ORDERS.keys())
async def test_an_invalid_pending_order_is_a_422_before_any_job(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, fields: dict[str, Any]
) -> None:
    body = {"symbol": "EURUSD", "side": "buy", "volume": 0.1, **fields}
    response = await client.post("/orders", json=body, headers=trader.headers)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert await job_count(api) == 0


INVALID_UPDATES = {
    "empty": {},
    "price removed": {"price": None},
    "unknown field": {"stop_loss": 1.0},
    "past expiration": {"expiration": {"type": "specified", "at": "2020-01-01T00:00:00Z"}},
    "expiration after year 9999 in UTC": {
        "expiration": {"type": "specified", "at": "9999-12-31T23:59:59-05:00"}
    },
}


@pytest.mark.parametrize("body", INVALID_UPDATES.values(), ids=INVALID_UPDATES.keys())
async def test_an_invalid_pending_order_update_is_a_422_before_any_job(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, body: dict[str, Any]
) -> None:
    response = await client.patch("/pending-orders/5", json=body, headers=trader.headers)
    assert response.status_code == 422, response.text
    assert await job_count(api) == 0


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_a_pending_order_change_without_an_answer_is_202(
    store: Store, trader: Trader, method: str
) -> None:
    async with second_api(store, **SHORT_BUDGETS) as other:
        body = {"tp": None} if method == "PATCH" else None
        response = await other.client.request(
            method, "/pending-orders/7", json=body, headers=trader.headers
        )
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending"
    assert response.json()["job_id"]


async def test_another_accounts_ticket_never_names_or_changes_your_order(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    # Tickets are the broker's numbers: two accounts can hold the same one. B's agent
    # reporting (and cancelling) ticket 777 must not reach A's order under that ticket.
    placed_at = "2026-11-24T21:15:03.120Z"
    resting = {
        "ticket": 777,
        "symbol": "EURUSD",
        "side": "buy",
        "type": "limit",
        "volume": 0.1,
        "price": 1.05,
        "placed_at": placed_at,
    }

    def broker(job: dict[str, Any]) -> dict[str, Any]:
        outputs = {
            "place_pending_order": {"ticket": 777, "placed_at": placed_at},
            "get_pending_orders": {"pending_orders": [resting]},
            "cancel_pending_order": {"ticket": 777, "cancelled_at": placed_at},
        }
        return {"status": "completed", "output_data": outputs[job["job_type"]]}

    other = await onboard_trader(client)
    async with (
        fake_agent(client, trader).running(broker),
        fake_agent(client, other).running(broker),
    ):
        mine = await place(client, trader, pending("limit", "buy", 1.05))
        (theirs,) = await listed(client, other)
        assert (theirs["ticket"], theirs["order_id"]) == (777, None)
        response = await client.delete("/pending-orders/777", headers=other.headers)
        assert response.status_code == 200, response.text
        (own,) = await listed(client, trader)
        assert own["order_id"] == mine["order_id"]
    response = await client.get(f"/orders/{mine['order_id']}", headers=trader.headers)
    assert response.json()["status"] == "placed"
