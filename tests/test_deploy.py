"""deploy/nginx/mt5gate.conf, run by Debian's nginx in front of three `mt5gate serve`
processes on PostgreSQL + Redis: the whole loop goes through it, and stopping one process
loses nothing a client had: price sockets reconnect and get every tick after, account
sockets resume with `since` and miss no event."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from app.core.config import Settings
from tests.agent_process import start_agent
from tests.flows import DEFAULT_PASSWORD, onboard_trader
from tests.servers import ServeProcess, free_port, start_serve
from tests.stores import IN_CI, Store, reset_store
from tests.test_cli import mt5gate_env, run_mt5gate
from tests.ws_clients import RECV_TIMEOUT, new_instrument

pytestmark = pytest.mark.parametrize("store", ["postgres"], indirect=True)

DEPLOY_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "mt5gate.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ORDER = {"symbol": "EURUSD", "side": "buy", "volume": 0.1}
FINAL = {"filled", "rejected", "expired", "unknown"}


def nginx_config(directory: Path, port: int, upstreams: list[int]) -> Path:
    """The deploy file with this test's ports, inside a main config of the test's own."""
    site = DEPLOY_CONF.read_text().replace("listen 80;", f"listen 127.0.0.1:{port};")
    for default, actual in zip((8001, 8002, 8003), upstreams, strict=True):
        site = site.replace(f"127.0.0.1:{default} ", f"127.0.0.1:{actual} ")
    (directory / "mt5gate.conf").write_text(site)
    main = directory / "nginx.conf"
    temp = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    main.write_text(
        f"""
