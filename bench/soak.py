"""Soak: two `mt5gate serve` processes living through what a deployment lives through.

`python -m bench.soak [--minutes 10] [--seed N]` (or `make soak`)

PostgreSQL (a database of its own, created and dropped) and a redis-server of its own on a
free port, which it stops and starts again midway; the machine's shared services are never
restarted. Two `mt5gate serve` processes on free loopback ports, A and B. The soak is the
platform's price source (an agent marked with `mt5gate set-price-source`): it pushes a tick
of every instrument ten times a second through `POST /agents/{id}/prices`, to A and B in
turn, so it knows each tick that was published (a `202`) and when. A trader's simulated
agent (`mt5gate agent --backend sim`, long-polling B) fills the orders, one a second,
placed through A and B in turn. The phases:

- `waves`: WebSocket price clients connect and leave (a few stay the whole phase), spread
  over both processes and over single- and multi-instrument sockets;
- `quiet`: no socket open at all (30 s and more; the suite's short run idles 20 s, longer
  than the Redis client's 15 s `health_check_interval`);
- `redis-restart`, `serve-restart`: waves, during which the soak's redis-server is stopped
  for 2 s and started again, or B is stopped (SIGTERM) and started again on its port.

Per phase it prints the ticks expected vs delivered (a tick whose push began after a socket
had its first message on that instrument, and was answered `202` before the socket began
to leave, must reach it), the orders placed vs in a final state at the end, every 5xx
answered to the soak, and each process's RSS. Ticks published inside a restart window (a
Redis restart: from the stop to 5 s after the start, for every socket; a `serve` restart:
from the SIGTERM to 2 s after it answers again, for that process's sockets) are counted
apart and not held to the target. Targets: every tick delivered to every connected socket
outside the restart windows, every order final, no 5xx but a `503` inside a Redis restart
window, RSS growth under 10% (end of the warm-up phase to the end). Exit status 1 when one
is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import websockets
from cryptography.fernet import Fernet
from websockets.exceptions import InvalidStatus

from bench.common import (
    RedisServer,
    _pg_admin,
    free_port,
    onboard,
    print_table,
    rss_bytes,
    wait_answering,
)

HOST = "127.0.0.1"
INSTRUMENTS = 4
PUSH_INTERVAL_SECONDS = 0.1
PUSHES_IN_FLIGHT = 32
ORDER_INTERVAL_SECONDS = 1.0
WAVE_INTERVAL_SECONDS = 2.5
# A leaving socket reads on until every tick it is owed has come, or for this long.
DELIVERY_TIMEOUT_SECONDS = 10.0
# A socket the server closed: ticks answered this long before may have been in flight.
IN_FLIGHT_SECONDS = 1.5
# A socket with no first tick this long after connecting (outside a window) is silent.
FIRST_TICK_SECONDS = 5.0
REDIS_DOWN_SECONDS = 2.0
# After Redis is back: the listener's reconnect backoff is at most 3 s, then it resubscribes.
REDIS_RECOVERY_SECONDS = 5.0
SERVE_RECOVERY_SECONDS = 2.0
# When in a restart phase the restart happens (a fraction of the phase).
RESTART_AT = 0.2
FINAL_STATUSES = frozenset({"filled", "rejected", "expired", "placed", "cancelled"})
RSS_GROWTH_LIMIT = 0.10
TOKEN_REFRESH_SECONDS = 20 * 60  # access tokens live an hour
ACCESS_5XX = re.compile(r'uvicorn\.access .*" (5\d\d)\b')

PhaseKind = Literal["waves", "quiet", "redis-restart", "serve-restart"]


# -- the plan -------------------------------------------------------------------------------------


@dataclass
class Phase:
    kind: PhaseKind
    seconds: float
    name: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    rss_end: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.kind


def schedule(minutes: float, *, quiet_seconds: float = 35.0) -> list[Phase]:
    """About `minutes` of phases: a warm-up, then quiet spells between waves; the Redis
    restart near a third of the way, the `serve` restart near two thirds."""
    total = minutes * 60
    phases = [Phase("waves", 30, "warm-up")]
    elapsed = 30.0
    restarts: list[tuple[float, PhaseKind]] = [
        (total / 3, "redis-restart"),
        (2 * total / 3, "serve-restart"),
    ]
    while elapsed + quiet_seconds + 45 <= total:
        phases.append(Phase("quiet", quiet_seconds))
        elapsed += quiet_seconds
        if restarts and elapsed >= restarts[0][0]:
            phases.append(Phase(restarts.pop(0)[1], 40))
            elapsed += 40
        else:
            phases.append(Phase("waves", 45))
            elapsed += 45
    phases += [Phase(kind, 40) for _, kind in restarts]
    return phases


def short_schedule() -> list[Phase]:
    """About a minute, for the suite: one quiet spell longer than the Redis client's 15 s
    `health_check_interval`, then waves, both restarts, and waves again."""
    return [
        Phase("waves", 4, "warm-up"),
        Phase("quiet", 20),
        Phase("waves", 4),
        Phase("redis-restart", 9),
        Phase("serve-restart", 9),
        Phase("waves", 3),
    ]


# -- what happened --------------------------------------------------------------------------------


@dataclass
class Window:
    """A restart: ticks published in it are not held to the target, for the sockets of
    `process` (None: of both)."""

    kind: str
    started_at: float
    ended_at: float = float("inf")
    process: str | None = None

    def covers(self, process: str, sent_at: float, acked_at: float) -> bool:
        applies = self.process is None or self.process == process
        return applies and sent_at <= self.ended_at and acked_at >= self.started_at


@dataclass
class SocketLog:
    process: str
    instruments: tuple[str, ...]
    opened_at: float
    ready_at: dict[str, float] = field(default_factory=dict)  # its first tick, per instrument
    received: dict[str, set[int]] = field(default_factory=dict)
    duplicates: int = 0
    ended_at: float | None = None  # when it began to leave, or the server closed it
    closed_by_server: int | None = None  # the close code, when the server closed it first
    closed_at: float | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set on every tick


@dataclass
class Feed:
    """Every tick the soak published (answered 202): per instrument, in push order."""

    sent_at: dict[str, list[float]]
    acked_at: dict[str, list[float]]
    ts: dict[str, list[int]]
    failed: dict[str, int] = field(default_factory=dict)
    skipped: int = 0

    @classmethod
    def of(cls, instruments: list[str]) -> Feed:
        return cls(
            {i: [] for i in instruments}, {i: [] for i in instruments}, {i: [] for i in instruments}
        )

    def sort(self) -> None:
        for instrument in self.sent_at:
            rows = sorted(
                zip(
                    self.sent_at[instrument],
                    self.acked_at[instrument],
                    self.ts[instrument],
                    strict=True,
                )
            )
            self.sent_at[instrument] = [r[0] for r in rows]
            self.acked_at[instrument] = [r[1] for r in rows]
            self.ts[instrument] = [r[2] for r in rows]


@dataclass
class OrderLog:
    client_order_id: str
    process: str
    sent_at: float
    answered_at: float | None = None
    status_code: int | None = None
    order_id: str | None = None
    status: str | None = None  # as answered, then as found at the end


@dataclass
class ServerError:
    at: float
    process: str
    route: str
    status: int


@dataclass
class PhaseResult:
    phase: Phase
    sockets: int = 0
    expected: int = 0
    delivered: int = 0
    excluded: int = 0
    excluded_delivered: int = 0
    silent: int = 0
    dropped: int = 0
    # Sockets that got their first tick and then none of the ticks they were owed.
    stuck: int = 0
    lost_by_process: dict[str, int] = field(default_factory=dict)
    orders: int = 0
    orders_final: int = 0
    order_latencies: list[float] = field(default_factory=list)
    five_xx: int = 0
    five_xx_allowed: int = 0


# -- processes ------------------------------------------------------------------------------------


class ServeProcess:
    """One `mt5gate serve` on a fixed port; `restart` starts a new process on the same one."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = env
        self.workdir = workdir
        self.lives = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.rss_launch: list[int] = []

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self.lives += 1
        log_path = self.workdir / f"serve-{self.name}-{self.lives}.log"
        self.logs.append(log_path)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "app.cli",
                    "serve",
                    "--host",
                    HOST,
                    "--port",
                    str(self.port),
                ],
                env={**os.environ, **self.env},
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_answering(self.base_url, self.process, log_path, 60)
        self.rss_launch.append(self.rss())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def rss(self) -> int:
        return rss_bytes(self.process.pid) if self.process is not None else 0


