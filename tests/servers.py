"""Real servers for tests: the app under uvicorn in the test's loop, or `mt5gate serve`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from app.core.config import Settings
from app.main import create_app
from app.resources import Resources
from app.server import GatewayServer, server_config


@dataclass
class RunningApi:
    app: FastAPI
    base_url: str
    settings: Settings

    @property
    def resources(self) -> Resources:
        resources: Resources = self.app.state.resources
        return resources

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1)


@contextlib.asynccontextmanager
async def run_api(settings: Settings, **config: Any) -> AsyncIterator[RunningApi]:
    """Serves the app over real TCP on a free loopback port, in the current event loop
    (`config`: uvicorn settings that differ from `serve`'s)."""
    app = create_app(settings)
    options = {"timeout_graceful_shutdown": 2, **config}
    server = GatewayServer(server_config(app, settings, **options), app)
    task = asyncio.create_task(server.serve(sockets=[bound_socket()]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server stopped during startup")
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningApi(app, f"http://127.0.0.1:{port}", settings)
    finally:
        server.shut_down()
        await task


def bound_socket(port: int = 0) -> socket.socket:
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets whose proto
    # says TCP, and without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def free_port() -> int:
    with bound_socket() as sock:
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    async def wait_for_log(self, text: str, *, timeout: float = 10) -> None:
        """Until the process has logged a line containing `text` (its log is a file)."""
        async with asyncio.timeout(timeout):
            while text not in self.log_path.read_text(errors="replace"):
                if self.process.poll() is not None:
                    raise AssertionError(f"mt5gate serve exited before logging {text!r}")
                await asyncio.sleep(0.01)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_serve(
    settings: Settings, log_path: Path, *, cwd: Path | None = None, port: int | None = None
) -> ServeProcess:
    """Starts `mt5gate serve` as a separate process and waits until it answers.

    On a free port unless ``port`` is given (a restart on the port clients already use)."""
    port = port or free_port()
    # Every setting, so that the process runs with exactly these (not only some of them).
    env = {
        **os.environ,
        **{name.upper(): str(value) for name, value in settings.model_dump().items()},
    }
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
    )
    running = ServeProcess(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mt5gate serve exited: {log_path.read_text()[-2000:]}")
        try:
            httpx.get(f"{running.base_url}/openapi.json", timeout=1)
            return running
        except httpx.TransportError:
            time.sleep(0.05)
    running.stop()
    raise RuntimeError(f"mt5gate serve did not start: {log_path.read_text()[-2000:]}")
