"""What the benchmarks share: stores, an API served in-loop, percentiles, a table printer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.core.config import Settings
from app.core.migrate import upgrade_to_head
from app.core.resources import Resources
from app.main import create_app
from app.server import GatewayServer, server_config

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "test"}
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
# Random: the settings refuse patterned secrets.
JWT_SECRET = "qTCbXTTsxcsQkcZDZV9FyRdPtT0_jAIflmiXpT-iwXq67iGdHvlxSA"
ENCRYPTION_KEY = "0nZ5mGXrXh1qY0Y2aJvHhKq0gQ9r5VVo3yq2s2h9l1E="


def services_listening() -> bool:
    for port in (5432, 6379):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
    return True


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(**PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def bench_settings(store: str, **overrides: object) -> Iterator[Settings]:
    """Settings on a fresh store: "sqlite" (+ memory://) or "postgres" (+ Redis db 15)."""
    values: dict[str, object] = {
        "jwt_secret": JWT_SECRET,
        "encryption_key": ENCRYPTION_KEY,
        "log_level": "WARNING",
        **overrides,
    }
    if store == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}"
            upgrade_to_head(url)
            yield Settings(_env_file=None, database_url=url, redis_url="memory://", **values)  # type: ignore[arg-type]
        return
    name = f"mt5gate_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        upgrade_to_head(url)
        yield Settings(_env_file=None, database_url=url, redis_url=BENCH_REDIS_URL, **values)  # type: ignore[arg-type]
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class ServedApi:
    base_url: str
    resources: Resources


@contextlib.asynccontextmanager
async def serve_in_loop(settings: Settings) -> AsyncIterator[ServedApi]:
    app = create_app(settings)
    # A TCP socket that says so: asyncio then disables Nagle on each connection (without
    # it, responses stall ~40 ms on delayed ACKs).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    server = GatewayServer(server_config(app, settings, timeout_graceful_shutdown=2), app)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield ServedApi(f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.resources)
    finally:
        server.shut_down()
        await task


@dataclass
class Onboarded:
    token: str
    agent_id: str
    agent_token: str


async def onboard(base_url: str) -> Onboarded:
    """A user with a broker connection, an agent and completed onboarding."""
    async with httpx.AsyncClient(base_url=f"{base_url}/api/v1") as http:
        registered = await http.post(
            "/auth/register",
            json={"email": f"bench-{uuid.uuid4().hex[:8]}@example.com", "password": "bench-pass"},
        )
        token = registered.json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        connection = await http.post(
            "/broker-connections",
            json={"server": "Bench", "login": 1, "password": "x"},
            headers=headers,
        )
        agent = await http.post(
            f"/broker-connections/{connection.json()['id']}/agent", headers=headers
        )
        await http.post(
            "/onboarding/complete", json={"accept_risk_disclosure": True}, headers=headers
        )
        body = agent.json()
        await http.post(
            f"/agents/{body['agent_id']}/heartbeat",
            json={},
            headers={"Authorization": f"Bearer {body['agent_token']}"},
        )
        return Onboarded(token, body["agent_id"], body["agent_token"])


def percentile(samples: Sequence[float], q: float) -> float:
    if len(samples) < 2:
        return samples[0] if samples else float("nan")
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