def stop_agent(agent: subprocess.Popen[bytes]) -> None:
    agent.terminate()
    try:
        agent.wait(timeout=15)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()


# -- the soak -------------------------------------------------------------------------------------


class Soak:
    def __init__(self, phases: list[Phase], workdir: Path, seed: int) -> None:
        self.phases = phases
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.seed = seed
        tag = uuid.uuid4().hex[:6].upper()
        self.instruments = [f"SK{tag}{n}" for n in range(INSTRUMENTS)]
        self.feed = Feed.of(self.instruments)
        self.sockets: list[SocketLog] = []
        self.drops: list[SocketLog] = []  # closed by the server outside a window
        self.orders: list[OrderLog] = []
        self.errors: list[ServerError] = []
        self.transport_errors: dict[str, int] = {}
        self.windows: list[Window] = []
        self.down: set[str] = set()
        self.servers: dict[str, ServeProcess] = {}
        self.redis: RedisServer | None = None
        self.token = ""
        self.rss_warm: dict[str, int] = {}
        self.stopping = False
        self.started = time.monotonic()
        self._turn = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- helpers --------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic()

    def elapsed(self) -> str:
        return f"[{self.now() - self.started:6.1f}s]"

    def up_processes(self) -> list[str]:
        return [name for name in self.servers if name not in self.down]

    def next_process(self) -> str:
        """A and B in turn, skipping one that is restarting (as a load balancer would)."""
        up = self.up_processes() or list(self.servers)
        self._turn += 1
        return up[self._turn % len(up)]

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def record(self, process: str, route: str, status: int) -> None:
        if status >= 500:
            self.errors.append(ServerError(self.now(), process, route, status))

    def in_window(self, process: str, sent_at: float, acked_at: float) -> bool:
        return any(w.covers(process, sent_at, acked_at) for w in self.windows)

    # -- the price feed ------------------------------------------------------------------

    async def run_feed(self, http: httpx.AsyncClient, agent_id: str, agent_token: str) -> None:
        headers = {"Authorization": f"Bearer {agent_token}"}
        in_flight = asyncio.Semaphore(PUSHES_IN_FLIGHT)
        last_ts = dict.fromkeys(self.instruments, 0)
        bid = dict.fromkeys(self.instruments, 1.1)

        async def push(process: str, body: dict[str, dict[str, Any]]) -> None:
            sent_at = self.now()
            url = f"{self.servers[process].base_url}/api/v1/agents/{agent_id}/prices"
            try:
                response = await http.post(url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            else:
                self.record(process, "POST /agents/{id}/prices", response.status_code)
                reason = "" if response.status_code == 202 else str(response.status_code)
            finally:
                in_flight.release()
            if reason:
                self.feed.failed[reason] = self.feed.failed.get(reason, 0) + 1
                return
            acked_at = self.now()
            for instrument, tick in body.items():
                self.feed.sent_at[instrument].append(sent_at)
                self.feed.acked_at[instrument].append(acked_at)
                self.feed.ts[instrument].append(tick["ts"])

        next_at = self.now()
        while not self.stopping:
            if in_flight.locked():
                self.feed.skipped += 1
            else:
                await in_flight.acquire()
                body = {}
                wall_ms = int(time.time() * 1000)
                for instrument in self.instruments:
                    ts = last_ts[instrument] = max(wall_ms, last_ts[instrument] + 1)
                    bid[instrument] = round(bid[instrument] + self.rng.uniform(-5e-5, 5e-5), 5)
                    body[instrument] = {"bid": bid[instrument], "ask": bid[instrument] + 2e-4}
                    body[instrument]["ts"] = ts
                self.spawn(push(self.next_process(), body))
            next_at += PUSH_INTERVAL_SECONDS
            await asyncio.sleep(max(0.0, next_at - self.now()))

    # -- orders ------------------------------------------------------------------------------

    async def run_orders(self, http: httpx.AsyncClient) -> None:
        count = 0
        next_at = self.now()
        while not self.stopping:
            count += 1
            order = OrderLog(f"soak-{self.seed}-{count}", self.next_process(), self.now())
            self.orders.append(order)
            self.spawn(self.place_order(http, order, "buy" if count % 2 else "sell"))
            next_at += ORDER_INTERVAL_SECONDS
            await asyncio.sleep(max(0.0, next_at - self.now()))

    async def place_order(self, http: httpx.AsyncClient, order: OrderLog, side: str) -> None:
        body = {
            "symbol": "EURUSD",
            "side": side,
            "volume": 0.01,
            "client_order_id": order.client_order_id,
        }
        try:
            response = await http.post(
                f"{self.servers[order.process].base_url}/api/v1/orders",
                json=body,
                headers={"Authorization": f"Bearer {self.token}"},
            )
        except httpx.HTTPError as exc:
            key = f"{order.process} {type(exc).__name__}"
            self.transport_errors[key] = self.transport_errors.get(key, 0) + 1
            return
        order.answered_at = self.now()
        order.status_code = response.status_code
        self.record(order.process, "POST /orders", response.status_code)
        if response.status_code in (201, 202):
            answer = response.json()
            order.order_id, order.status = answer["order_id"], answer["status"]
        elif response.status_code == 422 and response.json().get("detail") == "order_rejected":
            answer = response.json()["order"]
            order.order_id, order.status = answer["order_id"], answer["status"]

    async def settle_orders(self, http: httpx.AsyncClient, timeout: float) -> None:
        """Reads every order back (by `client_order_id`, so that an order whose answer was
        lost is found too) until all are final or `timeout` passes."""
        deadline = self.now() + timeout
        by_client_id = {order.client_order_id: order for order in self.orders}
        headers = {"Authorization": f"Bearer {self.token}"}
        while True:
            before: str | None = None
            while True:
                params: dict[str, Any] = {"limit": 500}
                if before is not None:
                    params["before"] = before
                process = self.next_process()
                url = f"{self.servers[process].base_url}/api/v1/orders"
                try:
                    response = await http.get(url, params=params, headers=headers)
                except httpx.HTTPError:
                    break  # try again in a second
                self.record(process, "GET /orders", response.status_code)
                page = response.json() if response.status_code == 200 else []
                for row in page:
                    order = by_client_id.get(row.get("client_order_id") or "")
                    if order is not None:
                        order.order_id, order.status = row["order_id"], row["status"]
                if len(page) < 500:
                    break
                before = page[-1]["order_id"]
            if all(o.status in FINAL_STATUSES for o in self.orders) or self.now() > deadline:
                return
            await asyncio.sleep(1)

    # -- price sockets ---------------------------------------------------------------------

    async def run_socket(self, process: str, instruments: tuple[str, ...], leave_at: float) -> None:
        """One client: connects, reads until `leave_at` (reconnecting, as a browser does,
        when the server closes it first), then reads on until it has every tick it is owed
        (bounded) and closes."""
        while self.now() < leave_at:
            multi = len(instruments) > 1
            path = "/ws/prices" if multi else f"/ws/prices/{instruments[0]}"
            url = f"ws://{HOST}:{self.servers[process].port}{path}?token={self.token}"
            log = SocketLog(process, instruments, self.now())
            log.received = {i: set() for i in instruments}
            try:
                async with websockets.connect(url, open_timeout=10, max_size=2**20) as ws:
                    self.sockets.append(log)
                    if multi:
                        await ws.send(json.dumps({"type": "subscribe", "instruments": instruments}))
                    reader = asyncio.create_task(self.read_ticks(ws, log))
                    done, _ = await asyncio.wait({reader}, timeout=max(0, leave_at - self.now()))
                    if not done:
                        log.ended_at = self.now()
                        done = await self.read_owed_ticks(log, reader)
                    if done:  # the server closed it before the client did
                        log.closed_at = self.now()
                        log.closed_by_server = ws.close_code or 1006
                        if log.ended_at is None:  # before the client began to leave
                            log.ended_at = log.closed_at - IN_FLIGHT_SECONDS
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
                if log.closed_by_server is None:
                    return
            except InvalidStatus as exc:
                self.record(process, "WS /ws/prices", exc.response.status_code)
                key = f"{process} WS {exc.response.status_code}"
                self.transport_errors[key] = self.transport_errors.get(key, 0) + 1
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                key = f"{process} WS {type(exc).__name__}"
                self.transport_errors[key] = self.transport_errors.get(key, 0) + 1
            await asyncio.sleep(0.5)

    async def read_ticks(self, ws: Any, log: SocketLog) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                now = self.now()
                message = json.loads(raw)
                if message.get("type") != "tick":
                    continue
                instrument, ts = message["data"]["instrument"], message["data"]["ts"]
                received = log.received.get(instrument)
                if received is None:
                    continue
                log.ready_at.setdefault(instrument, now)
                if ts in received:
                    log.duplicates += 1
                received.add(ts)
                log.arrived.set()

    async def read_owed_ticks(self, log: SocketLog, reader: asyncio.Task[None]) -> bool:
        """Waits until the socket has every tick it is owed up to `log.ended_at`, for at
        most `DELIVERY_TIMEOUT_SECONDS`; True if the server closed it meanwhile."""
        missing = self.owed_ticks(log)
        deadline = self.now() + DELIVERY_TIMEOUT_SECONDS
        while True:
            for instrument, stamps in missing.items():
                stamps -= log.received[instrument]
            remaining = deadline - self.now()
            if not any(missing.values()) or remaining <= 0:
                return False
            log.arrived.clear()
            arrival = asyncio.ensure_future(log.arrived.wait())
            done, _ = await asyncio.wait(
                {reader, arrival}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            arrival.cancel()
            if reader in done:
                return True

    def owed_ticks(self, log: SocketLog) -> dict[str, set[int]]:
        """The `ts` of each tick the socket is owed: pushed after its first tick on that
        instrument, answered by `log.ended_at`, outside the restart windows. (While the
        soak runs, the feed's lists are in the order the pushes were answered.)"""
        assert log.ended_at is not None
        owed: dict[str, set[int]] = {}
        for instrument in log.instruments:
            stamps = owed[instrument] = set()
            ready = log.ready_at.get(instrument)
            if ready is None:
                continue
            sent, acked = self.feed.sent_at[instrument], self.feed.acked_at[instrument]
            for n in range(bisect.bisect_left(acked, ready), len(acked)):
                if acked[n] > log.ended_at:
                    break
                if sent[n] >= ready and not self.in_window(log.process, sent[n], acked[n]):
                    stamps.add(self.feed.ts[instrument][n])
        return owed

    async def waves(self, phase: Phase) -> None:
        """Sockets connecting and leaving until the phase's end; two stay all along."""
        end = phase.started_at + phase.seconds
        clients = [
            self.spawn(self.run_socket("A", (self.instruments[0],), end)),
            self.spawn(self.run_socket("B", tuple(self.instruments[1:3]), end)),
        ]
        while (left := end - self.now()) > 0.5:
            for _ in range(self.rng.randint(4, 12)):
                count = 2 if self.rng.random() < 0.25 else 1
                instruments = tuple(self.rng.sample(self.instruments, count))
                leave_at = min(end, self.now() + self.rng.uniform(1.5, 8.0))
                clients.append(
                    self.spawn(self.run_socket(self.next_process(), instruments, leave_at))
                )
            await asyncio.sleep(min(WAVE_INTERVAL_SECONDS, left))
        await asyncio.gather(*clients)

    # -- restarts -------------------------------------------------------------------------

    async def restart_redis(self, delay: float) -> None:
        await asyncio.sleep(delay)
        assert self.redis is not None
        window = Window("redis", self.now())
        self.windows.append(window)
        await asyncio.to_thread(self.redis.stop)
        print(f"{self.elapsed()}   redis-server stopped", flush=True)
        await asyncio.sleep(REDIS_DOWN_SECONDS)
        await asyncio.to_thread(self.redis.start)
        print(f"{self.elapsed()}   redis-server started again", flush=True)
        window.ended_at = self.now() + REDIS_RECOVERY_SECONDS
        await asyncio.sleep(REDIS_RECOVERY_SECONDS)

    async def restart_serve(self, name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        server = self.servers[name]
        window = Window(f"serve {name}", self.now(), process=name)
        self.windows.append(window)
        self.down.add(name)
        await asyncio.to_thread(server.stop)
        code = server.process.returncode if server.process else None
        print(f"{self.elapsed()}   serve {name} stopped (exit {code})", flush=True)
        await asyncio.to_thread(server.start)
        print(f"{self.elapsed()}   serve {name} answers again", flush=True)
        window.ended_at = self.now() + SERVE_RECOVERY_SECONDS
        await asyncio.sleep(SERVE_RECOVERY_SECONDS)
        self.down.discard(name)

    async def run_phase(self, phase: Phase, index: int) -> None:
        phase.started_at = self.now()
        if phase.kind == "quiet":
            await asyncio.sleep(phase.seconds)
        else:
            restart = None
            if phase.kind == "redis-restart":
                restart = self.spawn(self.restart_redis(phase.seconds * RESTART_AT))
            elif phase.kind == "serve-restart":
                restart = self.spawn(self.restart_serve("B", phase.seconds * RESTART_AT))
            await self.waves(phase)
            if restart is not None:
                await restart
        phase.ended_at = self.now()
        phase.rss_end = {name: server.rss() for name, server in self.servers.items()}
        if index == 0:
            self.rss_warm = dict(phase.rss_end)
        result = self.phase_results()[index]
        print(f"{self.elapsed()} {index + 1}/{len(self.phases)} {phase_line(result)}", flush=True)

    # -- the account ----------------------------------------------------------------------

    async def refresh_token(self, http: httpx.AsyncClient, email: str, password: str) -> None:
        while not self.stopping:
            await asyncio.sleep(TOKEN_REFRESH_SECONDS)
            process = self.next_process()
            response = await http.post(
                f"{self.servers[process].base_url}/api/v1/auth/login",
                json={"email": email, "password": password},
            )
            self.record(process, "POST /auth/login", response.status_code)
            if response.status_code == 200:
                self.token = response.json()["access_token"]

    # -- the figures --------------------------------------------------------------------------

    def phase_of(self, at: float) -> int:
        for index, phase in enumerate(self.phases):
            if phase.started_at and at < (phase.ended_at or float("inf")):
                return index
        return len(self.phases) - 1

    def phase_results(self) -> list[PhaseResult]:
        results = [PhaseResult(phase) for phase in self.phases]
        self.drops = []
        feed = self.feed
        rows = {i: (feed.sent_at[i], feed.acked_at[i], feed.ts[i]) for i in self.instruments}
        for sock in self.sockets:
            results[self.phase_of(sock.opened_at)].sockets += 1
            # Ticks answered after `end` may still be in flight when the socket closes.
            end = sock.ended_at if sock.ended_at is not None else self.now() - IN_FLIGHT_SECONDS
            closed_at = sock.closed_at
            if closed_at is not None and not self.in_window(sock.process, closed_at, closed_at):
                results[self.phase_of(closed_at)].dropped += 1
                self.drops.append(sock)
            owed = got = 0
            silent = False
            for instrument in sock.instruments:
                ready = sock.ready_at.get(instrument)
                if ready is None:
                    lived = end - sock.opened_at
                    silent |= lived > FIRST_TICK_SECONDS and not self.in_window(
                        sock.process, sock.opened_at, end
                    )
                    continue
                sent, acked, stamps = rows[instrument]
                received = sock.received[instrument]
                for n in range(bisect.bisect_left(sent, ready), len(sent)):
                    if sent[n] > end:
                        break
                    if acked[n] > end:
                        continue
                    result = results[self.phase_of(sent[n])]
                    delivered = stamps[n] in received
                    if self.in_window(sock.process, sent[n], acked[n]):
                        result.excluded += 1
                        result.excluded_delivered += delivered
                        continue
                    result.expected += 1
                    result.delivered += delivered
                    owed, got = owed + 1, got + delivered
                    if not delivered:
                        lost = result.lost_by_process
                        lost[sock.process] = lost.get(sock.process, 0) + 1
            results[self.phase_of(sock.opened_at)].silent += silent
            if owed and not got:
                results[self.phase_of(sock.opened_at)].stuck += 1
        for order in self.orders:
            result = results[self.phase_of(order.sent_at)]
            result.orders += 1
            result.orders_final += order.status in FINAL_STATUSES
            if order.answered_at is not None:
                result.order_latencies.append(order.answered_at - order.sent_at)
        for error in self.errors:
            result = results[self.phase_of(error.at)]
            redis_window = any(
                w.kind == "redis" and w.started_at <= error.at <= w.ended_at for w in self.windows
            )
            if error.status == 503 and redis_window:
                result.five_xx_allowed += 1
            else:
                result.five_xx += 1
        return results

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> SoakReport:
        async with self.stores() as env:
            for name in ("A", "B"):
                self.servers[name] = ServeProcess(name, env, self.workdir)
            await asyncio.gather(*(asyncio.to_thread(s.start) for s in self.servers.values()))
            feeder = await onboard(self.servers["B"].base_url)
            marking = self.spawn(self.cli(env, "set-price-source", feeder.agent_id))
            trader = await onboard(self.servers["A"].base_url)
            self.token = trader.token
            agent_log = self.workdir / "agent.log"
            with agent_log.open("wb") as log:
                agent = subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "agent", "--api"]
                    + [self.servers["B"].base_url, "--agent-id", trader.agent_id]
                    + ["--backend", "sim"],
                    env={**os.environ, "MT5GATE_AGENT_TOKEN": trader.agent_token},
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                await marking
                print(
                    f"{self.elapsed()} ready: serve A :{self.servers['A'].port}, serve B "
                    f":{self.servers['B'].port}, redis :{self.redis.port if self.redis else 0}, "
                    f"{len(self.phases)} phases, seed {self.seed}",
                    flush=True,
                )
                limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
                async with httpx.AsyncClient(timeout=30, limits=limits) as http:
                    background = [
                        self.spawn(self.run_feed(http, feeder.agent_id, feeder.agent_token)),
                        self.spawn(self.run_orders(http)),
                        self.spawn(self.refresh_token(http, trader.email, trader.password)),
                    ]
                    for index, phase in enumerate(self.phases):
                        await self.run_phase(phase, index)
                    self.stopping = True
                    background[2].cancel()
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                    # Before the orders are read back: 500 orders a page is a one-off
                    # allocation, not growth.
                    rss_end = {name: server.rss() for name, server in self.servers.items()}
                    await self.settle_orders(http, timeout=40)
            finally:
                await asyncio.gather(
                    asyncio.to_thread(stop_agent, agent),
                    *(asyncio.to_thread(server.stop) for server in self.servers.values()),
                )
        self.feed.sort()
        logs = [path for server in self.servers.values() for path in server.logs]
        return SoakReport(self, self.phase_results(), rss_end, count_log_lines(logs, agent_log))

    async def cli(self, env: dict[str, str], *args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            *args,
            env={**os.environ, **env},
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"mt5gate {' '.join(args)}: {output.decode()[-1000:]}")

    @contextlib.asynccontextmanager
    async def stores(self) -> AsyncIterator[dict[str, str]]:
        """A PostgreSQL database (migrated as `mt5gate migrate` does) and a redis-server of the
        soak's own; the environment for `mt5gate serve`."""
        name = f"mt5gate_soak_{uuid.uuid4().hex[:10]}"
        await _pg_admin(f'CREATE DATABASE "{name}"')
        self.redis = RedisServer(self.workdir)
        try:
            await asyncio.to_thread(self.redis.start)
            env = {
                "DATABASE_URL": f"postgresql+asyncpg://postgres@{HOST}:5432/{name}",
                "REDIS_URL": self.redis.url,
                "MT5GATE_ENV": "production",
                "JWT_SECRET": secrets.token_urlsafe(48),
                "ENCRYPTION_KEY": Fernet.generate_key().decode(),
                "LOG_LEVEL": "INFO",
            }
            from app.core.migrate import upgrade_to_head  # what `mt5gate migrate` does

            await asyncio.to_thread(upgrade_to_head, env["DATABASE_URL"])
            yield env
        finally:
            self.redis.stop()
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the report -----------------------------------------------------------------------------------


def megabytes(value: int) -> str:
    return f"{value / 2**20:.1f}"


def phase_line(result: PhaseResult) -> str:
    phase = result.phase
    lost = result.expected - result.delivered
    latencies = sorted(result.order_latencies)
    slowest = f", slowest order {latencies[-1]:.2f}s" if latencies else ""
    return (
        f"{phase.label} {phase.ended_at - phase.started_at:.0f}s: {result.sockets} sockets, "
        f"ticks {result.delivered}/{result.expected} delivered ({lost} lost"
        + "".join(f", {n} on {name}" for name, n in sorted(result.lost_by_process.items()))
        + (f", {result.stuck} sockets stuck after their first tick" if result.stuck else "")
        + (f", {result.silent} silent sockets" if result.silent else "")
        + (f", {result.dropped} dropped by the server" if result.dropped else "")
        + f"), orders {result.orders}{slowest}, 5xx {result.five_xx}"
        + (
            f" (+{result.five_xx_allowed} 503 in the Redis window)"
            if result.five_xx_allowed
            else ""
        )
        + ", RSS "
        + " ".join(f"{name} {megabytes(rss)} MB" for name, rss in phase.rss_end.items())
    )


def count_log_lines(serve_logs: list[Path], agent_log: Path) -> dict[str, int]:
    """What the processes' logs say: lines that a healthy run has none of."""
    counts = {"ws_subscribe_unconfirmed": 0, "ERROR lines": 0, "5xx in access logs": 0}
    for path in serve_logs:
        for line in path.read_text(errors="replace").splitlines():
            counts["ws_subscribe_unconfirmed"] += "event=ws_subscribe_unconfirmed" in line
            counts["ERROR lines"] += " ERROR " in line
            counts["5xx in access logs"] += bool(ACCESS_5XX.search(line))
    agent_lines = agent_log.read_text(errors="replace").splitlines()
    counts["agent: HTTP 5xx"] = sum(bool(re.search(r"HTTP 5\d\d", x)) for x in agent_lines)
    return counts


@dataclass
class SoakReport:
    soak: Soak
    results: list[PhaseResult]
    rss_end: dict[str, int]
    log_counts: dict[str, int]

    def misses(self) -> list[str]:
        soak = self.soak
        misses = []
        lost = sum(r.expected - r.delivered for r in self.results)
        silent = sum(r.silent for r in self.results)
        dropped = sum(r.dropped for r in self.results)
        stuck = sum(r.stuck for r in self.results)
        if lost or silent or dropped:
            misses.append(
                f"ticks: {lost} lost ({stuck} sockets got their first tick and then nothing), "
                f"{silent} sockets without a first tick, {dropped} sockets closed by the "
                "server, outside the restart windows"
            )
        not_final = [
            o for o in soak.orders if o.status not in FINAL_STATUSES and o not in self.unreached
        ]
        if not_final:
            statuses: dict[str, int] = {}
            for order in not_final:
                statuses[str(order.status)] = statuses.get(str(order.status), 0) + 1
            misses.append(f"orders: {len(not_final)} of {len(soak.orders)} not final {statuses}")
        five_xx = sum(r.five_xx for r in self.results)
        if five_xx:
            misses.append(f"5xx: {five_xx} answered outside what a Redis outage explains")
        for name, growth in self.rss_growth().items():
            if growth >= RSS_GROWTH_LIMIT:
                misses.append(f"RSS: serve {name} grew {growth:.1%} after the warm-up")
        return misses

    @property
    def unreached(self) -> list[OrderLog]:
        """Orders that got no answer, sent to a process in its restart window, and that no
        process knows of at the end: they were never placed."""
        soak = self.soak
        return [
            o
            for o in soak.orders
            if o.answered_at is None
            and o.status is None
            and soak.in_window(o.process, o.sent_at, o.sent_at)
        ]

    def rss_growth(self) -> dict[str, float]:
        return {
            name: self.rss_end[name] / warm - 1
            for name, warm in self.soak.rss_warm.items()
            if warm and self.rss_end.get(name)
        }

    def render(self) -> str:
        soak = self.soak
        lines: list[str] = []
        rows = []
        for result in self.results:
            phase = result.phase
            latencies = sorted(result.order_latencies)
            rows.append(
                (
                    phase.label,
                    f"{phase.ended_at - phase.started_at:.0f}",
                    result.sockets,
                    result.expected,
                    result.delivered,
                    result.expected - result.delivered,
                    f"{result.excluded_delivered}/{result.excluded}",
                    result.stuck,
                    result.silent + result.dropped,
                    f"{result.orders_final}/{result.orders}",
                    f"{latencies[len(latencies) // 2]:.2f}" if latencies else "-",
                    f"{latencies[-1]:.2f}" if latencies else "-",
                    f"{result.five_xx}"
                    + (f"+{result.five_xx_allowed}" if result.five_xx_allowed else ""),
                    megabytes(phase.rss_end.get("A", 0)),
                    megabytes(phase.rss_end.get("B", 0)),
                )
            )
        buffer = _Capture()
        with contextlib.redirect_stdout(buffer):
            print_table(
                (
                    "phase",
                    "s",
                    "sockets",
                    "ticks expected",
                    "delivered",
                    "lost",
                    "in windows",
                    "stuck",
                    "silent/dropped",
                    "orders final",
                    "order p50 s",
                    "max s",
                    "5xx",
                    "RSS A MB",
                    "RSS B MB",
                ),
                rows,
            )
        lines.append(buffer.text.rstrip())
        pushed = sum(len(v) for v in soak.feed.ts.values())
        lines.append(
            f"ticks published: {pushed} ({INSTRUMENTS} instruments); pushes refused or failed: "
            f"{soak.feed.failed or 0}; skipped (32 in flight): {soak.feed.skipped}"
        )
        statuses: dict[str, int] = {}
        for order in soak.orders:
            statuses[str(order.status)] = statuses.get(str(order.status), 0) + 1
        lines.append(
            f"orders: {len(soak.orders)} sent, at the end {statuses}"
            + (
                f"; {len(self.unreached)} never reached a process that was restarting"
                if self.unreached
                else ""
            )
        )
        restarts = [r.phase for r in self.results if r.phase.kind.endswith("restart")]
        for name in soak.servers:
            # Outside the restart phases: orders through A reach the agent (on B) by the
            # cross-process wake-up, or else by the fallback poll.
            took = sorted(
                o.answered_at - o.sent_at
                for o in soak.orders
                if o.process == name
                and o.answered_at is not None
                and not any(p.started_at <= o.sent_at <= p.ended_at for p in restarts)
            )
            if took:
                lines.append(
                    f"orders through {name} outside the restart phases: p50 "
                    f"{took[len(took) // 2] * 1000:.0f} ms, max {took[-1] * 1000:.0f} ms"
                )
        lines.append(f"transport errors: {soak.transport_errors or 'none'}")
        for sock in soak.drops:
            assert sock.closed_at is not None
            lines.append(
                f"closed by the server outside a window: serve {sock.process} at "
                f"{sock.closed_at - soak.started:.1f}s, code {sock.closed_by_server}, "
                f"{sock.closed_at - sock.opened_at:.1f}s after it connected"
            )
        for name, server in soak.servers.items():
            lives = " then ".join(megabytes(r) for r in server.rss_launch)
            lines.append(
                f"RSS serve {name}: at launch {lives} MB, after the warm-up "
                f"{megabytes(soak.rss_warm.get(name, 0))} MB, at the end "
                f"{megabytes(self.rss_end.get(name, 0))} MB "
                f"({self.rss_growth().get(name, 0.0):+.1%})"
            )
        windows = ", ".join(
            f"{w.kind} {w.started_at - soak.started:.1f}-{w.ended_at - soak.started:.1f}s"
            for w in soak.windows
        )
        lines.append(f"restart windows: {windows or 'none'}")
        lines.append(f"logs: {self.log_counts}")
        misses = self.misses()
        lines.append("targets: " + ("all met" if not misses else "MISSED: " + "; ".join(misses)))
        return "\n".join(lines)


class _Capture:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


async def run_soak(phases: list[Phase], workdir: Path, *, seed: int | None = None) -> SoakReport:
    """Runs the phases; the report says what was delivered, and `misses()` what was not."""
    seed = seed if seed is not None else random.randrange(1_000_000)
    return await Soak(phases, workdir, seed).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--keep", metavar="DIR", help="keep the processes' logs in DIR")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    phases = short_schedule() if args.minutes < 3 else schedule(args.minutes)
    load = os.getloadavg()
    print(
        f"soak: {sum(p.seconds for p in phases):.0f}s of phases on {os.cpu_count()} cores "
        f"(load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}): "
        + ", ".join(f"{p.label} {p.seconds:.0f}s" for p in phases),
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = Path(args.keep)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        report = asyncio.run(run_soak(phases, workdir, seed=args.seed))
    print()
    print(report.render())
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    return 1 if report.misses() else 0


if __name__ == "__main__":
    sys.exit(main())
