"""`mt5gate demo` as a user runs it: starts, streams ticks, trades, stops on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.servers import free_port

STARTUP_SECONDS = 60


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, str, str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "demo", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "demo.log").open("w"),
        text=True,
    )
    token = api_key = ""
    deadline = time.monotonic() + STARTUP_SECONDS
    assert process.stdout is not None
    while time.monotonic() < deadline and not (token and api_key):
        line = process.stdout.readline()
        if not line:
            break
        if match := re.search(r"export TOKEN=(\S+)", line):
            token = match.group(1)
        if match := re.search(r"export MT5GATE_API_KEY=(\S+)", line):
            api_key = match.group(1)
    try:
        assert token, f"no token printed; log: {(tmp_path / 'demo.log').read_text()[-2000:]}"
        assert api_key.startswith("mt5g_")
        yield process, f"127.0.0.1:{port}", token, api_key
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_demo_streams_ticks_trades_and_stops_on_sigint(
    demo: tuple[subprocess.Popen[str], str, str, str],
) -> None:
    process, address, token, api_key = demo
    with connect(f"ws://{address}/ws/prices/EURUSD?token={token}", open_timeout=10) as socket:
        message = json.loads(socket.recv(timeout=10))
    assert message["type"] == "tick"
    assert message["data"]["instrument"] == "EURUSD"
    assert message["data"]["ask"] >= message["data"]["bid"] > 0

    headers = {"Authorization": f"Bearer {token}"}
    order = httpx.post(
        f"http://{address}/api/v1/orders",
        json={"symbol": "EURUSD", "side": "buy", "volume": 0.1},
        headers=headers,
        timeout=15,
    )
    assert order.status_code == 201, order.text
    positions = httpx.get(f"http://{address}/api/v1/positions", headers=headers, timeout=15)
    assert order.json()["ticket"] in [p["position_id"] for p in positions.json()]
    by_key = httpx.get(
        f"http://{address}/api/v1/positions",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=15,
    )
    assert by_key.status_code == 200
    # The same positions; their live price (and so profit) may have moved in between.
    live = ("current_price", "profit")

    def held(items: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in item.items() if k not in live} for item in items]

    assert held(by_key.json()) == held(positions.json())

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=15) == 0
