"""The agent loop against the real API (in-process, over real TCP; faults injected only
where they cannot be produced for real)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter
from real_api import RealAgentApi

from mt5gate_agent.backends.sim import SimBackend
from mt5gate_agent.client import AgentApiError, AgentClient, api_root, parse_time
from mt5gate_agent.config import AgentConfig
from mt5gate_agent.runner import Backoff, kv, run_agent
from mt5gate_protocol.agent import Credentials, Heartbeat, PricePush, PricesAccepted, ServerTime
from mt5gate_protocol.events import EventBatch, EventsAccepted
from mt5gate_protocol.jobs import JobEnvelope, JobResult, JobResultAccepted
from tests.log_events import LogEvents, watch_log


@pytest.fixture
async def logs() -> AsyncIterator[LogEvents]:
    with watch_log("mt5gate_agent") as watcher:
        yield watcher


def config_for(api: RealAgentApi, **overrides: Any) -> AgentConfig:
    options: dict[str, Any] = {
        "api_url": api.url,
        "agent_id": api.agent_id,
        "token": api.token,
        "backend": "sim",
        # The HTTP routes' agent (long-poll); the link's own tests are in test_link.py.
        "transport": "http",
        "poll_wait": 1,
        "heartbeat_interval": 0.2,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        "price_interval": 0.02,
        "result_retry_seconds": 5.0,
    }
    return AgentConfig(**(options | overrides))


class RunningAgent:
    def __init__(self, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.task = task
        self.stop = stop

    async def stopped(self, timeout: float = 5.0) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout)


@pytest.fixture
async def start_agent(api: RealAgentApi) -> AsyncIterator[Callable[..., RunningAgent]]:
    agents: list[RunningAgent] = []

    def start(backend: Any = None, **overrides: Any) -> RunningAgent:
        stop = asyncio.Event()
        config = config_for(api, **overrides)
        task = asyncio.create_task(run_agent(config, stop, backend=backend))
        agent = RunningAgent(task, stop)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        if not agent.task.done():
            await agent.stopped()


def order(symbol: str = "EURUSD", volume: float = 0.1) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "side": "buy",
        "volume": volume,
        "sl": None,
        "tp": None,
        "client_order_id": None,
    }


class ScriptedBackend:
    """A backend whose ticks follow a script; it counts calls and can hold a job."""

    def __init__(self, snapshots: list[dict[str, dict[str, Any]]] | None = None) -> None:
        self.snapshots = snapshots or [{}]
        self.tick_calls = 0
        self.executed: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.job_started: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ticks_seen: asyncio.Event | None = None
        self.ticks_wanted = 0
        self.closed = False

    def login(self, server: str, login: int, password: str) -> None:
        pass

    def is_connected(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def ticks(self, symbols: list[str]) -> dict[str, dict[str, Any]]:
        snapshot = self.snapshots[min(self.tick_calls, len(self.snapshots) - 1)]
        self.tick_calls += 1
        if self.loop and self.ticks_seen and self.tick_calls >= self.ticks_wanted:
            self.loop.call_soon_threadsafe(self.ticks_seen.set)
        return snapshot

    def execute(self, job_type: str, input_data: dict[str, Any]) -> dict[str, Any]:
        if self.loop and self.job_started:
            self.loop.call_soon_threadsafe(self.job_started.set)
        assert self.gate.wait(10)
        self.executed.append(job_type)
        return {"positions": []}


def held_backend() -> ScriptedBackend:
    """A backend that holds every job until its `gate` is set; `job_started` says one came."""
    backend = ScriptedBackend()
    backend.loop = asyncio.get_running_loop()
    backend.job_started = asyncio.Event()
    backend.gate.clear()
    return backend


# -- jobs -------------------------------------------------------------------------------------


async def test_a_job_is_executed_and_its_result_posted(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent], logs: LogEvents
) -> None:
    start_agent()
    job_id = await api.add_job("trade", order())
    result = await api.wait_result(job_id)
    assert result["status"] == "completed"
    assert set(result["output_data"]) == {"ticket", "fill_price", "volume", "filled_at"}
    await logs.wait_for(f"event=job_done job_id={job_id} job_type=trade outcome=completed ms=")


async def test_the_agent_logs_in_with_the_fetched_credentials_and_heartbeats(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent]
) -> None:
    sim = SimBackend(seed=1)
    start_agent(backend=sim)
    await api.wait_for(lambda: len(api.heartbeats) >= 2)
    assert sim.logged_in_as == 5001234  # the connection's login
    assert api.heartbeats[0] == {"version": "0.1.0", "terminal_connected": True}


async def test_a_broker_rejection_is_posted_as_a_failed_result(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent], logs: LogEvents
) -> None:
    start_agent()
    job_id = await api.add_job("trade", order(volume=0.001))
    result = await api.wait_result(job_id)
    assert result["status"] == "failed"
    assert result["error"]["code"] == "invalid_volume"
    assert result["error"]["retcode"] == 10014
    await logs.wait_for("outcome=failed code=invalid_volume")


async def test_jobs_are_executed_one_after_the_other(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent]
) -> None:
    start_agent()
    trade_id = await api.add_job("trade", order(volume=0.2))
    positions_id = await api.add_job("get_positions", {})
    await api.wait_result(trade_id)
    positions = (await api.wait_result(positions_id))["output_data"]["positions"]
    assert [p["volume"] for p in positions] == [0.2]


async def test_a_job_expired_by_the_server_clock_is_not_executed(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent], logs: LogEvents
) -> None:
    # The server's clock is a minute ahead of the agent's, and the job spends longer on the
    # wire than it had to live: it expired by the server's clock on the way, although by
    # the agent's own clock it still has a minute to go.
    api.faults.clock_skew = 60.0
    api.faults.delivery_delay = 3.0
    sim = SimBackend(seed=1)
    start_agent(backend=sim)
    await api.wait_for(lambda: len(api.heartbeats) >= 1)
    job_id = await api.add_job("trade", order(), expires_in=2)
    result = await api.wait_result(job_id)
    assert result["status"] == "failed"
    assert result["error"]["code"] == "expired"
    assert sim.positions == {}
    await logs.wait_for(f"job_id={job_id} job_type=trade outcome=expired")


async def test_a_job_valid_by_the_server_clock_runs_although_the_agent_clock_is_ahead(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent]
) -> None:
    # The server's clock is a minute behind: the job's expires_at is 40 s in the agent's
    # past, 20 s in the server's future.
    api.faults.clock_skew = -60.0
    sim = SimBackend(seed=1)
    start_agent(backend=sim)
    await api.wait_for(lambda: len(api.heartbeats) >= 1)
    job_id = await api.add_job("trade", order(), expires_in=20)
    assert (await api.wait_result(job_id))["status"] == "completed"
    assert len(sim.positions) == 1


# -- stopping ---------------------------------------------------------------------------------


async def test_stop_interrupts_an_idle_long_poll(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent]
) -> None:
    backend = ScriptedBackend()
    agent = start_agent(backend=backend, poll_wait=25)
    await api.wait_for(lambda: api.polls >= 1)
    started = time.monotonic()
    await agent.stopped(timeout=3)
    assert time.monotonic() - started < 2
    # The backend was handed in: the caller owns it, the agent does not close it.
    assert not backend.closed


async def test_stop_finishes_the_job_in_hand_and_posts_its_result(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent]
) -> None:
    backend = held_backend()
    agent = start_agent(backend=backend)
    job_id = await api.add_job("get_positions", {})
    await backend.job_started.wait()
    agent.stop.set()
    backend.gate.set()
    await asyncio.wait_for(agent.task, 5)
    # Reported before the agent returned: the server holds the result already.
    job = await api.job(job_id)
    assert (job.status, job.output_data) == ("completed", {"positions": []})
    assert backend.executed == ["get_positions"]


async def test_a_stopped_agent_leaves_no_poll_behind_to_take_a_new_job(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent]
) -> None:
    """An agent stopped while its long poll waits ends that poll: a job created afterwards
    is not handed to a poll nobody reads, and the next agent to ask gets it."""
    events = api.job_store.events
    agent = start_agent(backend=ScriptedBackend(), poll_wait=25)
    await api.wait_for(lambda: api.polls >= 1)
    await agent.stopped()
    async with asyncio.timeout(5):  # the server saw the poll's connection close
        while events.waiter_count:
            await asyncio.sleep(0.005)
    job_id = await api.add_job("get_positions", {})
    assert (await api.job(job_id)).status == "pending"
    async with httpx.AsyncClient(base_url=f"{api.url}/api/v1", timeout=30) as client:
        response = await client.get(
            f"/agents/{api.agent_id}/jobs/next",
            params={"wait": 5},
            headers={"Authorization": f"Bearer {api.token}"},
        )
    assert response.status_code == 200
    assert response.json()["id"] == job_id


async def claimed(api: RealAgentApi, job_id: str) -> None:
    """Until the job is `running`: an agent's poll took it."""
    async with asyncio.timeout(5):
        while (await api.job(job_id)).status != "running":
            await asyncio.sleep(0.005)


