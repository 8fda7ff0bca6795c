"""Job round trips: create job → agent claims → result → caller woken.

An instant agent in its own process talks to the API on loopback; the caller runs in
the API process and uses the jobs service directly, so the figures are the dispatch path
alone. Each store runs the agent over HTTP long-polls with wake-ups on (`long-poll`), over
the agent link (`link`: one WebSocket, jobs pushed), and over long-polls with the 500 ms
polling fallback alone (`polling`). A floor row times one agent request that finds no job:
a long-poll round trip makes two agent requests.

    python -m bench.dispatch [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from dataclasses import dataclass

import httpx

from app import dispatch
from app.core.config import Settings
from app.models import Agent
from bench.common import (
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
from mt5gate_protocol.jobs import JobType

CONCURRENCY = 32
FLOOR_REQUESTS = 300


@dataclass
class Result:
    store: str
    mode: str
    pattern: str
    samples: list[float]
    seconds: float

    def row(self) -> list[object]:
        return [
            self.store,
            self.mode,
            self.pattern,
            len(self.samples),
            f"{percentile(self.samples, 50) * 1000:.2f}",
            f"{percentile(self.samples, 99) * 1000:.2f}",
            f"{len(self.samples) / self.seconds:.0f}",
        ]


async def round_trip(api: ServedApi, user_id: uuid.UUID, agent_id: uuid.UUID) -> float:
    started = time.perf_counter()
    done = await dispatch.create_job_and_wait(
        api.resources.jobs,
        user_id=user_id,
        agent_id=agent_id,
        job_type=JobType.GET_ACCOUNT,
        input_data={},
        ttl_seconds=60,
        timeout=30,
    )
    if done.status != "completed":
        raise RuntimeError(f"job ended {done.status}")
    return time.perf_counter() - started


async def measure(
    settings: Settings, store: str, mode: str, sequential: int, concurrent: int
) -> list[Result]:
    async with serve_in_loop(settings) as api:
        who = await onboard(api.base_url)
        async with api.resources.session_factory() as session:
            agent = await session.get(Agent, uuid.UUID(who.agent_id))
            assert agent is not None
            user_id = agent.user_id
        agent_id = uuid.UUID(who.agent_id)
        results = []
        if mode == "long-poll":  # once per store; the mode does not change it
            results.append(await agent_request_floor(api, store, who.agent_id, who.agent_token))
        with InstantAgent(
            api.base_url,
            who.agent_id,
            who.agent_token,
            workers=CONCURRENCY,
            link=mode == "link",
        ):
            for _ in range(10):  # warm-up: connections, caches, the agent's workers
                await round_trip(api, user_id, agent_id)
            started = time.perf_counter()
            samples = []
            for index in range(sequential):
                samples.append(await round_trip(api, user_id, agent_id))
                progress(store, mode, "sequential", index + 1, sequential)
            results.append(
                Result(store, mode, "sequential", samples, time.perf_counter() - started)
            )
            gate = asyncio.Semaphore(CONCURRENCY)
            done = 0

            async def bounded() -> float:
                nonlocal done
                async with gate:
                    took = await round_trip(api, user_id, agent_id)
                done += 1
                progress(store, mode, f"{CONCURRENCY} in flight", done, concurrent)
                return took

            started = time.perf_counter()
            samples = list(await asyncio.gather(*(bounded() for _ in range(concurrent))))
            results.append(
                Result(
                    store,
                    mode,
                    f"{CONCURRENCY} in flight",
                    samples,
                    time.perf_counter() - started,
                )
            )
    return results


async def agent_request_floor(api: ServedApi, store: str, agent_id: str, token: str) -> Result:
    """One agent request that finds no job (`jobs/next?wait=0`: authentication, a claim
    that takes nothing, a 204), sent from this process: a round trip makes two agent
    requests, so twice this is what HTTP and the agent's own checks cost before dispatch."""
    samples = []
    async with httpx.AsyncClient(
        base_url=f"{api.base_url}/api/v1/agents/{agent_id}",
        headers={"Authorization": f"Bearer {token}"},
    ) as http:
        for index in range(FLOOR_REQUESTS + 20):
            started = time.perf_counter()
            response = await http.get("/jobs/next", params={"wait": 0})
            if response.status_code != 204:
                raise RuntimeError(f"jobs/next answered {response.status_code}")
            if index >= 20:  # warm-up
                samples.append(time.perf_counter() - started)
    return Result(store, "floor", "1 agent request", samples, sum(samples))


