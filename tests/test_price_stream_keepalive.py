"""Keepalive: a peer that vanished without closing (no FIN, no pong) is found and dropped."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time

import httpx
import pytest

from tests.conftest import make_settings
from tests.flows import register_user
from tests.servers import run_api
from tests.stores import Store, reset_store


async def test_a_peer_that_never_answers_pings_is_closed(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await reset_store(store)
    settings = make_settings(store, ws_ping_interval_seconds=0.2, ws_ping_timeout_seconds=0.5)
    caplog.set_level(logging.INFO, logger="mt5gate.ws")
    async with run_api(settings) as api:
        async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as client:
            user = await register_user(client)
        host, port = api.base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        # A client that completes the handshake and then plays dead: it reads, but never
        # answers a ping (a browser tab frozen, a peer behind a dropped NAT mapping).
        writer.write(
            (
                f"GET /ws/prices/KEEPALIVE?token={user.token} HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        status = await asyncio.wait_for(reader.readline(), 5)
        assert b" 101 " in status
        manager = api.resources.ws
        await manager.wait_until(lambda: manager.stats()["sockets"] == 1, timeout=5)

        started = time.monotonic()
        received = b""
        while chunk := await asyncio.wait_for(reader.read(4096), 10):
            received += chunk
        took = time.monotonic() - started
        writer.close()

        assert b"\x89" in received, "the server never pinged"  # FIN + ping opcode
        assert took < 5
        await manager.wait_until(lambda: manager.stats()["sockets"] == 0, timeout=5)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("event=ws_ping_timeout client=127.0.0.1:") for line in lines)
    assert any(line.startswith("event=ws_closed path='/ws/prices/KEEPALIVE'") for line in lines)