user root;
worker_processes 1;
daemon off;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log {directory / "access.log"};
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {directory / "mt5gate.conf"};
}}
"""
    )
    return main


@pytest.fixture
def nginx_available() -> None:
    if not Path(NGINX).exists():
        if IN_CI:
            pytest.fail("CI=true and nginx is not installed (.ci/run installs it)")
        pytest.skip("nginx is not installed (apt-get install -y nginx)")


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nginx did not listen: {log.read_text()}")


@pytest.fixture
def deployment(
    store: Store,
    settings: Settings,
    tmp_path: Path,
    nginx_available: None,
) -> Iterator[tuple[str, list[ServeProcess], Settings]]:
    asyncio.run(reset_store(store))
    processes = [start_serve(settings, tmp_path / f"serve-{n}.log") for n in range(3)]
    port = free_port()
    upstreams = [int(p.base_url.rsplit(":", 1)[1]) for p in processes]
    config = nginx_config(tmp_path, port, upstreams)
    nginx = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "nginx.out").open("wb"),
    )
    try:
        wait_for_port(port, nginx, tmp_path / "nginx.out")
        yield f"http://127.0.0.1:{port}", processes, settings
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        for process in processes:
            process.stop()


async def subscribed(url: str, instrument: str) -> Any:
    """A /ws/prices socket subscribed to `instrument`; the server acknowledges a
    subscription once ticks published on it reach the socket."""
    ws = await websockets.connect(url, open_timeout=RECV_TIMEOUT)
    await ws.send(json.dumps({"type": "subscribe", "instruments": [instrument]}))
    async with asyncio.timeout(RECV_TIMEOUT):
        while json.loads(await ws.recv())["type"] != "subscriptions":
            pass
    return ws


async def read_ticks(ws: Any, instrument: str, count: int) -> list[int]:
    """The `ts` of the next `count` ticks of `instrument` on the socket."""
    seen: list[int] = []
    async with asyncio.timeout(RECV_TIMEOUT):
        while len(seen) < count:
            message = json.loads(await ws.recv())
            if message["type"] == "tick" and message["data"]["instrument"] == instrument:
                seen.append(message["data"]["ts"])
    return seen


async def account_socket(url: str) -> tuple[Any, int]:
    """A /ws/account socket and the `last_event_id` of its snapshot."""
    ws = await websockets.connect(url, open_timeout=RECV_TIMEOUT)
    async with asyncio.timeout(RECV_TIMEOUT):
        first = json.loads(await ws.recv())
    assert first["type"] == "snapshot", first
    return ws, int(first["data"]["last_event_id"])


# Kept one by one in the log; a replay coalesces profit-only changes and account events.
LOGGED_KINDS = {"order", "position_opened", "position_closed", "deal", "agent"}


async def follow_orders(url: str, ws: Any, last_id: int, orders: set[str]) -> list[int]:
    """The ids of the logged events a socket gets until each of `orders` has its `filled`
    event; a socket closed by a stopping process is reopened with `since` (the nginx round
    robin picks a live one)."""
    ids: list[int] = []
    filled: set[str] = set()
    async with asyncio.timeout(RECV_TIMEOUT * 3):
        while not orders <= filled:
            try:
                message = json.loads(await ws.recv())
            except websockets.ConnectionClosed:
                ws = await websockets.connect(f"{url}&since={last_id}", open_timeout=RECV_TIMEOUT)
                continue
            if message["type"] != "event":
                continue
            event = message["event"]
            last_id = int(event["id"])
            if event["kind"] in LOGGED_KINDS:
                ids.append(last_id)
            if event["kind"] == "order" and event["data"]["status"] == "filled":
                filled.add(event["data"]["order_id"])
    await ws.close()
    return ids


async def wait_final(client: httpx.AsyncClient, order_id: str, headers: dict[str, str]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = (await client.get(f"/orders/{order_id}", headers=headers)).json()["status"]
        if status in FINAL:
            return str(status)
        await asyncio.sleep(0.1)  # bounded poll of the order's own record
    raise AssertionError(f"order {order_id} not final")


def test_the_loop_runs_through_nginx_and_survives_a_process_stopping(
    deployment: tuple[str, list[ServeProcess], Settings], tmp_path: Path
) -> None:
    asyncio.run(run_the_loop(*deployment, tmp_path))


async def run_the_loop(
    base_url: str, processes: list[ServeProcess], settings: Settings, tmp_path: Path
) -> None:
    ws_base = base_url.replace("http://", "ws://")
    async with httpx.AsyncClient(base_url=f"{base_url}/api/v1", timeout=30) as client:
        trader = await onboard_trader(client, with_heartbeat=False)
        login = await client.post(
            "/auth/login", json={"email": trader.user.email, "password": DEFAULT_PASSWORD}
        )
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        env = mt5gate_env(DATABASE_URL=settings.database_url)
        marked = run_mt5gate(["set-price-source", trader.agent.id], env, tmp_path)
        assert marked.returncode == 0, marked.stderr
        agent = await start_agent(base_url, trader.agent, tmp_path / "agent.log")
        try:
            await agent.wait_for_line("event=agent_online", timeout=20)
            # Three account sockets, round the three processes, from before the first order.
            account_url = f"{ws_base}/ws/account?token={token}"
            accounts = [await account_socket(account_url) for _ in range(3)]
            first = await client.post("/orders", json=ORDER, headers=headers)
            assert first.status_code == 201, first.text
            assert first.json()["status"] == "filled"

            instrument = new_instrument()
            url = f"{ws_base}/ws/prices?token={token}"
            # Three sockets: nginx hands them round the three processes.
            sockets = [await subscribed(url, instrument) for _ in range(3)]
            ts = 0

            async def push(count: int) -> list[int]:
                nonlocal ts
                sent = []
                for _ in range(count):
                    ts += 1
                    body = {instrument: {"bid": 1.1, "ask": 1.2, "ts": ts}}
                    pushed = await client.post(
                        trader.agent.path("prices"), json=body, headers=trader.agent.headers
                    )
                    assert pushed.status_code == 202, pushed.text
                    sent.append(ts)
                return sent

            before = await push(3)
            for ws in sockets:
                assert await read_ticks(ws, instrument, 3) == before

            # Orders in flight while one process stops.
            in_flight = [
                asyncio.create_task(client.post("/orders", json=ORDER, headers=headers))
                for _ in range(4)
            ]
            await asyncio.to_thread(processes[0].stop)
            answers = await asyncio.gather(*in_flight)
            assert {a.status_code for a in answers} <= {201, 202}, [a.text for a in answers]
            for order in [first, *answers]:
                assert await wait_final(client, order.json()["order_id"], headers) == "filled"

            # The sockets of the stopped process were closed; the client reconnects them.
            live, reconnected = [], 0
            for ws in sockets:
                try:
                    await ws.ping()
                    live.append(ws)
                except websockets.ConnectionClosed:
                    reconnected += 1
                    live.append(await subscribed(url, instrument))
            assert reconnected >= 1  # round robin gave the stopped process one of them
            after = await push(5)
            for ws in live:
                assert await read_ticks(ws, instrument, 5) == after

            last = await client.post("/orders", json=ORDER, headers=headers)
            assert last.status_code == 201, last.text
            for ws in live:
                await ws.close()
            # Every account socket, resumed where the stopped process left it, has every
            # order's fill, and the same events in the same order, none twice.
            placed = {order.json()["order_id"] for order in [first, *answers, last]}
            sequences = [
                await follow_orders(account_url, ws, last_id, placed) for ws, last_id in accounts
            ]
            for ids in sequences:
                assert ids == sorted(set(ids))
            # From the newest snapshot on, the sockets saw the same log.
            start = max(last_id for _, last_id in accounts)
            common = [[i for i in ids if i > start] for ids in sequences]
            shortest = min(len(ids) for ids in common)
            assert shortest >= len(placed)
            assert len({tuple(ids[:shortest]) for ids in common}) == 1
        finally:
            await agent.stop()
    access = (tmp_path / "access.log").read_text()
    assert "GET /api/v1/agents/" in access  # the agent long-polled through nginx
    assert "GET /ws/prices" in access
    assert "GET /ws/account" in access
