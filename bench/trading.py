"""Trading routes end to end, beside a bare `GET /me` on the same server as the floor.

The API is served in this process on loopback, twice (each on a store of its own): on one
an instant agent (its own process, answering at once) long-polls `jobs/next`, on the other
it holds the agent link (`WS /ws/agents/{id}`, jobs pushed). One request at a time, the
kinds interleaved and each request sent to the long-poll's server then to the link's, so
that all see the same conditions, each after a pause that lets the server settle
(SETTLE_SECONDS); each server's own `GET /me` is its floor:

* `GET /me`: authentication and one row read, the floor every route pays;
* `GET /me (API key)`: the same with an API key (a hash and a joined read instead of a JWT);
* `POST /orders`: a trade job, filled by the agent (201);
* `GET /account`: a read job;
* pending placed: `POST /orders` of a buy limit, placed by the agent (201);
* pending cancelled: `DELETE /pending-orders/{ticket}` of the order placed just before (200);
* history 1,000 deals: `GET /history/deals?limit=1000`, the agent answering 1,000 deals;
* candles hit: `GET /candles/EURUSD?count=200` served from the feed's Redis cache;
* candles miss: a new instrument every time, so a job for the price source (the same
  instant agent, marked as one) fetches 200 candles and caches them;
* job alone: `create_job` + `wait_for_job_result` called in-process (no user request), the
  dispatch round trip that every job-backed route above pays on top of its own work.

What the per-user rate limit (two Redis round trips per gated call) and the metrics cost:
two servers in this process on the same store, one with both on and one with both off
(`RATE_LIMIT_ENABLED=false`, `METRICS_ENABLED=false`), each with its own instant agent,
timed request by request in alternation, so that both see the same machine.

Targets: an order, a pending order placed or cancelled and a history read of 1,000 deals
≤ 2 × floor + 3 ms at p50 (issue 13; shown also for a candles miss and a job alone), over
either; `POST /orders` over the link ≤ floor + 3 ms at p50 (issue 17); a candles hit
≤ 1.5 × floor at p50; the limiter and metrics ≤ 0.3 ms at p50 on an order (long-poll).

    python -m bench.trading [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from app import dispatch
from app.core.config import Settings
from app.services.agents import set_price_source
from bench.common import (
    bench_settings,
    onboard,
    percentile,
    print_table,
    run_as_served,
    serve_in_loop,
    services_listening,
)
from bench.instant_agent import InstantAgent

KINDS = (
    "GET /me (floor)",
    "GET /me (API key)",
    "POST /orders",
    "GET /account",
    "pending placed",
    "pending cancelled",
    "history 1,000 deals",
    "candles hit",
    "candles miss",
    "job alone",
)
BARE_KINDS = ("GET /me (floor)", "POST /orders")
ORDER = {"symbol": "EURUSD", "side": "buy", "volume": 0.1}
PENDING = {**ORDER, "type": "limit", "price": 1.05}
JOB_ROUTES = ("POST /orders", "pending placed", "pending cancelled", "history 1,000 deals")
# The rows shown side by side, long-poll against link: every one a job pays.
LINK_ROWS = (*JOB_ROUTES, "candles miss", "job alone")
WARM_UP = 20
# A pause before each timed request, so that every kind starts with the server idle: the
# agent that answered the previous job is back in its long-poll (its result's response, a
# token check and a claim that finds nothing), instead of that work landing in the next
# request's time. Without it a kind that follows a job (pending placed follows GET
# /account) paid ~1 ms that one following a plain read (POST /orders) did not.
SETTLE_SECONDS = 0.005
PSEUDO = httpx.Request("POST", "http://in-process/job")


@dataclass
class Samples:
    store: str
    by_kind: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    kinds: tuple[str, ...] = KINDS

    def p(self, kind: str, q: float) -> float:
        return percentile(self.by_kind[kind], q) * 1000


class UnexpectedMiss(RuntimeError):
    pass


async def wait_for_agent(http: httpx.AsyncClient) -> None:
    """The agent process takes a moment to start: until it answers, reads are 504s."""
    for _ in range(20):
        if (await http.get("/account")).status_code == 200:
            return
    raise RuntimeError("the instant agent never answered")


async def timed(
    request: Callable[[], Awaitable[httpx.Response]], expected: int, cache: str | None
) -> float:
    started = time.perf_counter()
    response = await request()
    took = time.perf_counter() - started
    if response.status_code != expected:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text[:200]}")
    if cache is not None and response.headers.get("x-cache") != cache:
        raise UnexpectedMiss(f"{response.request.url}: expected X-Cache {cache}")
    return took


MODES = ("long-poll", "link")


@dataclass
class Variant:
    """One server and its instant agent (over long-polls or over the link), with the
    requests each kind sends to it."""

    mode: str
    requests: dict[str, tuple[Callable[[], Awaitable[httpx.Response]], int, str | None]]
    http: httpx.AsyncClient
    samples: Samples
    primed: float = 0.0

    async def prime(self) -> None:
        await self.http.get("/candles/EURUSD", params={"count": 200})
        self.primed = time.monotonic()


async def open_variant(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    store: str,
    mode: str,
    kinds: tuple[str, ...],
) -> Variant:
    api = await stack.enter_async_context(serve_in_loop(settings))
    who = await onboard(api.base_url)
    # Feed candles come from a price source: the bench's one agent is it.
    await set_price_source(
        api.resources.session_factory, agent_id=uuid.UUID(who.agent_id), enabled=True
    )
    headers = {"Authorization": f"Bearer {who.token}"}
    async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1", headers=headers) as h:
        created = await h.post("/api-keys", json={"name": "bench", "scopes": ["read"]})
    key_headers = {"Authorization": f"Bearer {created.json()['key']}"}
    http = await stack.enter_async_context(
        httpx.AsyncClient(base_url=f"{api.base_url}/api/v1", headers=headers, timeout=30)
    )
    miss_counter = 0
    # Instruments of this variant's own: the two variants may share a Redis (the cache).
    miss_prefix = "L" if mode == "link" else "B"

    def candles_miss() -> Awaitable[httpx.Response]:
        nonlocal miss_counter
        miss_counter += 1  # a fresh instrument: never cached
        return http.get(f"/candles/{miss_prefix}{miss_counter}", params={"count": 200})

    placed: list[httpx.Response] = []

    async def place_pending() -> httpx.Response:
        placed.append(await http.post("/orders", json=PENDING))
        return placed[-1]

    def cancel_pending() -> Awaitable[httpx.Response]:
        # The order placed last: each has a ticket of its own (its JSON read, a few
        # microseconds, counts in the cancellation's time).
        ticket = placed.pop().json()["ticket"] if placed else 2001
        return http.delete(f"/pending-orders/{ticket}")

    requests: dict[str, tuple[Callable[[], Awaitable[httpx.Response]], int, str | None]] = {
        "GET /me (floor)": (lambda: http.get("/me"), 200, None),
        "GET /me (API key)": (lambda: http.get("/me", headers=key_headers), 200, None),
        "POST /orders": (lambda: http.post("/orders", json=ORDER), 201, None),
        "GET /account": (lambda: http.get("/account"), 200, None),
        "pending placed": (place_pending, 201, None),
        "pending cancelled": (cancel_pending, 200, None),
        "history 1,000 deals": (
            lambda: http.get("/history/deals", params={"limit": 1000}),
            200,
            None,
        ),
        "candles hit": (
            lambda: http.get("/candles/EURUSD", params={"count": 200}),
            200,
            "hit",
        ),
        "candles miss": (candles_miss, 200, "miss"),
    }
    user_id = uuid.UUID((await http.get("/me")).json()["id"])

    async def job_alone() -> httpx.Response:
        done = await dispatch.create_job_and_wait(
            api.resources.jobs,
            user_id=user_id,
            agent_id=uuid.UUID(who.agent_id),
            job_type="get_account",
            input_data={},
            ttl_seconds=30,
            timeout=10,
        )
        return httpx.Response(200 if done.status == "completed" else 504, request=PSEUDO)

    requests["job alone"] = (job_alone, 200, None)
    agent = InstantAgent(
        api.base_url, who.agent_id, who.agent_token, workers=2, link=mode == "link"
    )
    stack.enter_context(agent)
    await wait_for_agent(http)
    return Variant(mode, requests, http, Samples(store, kinds=kinds))


async def measure(
    settings: dict[str, Settings], store: str, rounds: int, kinds: tuple[str, ...] = KINDS
) -> dict[str, Samples]:
    """Each kind timed on every variant (`settings` by mode) in turn, request by request,
    so that the long-poll's and the link's figures see the same machine."""
    async with contextlib.AsyncExitStack() as stack:
        variants = [
            await open_variant(stack, mode_settings, store, mode, kinds)
            for mode, mode_settings in settings.items()
        ]
        for index in range(WARM_UP + rounds):
            for variant in variants:
                # Prime the cache the hits read; it lives 30 s, so refresh it as we go.
                if time.monotonic() - variant.primed > 20:
                    await variant.prime()
            for kind in kinds:
                for variant in variants:
                    request, expected, cache = variant.requests[kind]
                    await asyncio.sleep(SETTLE_SECONDS)
                    try:
                        took = await timed(request, expected, cache)
                    except UnexpectedMiss:
                        # Something flushed the Redis db (a test run sharing it): refill.
                        await variant.prime()
                        took = await timed(request, expected, cache)
                    if index >= WARM_UP:
                        variant.samples.by_kind[kind].append(took)
            done = index + 1 - WARM_UP
            if done > 0 and (done == rounds or done % max(1, rounds // 10) == 0):
                print(f"  {store:8} {done}/{rounds} rounds", file=sys.stderr, flush=True)
    return {variant.mode: variant.samples for variant in variants}


def report(results: list[dict[str, Samples]]) -> None:
    rows = []
    for by_mode in results:
        for mode, result in by_mode.items():
            floor = result.p(KINDS[0], 50)
            for kind in result.kinds:
                p50 = result.p(kind, 50)
                rows.append(
                    [
                        result.store,
                        mode,
                        kind,
                        len(result.by_kind[kind]),
                        f"{p50:.2f}",
                        f"{result.p(kind, 99):.2f}",
                        f"{p50 / floor:.2f}x",
                    ]
                )
    print(
        "\nTrading routes, one request at a time, instant agent on loopback over HTTP "
        "long-polls or the agent link, requests alternated (ms)"
    )
    print_table(["store", "agent", "request", "n", "p50", "p99", "p50/floor"], rows)
    print("\nSide by side, p50 (ms); issue 13: <= 2 x floor + 3; issue 17: an order over the link")
    print("<= floor + 3; each against the floor of its own server in this run")
    side = []
    for by_mode in results:
        poll, link = by_mode["long-poll"], by_mode["link"]
        poll_floor, link_floor = poll.p(KINDS[0], 50), link.p(KINDS[0], 50)
        for kind in LINK_ROWS:
            poll_p50, link_p50 = poll.p(kind, 50), link.p(kind, 50)
            poll_ok = poll_p50 <= 2 * poll_floor + 3
            link_ok = link_p50 <= 2 * link_floor + 3
            fast = (
                ("met" if link_p50 <= link_floor + 3 else "MISSED")
                if kind == "POST /orders"
                else "-"
            )
            side.append(
                [
                    poll.store,
                    kind,
                    f"{poll_floor:.2f}",
                    f"{poll_p50:.2f}",
                    f"{link_floor:.2f}",
                    f"{link_p50:.2f}",
                    f"{link_p50 - link_floor:+.2f}",
                    f"{poll_p50 - link_p50:+.2f}",
                    "met" if poll_ok else "MISSED",
                    "met" if link_ok else "MISSED",
                    fast,
                ]
            )
    print_table(
        [
            "store",
            "request",
            "floor lp",
            "long-poll",
            "floor link",
            "link",
            "link-floor",
            "saved",
            "13 lp",
            "13 link",
            "17 link",
        ],
        side,
    )
    print()
    for by_mode in results:
        for mode, result in by_mode.items():
            floor = result.p(KINDS[0], 50)
            hit, hit_target = result.p("candles hit", 50), 1.5 * floor
            print(
                f"{result.store:8} {mode:9} candles hit p50 {hit:.2f} ms vs target "
                f"{hit_target:.2f} ({'ok' if hit <= hit_target else 'MISSED'})"
            )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    rounds = 100 if "--quick" in argv else 250
    stores = ["sqlite"] + (["postgres"] if services_listening() else [])
    if len(stores) == 1:
        print("PostgreSQL or Redis not listening on 127.0.0.1: SQLite only", file=sys.stderr)
    results, costs, work = [], [], []
    for store in stores:
        # A limit no single client reaches: the limiter does all its work on every call.
        with (
            bench_settings(store, rate_limit_trading_per_second=1_000_000) as settings,
            bench_settings(
                store, rate_limit_trading_per_second=1_000_000, redis_key_prefix="bench-link:"
            ) as link_settings,
        ):
            by_mode = {"long-poll": settings, "link": link_settings}
            results.append(run_as_served(measure(by_mode, store, rounds)))
            costs.append(run_as_served(measure_cost(settings, store, rounds)))
            work.extend(run_as_served(measure_added_work(settings, store, rounds)))
    report(results)
    report_cost(costs)
    print("\nAdded work per request, in-process, p50 (ms)")
    print_table(["store", "what", "p50"], work)


async def measure_cost(settings: Settings, store: str, rounds: int) -> dict[str, Samples]:
    """BARE_KINDS on a server with the limiter and metrics on and one with both off, each
    request timed in alternation between the two."""
    bare = settings.model_copy(update={"rate_limit_enabled": False, "metrics_enabled": False})
    variants = {"on": settings, "off": bare}
    samples = {name: Samples(store, kinds=BARE_KINDS) for name in variants}
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for name, variant in variants.items():
            api = await stack.enter_async_context(serve_in_loop(variant))
            who = await onboard(api.base_url)
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=f"{api.base_url}/api/v1",
                    headers={"Authorization": f"Bearer {who.token}"},
                    timeout=30,
                )
            )
            stack.enter_context(InstantAgent(api.base_url, who.agent_id, who.agent_token))
            await wait_for_agent(http)
            clients[name] = http
        for index in range(WARM_UP + rounds):
            for kind in BARE_KINDS:
                for name, http in clients.items():
                    if kind == "POST /orders":
                        took = await timed(lambda h=http: h.post("/orders", json=ORDER), 201, None)
                    else:
                        took = await timed(lambda h=http: h.get("/me"), 200, None)
                    if index >= WARM_UP:
                        samples[name].by_kind[kind].append(took)
    print(f"  {store:8} limiter+metrics cost: {rounds} rounds", file=sys.stderr, flush=True)
    return samples


def report_cost(costs: list[dict[str, Samples]]) -> None:
    rows = []
    for cost in costs:
        on, off = cost["on"], cost["off"]
        for kind in BARE_KINDS:
            added = on.p(kind, 50) - off.p(kind, 50)
            rows.append(
                [on.store, kind, f"{off.p(kind, 50):.2f}", f"{on.p(kind, 50):.2f}", f"{added:+.2f}"]
            )
    print("\nRate limiter + metrics, off vs on, requests alternated (ms)")
    print_table(["store", "request", "p50 off", "p50 on", "added"], rows)
    for cost in costs:
        added = cost["on"].p("POST /orders", 50) - cost["off"].p("POST /orders", 50)
        verdict = "ok" if added <= 0.3 else "MISSED"
        print(f"{cost['on'].store:8} added to an order at p50: {added:.2f} ms vs 0.30 ({verdict})")


async def measure_added_work(settings: Settings, store: str, rounds: int) -> list[list[object]]:
    """What the limiter and the metrics add to one request, timed in-process without HTTP:
    the limiter's call (its Redis round trips) and the observability middleware around a
    trivial ASGI app, against the same app bare. Less exposed to a loaded machine than two
    whole requests compared."""
    from app.api.observability import RequestObservability
    from app.core.rate_limits import RateLimiter
    from app.core.redis import create_redis
    from app.services.rate_limits import TradingLimit, limit_trading_call

    redis = create_redis(settings.redis_url)
    limiter = RateLimiter(settings.redis_url, redis)
    limit = TradingLimit(settings.rate_limit_trading_per_second)
    user = uuid.uuid4()
    limiter_times = []
    for index in range(WARM_UP + rounds):
        started = time.perf_counter()
        counted = await limit_trading_call(limiter, limit, user)
        if counted is not None:  # its window read, which overlaps the call's own work
            await counted.headers()
        if index >= WARM_UP:
            limiter_times.append(time.perf_counter() - started)
    await redis.aclose()

    async def bare_app(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: object) -> None:
        return None

    observed = RequestObservability(bare_app, metrics=True)  # type: ignore[arg-type]
    times: dict[str, list[float]] = {"bare": [], "observed": []}
    for index in range(WARM_UP + rounds * 10):
        for name, app in (("bare", bare_app), ("observed", observed)):
            scope = {"type": "http", "method": "GET", "path": "/api/v1/me", "headers": []}
            started = time.perf_counter()
            await app(scope, receive, send)  # type: ignore[operator]
            if index >= WARM_UP:
                times[name].append(time.perf_counter() - started)
    middleware = percentile(times["observed"], 50) - percentile(times["bare"], 50)
    return [
        [
            store,
            "rate limiter call (2 Redis round trips)",
            f"{percentile(limiter_times, 50) * 1000:.3f}",
        ],
        [store, "request id + metrics middleware", f"{middleware * 1000:.3f}"],
    ]


if __name__ == "__main__":
    main()