async def measure_shipped_agent(
    settings: Settings, store: str, transport: str, sequential: int, concurrent: int
) -> list[Result]:
    """The same round trips through ``mt5gate agent --backend sim --transport T`` in its own
    process, as users run it (one job at a time: 32 in flight queue at the agent)."""
    from bench.agent_latency import agent_process

    mode = f"agent {transport}"
    async with serve_in_loop(settings) as api:
        who = await onboard(api.base_url)
        async with api.resources.session_factory() as session:
            agent = await session.get(Agent, uuid.UUID(who.agent_id))
            assert agent is not None
            user_id = agent.user_id
        agent_id = uuid.UUID(who.agent_id)
        extra = ("--transport", transport, "--watch-interval", "0")
        async with agent_process(api.base_url, who.agent_id, who.agent_token, *extra):
            for _ in range(10):  # warm-up; the first waits for the agent to start
                await round_trip(api, user_id, agent_id)
            started = time.perf_counter()
            samples = []
            for index in range(sequential):
                samples.append(await round_trip(api, user_id, agent_id))
                progress(store, mode, "sequential", index + 1, sequential)
            results = [Result(store, mode, "sequential", samples, time.perf_counter() - started)]
            gate = asyncio.Semaphore(CONCURRENCY)

            async def bounded() -> float:
                async with gate:
                    return await round_trip(api, user_id, agent_id)

            started = time.perf_counter()
            samples = list(await asyncio.gather(*(bounded() for _ in range(concurrent))))
            elapsed = time.perf_counter() - started
            results.append(Result(store, mode, f"{CONCURRENCY} in flight", samples, elapsed))
    return results


def shipped_agent_results(stores: list[str], count: int) -> list[Result]:
    """The shipped agent's rows: over the link and over HTTP long-polls, each store."""
    results: list[Result] = []
    for store in stores:
        for transport in ("link", "http"):
            with bench_settings(store) as settings:
                results += run_as_served(
                    measure_shipped_agent(settings, store, transport, count, count)
                )
    return results


def report_shipped_agent(results: list[Result], stores: list[str]) -> None:
    """The shipped agent against the instant one on the same transport, p50 (target: within
    1 ms over the link)."""
    for store in stores:
        for pattern in ("sequential", f"{CONCURRENCY} in flight"):
            row = {r.mode: r for r in results if (r.store, r.pattern) == (store, pattern)}
            for transport, instant in (("link", "link"), ("http", "long-poll")):
                shipped = row.get(f"agent {transport}")
                if shipped is None or instant not in row:
                    continue
                added = (
                    statistics.median(shipped.samples) - statistics.median(row[instant].samples)
                ) * 1000
                print(
                    f"{store:8} {pattern:13} shipped agent over {transport:4} vs instant: "
                    f"p50 {added:+.2f} ms"
                )


def progress(store: str, mode: str, pattern: str, done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"  {store:8} {mode:10} {pattern:13} {done}/{total}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    wakeup_n = 100 if quick else 1000
    # Polling alone costs ~0.5-1 s a round trip: fewer samples keep the run to minutes.
    polling_sequential, polling_concurrent = (10, 64) if quick else (40, 320)
    stores = ["sqlite"] + (["postgres"] if services_listening() else [])
    results: list[Result] = []
    for store in stores:
        for mode, sequential, concurrent in (
            ("long-poll", wakeup_n, wakeup_n),
            ("link", wakeup_n, wakeup_n),
            ("polling", polling_sequential, polling_concurrent),
        ):
            overrides = {
                "job_wakeups_enabled": mode != "polling",
                "job_poll_interval_seconds": 0.5,
            }
            with bench_settings(store, **overrides) as settings:
                results += run_as_served(measure(settings, store, mode, sequential, concurrent))
    results += shipped_agent_results(stores, wakeup_n)
    print("\nJob round trips (ms), instant agent over HTTP or the agent link on loopback")
    print_table(
        ["store", "mode", "pattern", "n", "p50 ms", "p99 ms", "jobs/s"],
        [r.row() for r in results],
    )
    print()
    for store in stores:
        for pattern in ("sequential", f"{CONCURRENCY} in flight"):
            row = {r.mode: r for r in results if (r.store, r.pattern) == (store, pattern)}
            wake, link, poll = row["long-poll"], row["link"], row["polling"]
            ratio = statistics.median(poll.samples) / statistics.median(wake.samples)
            print(f"{store:8} {pattern:13} polling/long-poll p50 ratio: {ratio:.0f}x")
            p50 = statistics.median(wake.samples) / statistics.median(link.samples)
            rate = (len(link.samples) / link.seconds) / (len(wake.samples) / wake.seconds)
            print(
                f"{store:8} {pattern:13} link vs long-poll: p50 {p50:.1f}x faster, "
                f"jobs/s {rate:.1f}x"
            )
        floor = next(r for r in results if (r.store, r.mode) == (store, "floor"))
        long_poll = next(
            r for r in results if (r.store, r.mode, r.pattern) == (store, "long-poll", "sequential")
        )
        per_floor = statistics.median(long_poll.samples) / statistics.median(floor.samples)
        print(
            f"{store:8} sequential long-poll round trip p50 = {per_floor:.1f}x one agent "
            "request's p50"
        )
    report_shipped_agent(results, stores)


if __name__ == "__main__":
    main()
