"""Log lines never carry an access token."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.core.logging import RedactSecrets
from tests.flows import register_user
from tests.servers import start_serve
from tests.ws_clients import connect


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/ws/prices?token=eyJhbGciOi.eyJzdWIi.sig-_x", "/ws/prices?token=[redacted]"),
        ("/ws/prices/EURUSD?x=1&token=abc&y=2", "/ws/prices/EURUSD?x=1&token=[redacted]&y=2"),
        ("/ws/prices", "/ws/prices"),
    ],
)
def test_tokens_in_logged_urls_are_redacted(path: str, shown: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", path)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == f'127.0.0.1:5000 - "WebSocket {shown}" [accepted]\n'


async def test_the_served_access_log_redacts_tokens_in_urls(
    settings: Settings, tmp_path: Path
) -> None:
    """`mt5gate serve` as run: uvicorn's own access lines (HTTP and WebSocket) pass through
    the redaction, the token never reaches the log."""
    serve = await asyncio.to_thread(start_serve, settings, tmp_path / "serve.log")
    try:
        async with httpx.AsyncClient(base_url=f"{serve.base_url}/api/v1", timeout=30) as client:
            user = await register_user(client)
            await client.get("/me", params={"token": user.token}, headers=user.headers)
        ws_base = serve.base_url.replace("http://", "ws://", 1)
        async with connect(ws_base, "/ws/prices/EURUSD", user.token) as ws:
            await ws.close()
        await serve.wait_for_log('"WebSocket /ws/prices/EURUSD?token=[redacted]"')
        await serve.wait_for_log('"GET /api/v1/me?token=[redacted] HTTP/1.1" 200')
    finally:
        serve.stop()
    logged = serve.log_path.read_text()
    assert user.token not in logged
    assert user.token.split(".")[2] not in logged  # not even the signature
