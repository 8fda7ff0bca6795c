"""Who may trade, on what, with which input: the gate, ownership, and 422s (never 5xx)."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.schemas.orders import OrderCreate
from tests.flows import (
    Trader,
    add_connection,
    complete_onboarding,
    heartbeat,
    onboard_trader,
    provision_agent,
    register_user,
)
from tests.servers import RunningApi
from tests.trading_agent import ORDER, fake_agent, job_count

# Every trading route, as (method, path, json body).
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/orders", ORDER),
    ("GET", "/orders", None),
    ("GET", f"/orders/{uuid.uuid4()}", None),
    ("GET", "/positions", None),
    ("DELETE", "/positions/50123", None),
    ("PATCH", "/positions/50123", {"sl": 1.05}),
    ("GET", "/account", None),
    # Candles from the user's own account (the feed's are the platform's: no connection).
    ("GET", "/candles/EURUSD?source=account", None),
]
# The routes that run a job for an agent, and so take `broker_connection_id`.
AGENT_ROUTES = [r for r in ROUTES if r[1] not in ("/orders",) and not r[1].startswith("/orders/")]
AGENT_ROUTES.append(("POST", "/orders", ORDER))


def call(
    client: httpx.AsyncClient,
    route: tuple[str, str, dict[str, Any] | None],
    headers: dict[str, str],
    connection_id: str | None = None,
) -> Any:
    method, path, body = route
    path, _, query = path.partition("?")
    params = dict(parse_qsl(query))
    if connection_id is not None:
        if method == "POST":
            body = {**(body or {}), "broker_connection_id": connection_id}
        else:
            params["broker_connection_id"] = connection_id
    return client.request(method, path, json=body, params=params, headers=headers)


async def test_every_trading_route_is_403_until_onboarding_is_complete(
    api: RunningApi, client: httpx.AsyncClient
) -> None:
    user = await register_user(client)
    connection = await add_connection(client, user)
    agent = await provision_agent(client, user, connection)
    await heartbeat(client, agent)  # everything but the onboarding itself
    for route in ROUTES:
        response = await call(client, route, user.headers)
        assert response.status_code == 403, route
        assert response.json()["detail"] == "onboarding_incomplete"
    assert await job_count(api) == 0


async def test_every_trading_route_is_401_without_a_token(client: httpx.AsyncClient) -> None:
    for route in ROUTES:
        response = await call(client, route, {})
        assert response.status_code == 401, route
        assert response.json()["detail"] == "invalid_token"


def test_the_gate_is_the_trading_routers_own_dependency() -> None:
    from app.api.deps import get_onboarded_user
    from app.api.routes.trading import router

    assert [d.dependency for d in router.dependencies] == [get_onboarded_user]


async def test_another_users_broker_connection_is_404_and_creates_no_job(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    victim = await onboard_trader(client)
    for route in AGENT_ROUTES:
        response = await call(client, route, trader.headers, connection_id=victim.connection_id)
        assert response.status_code == 404, route
        assert response.json()["detail"] == "not_found"
    assert await job_count(api) == 0
    await fake_agent(client, victim).expect_no_job()


async def test_a_connection_without_an_agent_is_409_no_agent(
    api: RunningApi, client: httpx.AsyncClient
) -> None:
    user = await register_user(client)
    await add_connection(client, user)
    await complete_onboarding(client, user)
    for route in AGENT_ROUTES:
        response = await call(client, route, user.headers)
        assert response.status_code == 409, route
        assert response.json()["detail"] == "no_agent"
    assert await job_count(api) == 0


async def test_another_users_order_is_404_not_found(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    victim = await onboard_trader(client)
    agent = fake_agent(client, victim)
    async with agent.running():
        placed = await client.post("/orders", json=ORDER, headers=victim.headers)
    order_id = placed.json()["order_id"]
    assert (await client.get(f"/orders/{order_id}", headers=victim.headers)).status_code == 200
    stolen = await client.get(f"/orders/{order_id}", headers=trader.headers)
    assert stolen.status_code == 404
    assert stolen.json()["detail"] == "not_found"
    paged = await client.get("/orders", params={"before": order_id}, headers=trader.headers)
    assert paged.status_code == 404
    assert paged.json()["detail"] == "not_found"


BAD_ORDERS: list[Any] = [
    {**ORDER, "symbol": ""},
    {**ORDER, "symbol": "EUR/USD"},
    {**ORDER, "symbol": "X" * 33},
    {**ORDER, "symbol": "EURUSD\u0000"},
    {**ORDER, "symbol": 12},
    {**ORDER, "side": "long"},
    {**ORDER, "volume": 0},
    {**ORDER, "volume": -0.1},
    {**ORDER, "volume": 100.01},
    {**ORDER, "volume": "0.1"},
    {**ORDER, "volume": True},
    {**ORDER, "volume": 1e400},
    {**ORDER, "sl": 0},
    {**ORDER, "tp": -1},
    {**ORDER, "sl": "1.1"},
    {**ORDER, "client_order_id": ""},
    {**ORDER, "client_order_id": "x" * 65},
    {**ORDER, "client_order_id": "\ud800"},
    {**ORDER, "broker_connection_id": "not-a-uuid"},
    {**ORDER, "stop_loss": 1.0},
    {"symbol": "EURUSD", "side": "buy"},
    [],
    "EURUSD",
    None,
]


async def test_bad_orders_are_422_and_create_nothing(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    for body in BAD_ORDERS:
        response = await client.post(
            "/orders",
            content=json.dumps(body, allow_nan=True),
            headers={**trader.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, (body, response.text)
        assert isinstance(response.json()["detail"], list)
    assert await job_count(api) == 0


async def test_malformed_json_order_is_422(client: httpx.AsyncClient, trader: Trader) -> None:
    for raw in (b"{", b"\xff\xfe", b'{"symbol": NaN}'):
        response = await client.post(
            "/orders", content=raw, headers={**trader.headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 422, raw


BAD_REQUESTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/candles/EUR%2FUSD", None),
    ("GET", "/candles/" + "X" * 33, None),
    ("GET", "/candles/EURUSD?timeframe=H2", None),
    ("GET", "/candles/EURUSD?timeframe=h1", None),
    ("GET", "/candles/EURUSD?count=0", None),
    ("GET", "/candles/EURUSD?count=5001", None),
    ("GET", "/candles/EURUSD?count=abc", None),
    ("GET", "/candles/EURUSD?source=account&broker_connection_id=nope", None),
    ("GET", f"/candles/EURUSD?broker_connection_id={uuid.uuid4()}", None),  # feed: no connection
    ("GET", "/candles/EURUSD?source=broker", None),
    ("GET", "/orders?limit=0", None),
    ("GET", "/orders?limit=501", None),
    ("GET", "/orders?before=nope", None),
    ("GET", "/orders/not-a-uuid", None),
    ("DELETE", "/positions/abc", None),
    ("DELETE", "/positions/-1", None),
    ("DELETE", f"/positions/{2**63}", None),
    ("DELETE", "/positions/1?volume=0", None),
    ("DELETE", "/positions/1?volume=101", None),
    ("DELETE", "/positions/1?volume=nan", None),
    ("DELETE", "/positions/1?volume=inf", None),
    ("PATCH", "/positions/1", {}),
    ("PATCH", "/positions/1", {"sl": 0}),
    ("PATCH", "/positions/1", {"tp": "high"}),
    ("PATCH", "/positions/1", {"sl": 1.1, "trailing": 5}),
    ("PATCH", "/positions/abc", {"sl": 1.1}),
    ("GET", "/account?broker_connection_id=1", None),
    ("GET", "/positions?broker_connection_id=", None),
]


async def test_bad_trading_input_is_422_never_5xx(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    for method, path, body in BAD_REQUESTS:
        response = await client.request(method, path, json=body, headers=trader.headers)
        # An encoded slash makes another path altogether: 404 is as good as 422 there.
        expected = (404, 422) if "%2F" in path else (422,)
        assert response.status_code in expected, (method, path, response.text)
    assert await job_count(api) == 0


storable_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
prices = st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False)
valid_orders = st.fixed_dictionaries(
    {
        "symbol": st.from_regex(r"[A-Za-z0-9._#-]{1,32}", fullmatch=True),
        "side": st.sampled_from(["buy", "sell"]),
        "volume": st.floats(min_value=0, max_value=100, exclude_min=True, allow_nan=False),
    },
    optional={
        "sl": st.none() | prices,
        "tp": st.none() | prices,
        "client_order_id": st.none() | storable_text.filter(lambda text: 1 <= len(text) <= 64),
        "broker_connection_id": st.none() | st.uuids().map(str),
    },
)


@given(valid_orders)
@settings(max_examples=300, deadline=None)
def test_every_order_within_the_contract_is_accepted_as_sent(fields: dict[str, Any]) -> None:
    order = OrderCreate.model_validate(fields)
    assert order.symbol == fields["symbol"]
    assert order.side == fields["side"]
    assert order.volume == fields["volume"]
    assert (order.sl, order.tp) == (fields.get("sl"), fields.get("tp"))
    assert order.client_order_id == fields.get("client_order_id")
    connection = fields.get("broker_connection_id")
    assert order.broker_connection_id == (uuid.UUID(connection) if connection else None)
    assert order.job_input() == {
        "symbol": fields["symbol"],
        "side": fields["side"],
        "volume": fields["volume"],
        "sl": fields.get("sl"),
        "tp": fields.get("tp"),
        "client_order_id": fields.get("client_order_id"),
    }


# For each field, values outside the contract, just past its bounds among them; any one of
# them spoils an otherwise valid order.
INVALID_FIELDS: list[tuple[str, Any]] = [
    (name, value)
    for name, values in {
        "symbol": ["", "EUR/USD", "X" * 33, "EURUSD\x00", "EUR USD", None, 12],
        "side": ["long", "short", "Buy", "SELL", "buy ", "", None, 1],
        "volume": [0.0, -0.0, -0.1, 100.00000001, 100.01, 101.0, 1e309, float("nan"), "0.1"],
        "sl": [0.0, -1.0, float("inf"), float("nan"), "1.1", True],
        "tp": [0.0, -1e-9, float("-inf"), "high", False],
        "client_order_id": ["", "x" * 65, "a\x00b", "\ud800", 7],
        "broker_connection_id": ["not-a-uuid", "", 5],
        "stop_loss": [1.0],  # an unknown field
    }.items()
    for value in values
]
out_of_range = {
    "volume": st.floats(max_value=0) | st.floats(min_value=100, exclude_min=True),
    "sl": st.floats(max_value=0),
    "tp": st.floats(max_value=0),
}


@pytest.mark.parametrize(("name", "value"), INVALID_FIELDS)
@given(fields=valid_orders)
@settings(max_examples=10, deadline=None)
def test_an_order_with_a_field_outside_the_contract_is_refused(
    name: str, value: Any, fields: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as refused:
        OrderCreate.model_validate({**fields, name: value})
    assert {error["loc"][0] for error in refused.value.errors()} == {name}


@given(valid_orders, st.sampled_from(sorted(out_of_range)), st.data())
@settings(max_examples=200, deadline=None)
def test_an_order_with_any_number_out_of_range_is_refused(
    fields: dict[str, Any], name: str, data: st.DataObject
) -> None:
    with pytest.raises(ValidationError):
        OrderCreate.model_validate({**fields, name: data.draw(out_of_range[name], label=name)})
