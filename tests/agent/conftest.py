"""Fixtures for the agent's tests: the fake ``MetaTrader5`` module, a simulated broker on a
manual clock, and a fake agent API served by uvicorn on a real socket."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

# The fake MetaTrader5 module lives in tests/fakes, importable as ``MetaTrader5``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_agent_api import FakeAgentApi  # noqa: E402

from mt5gate_agent.backends.sim import SimBackend  # noqa: E402

START = 1_764_000_000.0  # 2025-11-24T16:00:00Z


class ManualClock:
    """An injectable clock that only moves when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> SimBackend:
    return SimBackend(seed=7, clock=clock)


@pytest.fixture
def fake_mt5() -> Iterator[Any]:
    import MetaTrader5

    MetaTrader5.reset()
    yield MetaTrader5
    MetaTrader5.reset()


class ApiServer:
    """A fake agent API on a fixed port, which a test can stop and start again."""

    def __init__(self, api: FakeAgentApi) -> None:
        self.api = api
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.api.closing = False
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        # Listening before uvicorn runs: connections wait in the backlog, no start-up race.
        sock.listen(64)
        config = uvicorn.Config(
            self.api.app, lifespan="off", log_level="warning", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self.api.release_polls()
        await self._task
        self._server = self._task = None


@pytest.fixture
async def api_server() -> AsyncIterator[ApiServer]:
    server = ApiServer(FakeAgentApi())
    server.start()
    yield server
    await server.stop()


@pytest.fixture
def api(api_server: ApiServer) -> FakeAgentApi:
    return api_server.api
