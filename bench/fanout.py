"""Price fan-out: ticks pushed through the agent route to thousands of WebSocket clients.

`python -m bench.fanout [--sizes 1000,5000,10000] [--seconds 10] [--rate 20000]`

One `mt5gate serve` process; the clients live in separate processes (minimal WebSocket
clients on raw asyncio protocols, so that the clients are not what is measured), all on
loopback. Sockets are spread over 10 instruments; a price-source agent pushes ticks at a
fixed rate through `POST /agents/{id}/prices`, sized so that the server has `--rate`
deliveries per second to make. Each tick's `ts` is unique per instrument and maps to the
moment the bench pushed it, so latency is push-to-client. Printed per size: deliveries per
second, latency p50/p99/max, ticks lost (expected deliveries that never arrived, clients
all keep up) and the server's memory per socket (RSS growth / sockets).

A second table compares the two ways the server can subscribe to Redis
(`WS_REDIS_SUBSCRIPTION=channels|pattern`): connect storm, latency, and the CPU a
process spends on ticks of instruments none of its clients watches.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    ENCRYPTION_KEY,
    JWT_SECRET,
    Onboarded,
    free_port,
    onboard,
    print_table,
    rss_bytes,
    wait_answering,
)

INSTRUMENTS = 10
CLIENT_PROCESSES = 2
MAX_POSTS_PER_SECOND = 50
CONNECTS_IN_FLIGHT = 100
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
HOST = "127.0.0.1"


# -- the clients (separate processes) -------------------------------------------------------------


class TickClient(asyncio.Protocol):
    """Just enough of RFC 6455 for a client that reads small text frames and answers pings."""

    def __init__(self, request: bytes, index: int, log: Recorder) -> None:
        self.request = request
        self.index = index
        self.log = log
        self.buffer = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before the first tick"))
        self.log.closed += 1

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(bytes(buffer[:40]).decode()))
                assert self.transport is not None
                self.transport.close()
                return
            del buffer[: end + 4]
            self.upgraded = True
        while len(buffer) >= 2:
            opcode, length, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + length:
                return
            payload = bytes(buffer[start : start + length])
            del buffer[: start + length]
            if opcode == 0x1:
                self.on_text(payload, now)
            elif opcode == 0x9:
                self.send_frame(0xA, payload)
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if payload else 1005
                self.log.close_codes[self.close_code] = (
                    self.log.close_codes.get(self.close_code, 0) + 1
                )

    def on_text(self, payload: bytes, now: float) -> None:
        if not self.ready.done():
            self.ready.set_result(None)  # the last-known tick: subscribed
            return
        at = payload.rfind(b'"ts":')
        ts = int(payload[at + 5 : payload.index(b"}", at)])
        self.log.record(self.index, ts, now)

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send_frame(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()


@dataclass
class Recorder:
    instrument_of: list[int]
    instruments: array[int] = field(default_factory=lambda: array("b"))
    stamps: array[int] = field(default_factory=lambda: array("q"))
    received_at: array[float] = field(default_factory=lambda: array("d"))
    closed: int = 0
    close_codes: dict[int, int] = field(default_factory=dict)

    def record(self, index: int, ts: int, now: float) -> None:
        self.instruments.append(self.instrument_of[index])
        self.stamps.append(ts)
        self.received_at.append(now)


def raise_open_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def client_process(pipe: Connection, port: int, paths: list[str], instrument_of: list[int]) -> None:
    raise_open_files_limit()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(run_clients(pipe, port, paths, instrument_of))


async def run_clients(
    pipe: Connection, port: int, paths: list[str], instrument_of: list[int]
) -> None:
    loop = asyncio.get_running_loop()
    log = Recorder(instrument_of)
    key = base64.b64encode(os.urandom(16)).decode()
    slots = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    clients: list[TickClient] = []
    failed = 0

    async def open_one(index: int, path: str) -> None:
        nonlocal failed
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        async with slots:
            try:
                _, client = await loop.create_connection(
                    lambda: TickClient(request, index, log), HOST, port
                )
                clients.append(client)
                await asyncio.wait_for(client.ready, 60)
            except (OSError, TimeoutError, ConnectionError):
                failed += 1

    async def report_progress(connecting: asyncio.Future[Any]) -> None:
        while not connecting.done():
            pipe.send(("progress", sum(1 for c in clients if c.ready.done()), failed))
            await asyncio.sleep(1)

    connecting = asyncio.ensure_future(
        asyncio.gather(*(open_one(i, path) for i, path in enumerate(paths)))
    )
    await report_progress(connecting)
    await connecting
    ready = sum(1 for c in clients if c.ready.done() and c.ready.exception() is None)
    pipe.send(("ready", ready, failed))
    await loop.run_in_executor(None, pipe.recv)  # "collect"
    pipe.send(
        (
            "results",
            log.instruments.tobytes(),
            log.stamps.tobytes(),
            log.received_at.tobytes(),
            [sum(1 for i in instrument_of if i == n) for n in range(INSTRUMENTS)],
            log.closed,
            log.close_codes,
        )
    )
    for client in clients:
        client.close()
    await asyncio.sleep(0.5)


# -- the server -----------------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def rss_bytes(self) -> int:
        return rss_bytes(self.process.pid)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running_server(workdir: Path, env: dict[str, str]) -> Iterator[Server]:
    port = free_port()
    log = (workdir / f"serve-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", HOST, "--port", str(port)],
        env={**os.environ, **env},
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(process, port)
    try:
        wait_answering(server.base_url, process, Path(log.name), 30)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# -- one run --------------------------------------------------------------------------------------


@dataclass
class RunResult:
    sockets: int
    ready: int
    connect_seconds: float
    deliveries_per_second: float
    latencies_ms: list[float]
    lost: int
    bytes_per_socket: float
    closed_early: int
    close_codes: dict[int, int]
    posts_failed: dict[str, int]
    cpu_percent: float
    cpu_us_per_delivery: float


async def push_ticks(
    account: Onboarded, base_url: str, names: list[str], ticks_per_second: float, seconds: float
) -> tuple[dict[tuple[int, int], float], dict[str, int]]:
    """Pushes at a fixed rate; returns {(instrument, ts): push time} and failed posts."""
    per_post = max(1, math.ceil(ticks_per_second / MAX_POSTS_PER_SECOND))
    posts_per_second = ticks_per_second / per_post
    total_posts = int(seconds * posts_per_second)
    pushed: dict[tuple[int, int], float] = {}
    last_ts = [0] * len(names)
    failed: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {account.agent_token}"}
    url = f"{base_url}/api/v1/agents/{account.agent_id}/prices"

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=16)) as http:

        async def post(body: dict[str, Any]) -> None:
            nonlocal failed
            try:
                response = await http.post(url, json=body, headers=headers)
                reason = "" if response.status_code == 202 else str(response.status_code)
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            if reason:
                failed[reason] = failed.get(reason, 0) + 1

        posts: list[asyncio.Task[None]] = []
        cursor = 0
        started = time.monotonic()
        for n in range(total_posts):
            delay = started + n / posts_per_second - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body = {}
            now = time.time()
            for _ in range(per_post):
                index = cursor % len(names)
                cursor += 1
                ts = max(int(now * 1000), last_ts[index] + 1)
                last_ts[index] = ts
                pushed[(index, ts)] = now
                body[names[index]] = {"bid": 1.1, "ask": 1.1002, "ts": ts}
            posts.append(asyncio.create_task(post(body)))
        await asyncio.gather(*posts)
    return pushed, failed


def start_clients(
    port: int, token: str, names: list[str], sockets: int
) -> list[tuple[multiprocessing.process.BaseProcess, Connection]]:
    context = multiprocessing.get_context("spawn")
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    for worker in range(CLIENT_PROCESSES):
        indices = list(range(worker, sockets, CLIENT_PROCESSES))
        instrument_of = [i % len(names) for i in indices]
        paths = [f"/ws/prices/{names[n]}?token={token}" for n in instrument_of]
        parent, child = context.Pipe()
        process = context.Process(
            target=client_process, args=(child, port, paths, instrument_of), daemon=True
        )
        process.start()
        workers.append((process, parent))
    return workers


async def wait_ready(
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]], label: str
) -> tuple[int, int]:
    states: dict[int, tuple[str, int, int]] = {}
    last_print = 0.0
    while not all(s[0] == "ready" for s in states.values()) or len(states) < len(workers):
        for n, (_, pipe) in enumerate(workers):
            while pipe.poll():
                states[n] = pipe.recv()
        if time.monotonic() - last_print > 2:
            last_print = time.monotonic()
            ready = sum(s[1] for s in states.values())
            print(f"  {label}: {ready} sockets subscribed", flush=True)
        await asyncio.sleep(0.05)
    return sum(s[1] for s in states.values()), sum(s[2] for s in states.values())


async def run_size(
    env: dict[str, str], workdir: Path, sockets: int, rate: float, seconds: float
) -> RunResult:
    label = f"{sockets} sockets"
    names = [f"B{uuid.uuid4().hex[:6].upper()}{n}" for n in range(INSTRUMENTS)]
    with running_server(workdir, env) as server:
        account = await onboard(server.base_url)
        await make_price_source(env["DATABASE_URL"], account.agent_id)
        # The last-known tick of each instrument: a client that got it is subscribed.
        await push_ticks(account, server.base_url, names, len(names), 1.0)
        baseline = server.rss_bytes()
        started = time.monotonic()
        workers = start_clients(server.port, account.token, names, sockets)
        ready, failed = await wait_ready(workers, label)
        connect_seconds = time.monotonic() - started
        grown = server.rss_bytes() - baseline
        ticks_per_second = rate * len(names) / max(ready, 1)
        print(
            f"  {label}: connected in {connect_seconds:.1f}s ({failed} failed); pushing "
            f"{ticks_per_second:.0f} ticks/s for {seconds:.0f}s",
            flush=True,
        )
        push_started = time.time()
        cpu_before = server.cpu_seconds()
        pushed, posts_failed = await push_ticks(
            account, server.base_url, names, ticks_per_second, seconds
        )
        await asyncio.sleep(2)  # let the last ticks arrive
        cpu_used = server.cpu_seconds() - cpu_before
        busy_for = time.time() - push_started
        results = []
        for _, pipe in workers:
            pipe.send("collect")
        for _, pipe in workers:
            results.append(await asyncio.get_running_loop().run_in_executor(None, pipe.recv))
        for process, _ in workers:
            process.join(10)
    latencies: list[float] = []
    received = 0
    closed = 0
    codes: dict[int, int] = {}
    per_instrument = [0] * len(names)
    last_arrival = push_started
    for _, instruments, stamps, arrivals, counts, closed_here, codes_here in results:
        closed += closed_here
        for code, n in codes_here.items():
            codes[code] = codes.get(code, 0) + n
        for n, count in enumerate(counts):
            per_instrument[n] += count
        arrived = array("d")
        arrived.frombytes(arrivals)
        ins, tss = array("b"), array("q")
        ins.frombytes(instruments)
        tss.frombytes(stamps)
        for index, ts, at in zip(ins, tss, arrived, strict=True):
            pushed_at = pushed.get((index, ts))
            if pushed_at is None:
                continue
            received += 1
            latencies.append((at - pushed_at) * 1000)
            last_arrival = max(last_arrival, at)
    expected = sum(
        per_instrument[index] for index, _ in pushed
    )  # every socket of an instrument, every tick pushed to it
    return RunResult(
        sockets=sockets,
        ready=ready,
        connect_seconds=connect_seconds,
        deliveries_per_second=received / max(last_arrival - push_started, 1e-9),
        latencies_ms=sorted(latencies),
        lost=expected - received,
        bytes_per_socket=grown / max(ready, 1),
        closed_early=closed,
        close_codes=codes,
        posts_failed=posts_failed,
        cpu_percent=cpu_used * 100 / busy_for,
        cpu_us_per_delivery=cpu_used * 1e6 / max(received, 1),
    )


async def make_price_source(database_url: str, agent_id: str) -> None:
    from app.core.db import create_engine, create_session_factory
    from app.services.agents import set_price_source

    engine = create_engine(database_url)
    try:
        await set_price_source(
            create_session_factory(engine), agent_id=uuid.UUID(agent_id), enabled=True
        )
    finally:
        await engine.dispose()


def quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# -- the subscription strategies ------------------------------------------------------------------


async def foreign_tick_cost(server: Server, ticks: int) -> float:
    """Server CPU ms per 1,000 ticks on instruments none of its clients watches."""
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    try:
        names = [f"F{uuid.uuid4().hex[:6].upper()}{n}" for n in range(100)]
        await asyncio.sleep(1)
        before = server.cpu_seconds()
        for start in range(0, ticks, 1000):
            async with redis.pipeline(transaction=False) as pipe:
                for n in range(start, start + 1000):
                    name = names[n % len(names)]
                    body = json.dumps({"instrument": name, "bid": 1.1, "ask": 1.2, "ts": n})
                    pipe.publish(f"prices:{name}", body)
                await pipe.execute()
        await asyncio.sleep(1)  # the server works through what it was sent
        return (server.cpu_seconds() - before) * 1000 / (ticks / 1000)
    finally:
        await redis.aclose()


async def compare_strategies(base_env: dict[str, str], workdir: Path, seconds: float) -> None:
    rows = []
    for mode in ("channels", "pattern"):
        env = {**base_env, "WS_REDIS_SUBSCRIPTION": mode}
        print(f"strategy {mode}:", flush=True)
        result = await run_size(env, workdir, 1000, 20_000, seconds)
        with running_server(workdir, env) as server:
            idle = await foreign_tick_cost(server, 20_000)
        rows.append(
            (
                mode,
                f"{result.connect_seconds:.2f}",
                f"{quantile(result.latencies_ms, 0.5):.1f}",
                f"{quantile(result.latencies_ms, 0.99):.1f}",
                result.lost,
                f"{idle:.1f}",
            )
        )
    print()
    print("Redis subscription strategy, 1,000 sockets, 20,000 deliveries/s:")
    print_table(
        (
            "mode",
            "connect 1k (s)",
            "p50 ms",
            "p99 ms",
            "lost",
            "CPU ms per 1k unwatched ticks",
        ),
        rows,
    )


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--seconds", type=float, default=10.0, help="pushing time per size")
    parser.add_argument("--rate", type=float, default=20_000, help="deliveries per second")
    parser.add_argument("--skip-strategies", action="store_true")
    args = parser.parse_args([] if argv is None else argv)
    limit = raise_open_files_limit()
    sizes = [int(s) for s in args.sizes.split(",")]
    if max(sizes) + 100 > limit:
        print(f"open files limit {limit} is below {max(sizes)} sockets; lower --sizes")
        return 1
    print(
        f"fan-out: {os.cpu_count()} cores, {INSTRUMENTS} instruments, {CLIENT_PROCESSES} "
        f"client processes, Redis {REDIS_URL}, open files limit {limit}",
        flush=True,
    )
    return asyncio.run(run(sizes, args.rate, args.seconds, not args.skip_strategies))


async def run(sizes: list[int], rate: float, seconds: float, strategies: bool) -> int:
    keep = os.environ.get("BENCH_WORKDIR")  # keeps the server logs there
    with contextlib.ExitStack() as stack:
        workdir = Path(keep) if keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        from app.core.migrate import upgrade_to_head

        database_url = f"sqlite+aiosqlite:///{workdir / 'fanout.db'}"
        await asyncio.to_thread(upgrade_to_head, database_url)
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "JWT_SECRET": JWT_SECRET,
            "ENCRYPTION_KEY": ENCRYPTION_KEY,
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "MT5GATE_ENV": "dev",
        }
        rows = []
        for sockets in sizes:
            result = await run_size(env, workdir, sockets, rate, seconds)
            lat = result.latencies_ms
            rows.append(
                (
                    f"{result.ready:,}",
                    f"{result.deliveries_per_second:,.0f}",
                    f"{quantile(lat, 0.5):.1f}",
                    f"{quantile(lat, 0.99):.1f}",
                    f"{lat[-1] if lat else float('nan'):.1f}",
                    result.lost,
                    f"{result.bytes_per_socket / 1024:.1f}",
                    f"{result.connect_seconds:.1f}",
                    f"{result.cpu_percent:.0f}",
                    f"{result.cpu_us_per_delivery:.0f}",
                )
            )
            if result.closed_early or result.posts_failed:
                print(
                    f"  note: {result.closed_early} sockets closed early {result.close_codes}, "
                    f"{result.posts_failed} pushes failed",
                    flush=True,
                )
        print()
        load = os.getloadavg()
        print(
            f"Fan-out, one server process, {rate:,.0f} deliveries/s offered "
            f"(load average {load[0]:.1f} / {load[1]:.1f} at the end):"
        )
        print_table(
            (
                "sockets",
                "deliveries/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "lost",
                "KB/socket",
                "connect s",
                "server CPU %",
                "CPU us/delivery",
            ),
            rows,
        )
        if strategies:
            print()
            await compare_strategies(env, workdir, min(seconds, 5.0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
