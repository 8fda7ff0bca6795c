"""Log lines never carry an access token."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.core.logging import RedactSecrets, SummariseAgentTraffic
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


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def access_line(method: str, path: str, status: int) -> logging.LogRecord:
    """A record as uvicorn's access logger makes it."""
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", method, path, "1.1", status),
        None,
    )


PUSH = "/api/v1/agents/3f2b0c1e-0000-4000-8000-000000000001/prices"
POLL = "/api/v1/agents/3f2b0c1e-0000-4000-8000-000000000001/jobs/next?wait=25"


@pytest.mark.parametrize(
    ("method", "path", "status", "kept"),
    [
        ("POST", PUSH, 202, False),
        ("GET", POLL, 200, False),
        ("GET", POLL, 204, False),
        ("POST", PUSH, 403, True),  # failures are still logged
        ("GET", POLL, 401, True),
        ("POST", PUSH, 500, True),
        ("GET", "/api/v1/me", 200, True),
        ("POST", "/api/v1/agents/x/jobs/1/result", 200, True),
        ("GET", PUSH, 405, True),
        ("GET", PUSH + "/../me", 200, True),
    ],
)
def test_agent_traffic_is_left_out_of_the_access_log(
    method: str, path: str, status: int, kept: bool
) -> None:
    assert SummariseAgentTraffic().filter(access_line(method, path, status)) is kept


def test_agent_traffic_is_summarised_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    quiet = SummariseAgentTraffic(interval=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="mt5gate.access"):
        for second in range(61):  # four pushes and one long-poll a second
            clock.now = float(second)
            for _ in range(4):
                quiet.filter(access_line("POST", PUSH, 202))
            quiet.filter(access_line("GET", POLL, 204))
    assert [r.getMessage() for r in caplog.records] == [
        "event=access_summary seconds=60 price_pushes=241 long_polls=60"
    ]


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
