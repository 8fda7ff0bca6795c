"""WebSocket clients and tick publishers for the price-stream tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import websockets
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from app.core.config import Settings
from app.ws.manager import WebSocketManager
from app.ws.ticks import channel_for
from tests.conftest import make_settings
from tests.servers import RunningApi, run_api
from tests.stores import Store, reset_store

RECV_TIMEOUT = 10.0


def new_instrument() -> str:
    """A name of this test's own: pub/sub channels are shared by every Redis db and run."""
    return f"T{uuid.uuid4().hex[:12].upper()}"


def tick(instrument: str, bid: float = 1.1, ask: float = 1.2, ts: int = 1) -> dict[str, Any]:
    return {"instrument": instrument, "bid": bid, "ask": ask, "ts": ts}


async def publish(redis: Redis, body: dict[str, Any] | str | bytes, *, channel: str = "") -> None:
    """What the agent route does: SET prices:{instrument} + PUBLISH prices:{instrument}."""
    if isinstance(body, dict):
        channel = channel or body["instrument"]
        raw: str | bytes = json.dumps(body)
    else:
        raw = body
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(channel_for(redis, channel), raw)
        pipe.publish(channel_for(redis, channel), raw)
        await pipe.execute()


def ws_url(api_ws_url: str, path: str, token: str | None) -> str:
    return f"{api_ws_url}{path}" + (f"?token={token}" if token is not None else "")


def connect(api: RunningApi | str, path: str, token: str | None, **kwargs: Any) -> Any:
    base = api if isinstance(api, str) else api.ws_url
    return websockets.connect(
        ws_url(base, path, token), open_timeout=RECV_TIMEOUT, max_size=2**20, **kwargs
    )


def connect_with_small_buffer(api: RunningApi, path: str, token: str) -> Any:
    """A client whose kernel receive buffer is tiny, so that not reading stalls it quickly."""
    host, port = urlsplit(api.base_url).hostname, urlsplit(api.base_url).port
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.setblocking(False)
    return connect(api, path, token, sock=sock, max_queue=1, compression=None)


async def recv_json(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        message = await ws.recv()
    body: dict[str, Any] = json.loads(message)
    return body


async def recv_tick(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
    """The next message, which must be a tick; returns its data."""
    body = await recv_json(ws, timeout)
    assert body["type"] == "tick", body
    data: dict[str, Any] = body["data"]
    return data


async def close_code(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> int | None:
    """Reads (and discards) until the server closes; returns the close code it sent."""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await ws.recv()
    return ws.close_code


async def subscribe(ws: ClientConnection, *instruments: str, kind: str = "subscribe") -> list[str]:
    """Sends (un)subscribe; returns every instrument's last tick received before the ack."""
    await ws.send(json.dumps({"type": kind, "instruments": list(instruments)}))
    ticks: list[str] = []
    while True:
        body = await recv_json(ws)
        if body["type"] == "subscriptions":
            return ticks
        assert body["type"] == "tick", body
        ticks.append(body["data"]["instrument"])


async def wait_live(manager: WebSocketManager, *instruments: str, sockets: int = 0) -> None:
    """Until this process gets the instruments' ticks and holds at least `sockets` sockets."""
    await manager.wait_until(
        lambda: (
            all(manager.is_live(i) for i in instruments) and manager.stats()["sockets"] >= sockets
        ),
        timeout=RECV_TIMEOUT,
    )


@contextlib.asynccontextmanager
async def serve(store: Store, **overrides: object) -> AsyncIterator[RunningApi]:
    """The app on an empty store with some settings changed."""
    await reset_store(store)
    settings: Settings = make_settings(store, **overrides)
    async with run_api(settings) as running:
        yield running
