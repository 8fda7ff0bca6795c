"""The onboarding gate: a broker connection and the accepted risk disclosure come first."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant

try:
    from fastapi.routing import iter_route_contexts
except ImportError:  # FastAPI before 0.16x: app.routes lists every route, nested ones too

    def iter_route_contexts(routes: Any) -> Any:  # type: ignore[misc]
        return iter(routes)


from app.api.deps import get_onboarded_user
from app.core.errors import OnboardingIncomplete
from app.models import User
from tests.flows import TestUser, add_connection, register_user
from tests.servers import RunningApi

ACCEPT = {"accept_risk_disclosure": True}


async def me(client: httpx.AsyncClient, user: TestUser) -> dict[str, Any]:
    response = await client.get("/me", headers=user.headers)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_onboarding_without_a_connection_is_409(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    response = await client.post("/onboarding/complete", json=ACCEPT, headers=user.headers)
    assert response.status_code == 409
    assert response.json()["detail"] == "broker_connection_required"
    assert response.json()["message"]
    assert (await me(client, user))["onboarding_completed"] is False


async def test_onboarding_after_adding_a_connection_completes_it(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    first = await client.post("/onboarding/complete", json=ACCEPT, headers=user.headers)
    assert first.status_code == 409
    await add_connection(client, user)

    response = await client.post("/onboarding/complete", json=ACCEPT, headers=user.headers)
    assert response.status_code == 200
    assert response.json()["id"] == user.id
    assert response.json()["onboarding_completed"] is True
    assert (await me(client, user))["onboarding_completed"] is True


async def test_completing_onboarding_twice_is_fine(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    await add_connection(client, user)
    for _ in range(2):
        response = await client.post("/onboarding/complete", json=ACCEPT, headers=user.headers)
        assert response.status_code == 200
        assert response.json()["onboarding_completed"] is True


async def test_another_users_connection_does_not_count(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    other = await register_user(client)
    await add_connection(client, other)
    response = await client.post("/onboarding/complete", json=ACCEPT, headers=user.headers)
    assert response.status_code == 409
    assert response.json()["detail"] == "broker_connection_required"


async def test_the_risk_disclosure_must_be_accepted(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    await add_connection(client, user)
    bodies: dict[str, object] = {
        "no-body": None,
        "empty-object": {},
        "declined": {"accept_risk_disclosure": False},
        "text": {"accept_risk_disclosure": "yes"},
        "null": {"accept_risk_disclosure": None},
        "array": [True],
    }
    for case, body in bodies.items():
        response = await client.post("/onboarding/complete", json=body, headers=user.headers)
        assert response.status_code == 422, case
        assert isinstance(response.json()["detail"], list), case
    assert (await me(client, user))["onboarding_completed"] is False


async def test_onboarding_needs_an_access_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/onboarding/complete", json=ACCEPT)
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid_token"


async def test_the_gate_refuses_a_user_who_is_not_onboarded() -> None:
    user = User(id=uuid.uuid4(), email="x@example.com", onboarding_completed=False)
    with pytest.raises(OnboardingIncomplete) as caught:
        await get_onboarded_user(user, None)
    assert caught.value.body()["detail"] == "onboarding_incomplete"
    onboarded = User(id=uuid.uuid4(), email="y@example.com", onboarding_completed=True)
    assert await get_onboarded_user(onboarded, None) is onboarded


def gated_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every mounted route that depends on the onboarding gate, found
    in the routes' dependency trees, so a route added later is covered too."""

    def depends_on_gate(dependant: Dependant) -> bool:
        return any(
            sub.call is get_onboarded_user or depends_on_gate(sub) for sub in dependant.dependencies
        )

    found = []
    for route in iter_route_contexts(app.routes):
        dependant = getattr(route, "dependant", None)
        if isinstance(dependant, Dependant) and depends_on_gate(dependant):
            found += [(method, route.path) for method in route.methods or ()]
    return sorted(found)


# The trading routes of the contract; the gate must hold (at least) every one of them.
CONTRACT_GATED = {
    ("POST", "/api/v1/orders"),
    ("GET", "/api/v1/orders"),
    ("GET", "/api/v1/orders/{order_id}"),
    ("GET", "/api/v1/positions"),
    ("DELETE", "/api/v1/positions/{position_id}"),
    ("PATCH", "/api/v1/positions/{position_id}"),
    ("GET", "/api/v1/account"),
    ("GET", "/api/v1/candles/{instrument}"),
}


async def test_trading_routes_answer_403_until_onboarded(
    api: RunningApi, client: httpx.AsyncClient, user: TestUser
) -> None:
    """Every mounted route behind the gate answers 403 (it checks whatever routes exist)."""
    await add_connection(client, user)
    routes = gated_routes(api.app)
    assert CONTRACT_GATED <= set(routes), CONTRACT_GATED - set(routes)
    for method, path in routes:
        concrete = re.sub(r"\{[^}]+\}", "1", path)  # the gate answers before params are checked
        response = await client.request(
            method,
            f"{api.base_url}{concrete}",
            headers=user.headers,
            json={"symbol": "EURUSD", "side": "buy", "volume": 0.1} if method == "POST" else None,
        )
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["detail"] == "onboarding_incomplete"
    # Nothing above onboarded the user by the way.
    assert (await me(client, user))["onboarding_completed"] is False
