"""The `mt5gate` command: migrate, serve, and how it fails."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.core.config import Settings
from tests.conftest import TEST_ENCRYPTION_KEY, TEST_JWT_SECRET
from tests.flows import onboard_trader
from tests.servers import ServeProcess, bound_socket, free_port, start_serve
from tests.stores import (
    Store,
    create_postgres_database,
    drop_postgres_database,
    require_services,
    reset_store,
)

TABLES = {"users", "broker_connections", "mt5_agents", "jobs", "api_keys", "alembic_version"}
MT5GATE = Path(sys.executable).parent / "mt5gate"


def mt5gate_env(**values: str) -> dict[str, str]:
    """The shell's environment minus any mt5gate setting, plus `values`."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    return {**env, **values}


def run_mt5gate(
    args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    command = [str(MT5GATE)] if MT5GATE.exists() else [sys.executable, "-m", "app.cli"]
    return subprocess.run(
        [*command, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def sqlite_tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def test_migrate_creates_the_tables_in_a_fresh_sqlite_file(tmp_path: Path) -> None:
    database = tmp_path / "fresh" / "nested" / "mt5gate.db"
    result = run_mt5gate(
        ["migrate"], mt5gate_env(DATABASE_URL=f"sqlite:///{database}"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "migrations applied" in result.stdout
    assert TABLES <= sqlite_tables(database)


def test_migrate_defaults_to_a_sqlite_file_under_var(tmp_path: Path) -> None:
    result = run_mt5gate(["migrate"], mt5gate_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert TABLES <= sqlite_tables(tmp_path / "var" / "mt5gate.db")


def test_migrate_twice_is_a_no_op(tmp_path: Path) -> None:
    env = mt5gate_env(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert run_mt5gate(["migrate"], env, cwd=tmp_path).returncode == 0
    again = run_mt5gate(["migrate"], env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Running upgrade" not in again.stderr


def test_migrate_creates_the_tables_on_postgres(tmp_path: Path) -> None:
    require_services()
    name, url = create_postgres_database()
    try:
        plain_url = url.replace("postgresql+asyncpg://", "postgresql://")
        result = run_mt5gate(["migrate"], mt5gate_env(DATABASE_URL=plain_url), cwd=tmp_path)
        assert result.returncode == 0, result.stderr

        async def tables() -> set[str]:
            conn = await asyncpg.connect(plain_url)
            try:
                rows = await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            finally:
                await conn.close()
            return {row["tablename"] for row in rows}

        assert TABLES <= asyncio.run(tables())
    finally:
        drop_postgres_database(name)


@pytest.fixture
async def served(store: Store, settings: Settings, tmp_path: Path) -> AsyncIterator[ServeProcess]:
    await reset_store(store)
    process = start_serve(settings, tmp_path / "serve.log", cwd=tmp_path)
    try:
        yield process
    finally:
        process.stop()


async def test_serve_answers_the_api_and_its_docs(served: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as http:
        docs = await http.get("/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()
        schema = (await http.get("/openapi.json")).json()
        for path in ("/api/v1/auth/register", "/api/v1/me", "/api/v1/broker-connections"):
            assert path in schema["paths"]
        registered = await http.post(
            "/api/v1/auth/register", json={"email": "cli@example.com", "password": "long-enough"}
        )
        assert registered.status_code == 201


async def test_serve_leaves_agent_traffic_out_of_its_access_log(
    served: ServeProcess, settings: Settings, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=f"{served.base_url}/api/v1", timeout=10) as http:
        trader = await onboard_trader(http)
        agent = trader.agent
        env = mt5gate_env(DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url)
        on = await asyncio.to_thread(run_mt5gate, ["set-price-source", agent.id], env, tmp_path)
        assert on.returncode == 0, on.stderr
        for _ in range(3):
            pushed = await http.post(
                agent.path("prices"),
                json={"LOGTEST": {"bid": 1.1, "ask": 1.2}},
                headers=agent.headers,
            )
            assert pushed.status_code == 202
            polled = await http.get(agent.path("jobs/next?wait=0"), headers=agent.headers)
            assert polled.status_code == 204
        refused = await http.post(agent.path("prices"), json=[], headers=agent.headers)
        assert refused.status_code == 422
        assert (await http.get("/me", headers=trader.user.headers)).status_code == 200
    served.stop()
    access = [line for line in served.log_path.read_text().splitlines() if "uvicorn.access" in line]
    assert not [line for line in access if '/prices HTTP/1.1" 202' in line], access
    assert not [line for line in access if '/jobs/next?wait=0 HTTP/1.1" 204' in line], access
    assert [line for line in access if '/prices HTTP/1.1" 422' in line], access  # a failure
    assert [line for line in access if '"GET /api/v1/me HTTP/1.1" 200' in line], access


def wait_until_serving(base_url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "mt5gate serve exited"
        try:
            httpx.get(f"{base_url}/openapi.json", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("mt5gate serve did not start")


def stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return stderr


def test_serve_in_dev_creates_its_secrets_once_and_reuses_them(tmp_path: Path) -> None:
    """A token issued before a restart still works after it: the dev secrets were kept."""
    command = [str(MT5GATE)] if MT5GATE.exists() else [sys.executable, "-m", "app.cli"]
    token = ""
    for run in range(2):
        port = free_port()
        process = subprocess.Popen(
            [*command, "serve", "--port", str(port)],
            env=mt5gate_env(),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        base_url = f"http://127.0.0.1:{port}/api/v1"
        try:
            wait_until_serving(f"http://127.0.0.1:{port}", process)
            if run == 0:
                response = httpx.post(
                    f"{base_url}/auth/register",
                    json={"email": "dev@example.com", "password": "long-enough"},
                )
                assert response.status_code == 201
                token = response.json()["access_token"]
            me = httpx.get(f"{base_url}/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200
        finally:
            stderr = stop(process)
        assert ("dev_secrets_created" in stderr) == (run == 0), stderr
    assert (tmp_path / "var" / "secrets.json").exists()
    assert (tmp_path / "var" / "mt5gate.db").exists()


def test_serve_on_a_busy_port_exits_at_once_in_one_line(tmp_path: Path) -> None:
    database = tmp_path / "mt5gate.db"
    env = mt5gate_env(
        DATABASE_URL=f"sqlite:///{database}",
        JWT_SECRET=TEST_JWT_SECRET,
        ENCRYPTION_KEY=TEST_ENCRYPTION_KEY,
    )
    with bound_socket() as busy:
        busy.listen()
        port = busy.getsockname()[1]
        result = run_mt5gate(["serve", "--port", str(port)], env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"mt5gate: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert not database.exists()  # the app's startup (which migrates SQLite) never ran


def test_an_invalid_setting_is_one_line(tmp_path: Path) -> None:
    result = run_mt5gate(["serve"], mt5gate_env(MT5GATE_ENV="staging"), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "MT5GATE_ENV" in lines[0]


def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run_mt5gate(["frobnicate"], mt5gate_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: mt5gate" in result.stderr


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = run_mt5gate(["--help"], mt5gate_env(), cwd=tmp_path)
    assert result.returncode == 0
    for command in ("serve", "migrate", "agent", "set-price-source", "demo"):
        assert command in result.stdout


async def test_set_price_source_turns_an_agents_price_pushes_on_and_off(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    trader = await onboard_trader(client)
    agent = trader.agent
    env = mt5gate_env(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        REDIS_KEY_PREFIX=settings.redis_key_prefix,
    )

    async def push() -> int:
        response = await client.post(
            agent.path("prices"),
            json={"CLITEST": {"bid": 1.1, "ask": 1.2}},
            headers=agent.headers,
        )
        return response.status_code

    assert await push() == 403
    on = await asyncio.to_thread(run_mt5gate, ["set-price-source", agent.id], env, tmp_path)
    assert on.returncode == 0, on.stderr
    assert await push() == 202
    off = await asyncio.to_thread(
        run_mt5gate, ["set-price-source", agent.id, "--off"], env, tmp_path
    )
    assert off.returncode == 0, off.stderr
    assert await push() == 403

    unknown = await asyncio.to_thread(
        run_mt5gate, ["set-price-source", "00000000-0000-0000-0000-000000000000"], env, tmp_path
    )
    assert unknown.returncode == 1
    assert "no agent" in unknown.stderr
    malformed = await asyncio.to_thread(
        run_mt5gate, ["set-price-source", "not-an-id"], env, tmp_path
    )
    assert malformed.returncode == 2
