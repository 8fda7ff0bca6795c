"""uvicorn's server, told to let the app know when a graceful shutdown begins.

uvicorn waits for open requests before it runs the lifespan's shutdown, and cancels those
still open after its graceful timeout, which answers them with a 500. Long-polls and
requests waiting for an agent would hold every shutdown that long. This server sets the
app's drain event at the first signal, so they answer at once (204, or the order as it
stands) and the process stops in milliseconds, with exit code 0.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from app.core.config import Settings
from app.ws.protocol import websocket_protocol


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn would raise the signal again after its shutdown, so that the process dies
        # of it; ours has handled it, and a graceful stop exits 0.
        self._captured_signals.clear()
        resources = getattr(self.app.state, "resources", None)
        if resources is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(resources.jobs.events.begin_drain)

    def shut_down(self) -> None:
        """A graceful shutdown, as on SIGTERM (for embedders and tests)."""
        self.handle_exit(signal.SIGTERM, None)


def server_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn settings every way of serving the app shares; `overrides` win."""
    options: dict[str, Any] = {
        "log_config": None,
        "lifespan": "on",
        "ws_ping_interval": settings.ws_ping_interval_seconds,
        "ws_ping_timeout": settings.ws_ping_timeout_seconds,
        # A tick is serialized once for every socket; per-socket compression would undo
        # that (and cost a compressor's memory per socket).
        "ws_per_message_deflate": False,
        # uvicorn's default protocol (sans-I/O, on `websockets`), with ~7 KB less per socket,
        # if this uvicorn still has what it needs (else uvicorn's own, logged once).
        "ws": websocket_protocol(),
        "timeout_graceful_shutdown": int(settings.shutdown_timeout_seconds),
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        **overrides,
    }
    return uvicorn.Config(app, **options)