async def test_the_next_poll_claims_a_job_while_the_one_in_hand_runs_and_each_runs_once(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent]
) -> None:
    backend = held_backend()
    start_agent(backend=backend, poll_wait=25)
    first = await api.add_job("get_positions", {})
    await backend.job_started.wait()
    second = await api.add_job("get_positions", {})
    await claimed(api, second)  # by the poll in flight, while the first is still held
    assert (await api.job(first)).status == "running"
    assert backend.executed == []
    backend.gate.set()
    for job_id in (first, second):
        assert (await api.wait_result(job_id))["status"] == "completed"
    assert backend.executed == ["get_positions", "get_positions"]


async def test_stop_runs_a_job_the_poll_in_flight_already_claimed(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent]
) -> None:
    backend = held_backend()
    agent = start_agent(backend=backend, poll_wait=25)
    first = await api.add_job("get_positions", {})
    await backend.job_started.wait()
    second = await api.add_job("get_positions", {})
    await claimed(api, second)
    agent.stop.set()
    backend.gate.set()
    await asyncio.wait_for(agent.task, 5)
    # Neither result is lost nor left to time out as `running`.
    for job_id in (first, second):
        assert (await api.job(job_id)).status == "completed"
    assert backend.executed == ["get_positions", "get_positions"]


