"""The per-user limit of the onboarding-gated routes: across tokens, keys and processes,
with its headers; open when Redis is away."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from tests.conftest import make_settings
from tests.flows import Trader, onboard_trader
from tests.private_redis import private_redis
from tests.servers import run_api, start_serve
from tests.stores import Store, reset_store

LIMIT = 20


async def test_past_the_limit_a_user_gets_429_with_the_headers(store: Store) -> None:
    await reset_store(store)
    settings = make_settings(store, rate_limit_trading_per_second=LIMIT)
    async with (
        run_api(settings) as api,
        httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as client,
    ):
        trader = await onboard_trader(client)
        created = await client.post(
            "/api-keys", json={"name": "bot", "scopes": ["read"]}, headers=trader.headers
        )
        key_headers = {"Authorization": f"Bearer {created.json()['key']}"}
        # The creation above was call 1 of this second; the token and the key share the rest.
        responses = [
            await client.get("/orders", headers=key_headers if n % 2 else trader.headers)
            for n in range(LIMIT - 1)
        ]
        assert {r.status_code for r in responses} == {200}
        remaining = [int(r.headers["X-RateLimit-Remaining"]) for r in responses]
        assert remaining == list(reversed(range(LIMIT - 1)))
        assert {r.headers["X-RateLimit-Limit"] for r in responses} == {str(LIMIT)}
        limited = await client.get("/orders", headers=key_headers)
        assert limited.status_code == 429, limited.text
        assert limited.json()["detail"] == "rate_limited"
        assert limited.headers["Retry-After"] == "1"
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert int(limited.headers["X-RateLimit-Reset"]) > 0
        # Not limited: another user, and the routes outside the gate.
        other = await onboard_trader(client)
        assert (await client.get("/orders", headers=other.headers)).status_code == 200
        me = await client.get("/me", headers=trader.headers)
        assert me.status_code == 200
        assert "X-RateLimit-Limit" not in me.headers


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_the_limit_holds_across_processes(
    store: Store, settings: Settings, tmp_path: Path, client: httpx.AsyncClient, trader: Trader
) -> None:
    limited = settings.model_copy(update={"rate_limit_trading_per_second": LIMIT})
    first = start_serve(limited, tmp_path / "first.log")
    second = start_serve(limited, tmp_path / "second.log")
    try:
        async with (
            httpx.AsyncClient(base_url=f"{first.base_url}/api/v1") as one,
            httpx.AsyncClient(base_url=f"{second.base_url}/api/v1") as other,
        ):
            calls = [one.get("/orders", headers=trader.headers) for _ in range(LIMIT)]
            assert {r.status_code for r in await asyncio.gather(*calls)} == {200}
            response = await other.get("/orders", headers=trader.headers)
            assert response.status_code == 429, response.text
            assert response.json()["detail"] == "rate_limited"
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_trading_calls_fail_open_when_redis_is_unreachable(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await reset_store(store)
    with private_redis(tmp_path) as redis_server:
        settings = make_settings(store, redis_url=redis_server.url, rate_limit_trading_per_second=2)
        async with (
            run_api(settings) as api,
            httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as client,
        ):
            trader = await onboard_trader(client)
            redis_server.stop()
            for _ in range(5):  # past the limit of 2, but nothing can count them
                response = await client.get("/orders", headers=trader.headers)
                assert response.status_code == 200, response.text
                assert "X-RateLimit-Limit" not in response.headers
    warnings = [r for r in caplog.records if "event=rate_limiter_unavailable" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not once per call
