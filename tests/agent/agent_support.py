"""Helpers shared by the agent's tests and fixtures (a module of its own, not conftest, so
tests import it by a name no other conftest can shadow)."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from fake_agent_api import FakeAgentApi

START = 1_764_000_000.0  # 2025-11-24T16:00:00Z


class ManualClock:
    """An injectable clock that only moves when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
