"""Broker connections and agent provisioning: shape, ownership, rotation, revocation, secrecy."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.core.db import in_transaction
from app.schemas.broker_connections import MAX_LOGIN
from tests.conftest import make_settings
from tests.flows import (
    AgentHandle,
    TestUser,
    add_connection,
    heartbeat,
    onboard_trader,
    provision_agent,
    register_user,
)
from tests.servers import RunningApi, run_api
from tests.stores import Store, reset_store
from tests.trading_agent import age_heartbeat

MT5_PASSWORD = "mt5-Pa55word-that-must-stay-secret"
CONNECTION_FIELDS = {"id", "server", "login", "label", "created_at", "agent"}


async def list_connections(client: httpx.AsyncClient, user: TestUser) -> list[dict[str, Any]]:
    response = await client.get("/broker-connections", headers=user.headers)
    assert response.status_code == 200, response.text
    connections: list[dict[str, Any]] = response.json()
    return connections


async def raw_rows(api: RunningApi, sql: str) -> list[dict[str, Any]]:
    """The rows exactly as stored, read past the ORM."""
    async with api.resources.session_factory() as session:
        result = await session.execute(text(sql))
        return [dict(row) for row in result.mappings()]


def appears_in(secret: str, rows: list[dict[str, Any]]) -> bool:
    """Whether the secret is in any column, as text or as bytes, in any common encoding."""
    needles = {secret, secret.encode().hex()}
    for row in rows:
        for value in row.values():
            if isinstance(value, bytes | bytearray | memoryview):
                raw = bytes(value)
                haystack = raw.decode("latin-1") + raw.hex()
            else:
                haystack = str(value)
            if any(needle in haystack for needle in needles):
                return True
    return False


async def agent_heartbeat_status(client: httpx.AsyncClient, agent: AgentHandle) -> httpx.Response:
    return await client.post(agent.path("heartbeat"), json={}, headers=agent.headers)


async def test_create_returns_the_connection_without_its_password(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    response = await client.post(
        "/broker-connections",
        json={"server": "ICMarkets-Demo", "login": 51234567, "password": MT5_PASSWORD},
        headers=user.headers,
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == CONNECTION_FIELDS
    assert body["server"] == "ICMarkets-Demo"
    assert body["login"] == 51234567
    assert body["label"] is None
    assert body["agent"] is None
    assert body["created_at"].endswith("Z")
    uuid.UUID(body["id"])
    assert MT5_PASSWORD not in response.text


async def test_create_keeps_the_label_and_trims_the_server(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    response = await client.post(
        "/broker-connections",
        json={"server": "  Demo-1 ", "login": 7, "password": "p", "label": " main "},
        headers=user.headers,
    )
    assert response.status_code == 201
    assert response.json()["server"] == "Demo-1"
    assert response.json()["label"] == "main"


async def test_list_shows_own_connections_oldest_first(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    first = await add_connection(client, user, label="first")
    second = await add_connection(client, user, label="second", login=42)
    connections = await list_connections(client, user)
    assert [c["id"] for c in connections] == [first, second]
    assert all(set(c) == CONNECTION_FIELDS for c in connections)
    assert "password" not in str(connections)


async def test_list_never_shows_another_users_connections(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    other = await register_user(client)
    await add_connection(client, other, label="not yours")
    mine = await add_connection(client, user)
    assert [c["id"] for c in await list_connections(client, user)] == [mine]
    assert [c["label"] for c in await list_connections(client, other)] == ["not yours"]


async def test_provisioning_returns_the_agent_id_and_token(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    connection_id = await add_connection(client, user)
    response = await client.post(f"/broker-connections/{connection_id}/agent", headers=user.headers)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"agent_id", "agent_token"}
    assert len(body["agent_token"]) >= 32
    assert body["agent_token"].startswith("mt5a_")  # never "-": a command line takes it whole
    [connection] = await list_connections(client, user)
    assert connection["agent"] == {
        "id": body["agent_id"],
        "status": "offline",
        "last_heartbeat_at": None,
    }
    assert body["agent_token"] not in str(connection)


async def test_agent_is_online_after_a_heartbeat(client: httpx.AsyncClient, user: TestUser) -> None:
    connection_id = await add_connection(client, user)
    agent = await provision_agent(client, user, connection_id)
    await heartbeat(client, agent)
    [connection] = await list_connections(client, user)
    assert connection["agent"]["id"] == agent.id
    assert connection["agent"]["status"] == "online"
    assert connection["agent"]["last_heartbeat_at"].endswith("Z")


async def test_provisioning_again_rotates_the_token(
    client: httpx.AsyncClient, user: TestUser, api: RunningApi
) -> None:
    connection_id = await add_connection(client, user)
    old = await provision_agent(client, user, connection_id)
    [before] = await raw_rows(api, "SELECT token_hash FROM mt5_agents")
    new = await provision_agent(client, user, connection_id)
    assert new.id == old.id
    assert new.token != old.token
    [after] = await raw_rows(api, "SELECT token_hash FROM mt5_agents")
    assert after["token_hash"] != before["token_hash"]

    rejected = await agent_heartbeat_status(client, old)
    assert rejected.status_code == 401
    assert rejected.json()["detail"] == "invalid_agent_token"
    assert (await agent_heartbeat_status(client, new)).status_code == 200


async def test_agent_token_works_only_for_its_own_agent(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    mine = await provision_agent(client, user, await add_connection(client, user))
    other_user = await register_user(client)
    theirs = await provision_agent(client, other_user, await add_connection(client, other_user))
    response = await client.post(theirs.path("heartbeat"), json={}, headers=mine.headers)
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid_agent_token"


async def test_deleting_a_connection_revokes_its_agent_token(
    client: httpx.AsyncClient, user: TestUser, api: RunningApi
) -> None:
    connection_id = await add_connection(client, user)
    agent = await provision_agent(client, user, connection_id)
    await heartbeat(client, agent)

    response = await client.delete(f"/broker-connections/{connection_id}", headers=user.headers)
    assert response.status_code == 204
    assert response.content == b""

    rejected = await agent_heartbeat_status(client, agent)
    assert rejected.status_code == 401
    assert rejected.json()["detail"] == "invalid_agent_token"
    assert await list_connections(client, user) == []
    assert await raw_rows(api, "SELECT id FROM mt5_agents") == []


async def test_deleting_twice_is_not_found(client: httpx.AsyncClient, user: TestUser) -> None:
    connection_id = await add_connection(client, user)
    assert (
        await client.delete(f"/broker-connections/{connection_id}", headers=user.headers)
    ).status_code == 204
    response = await client.delete(f"/broker-connections/{connection_id}", headers=user.headers)
    assert response.status_code == 404
    assert response.json()["detail"] == "not_found"


@pytest.mark.parametrize(
    ("method", "suffix"), [("DELETE", ""), ("POST", "/agent")], ids=["delete", "provision"]
)
async def test_another_users_connection_is_not_found(
    client: httpx.AsyncClient, user: TestUser, method: str, suffix: str
) -> None:
    owner = await register_user(client)
    connection_id = await add_connection(client, owner)
    owners_agent = await provision_agent(client, owner, connection_id)

    response = await client.request(
        method, f"/broker-connections/{connection_id}{suffix}", headers=user.headers
    )
    assert response.status_code == 404
    assert response.json()["detail"] == "not_found"
    # Nothing happened to the owner's connection or agent.
    [connection] = await list_connections(client, owner)
    assert connection["agent"]["id"] == owners_agent.id
    assert (await agent_heartbeat_status(client, owners_agent)).status_code == 200


async def test_unknown_connection_is_not_found(client: httpx.AsyncClient, user: TestUser) -> None:
    for method, suffix in [("DELETE", ""), ("POST", "/agent")]:
        response = await client.request(
            method, f"/broker-connections/{uuid.uuid4()}{suffix}", headers=user.headers
        )
        assert response.status_code == 404, method
        assert response.json() == {"detail": "not_found", "message": "No such broker connection."}


async def test_broker_connection_routes_need_an_access_token(client: httpx.AsyncClient) -> None:
    some_id = uuid.UUID(int=1)
    for method, path in [
        ("GET", "/broker-connections"),
        ("POST", "/broker-connections"),
        ("DELETE", f"/broker-connections/{some_id}"),
        ("POST", f"/broker-connections/{some_id}/agent"),
    ]:
        body = {"server": "s", "login": 1, "password": "p"} if method == "POST" else None
        response = await client.request(method, path, json=body)
        assert response.status_code == 401, (method, path)
        assert response.json()["detail"] == "invalid_token"


async def test_mt5_password_is_not_stored_in_clear(
    client: httpx.AsyncClient, user: TestUser, api: RunningApi
) -> None:
    await add_connection(client, user, password=MT5_PASSWORD)
    rows = await raw_rows(api, "SELECT * FROM broker_connections")
    assert len(rows) == 1
    assert not appears_in(MT5_PASSWORD, rows)
    # It is there, encrypted with the configured key.
    stored = bytes(rows[0]["password_encrypted"])
    assert api.settings.fernet.decrypt(stored).decode() == MT5_PASSWORD


async def test_agent_token_is_not_stored_in_clear(
    client: httpx.AsyncClient, user: TestUser, api: RunningApi
) -> None:
    connection_id = await add_connection(client, user)
    agent = await provision_agent(client, user, connection_id)
    rows = await raw_rows(api, "SELECT * FROM mt5_agents")
    assert len(rows) == 1
    assert not appears_in(agent.token, rows)
    assert rows[0]["token_hash"] != agent.token


async def test_account_password_is_not_stored_in_clear(
    client: httpx.AsyncClient, user: TestUser, api: RunningApi
) -> None:
    from tests.flows import DEFAULT_PASSWORD

    rows = await raw_rows(api, "SELECT * FROM users")
    assert not appears_in(DEFAULT_PASSWORD, rows)
    assert rows[0]["password_hash"].startswith("$argon2")


BAD_CONNECTION_BODIES: dict[str, object] = {
    "empty-object": {},
    "no-login": {"server": "s", "password": "p"},
    "login-text": {"server": "s", "login": "abc", "password": "p"},
    "login-fraction": {"server": "s", "login": 1.5, "password": "p"},
    "login-zero": {"server": "s", "login": 0, "password": "p"},
    "login-negative": {"server": "s", "login": -5, "password": "p"},
    "login-bigint-overflow": {"server": "s", "login": 2**63, "password": "p"},
    "login-beyond-the-bound": {"server": "s", "login": MAX_LOGIN + 1, "password": "p"},
    "login-numeric-string": {"server": "s", "login": "5001234", "password": "p"},
    "login-true": {"server": "s", "login": True, "password": "p"},
    "login-huge": {"server": "s", "login": 10**300, "password": "p"},
    "login-list": {"server": "s", "login": [1], "password": "p"},
    "server-blank": {"server": "   ", "login": 1, "password": "p"},
    "server-long": {"server": "s" * 129, "login": 1, "password": "p"},
    "server-nul": {"server": "a\x00b", "login": 1, "password": "p"},
    "label-nul": {"server": "s", "login": 1, "password": "p", "label": "x\x00"},
    "password-empty": {"server": "s", "login": 1, "password": ""},
    "password-number": {"server": "s", "login": 1, "password": 12345},
    "password-surrogate": {"server": "s", "login": 1, "password": "\ud800"},
    "server-surrogate": {"server": "\udfff", "login": 1, "password": "p"},
    "label-number": {"server": "s", "login": 1, "password": "p", "label": 5},
    "array": [],
    "string": "server",
}


async def test_bad_connection_bodies_are_422(client: httpx.AsyncClient, user: TestUser) -> None:
    for case, body in BAD_CONNECTION_BODIES.items():
        # json.dumps escapes lone surrogates (httpx's own encoder refuses them).
        response = await client.post(
            "/broker-connections",
            content=json.dumps(body).encode(),
            headers={**user.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, f"{case}: {response.text}"
        assert isinstance(response.json()["detail"], list), case
    assert await list_connections(client, user) == []


async def test_nan_login_is_422(client: httpx.AsyncClient, user: TestUser) -> None:
    response = await client.post(
        "/broker-connections",
        content=b'{"server": "s", "login": NaN, "password": "p"}',
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "login"]


async def test_largest_mt5_login_is_accepted(client: httpx.AsyncClient, user: TestUser) -> None:
    connection_id = await add_connection(client, user, login=MAX_LOGIN)
    [connection] = await list_connections(client, user)
    assert connection["id"] == connection_id
    assert connection["login"] == MAX_LOGIN


async def test_login_bound_is_the_one_the_schema_documents(
    api: RunningApi, client: httpx.AsyncClient
) -> None:
    schema = (await client.get(f"{api.base_url}/openapi.json")).json()
    login = schema["components"]["schemas"]["BrokerConnectionCreate"]["properties"]["login"]
    assert (login["type"], login["exclusiveMinimum"], login["maximum"]) == ("integer", 0, MAX_LOGIN)


async def test_login_as_a_json_number_without_a_fraction_is_accepted(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    # JSON Schema's integer: 5001234.0 is one, as the served schema lets clients send it.
    await add_connection(client, user, login=5001234.0)
    [connection] = await list_connections(client, user)
    assert connection["login"] == 5001234


async def test_malformed_connection_id_is_422(client: httpx.AsyncClient, user: TestUser) -> None:
    for connection_id in ["not-a-uuid", "1", "%00", "%ED%A0%80"]:
        response = await client.delete(f"/broker-connections/{connection_id}", headers=user.headers)
        assert response.status_code == 422, connection_id
        assert response.json()["detail"][0]["loc"] == ["path", "connection_id"]


RACING_CONNECTIONS = 20


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_deletes_racing_rotations_answer_only_contract_statuses(
    client: httpx.AsyncClient, user: TestUser, api: RunningApi
) -> None:
    """DELETE and POST .../agent on the same connections at once (twice each, beside the
    agent's own calls), on PostgreSQL: they once deadlocked (500). Each answer must be one
    the contract names, and what is left must be consistent."""
    connections = [await add_connection(client, user) for _ in range(RACING_CONNECTIONS)]
    agents = [await provision_agent(client, user, c) for c in connections]

    def race(connection_id: str, agent: AgentHandle) -> list[Any]:
        path = f"/broker-connections/{connection_id}"
        return [
            client.delete(path, headers=user.headers),
            client.post(f"{path}/agent", headers=user.headers),
            client.post(f"{path}/agent", headers=user.headers),
            client.delete(path, headers=user.headers),
            client.post(agent.path("heartbeat"), json={}, headers=agent.headers),
            client.get(agent.path("jobs/next"), params={"wait": 0}, headers=agent.headers),
        ]

    calls = [call for c, a in zip(connections, agents, strict=True) for call in race(c, a)]
    answers = await asyncio.gather(*calls)
    errors = [answer.text for answer in answers if answer.status_code >= 500]
    assert errors == [], f"{len(errors)} of {len(answers)} answered 5xx"
    for index in range(0, len(answers), 6):
        delete_1, rotate_1, rotate_2, delete_2, beat, poll = answers[index : index + 6]
        assert sorted([delete_1.status_code, delete_2.status_code]) == [204, 404]
        assert {rotate_1.status_code, rotate_2.status_code} <= {201, 404}
        assert beat.status_code in (200, 401)
        assert poll.status_code in (204, 401)
        for answer in (delete_1, delete_2, rotate_1, rotate_2):
            if answer.status_code == 404:
                assert answer.json()["detail"] == "not_found"
    assert await list_connections(client, user) == []
    assert await raw_rows(api, "SELECT id FROM mt5_agents") == []


LOCK_USER = text("SELECT id FROM users WHERE id = :id FOR UPDATE")
TOUCH_USER = text("UPDATE users SET email = email WHERE id = :id")


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_a_deadlock_is_retried_until_both_transactions_commit(
    client: httpx.AsyncClient, api: RunningApi
) -> None:
    """What stands behind every multi-statement change: two transactions that lock two
    rows in opposite orders deadlock for real; PostgreSQL aborts one, which runs again."""
    one, two = [uuid.UUID((await register_user(client)).id) for _ in range(2)]
    locked = {one: asyncio.Event(), two: asyncio.Event()}
    attempts = {one: 0, two: 0}

    def lock_then_touch(mine: uuid.UUID, theirs: uuid.UUID) -> Any:
        async def work(session: Any) -> None:
            attempts[mine] += 1
            await session.execute(LOCK_USER, {"id": mine})
            locked[mine].set()
            await locked[theirs].wait()  # each holds one row and now wants the other's
            await session.execute(TOUCH_USER, {"id": theirs})

        return work

    factory = api.resources.session_factory
    await asyncio.gather(
        in_transaction(factory, lock_then_touch(one, two)),
        in_transaction(factory, lock_then_touch(two, one)),
    )
    assert sorted(attempts.values()) == [1, 2]


async def test_an_agent_turns_offline_once_silent_for_agent_offline_after_seconds(
    store: Store,
) -> None:
    await reset_store(store)
    async with (
        run_api(make_settings(store, agent_offline_after_seconds=30)) as api,
        httpx.AsyncClient(base_url=f"{api.base_url}/api/v1", timeout=30) as client,
    ):
        trader = await onboard_trader(client)

        async def status_after(seconds: float) -> str:
            await age_heartbeat(api, trader, minutes=seconds / 60)
            listing = await client.get("/broker-connections", headers=trader.headers)
            status: str = listing.json()[0]["agent"]["status"]
            return status

        assert await status_after(25) == "online"
        assert await status_after(35) == "offline"
        positions = await client.get("/positions", headers=trader.headers)
        assert positions.status_code == 503
        assert positions.json()["detail"] == "agent_offline"
