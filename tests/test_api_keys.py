"""API keys: created once, hashed, scoped, revoked at once on every process and socket."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from app.core.security import hash_api_key
from app.models import ApiKey
from tests.flows import Trader, onboard_trader, register_user
from tests.servers import RunningApi, start_serve
from tests.stores import Store
from tests.trading_agent import fake_agent
from tests.ws_clients import RECV_TIMEOUT, close_code, connect, new_instrument

ORDER = {"symbol": "EURUSD", "side": "buy", "volume": 0.1}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create_key(
    client: httpx.AsyncClient, trader: Trader, scopes: list[str], **fields: Any
) -> dict[str, Any]:
    body = {"name": "bot", "scopes": scopes, **fields}
    response = await client.post("/api-keys", json=body, headers=trader.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_a_key_is_shown_once_and_stored_as_a_hash(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    created = await create_key(client, trader, ["read", "trade"], name="tradingview bridge")
    key = created["key"]
    assert key.startswith("mt5g_")
    assert len(key) > 40
    assert created["prefix"] == key[:12]
    assert created["scopes"] == ["read", "trade"]
    assert created["expires_at"] is None
    listed = (await client.get("/api-keys", headers=trader.headers)).json()
    assert listed == [
        {
            "id": created["id"],
            "name": "tradingview bridge",
            "scopes": ["read", "trade"],
            "prefix": key[:12],
            "created_at": created["created_at"],
            "expires_at": None,
            "last_used_at": None,
        }
    ]
    async with api.resources.session_factory() as session:
        row = await session.scalar(select(ApiKey))
    assert row is not None
    assert row.key_hash == hash_api_key(key)
    assert key not in {str(v) for v in vars(row).values()}
    me = await client.get("/me", headers=bearer(key))
    assert me.status_code == 200
    assert me.json()["id"] == trader.user.id


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "scopes": ["trade"]},
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["read", "read"]},
        {"name": "x", "scopes": ["read", "admin"]},
        {"name": "", "scopes": ["read"]},
        {"name": "x" * 65, "scopes": ["read"]},
        {"name": "x", "scopes": ["read"], "expires_at": "2020-01-01T00:00:00Z"},
        {"name": "x", "scopes": ["read"], "expires_at": "2999-01-01T00:00:00"},  # naive
        {"name": "x", "scopes": ["read"], "expires_at": "9999-12-31T23:00:00-05:00"},
        {"name": "x", "scopes": "read"},
        {"name": "x", "scopes": ["read"], "extra": 1},
    ],
)
async def test_bad_key_requests_are_422(
    client: httpx.AsyncClient, trader: Trader, body: dict[str, Any]
) -> None:
    response = await client.post("/api-keys", json=body, headers=trader.headers)
    assert response.status_code == 422, response.text
    assert (await client.get("/api-keys", headers=trader.headers)).json() == []


async def test_a_read_key_reads_and_may_not_trade(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    key = (await create_key(client, trader, ["read"]))["key"]
    assert (await client.get("/orders", headers=bearer(key))).status_code == 200
    assert (await client.get("/broker-connections", headers=bearer(key))).status_code == 200
    for method, path, body in [
        ("POST", "/orders", ORDER),
        ("DELETE", "/positions/1", None),
        ("PATCH", "/positions/1", {"sl": 1.0}),
    ]:
        response = await client.request(method, path, json=body, headers=bearer(key))
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["detail"] == "insufficient_scope"


async def test_a_trade_key_places_orders(client: httpx.AsyncClient, trader: Trader) -> None:
    key = (await create_key(client, trader, ["read", "trade"]))["key"]
    async with fake_agent(client, trader).running():
        response = await client.post("/orders", json=ORDER, headers=bearer(key))
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "filled"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api-keys"),
        ("GET", "/api-keys"),
        ("DELETE", "/api-keys/{key_id}"),
        ("POST", "/onboarding/complete"),
        ("POST", "/broker-connections"),
        ("DELETE", "/broker-connections/{connection_id}"),
        ("POST", "/broker-connections/{connection_id}/agent"),
    ],
)
async def test_no_key_may_manage_keys_onboarding_or_connections(
    client: httpx.AsyncClient, trader: Trader, method: str, path: str
) -> None:
    created = await create_key(client, trader, ["read", "trade"])
    path = path.format(key_id=created["id"], connection_id=trader.connection_id)
    bodies = {
        "/api-keys": {"name": "again", "scopes": ["read", "trade"]},
        "/onboarding/complete": {"accept_risk_disclosure": True},
        "/broker-connections": {"server": "S", "login": 1, "password": "p"},
    }
    response = await client.request(
        method, path, json=bodies.get(path), headers=bearer(created["key"])
    )
    assert response.status_code == 403, response.text
    assert response.json()["detail"] == "insufficient_scope"
    # Nothing happened: the key and the connection's agent are still there.
    assert len((await client.get("/api-keys", headers=trader.headers)).json()) == 1
    connections = (await client.get("/broker-connections", headers=trader.headers)).json()
    assert [c["agent"]["id"] for c in connections] == [trader.agent.id]


async def test_a_revoked_key_fails_at_once(client: httpx.AsyncClient, trader: Trader) -> None:
    created = await create_key(client, trader, ["read"])
    assert (await client.get("/me", headers=bearer(created["key"]))).status_code == 200
    revoked = await client.delete(f"/api-keys/{created['id']}", headers=trader.headers)
    assert revoked.status_code == 204
    response = await client.get("/me", headers=bearer(created["key"]))
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid_token"
    assert (await client.get("/api-keys", headers=trader.headers)).json() == []
    again = await client.delete(f"/api-keys/{created['id']}", headers=trader.headers)
    assert again.status_code == 404


async def test_another_users_key_is_404_to_revoke_and_invisible(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    victim = await onboard_trader(client)
    created = await create_key(client, victim, ["read"])
    response = await client.delete(f"/api-keys/{created['id']}", headers=trader.headers)
    assert response.status_code == 404
    assert response.json()["detail"] == "not_found"
    assert (await client.get("/api-keys", headers=trader.headers)).json() == []
    assert (await client.get("/me", headers=bearer(created["key"]))).status_code == 200
    unknown = await client.delete(f"/api-keys/{uuid.uuid4()}", headers=trader.headers)
    assert unknown.status_code == 404


async def test_an_expired_or_unknown_key_is_invalid(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    created = await create_key(client, trader, ["read"], expires_at=soon)
    assert (await client.get("/me", headers=bearer(created["key"]))).status_code == 200
    async with api.resources.session_factory() as session:  # an hour passes
        await session.execute(
            update(ApiKey).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    for key in (created["key"], "mt5g_" + "A" * 43, "mt5g_", created["key"] + "x"):
        response = await client.get("/me", headers=bearer(key))
        assert response.status_code == 401, key
        assert response.json()["detail"] == "invalid_token"


async def test_at_most_fifty_live_keys(client: httpx.AsyncClient, trader: Trader) -> None:
    for n in range(50):
        await create_key(client, trader, ["read"], name=f"key {n}")
    response = await client.post(
        "/api-keys", json={"name": "one more", "scopes": ["read"]}, headers=trader.headers
    )
    assert response.status_code == 409
    assert response.json()["detail"] == "too_many_api_keys"


async def test_keys_need_an_onboarded_user(client: httpx.AsyncClient) -> None:
    user = await register_user(client)
    response = await client.post(
        "/api-keys", json={"name": "x", "scopes": ["read"]}, headers=user.headers
    )
    assert response.status_code == 403
    assert response.json()["detail"] == "onboarding_incomplete"


async def test_last_used_at_is_written_in_batches(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    created = await create_key(client, trader, ["read"])
    for _ in range(3):
        assert (await client.get("/me", headers=bearer(created["key"]))).status_code == 200
    listed = (await client.get("/api-keys", headers=trader.headers)).json()
    assert listed[0]["last_used_at"] is None  # no write per request
    await api.resources.key_usage.flush()  # what the process does every 10 s
    listed = (await client.get("/api-keys", headers=trader.headers)).json()
    assert listed[0]["last_used_at"] is not None


async def test_a_key_opens_price_sockets_by_query_or_header_and_revoking_closes_them(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    created = await create_key(client, trader, ["read"])
    key = created["key"]
    path = f"/ws/prices/{new_instrument()}"
    async with (
        connect(api, path, key) as by_query,
        connect(api, path, None, additional_headers=bearer(key)) as by_header,
        connect(api, "/ws/prices", None, additional_headers=bearer(key)) as many,
        connect(api, path, trader.user.token) as by_token,
    ):
        await many.send('{"type": "subscribe", "instruments": ["EURUSD"]}')
        assert '"subscriptions"' in str(await asyncio.wait_for(many.recv(), RECV_TIMEOUT))
        revoked = await client.delete(f"/api-keys/{created['id']}", headers=trader.headers)
        assert revoked.status_code == 204
        assert await close_code(by_query) == 4001
        assert await close_code(by_header) == 4001
        assert await close_code(many) == 4001
        await by_token.ping()  # the user's own token's socket stays open
    async with connect(api, path, key) as refused:
        assert await close_code(refused) == 4001


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_revoking_a_key_closes_its_sockets_on_another_process(
    store: Store, api: RunningApi, client: httpx.AsyncClient, trader: Trader, tmp_path: Path
) -> None:
    created = await create_key(client, trader, ["read"])
    other = start_serve(api.settings, tmp_path / "other.log")
    try:
        other_ws = other.base_url.replace("http://", "ws://")
        async with connect(other_ws, f"/ws/prices/{new_instrument()}", created["key"]) as ws:
            await ws.ping()
            revoked = await client.delete(f"/api-keys/{created['id']}", headers=trader.headers)
            assert revoked.status_code == 204
            assert await close_code(ws, timeout=2) == 4001  # before the 5 s recheck, mostly
        me = httpx.get(f"{other.base_url}/api/v1/me", headers=bearer(created["key"]))
        assert me.status_code == 401
    finally:
        other.stop()


async def test_a_key_is_no_agent_token(client: httpx.AsyncClient, trader: Trader) -> None:
    key = (await create_key(client, trader, ["read", "trade"]))["key"]
    response = await client.post(trader.agent.path("heartbeat"), json={}, headers=bearer(key))
    assert response.status_code == 401
