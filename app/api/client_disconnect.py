"""Noticing that an HTTP client went away while its request waits (a long-poll)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.requests import Request


@contextlib.asynccontextmanager
async def client_disconnect(request: Request) -> AsyncIterator[asyncio.Event]:
    """An event set when the HTTP client goes away, watched by a task for the block."""
    gone = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return

    watcher = asyncio.create_task(watch())
    try:
        yield gone
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