# -- failures ---------------------------------------------------------------------------------


async def test_the_agent_backs_off_on_5xx_and_then_takes_jobs(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent], logs: LogEvents
) -> None:
    api.faults.fail["poll"] = 3
    start_agent()
    await logs.wait_for("event=api_unavailable", times=3)
    job_id = await api.add_job("get_account", {})
    assert (await api.wait_result(job_id))["status"] == "completed"
    assert logs.count('reason="internal_error (HTTP 503)"') == 3
    await logs.wait_for("event=api_reconnected attempts=3")


async def test_getting_through_again_is_logged_at_once_not_after_a_long_poll(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent], logs: LogEvents
) -> None:
    api.faults.fail["poll"] = 1
    start_agent(poll_wait=25)
    await logs.wait_for("event=api_unavailable")
    started = time.monotonic()
    await logs.wait_for("event=api_reconnected attempts=1")
    # Backoff and an empty first poll, not the 25 s long poll.
    assert time.monotonic() - started < 10


async def test_the_agent_retries_credentials_until_the_api_answers(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent], logs: LogEvents
) -> None:
    api.faults.fail["credentials"] = 2
    start_agent()
    await logs.wait_for("event=connect_failed", times=2)
    await logs.wait_for("event=agent_online")
    job_id = await api.add_job("get_positions", {})
    assert (await api.wait_result(job_id))["status"] == "completed"


async def test_a_result_is_retried_until_the_api_takes_it(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent], logs: LogEvents
) -> None:
    api.faults.fail["result"] = 2
    start_agent()
    job_id = await api.add_job("get_positions", {})
    assert (await api.wait_result(job_id))["status"] == "completed"
    assert logs.count("event=result_retry") == 2
    await logs.wait_for("reported=yes")


