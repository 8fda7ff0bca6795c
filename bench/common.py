"""What the benchmarks share: stores, an API served in-loop, percentiles, a table printer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

from app.core.config import Settings
from app.core.migrate import upgrade_to_head
from app.main import create_app
from app.resources import Resources
from app.server import GatewayServer, server_config

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "test"}
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
# Random: the settings refuse patterned secrets.
JWT_SECRET = "qTCbXTTsxcsQkcZDZV9FyRdPtT0_jAIflmiXpT-iwXq67iGdHvlxSA"
ENCRYPTION_KEY = "0nZ5mGXrXh1qY0Y2aJvHhKq0gQ9r5VVo3yq2s2h9l1E="
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """A process's resident memory (0 once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RedisServer:
    """A redis-server of one's own on a free port, to stop and start again for real (the
    machine's shared Redis is never restarted)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def wait_answering(
    base_url: str, process: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    """Waits until a `mt5gate serve` just started answers HTTP; raises if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"mt5gate serve exited: {log.read_text()[-2000:]}")
        try:
            httpx.get(f"{base_url}/openapi.json", timeout=2)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


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
    """Settings on a fresh store: "sqlite" (+ memory://) or "postgres" (+ Redis db 15, or
    the ``redis_url`` given, e.g. a :class:`RedisServer`'s)."""
    redis_url = str(overrides.pop("redis_url", BENCH_REDIS_URL))
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
        yield Settings(_env_file=None, database_url=url, redis_url=redis_url, **values)  # type: ignore[arg-type]
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


T = TypeVar("T")


def run_as_served(main: Coroutine[Any, Any, T]) -> T:
    """Runs `main` (which serves the API in its loop, `serve_in_loop`) on the event loop
    `mt5gate serve` runs on: uvicorn's `loop="auto"`, uvloop where it is installed."""
    factory = uvicorn.Config("app.main:create_app", log_config=None).get_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


@dataclass
class Onboarded:
    token: str
    agent_id: str
    agent_token: str
    email: str = ""
    password: str = ""


async def onboard(base_url: str) -> Onboarded:
    """A user with a broker connection, an agent and completed onboarding."""
    email, password = f"bench-{uuid.uuid4().hex[:8]}@example.com", "bench-pass"
    async with httpx.AsyncClient(base_url=f"{base_url}/api/v1") as http:
        registered = await http.post("/auth/register", json={"email": email, "password": password})
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
        return Onboarded(token, body["agent_id"], body["agent_token"], email, password)


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
