"""The shipped agent against the instant one: sequential job round trips through each.

One API served in this process on loopback; four agents, each with its own user and
agent id, all running at once and timed request by request in alternation, so that each
sees the same machine:

* instant ×32: bench/instant_agent.py with 32 long-polls parked (as bench.dispatch runs it);
* instant ×1: the same with one worker, the shipped agent's shape (one poll at a time);
* agent process: ``mt5gate agent --backend sim`` as its own process, as users run it;
* agent in-process: :func:`mt5gate_agent.runner.run_agent` as a task in the API's own
  loop, as ``mt5gate demo`` runs it.

Two patterns each: ``GET /api/v1/account`` over HTTP (what a user sees) and ``job alone``
(``dispatch.create_job_and_wait`` called in-process: the dispatch path without the user's
request). Both
stores: SQLite with the in-memory bus, and PostgreSQL with a Redis of the bench's own.

Target (issue 17): the shipped agent within 1 ms of the instant agent at p50.

    python -m bench.agent_latency [--quick] [--sqlite]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app import dispatch
from app.core.config import Settings
from bench.common import (
    RedisServer,
    ServedApi,
    bench_settings,
    onboard,
    percentile,
    print_table,
    run_as_served,
    serve_in_loop,
    services_listening,
)
from bench.instant_agent import InstantAgent
from mt5gate_agent.config import AgentConfig
from mt5gate_agent.runner import run_agent
from mt5gate_protocol.jobs import JobType

AGENTS = ("instant x32", "instant x1", "agent process", "agent in-process")
SHIPPED = ("agent process", "agent in-process")
PATTERNS = ("GET /account", "job alone")
WARM_UP = 20
AGENT_START_SECONDS = 20.0
PSEUDO = httpx.Request("POST", "http://in-process/job")


@dataclass
class Samples:
    store: str
    times: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, agent: str, pattern: str, took: float) -> None:
        self.times.setdefault((agent, pattern), []).append(took)

    def p(self, agent: str, pattern: str, q: float) -> float:
        return percentile(self.times[(agent, pattern)], q) * 1000


@contextlib.asynccontextmanager
async def agent_process(
    base_url: str, agent_id: str, token: str, *extra_args: str, log_path: Path | None = None
) -> AsyncIterator[None]:
    """``mt5gate agent --backend sim [extra_args]`` (``python -m mt5gate_agent``), its log on
    a file: `log_path`, kept for the caller to read, or a temporary one."""
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log_path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "agent.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mt5gate_agent",
                "agent",
                "--api",
                base_url,
                "--agent-id",
                agent_id,
                "--backend",
                "sim",
                *extra_args,
                env={**os.environ, "MT5GATE_AGENT_TOKEN": token},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
        try:
            yield
        finally:
            if process.returncode is None:
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
            if process.returncode not in (0, -15):
                print(log_path.read_text()[-2000:], file=sys.stderr)


@contextlib.asynccontextmanager
async def agent_in_process(base_url: str, agent_id: str, token: str) -> AsyncIterator[None]:
    """The shipped agent as a task in this loop, as ``mt5gate demo`` runs it."""
    stop = asyncio.Event()
    config = AgentConfig(api_url=base_url, agent_id=agent_id, token=token, backend="sim")
    task = asyncio.create_task(run_agent(config, stop), name="bench-agent")
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@dataclass
class Subject:
    """One agent and the two requests timed through it."""

    name: str
    http: httpx.AsyncClient
    job: Callable[[], Awaitable[str]]

    async def account(self) -> float:
        started = time.perf_counter()
        response = await self.http.get("/account")
        took = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"{self.name}: GET /account {response.status_code}")
        return took

    async def job_alone(self) -> float:
        started = time.perf_counter()
        status = await self.job()
        took = time.perf_counter() - started
        if status != "completed":
            raise RuntimeError(f"{self.name}: job ended {status}")
        return took


async def wait_until_answering(subject: Subject) -> None:
    """An agent process takes a moment to start: until it answers, reads are 503/504s."""
    deadline = time.monotonic() + AGENT_START_SECONDS
    while (await subject.http.get("/account")).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{subject.name} never answered")
        await asyncio.sleep(0.1)


async def subject(stack: contextlib.AsyncExitStack, api: ServedApi, name: str) -> Subject:
    who = await onboard(api.base_url)
    http = await stack.enter_async_context(
        httpx.AsyncClient(
            base_url=f"{api.base_url}/api/v1",
            headers={"Authorization": f"Bearer {who.token}"},
            timeout=30,
        )
    )
    user_id = uuid.UUID((await http.get("/me")).json()["id"])
    agent_id = uuid.UUID(who.agent_id)

    async def job() -> str:
        done = await dispatch.create_job_and_wait(
            api.resources.jobs,
            user_id=user_id,
            agent_id=agent_id,
            job_type=JobType.GET_ACCOUNT,
            input_data={},
            ttl_seconds=30,
            timeout=10,
        )
        return done.status

    if name == "instant x32":
        stack.enter_context(InstantAgent(api.base_url, who.agent_id, who.agent_token, workers=32))
    elif name == "instant x1":
        stack.enter_context(InstantAgent(api.base_url, who.agent_id, who.agent_token, workers=1))
    elif name == "agent process":
        await stack.enter_async_context(agent_process(api.base_url, who.agent_id, who.agent_token))
    else:
        await stack.enter_async_context(
            agent_in_process(api.base_url, who.agent_id, who.agent_token)
        )
    return Subject(name, http, job)


async def measure(settings: Settings, store: str, rounds: int) -> Samples:
    samples = Samples(store)
    async with serve_in_loop(settings) as api, contextlib.AsyncExitStack() as stack:
        subjects = [await subject(stack, api, name) for name in AGENTS]
        for each in subjects:
            await wait_until_answering(each)
        for index in range(WARM_UP + rounds):
            for each in subjects:
                timed = (("GET /account", each.account), ("job alone", each.job_alone))
                for pattern, request in timed:
                    took = await request()
                    if index >= WARM_UP:
                        samples.add(each.name, pattern, took)
            done = index + 1 - WARM_UP
            if done > 0 and (done == rounds or done % max(1, rounds // 10) == 0):
                print(f"  {store:8} {done}/{rounds} rounds", file=sys.stderr, flush=True)
    return samples


def report(results: list[Samples]) -> None:
    rows = []
    for result in results:
        for pattern in PATTERNS:
            reference = result.p("instant x32", pattern, 50)
            for agent in AGENTS:
                p50 = result.p(agent, pattern, 50)
                rows.append(
                    [
                        result.store,
                        pattern,
                        agent,
                        len(result.times[(agent, pattern)]),
                        f"{p50:.2f}",
                        f"{result.p(agent, pattern, 99):.2f}",
                        f"{p50 - reference:+.2f}",
                    ]
                )
    print("\nSequential job round trips through each agent, requests alternated (ms)")
    print_table(["store", "request", "agent", "n", "p50", "p99", "p50 vs x32"], rows)
    print()
    for result in results:
        for pattern in PATTERNS:
            reference = result.p("instant x32", pattern, 50)
            for agent in SHIPPED:
                added = result.p(agent, pattern, 50) - reference
                verdict = "ok" if added <= 1.0 else "MISSED"
                print(
                    f"{result.store:8} {pattern:12} {agent:16} p50 {added:+.2f} ms vs the "
                    f"instant agent, target +1.00 ({verdict})"
                )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    rounds = 100 if "--quick" in argv else 400
    stores = ["sqlite"] + (["postgres"] if services_listening() else [])
    if "--sqlite" in argv:
        stores = ["sqlite"]
    elif len(stores) == 1:
        print("PostgreSQL or Redis not listening on 127.0.0.1: SQLite only", file=sys.stderr)
    results = []
    for store in stores:
        with contextlib.ExitStack() as stack:
            overrides: dict[str, object] = {}
            if store == "postgres":
                directory = stack.enter_context(tempfile.TemporaryDirectory())
                redis = RedisServer(Path(directory))
                redis.start()
                stack.callback(redis.stop)
                overrides["redis_url"] = redis.url
            settings = stack.enter_context(bench_settings(store, **overrides))
            results.append(run_as_served(measure(settings, store, rounds)))
    report(results)


if __name__ == "__main__":
    main()
