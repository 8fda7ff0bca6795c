"""Fixtures: every storage test runs on SQLite + memory:// and on PostgreSQL + Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from app.core.config import Settings
from tests.flows import TestUser, Trader, onboard_trader, register_user
from tests.servers import RunningApi, run_api
from tests.stores import (
    Store,
    migrated_store,
    reset_store,
)

# 64 random characters: long enough for HS512, and random enough for the settings check.
TEST_JWT_SECRET = "88FIeEPKrPbsA99xA6DKg2OevEzc0sKUIXoyR_pYwrtmtB_p6hPHtR76lTP_ANDX"
TEST_ENCRYPTION_KEY = "0nZ5mGXrXh1qY0Y2aJvHhKq0gQ9r5VVo3yq2s2h9l1E="


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    yield from migrated_store(request.param, tmp_path_factory)


def make_settings(store: Store, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "mt5gate_env": "dev",
        "database_url": store.database_url,
        "redis_url": store.redis_url,
        "redis_key_prefix": store.redis_key_prefix,
        "jwt_secret": TEST_JWT_SECRET,
        "encryption_key": TEST_ENCRYPTION_KEY,
        # Tests burst far past the contract's 20 calls a second; the limit's own tests set it.
        "rate_limit_trading_per_second": 1_000_000,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def settings(store: Store) -> Settings:
    return make_settings(store)


@pytest.fixture
async def api(store: Store, settings: Settings) -> AsyncIterator[RunningApi]:
    await reset_store(store)
    async with run_api(settings) as running:
        yield running


@pytest.fixture
async def client(api: RunningApi) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1", timeout=30) as http:
        yield http


@pytest.fixture
async def user(client: httpx.AsyncClient) -> TestUser:
    return await register_user(client)


@pytest.fixture
async def trader(client: httpx.AsyncClient) -> Trader:
    """An onboarded user whose connection has an agent that has just sent a heartbeat."""
    return await onboard_trader(client)
