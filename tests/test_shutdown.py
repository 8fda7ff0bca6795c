"""A graceful shutdown of `mt5gate serve` answers what is waiting instead of cutting it off."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx

from app.core.config import Settings
from tests.flows import onboard_trader
from tests.servers import start_serve


async def test_sigterm_answers_an_open_long_poll_with_204_and_exits_promptly(
    settings: Settings, tmp_path: Path
) -> None:
    # SHUTDOWN_TIMEOUT_SECONDS is 5 s: a poll cut off at that limit would answer 500.
    debug = settings.model_copy(update={"log_level": "DEBUG"})  # logs job_poll_waiting
    serve = await asyncio.to_thread(start_serve, debug, tmp_path / "serve.log")
    try:
        async with httpx.AsyncClient(base_url=f"{serve.base_url}/api/v1", timeout=30) as client:
            trader = await onboard_trader(client)
            agent = trader.agent
            poll = asyncio.create_task(
                client.get(agent.path("jobs/next"), params={"wait": 25}, headers=agent.headers)
            )
            await serve.wait_for_log("event=job_poll_waiting")  # the precondition
            started = time.monotonic()
            serve.process.send_signal(signal.SIGTERM)
            response = await poll
            exit_code = await asyncio.to_thread(serve.process.wait, 10)
            took = time.monotonic() - started
    finally:
        serve.stop()
    assert response.status_code == 204
    assert exit_code == 0
    assert took < settings.shutdown_timeout_seconds
    assert "Exception in ASGI application" not in serve.log_path.read_text()
