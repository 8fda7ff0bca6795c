"""`serve` refuses a database it cannot serve, in one line; one that disappears while it
serves answers 503 database_unavailable, never 500. PostgreSQL, real processes."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic import command

from app.core.migrate import alembic_config, head_revision, upgrade_to_head_async
from tests.conftest import make_settings
from tests.flows import onboard_trader
from tests.servers import free_port, run_api, start_serve
from tests.stores import (
    PG_HOST,
    PG_PORT,
    Store,
    create_postgres_database,
    drop_postgres_database,
    postgres_store,
    require_services,
)
from tests.test_cli import mt5gate_env, run_mt5gate

pytestmark = pytest.mark.parametrize("store", ["postgres"], indirect=True)


@pytest.fixture
def fresh_database(store: Store) -> Iterator[Store]:
    """A PostgreSQL database of its own, created empty (never migrated)."""
    require_services()
    name, url = create_postgres_database()
    try:
        yield postgres_store(url)
    finally:
        drop_postgres_database(name)


def serve_env(store: Store, port: int) -> dict[str, str]:
    settings = make_settings(store)
    return mt5gate_env(
        DATABASE_URL=store.database_url,
        REDIS_URL=store.redis_url,
        JWT_SECRET=settings.jwt_secret,
        ENCRYPTION_KEY=settings.encryption_key,
    )


def refusal(store: Store, tmp_path: Path) -> str:
    """Runs `mt5gate serve`, which must exit at once with one line on stderr; returns it."""
    port = free_port()
    try:
        result = run_mt5gate(["serve", "--port", str(port)], serve_env(store, port), tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("mt5gate serve started on a database it cannot serve")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "mt5gate migrate" in lines[0]
    assert "postgres@" not in lines[0]  # never the connection string
    return lines[0]


def test_serve_refuses_an_unmigrated_database_until_it_is_migrated(
    fresh_database: Store, tmp_path: Path
) -> None:
    line = refusal(fresh_database, tmp_path)
    assert "no schema" in line
    assert head_revision() in line
    migrated = run_mt5gate(
        ["migrate"], mt5gate_env(DATABASE_URL=fresh_database.database_url), tmp_path
    )
    assert migrated.returncode == 0, migrated.stderr
    serving = start_serve(make_settings(fresh_database), tmp_path / "serve.log")
    try:
        assert httpx.get(f"{serving.base_url}/api/v1/me").status_code == 401
    finally:
        serving.stop()


def test_serve_refuses_a_database_at_an_older_schema_version(
    fresh_database: Store, tmp_path: Path
) -> None:
    config = alembic_config(fresh_database.database_url)
    command.upgrade(config, "head")
    command.downgrade(config, "-1")
    line = refusal(fresh_database, tmp_path)
    assert f"this build needs {head_revision()}" in line


def test_serve_refuses_a_database_that_does_not_exist(store: Store, tmp_path: Path) -> None:
    missing = postgres_store(f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/no_such_db_0")
    line = refusal(missing, tmp_path)
    assert 'database "no_such_db_0" does not exist' in line


async def test_a_database_dropped_while_serving_answers_503(
    fresh_database: Store, tmp_path: Path
) -> None:
    await upgrade_to_head_async(fresh_database.database_url)
    serving = start_serve(make_settings(fresh_database), tmp_path / "serve.log")
    try:
        async with httpx.AsyncClient(base_url=f"{serving.base_url}/api/v1") as client:
            trader = await onboard_trader(client)
            name = fresh_database.database_url.rsplit("/", 1)[1]
            await asyncio.to_thread(drop_postgres_database, name)
            calls = [
                client.get("/me", headers=trader.headers),
                client.post("/auth/login", json={"email": trader.user.email, "password": "x"}),
                client.get("/orders", headers=trader.headers),
                client.post(trader.agent.path("heartbeat"), json={}, headers=trader.agent.headers),
            ]
            for call in calls:
                response = await call
                assert response.status_code == 503, response.text
                assert response.json()["detail"] == "database_unavailable"
    finally:
        serving.stop()
    assert "internal_error" not in serving.log_path.read_text()


async def test_a_database_that_refuses_connections_answers_503(store: Store) -> None:
    # Nothing listens on that port: every new connection is refused by the OS.
    unreachable = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/mt5gate"
    settings = make_settings(store, database_url=unreachable)
    async with (
        run_api(settings) as api,
        httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as client,
    ):
        for call in (
            client.post("/auth/register", json={"email": "a@example.com", "password": "12345678"}),
            client.post("/auth/login", json={"email": "a@example.com", "password": "12345678"}),
        ):
            response = await call
            assert response.status_code == 503, response.text
            assert response.json()["detail"] == "database_unavailable"


async def test_job_outputs_are_compressed_with_lz4_where_the_server_has_it(
    fresh_database: Store,
) -> None:
    """A history answer (~300 KB) is written with lz4, not pglz (see migration 0005)."""
    await upgrade_to_head_async(fresh_database.database_url)
    connection = await asyncpg.connect(fresh_database.database_url.replace("+asyncpg", ""))
    try:
        methods = await connection.fetchval(
            "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"
        )
        if "lz4" not in methods:
            pytest.skip("this PostgreSQL was built without lz4")
        method = await connection.fetchval(
            "SELECT attcompression FROM pg_attribute"
            " WHERE attrelid = 'jobs'::regclass AND attname = 'output_data'"
        )
    finally:
        await connection.close()
    assert method == b"l"  # a "char": l for lz4, p for pglz
