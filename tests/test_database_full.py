"""A PostgreSQL that refuses connections because it is full answers 503, never 500.

Under load (the fan-out bench beside running test suites, on a server shared by several
processes), PostgreSQL's connection limit is reached, and asyncpg reports "too many
connections" as a plain DBAPIError: every request that needed a new connection, price
pushes included, answered `500 internal_error`. The fault here is real: the app connects as
a role whose own connection limit the test fills (the shared server's limit is left alone).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from app.services.agents import set_price_source
from tests.conftest import make_settings
from tests.flows import onboard_trader
from tests.servers import run_api
from tests.stores import Store, reset_store

ONLY_POSTGRES = pytest.mark.parametrize("store", ["postgres"], indirect=True)
ROLE_CONNECTION_LIMIT = 4


def connect_args(database_url: str, user: str) -> dict[str, object]:
    parts = urlsplit(database_url)
    return {
        "host": parts.hostname,
        "port": parts.port,
        "user": user,
        "database": parts.path.lstrip("/"),
    }


@pytest.fixture
async def limited_role(store: Store) -> AsyncIterator[str]:
    """A login role that may hold only a few connections, with the app's privileges."""
    role = f"mt5gate_limited_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(**connect_args(store.database_url, "postgres"))  # type: ignore[arg-type]
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT {ROLE_CONNECTION_LIMIT}')
        await admin.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
        await admin.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
        yield role
    finally:
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


@ONLY_POSTGRES
async def test_a_price_push_that_finds_the_database_full_is_a_503(
    store: Store, limited_role: str
) -> None:
    await reset_store(store)
    database_url = store.database_url.replace("postgres@", f"{limited_role}@", 1)
    async with run_api(make_settings(store, database_url=database_url)) as api:
        async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as http:
            trader = await onboard_trader(http)
            await set_price_source(
                api.resources.session_factory, agent_id=uuid.UUID(trader.agent.id), enabled=True
            )
            await api.resources.engine.dispose()  # the next request needs a new connection
            hogs = [
                await asyncpg.connect(**connect_args(store.database_url, limited_role))  # type: ignore[arg-type]
                for _ in range(ROLE_CONNECTION_LIMIT)
            ]
            try:
                push = await http.post(
                    trader.agent.path("prices"),
                    json={"EURUSD": {"bid": 1.1, "ask": 1.2}},
                    headers=trader.agent.headers,
                )
                assert push.status_code == 503, push.text
                assert push.json()["detail"] == "database_unavailable"
                me = await http.get("/me", headers=trader.user.headers)
                assert me.status_code == 503, me.text
            finally:
                for hog in hogs:
                    await hog.close()
            push = await http.post(
                trader.agent.path("prices"),
                json={"EURUSD": {"bid": 1.1, "ask": 1.2}},
                headers=trader.agent.headers,
            )
            assert push.status_code == 202, push.text
