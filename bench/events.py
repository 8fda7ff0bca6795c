"""The account events stream (`WS /ws/account`), part by part:

(a) latency from an order's REST response to its `order` event at the client: 500 market
    orders one at a time, an instant agent (its own process) filling each, one account
    socket reading the stream; p50/p99 (target p99 ≤ 50 ms). Negative when the event
    came first (the event is appended as the agent's answer is stored, the response
    follows the same wake-up).
(c) fan-out: 1,000 account sockets over 100 connections (10 each, in a client process of
    their own), events appended at 200/s round-robin over the connections; delivery (every
    socket must get every event of its connection) and latency from the append to the
    client (p50/p99).

Parts (b) (a stop-loss hit to its `position_closed`) and (d) (the agent's watch loop)
are the agent's: `PARTS` names a function per part, and `main` runs them in order.

    python -m bench.events [--quick] [a] [c]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import httpx
import websockets

from app.core.config import Settings
from app.events import Draft
from app.schemas.common import iso_utc
from bench.common import (
    bench_settings,
    onboard,
    percentile,
    print_table,
    run_as_served,
    serve_in_loop,
    services_listening,
)
from bench.fanout import raise_open_files_limit
from bench.instant_agent import InstantAgent
from bench.trading import wait_for_agent

ORDER = {"symbol": "EURUSD", "side": "buy", "volume": 0.1}
SOCKETS_PER_CONNECTION = 10
# Appends at once (as many agents' requests would be): memory://'s pool is small.
APPENDS_IN_FLIGHT = 8


def stores() -> list[str]:
    found = ["sqlite"] + (["postgres"] if services_listening() else [])
    if len(found) == 1:
        print("PostgreSQL or Redis not listening on 127.0.0.1: SQLite only", file=sys.stderr)
    return found


def ws_url(base_url: str, token: str) -> str:
    return base_url.replace("http://", "ws://", 1) + f"/ws/account?token={token}"


# -- (a) REST response -> order event ---------------------------------------------------------


async def order_event_latency(settings: Settings, orders: int) -> list[float]:
    """Seconds from each order's 201 to its `order` event at the socket."""
    latencies: list[float] = []
    async with serve_in_loop(settings) as api:
        who = await onboard(api.base_url)
        headers = {"Authorization": f"Bearer {who.token}"}
        seen: dict[str, float] = {}
        arrived = asyncio.Event()

        async def read(ws: Any) -> None:
            async for message in ws:
                body = json.loads(message)
                if body["type"] == "event" and body["event"]["kind"] == "order":
                    seen[body["event"]["data"]["order_id"]] = time.perf_counter()
                    arrived.set()

        async with (
            websockets.connect(ws_url(api.base_url, who.token)) as ws,
            httpx.AsyncClient(
                base_url=f"{api.base_url}/api/v1", headers=headers, timeout=30
            ) as http,
        ):
            await ws.recv()  # the snapshot
            reader = asyncio.create_task(read(ws))
            with InstantAgent(api.base_url, who.agent_id, who.agent_token, workers=2):
                await wait_for_agent(http)
                for index in range(orders + 20):
                    response = await http.post("/orders", json=ORDER)
                    answered = time.perf_counter()
                    if response.status_code != 201:
                        raise RuntimeError(f"POST /orders: {response.status_code}")
                    order_id = response.json()["order_id"]
                    async with asyncio.timeout(5):
                        while order_id not in seen:
                            arrived.clear()
                            await arrived.wait()
                    if index >= 20:  # warm-up
                        latencies.append(seen[order_id] - answered)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    return latencies


def part_a(quick: bool) -> None:
    orders = 100 if quick else 500
    rows = []
    for store in stores():
        with bench_settings(store, rate_limit_trading_per_second=1_000_000) as settings:
            took = run_as_served(order_event_latency(settings, orders))
        p50, p99 = percentile(took, 50) * 1000, percentile(took, 99) * 1000
        verdict = "ok" if p99 <= 50 else "MISSED"
        rows.append([store, len(took), f"{p50:.2f}", f"{p99:.2f}", f"≤ 50 ({verdict})"])
    print(f"\n(a) order's REST response -> its `order` event at the client (ms), {orders} orders")
    print_table(["store", "n", "p50", "p99", "p99 target"], rows)


# -- (c) 1,000 sockets over 100 connections -------------------------------------------------


def socket_clients(pipe: Connection, urls: list[str]) -> None:
    """The client process: opens every socket, reads until told to stop, then sends back
    `(events received per socket, latencies in seconds)`."""
    raise_open_files_limit()
    asyncio.run(read_sockets(pipe, urls))