async def test_a_result_the_server_refuses_is_logged_and_not_retried(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent], logs: LogEvents
) -> None:
    """A backend answering a trade with the wrong shape: the server says 422
    invalid_result; the agent reports it as refused (no retry loop) and takes more jobs."""
    start_agent(backend=ScriptedBackend())  # answers every job with {"positions": []}
    job_id = await api.add_job("trade", order())
    await logs.wait_for(f"event=result_refused job_id={job_id}")
    await logs.wait_for(f"event=job_done job_id={job_id} job_type=trade outcome=completed")
    assert "invalid_result (HTTP 422)" in next(
        line for line in logs.lines if "result_refused" in line
    )
    assert logs.count("reported=refused") == 1
    assert logs.count("event=result_retry") == 0
    assert (await api.job(job_id)).status == "running"  # nothing was recorded
    second = await api.add_job("get_positions", {})
    assert (await api.wait_result(second))["status"] == "completed"


async def test_the_agent_survives_the_api_restarting_under_it(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent], logs: LogEvents
) -> None:
    start_agent()
    first = await api.add_job("get_positions", {})
    await api.wait_result(first)
    await api.stop()
    await logs.wait_for("event=api_unavailable", times=2)
    await api.start()
    second = await api.add_job("get_account", {})
    assert (await api.wait_result(second))["status"] == "completed"
    assert any("ConnectError" in line for line in logs.lines)


async def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    low = Backoff(1.0, 8.0, rng=lambda: 0.0)
    high = Backoff(1.0, 8.0, rng=lambda: 1.0)
    assert [low.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [high.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    high.reset()
    assert high.next() == 1.0


# -- prices -----------------------------------------------------------------------------------


def tick(bid: float, ts: int) -> dict[str, Any]:
    return {"bid": bid, "ask": round(bid + 0.0001, 5), "ts": ts}


async def test_only_changed_ticks_are_pushed_in_batches(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent]
) -> None:
    backend = ScriptedBackend(
        [
            {"EURUSD": tick(1.1, 1), "GBPUSD": tick(1.3, 1)},
            {"EURUSD": tick(1.1, 2), "GBPUSD": tick(1.3, 2)},
            {"EURUSD": tick(1.2, 3), "GBPUSD": tick(1.3, 3)},
        ]
    )
    backend.loop = asyncio.get_running_loop()
    backend.ticks_seen = asyncio.Event()
    backend.ticks_wanted = 8
    start_agent(backend=backend, price_symbols=("EURUSD", "GBPUSD"))
    await asyncio.wait_for(backend.ticks_seen.wait(), 5)
    await api.wait_for(lambda: len(api.price_batches) >= 2)
    assert api.price_batches == [
        {"EURUSD": tick(1.1, 1), "GBPUSD": tick(1.3, 1)},
        {"EURUSD": tick(1.2, 3)},
    ]


async def test_ticks_that_failed_to_send_go_out_with_the_next_push(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent], logs: LogEvents
) -> None:
    api.faults.fail["prices"] = 1
    backend = ScriptedBackend([{"EURUSD": tick(1.1, 1)}])
    start_agent(backend=backend, price_symbols=("EURUSD",))
    await api.wait_for(lambda: len(api.price_batches) >= 1)
    assert api.price_batches[0] == {"EURUSD": tick(1.1, 1)}
    assert logs.count("event=prices_failed") == 1


async def test_a_refused_price_source_stops_pushing_but_keeps_taking_jobs(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent], logs: LogEvents
) -> None:
    await api.set_price_source(False)
    start_agent(price_symbols=("EURUSD",))
    await logs.wait_for("event=price_source_refused")
    job_id = await api.add_job("get_positions", {})
    assert (await api.wait_result(job_id))["status"] == "completed"
    assert api.price_attempts == 1


async def test_the_sim_pushes_live_prices(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent]
) -> None:
    start_agent(price_symbols=("EURUSD", "XAUUSD"), price_interval=0.05)
    await api.wait_for(lambda: len(api.price_batches) >= 3)
    first = api.price_batches[0]
    assert set(first) == {"EURUSD", "XAUUSD"}
    assert first["EURUSD"]["bid"] < first["EURUSD"]["ask"]
    assert abs(first["EURUSD"]["ts"] - time.time() * 1000) < 60_000


