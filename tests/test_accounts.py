"""Accounts and tokens: registration, login, /me, and the attacks on access tokens."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest

from app.core.config import Settings
from tests.conftest import make_settings
from tests.flows import DEFAULT_PASSWORD, TestUser, register_user
from tests.servers import run_api
from tests.stores import Store, reset_store
from tests.ws_clients import close_code, connect


async def test_register_returns_a_token_and_the_user(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/register", json={"email": "Alice@Example.com", "password": "long-enough"}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] > 0
    assert body["user"]["email"] == "alice@example.com"
    assert body["user"]["onboarding_completed"] is False
    assert body["user"]["created_at"].endswith("Z")
    me = await client.get("/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json() == body["user"]


async def test_email_is_taken_case_insensitively(client: httpx.AsyncClient) -> None:
    await register_user(client, "bob@example.com")
    response = await client.post(
        "/auth/register", json={"email": "BOB@example.com", "password": "long-enough"}
    )
    assert response.status_code == 409
    assert response.json()["detail"] == "email_taken"


async def test_login_with_the_right_password(client: httpx.AsyncClient, user: TestUser) -> None:
    response = await client.post(
        "/auth/login", json={"email": user.email.upper(), "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 200
    assert response.json()["user"]["id"] == user.id


@pytest.mark.parametrize(
    ("email", "password"),
    [("known", "wrong-password"), ("nobody@example.com", DEFAULT_PASSWORD)],
)
async def test_login_with_wrong_credentials_is_401(
    client: httpx.AsyncClient, user: TestUser, email: str, password: str
) -> None:
    response = await client.post(
        "/auth/login",
        json={"email": user.email if email == "known" else email, "password": password},
    )
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid_credentials"


async def test_short_password_is_refused_and_creates_no_user(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/register", json={"email": "c@example.com", "password": "short"}
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [error["loc"] for error in detail] == [["body", "password"]]
    # No user came of it: the address is free, and the short password logs nobody in.
    login = await client.post("/auth/login", json={"email": "c@example.com", "password": "short"})
    assert login.status_code == 401
    again = await client.post(
        "/auth/register", json={"email": "c@example.com", "password": DEFAULT_PASSWORD}
    )
    assert again.status_code == 201, again.text


def forge(claims: dict[str, object], secret: str, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def unsigned_token(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def future() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(
            lambda s, u: forge({"sub": u, "exp": future()}, "another-secret" * 4), id="other-secret"
        ),
        pytest.param(
            lambda s, u: unsigned_token({"sub": u, "exp": int(future().timestamp())}), id="alg-none"
        ),
        pytest.param(
            lambda s, u: forge({"sub": u, "exp": datetime.now(UTC) - timedelta(seconds=5)}, s),
            id="expired",
        ),
        pytest.param(lambda s, u: forge({"sub": u}, s), id="no-exp"),
        pytest.param(lambda s, u: forge({"exp": future()}, s), id="no-sub"),
        pytest.param(lambda s, u: forge({"sub": "not-a-uuid", "exp": future()}, s), id="bad-sub"),
        pytest.param(lambda s, u: forge({"sub": u, "exp": future()}, s, "HS512"), id="other-alg"),
        pytest.param(lambda s, u: "not.a.jwt", id="garbage"),
    ],
)
async def test_forged_or_broken_tokens_are_rejected(
    client: httpx.AsyncClient, user: TestUser, settings: Settings, make_token: object
) -> None:
    token = make_token(settings.jwt_secret, user.id)  # type: ignore[operator]
    response = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid_token"


async def test_token_of_a_deleted_user_is_rejected(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    token = forge({"sub": str(uuid.uuid4()), "exp": future()}, settings.jwt_secret)
    response = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid_token"


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Basic dXNlcjpwYXNz", "bearer", "Token abc", "Bearer a b"],
)
async def test_malformed_authorization_headers_are_401(
    client: httpx.AsyncClient, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await client.get("/me", headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid_token"


async def test_login_matches_the_email_however_its_accents_are_encoded(
    client: httpx.AsyncClient,
) -> None:
    decomposed = "Zoe\u0308@Example.com"  # e + combining diaeresis
    await register_user(client, decomposed)
    response = await client.post(
        "/auth/login", json={"email": " ZO\u00cb@example.COM ", "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 200
    assert response.json()["user"]["email"] == "zo\u00eb@example.com"


async def test_token_with_an_exp_beyond_any_date_is_rejected(
    client: httpx.AsyncClient, user: TestUser, settings: Settings
) -> None:
    token = forge({"sub": user.id, "exp": 10**17}, settings.jwt_secret)
    response = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid_token"


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
async def test_jwt_algorithm_signs_and_alone_verifies_every_token(
    store: Store, algorithm: str
) -> None:
    await reset_store(store)
    settings = make_settings(store, jwt_algorithm=algorithm)
    async with (
        run_api(settings) as api,
        httpx.AsyncClient(base_url=f"{api.base_url}/api/v1", timeout=30) as client,
    ):
        user = await register_user(client)
        assert jwt.get_unverified_header(user.token)["alg"] == algorithm
        assert (await client.get("/me", headers=user.headers)).status_code == 200
        login = await client.post(
            "/auth/login", json={"email": user.email, "password": DEFAULT_PASSWORD}
        )
        assert jwt.get_unverified_header(login.json()["access_token"])["alg"] == algorithm
        # The same claims and secret under another HMAC: refused, on HTTP and on a socket.
        claims = jwt.decode(user.token, settings.jwt_secret, algorithms=[algorithm])
        other = jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
        refused = await client.get("/me", headers={"Authorization": f"Bearer {other}"})
        assert refused.status_code == 401
        assert refused.json()["detail"] == "invalid_token"
        async with connect(api, "/ws/prices/EURUSD", other) as ws:
            assert await close_code(ws) == 4001
        async with connect(api, "/ws/prices/EURUSD", user.token) as ws:
            await api.resources.ws.wait_until(lambda: api.resources.ws.stats()["sockets"] == 1, 5)
            await ws.close()