async def read_sockets(pipe: Connection, urls: list[str]) -> None:
    received = [0] * len(urls)
    latencies: list[float] = []
    ready = 0
    all_ready = asyncio.Event()

    failed = 0

    def counted() -> None:
        nonlocal ready
        ready += 1
        if ready == len(urls):
            all_ready.set()

    async def follow(index: int, url: str) -> None:
        nonlocal failed
        try:
            async with websockets.connect(url, open_timeout=60, max_queue=None) as ws:
                await ws.recv()  # the snapshot
                counted()
                async for message in ws:
                    now = time.time()
                    body = json.loads(message)
                    if body["type"] != "event":
                        continue
                    received[index] += 1
                    sent = datetime.fromisoformat(body["event"]["data"]["time"]).timestamp()
                    latencies.append(now - sent)
        except (OSError, websockets.WebSocketException) as exc:
            failed += 1
            print(f"socket {index}: {exc!r}", file=sys.stderr)
            if not all_ready.is_set():
                counted()

    tasks = [asyncio.create_task(follow(i, url)) for i, url in enumerate(urls)]
    await all_ready.wait()
    pipe.send("ready")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, pipe.recv)  # "stop"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    pipe.send((received, latencies, failed))


def deal(ticket: int) -> dict[str, Any]:
    return {
        "ticket": ticket,
        "type": "balance",
        "profit": 1.0,
        "reason": "other",
        "time": datetime.now(UTC).isoformat(),  # microseconds: the latency's start
    }


async def fan_out(
    settings: Settings, store: str, connections: int, rate: float, seconds: float
) -> list[object]:
    async with serve_in_loop(settings) as api:
        who = [await onboard(api.base_url) for _ in range(connections)]
        ids = [await connection_id(api.base_url, w.token) for w in who]
        urls = [ws_url(api.base_url, w.token) for w in who for _ in range(SOCKETS_PER_CONNECTION)]
        ours, theirs = multiprocessing.get_context("spawn").Pipe()
        clients = multiprocessing.get_context("spawn").Process(
            target=socket_clients, args=(theirs, urls)
        )
        clients.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ours.recv)  # "ready"
        log = api.resources.account_events.log
        total = int(rate * seconds)
        started = time.perf_counter()
        appends = []
        in_flight = asyncio.Semaphore(APPENDS_IN_FLIGHT)

        async def append(connection: uuid.UUID, draft: Draft) -> None:
            async with in_flight:
                await log.append(connection, [draft])

        for n in range(total):  # on schedule, not each after the previous one's answer
            due = started + n / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            draft = Draft("deal", deal(n + 1), iso_utc(datetime.now(UTC)))
            appends.append(asyncio.create_task(append(ids[n % connections], draft)))
        await asyncio.gather(*appends)
        sent_for = time.perf_counter() - started
        await asyncio.sleep(2)  # the last events' way to the client process
        ours.send("stop")
        received, latencies, failed = await loop.run_in_executor(None, ours.recv)
        clients.join(30)
    expected = total * SOCKETS_PER_CONNECTION
    delivered = sum(received)
    latencies.sort()
    return [
        store,
        len(urls),
        connections,
        f"{total / sent_for:.0f}",
        f"{delivered}/{expected}" + (f" ({failed} sockets failed)" if failed else ""),
        f"{percentile(latencies, 50) * 1000:.1f}",
        f"{percentile(latencies, 99) * 1000:.1f}",
    ]


async def connection_id(base_url: str, token: str) -> uuid.UUID:
    async with httpx.AsyncClient(base_url=f"{base_url}/api/v1") as http:
        listed = await http.get("/broker-connections", headers={"Authorization": f"Bearer {token}"})
    return uuid.UUID(listed.json()[0]["id"])


def part_c(quick: bool) -> None:
    seconds = 5.0 if quick else 15.0
    rows = []
    for store in stores():
        with bench_settings(store, rate_limit_trading_per_second=1_000_000) as settings:
            rows.append(run_as_served(fan_out(settings, store, 100, 200.0, seconds)))
    print(f"\n(c) account sockets, events appended at 200/s for {seconds:.0f} s (latency ms)")
    print_table(["store", "sockets", "connections", "events/s", "delivered", "p50", "p99"], rows)


PARTS: dict[str, Callable[[bool], None]] = {"a": part_a, "c": part_c}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    chosen = [name for name in argv if name in PARTS] or list(PARTS)
    for name in chosen:
        PARTS[name](quick)


if __name__ == "__main__":
    main()