# -- the client --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://h:8000", "http://h:8000/", "http://h:8000/api/v1", "http://h:8000/api/v1/"]
)
def test_the_api_url_may_include_the_base_path(url: str) -> None:
    assert api_root(url) == "http://h:8000/api/v1"


def test_api_times_with_z_are_utc() -> None:
    moment = parse_time("2026-11-24T21:15:03.120Z")
    assert moment is not None
    assert moment == datetime(2026, 11, 24, 21, 15, 3, 120_000, tzinfo=UTC)
    assert parse_time("garbage") is None
    assert parse_time(None) is None


@pytest.fixture
async def mock_client() -> AsyncIterator[Callable[[httpx.Response], AgentClient]]:
    clients: list[AgentClient] = []

    def make(response: httpx.Response) -> AgentClient:
        def handler(request: httpx.Request) -> httpx.Response:
            assert request.headers["authorization"] == "Bearer t"
            return response

        client = AgentClient("http://api", "a 1", "t", transport=httpx.MockTransport(handler))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def test_an_empty_poll_is_no_job(
    mock_client: Callable[[httpx.Response], AgentClient],
) -> None:
    client = mock_client(httpx.Response(204))
    assert await client.next_job(1) is None


async def test_api_errors_carry_the_detail_code(
    mock_client: Callable[[httpx.Response], AgentClient],
) -> None:
    client = mock_client(httpx.Response(401, json={"detail": "invalid_agent_token"}))
    with pytest.raises(AgentApiError) as caught:
        await client.credentials()
    assert (caught.value.status_code, caught.value.detail) == (401, "invalid_agent_token")


def test_log_lines_are_key_value() -> None:
    line = kv(event="job_done", job_id="j-1", ms=3.14159, code=None, reason="a b")
    assert line == 'event=job_done job_id=j-1 ms=3.1 reason="a b"'


# -- the protocol ------------------------------------------------------------------------------

# What each agent call carries, by the protocol's models: (request body, 2xx answer).
PROTOCOL_MODELS: dict[str, tuple[TypeAdapter[Any] | None, TypeAdapter[Any]]] = {
    "heartbeat": (TypeAdapter(Heartbeat), TypeAdapter(ServerTime)),
    "credentials": (None, TypeAdapter(Credentials)),
    "poll": (None, TypeAdapter(JobEnvelope)),
    "result": (TypeAdapter(JobResult), TypeAdapter(JobResultAccepted)),
    "prices": (TypeAdapter(PricePush), TypeAdapter(PricesAccepted)),
    "events": (TypeAdapter(EventBatch), TypeAdapter(EventsAccepted)),
}


async def test_what_the_agent_sends_and_the_server_answers_fit_the_same_protocol_models(
    api: RealAgentApi, start_agent: Callable[..., RunningAgent]
) -> None:
    start_agent(price_symbols=("EURUSD",), price_interval=0.05)
    completed = await api.add_job("get_account", {})
    failed = await api.add_job("trade", order(volume=0.001))
    assert (await api.wait_result(completed))["status"] == "completed"
    assert (await api.wait_result(failed))["status"] == "failed"
    # A waiter wakes before the result's answer is sent: wait for both to be recorded.
    await api.wait_for(
        lambda: sum(e.kind == "result" for e in api.exchanges) >= 2 and bool(api.price_batches)
    )
    answered = {(exchange.kind, exchange.status) for exchange in api.exchanges}
    assert {
        ("heartbeat", 200),
        ("credentials", 200),
        ("poll", 200),
        ("result", 200),
        ("prices", 202),
        ("events", 202),
    } <= answered
    results = []
    for exchange in api.exchanges:
        sent, answer = PROTOCOL_MODELS[exchange.kind]
        if sent is not None and exchange.request_body:
            body = sent.validate_json(exchange.request_body)
            if exchange.kind == "result":
                results.append(body)
        if exchange.status in (200, 202):
            answer.validate_json(exchange.response_body)
    assert {result.status for result in results} == {"completed", "failed"}
