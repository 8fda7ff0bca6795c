"""The shipped agent on the link (``WS /ws/agents/{id}``) against the real API, in-process
over real TCP, on both stores: jobs pushed and answered over it, a link dropped mid-job,
the fallback to HTTP long-poll when the server refuses the link, a server sending frames
the agent cannot read, and the watcher's events going up the link."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import websockets
from real_api import RealAgentApi

from mt5gate_agent.backends.sim import SimBackend
from mt5gate_agent.config import AgentConfig
from mt5gate_agent.runner import TokenRefused, run_agent
from tests.conftest import make_settings
from tests.flows import provision_agent
from tests.log_events import LogEvents, watch_log
from tests.stores import (
    Store,
    migrated_store,
    reset_store,
)
from tests.tcp_proxy import SilenceableProxy

WAIT = 10.0


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """The link claims and completes jobs in the store: both stores, unlike the HTTP tests."""
    yield from migrated_store(request.param, tmp_path_factory)


@pytest.fixture
async def logs() -> AsyncIterator[LogEvents]:
    with watch_log("mt5gate_agent") as watcher:
        yield watcher


class HeldSim(SimBackend):
    """The simulator, whose jobs wait for ``gate`` (set by default) and are counted."""

    def __init__(self) -> None:
        super().__init__(seed=5)
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.executed: list[str] = []

    def execute(self, job_type: str, input_data: dict[str, Any]) -> dict[str, Any]:
        self.started.set()
        self.gate.wait(WAIT)
        self.executed.append(job_type)
        return super().execute(job_type, input_data)


@pytest.fixture
async def run(api: RealAgentApi) -> AsyncIterator[Callable[..., SimBackend]]:
    """Starts the agent (transport link, the default) on a backend; stops it at the end."""
    running: list[tuple[asyncio.Task[None], asyncio.Event]] = []

    def start(backend: SimBackend | None = None, **overrides: Any) -> SimBackend:
        backend = backend or HeldSim()
        options: dict[str, Any] = {
            "api_url": api.url,
            "agent_id": api.agent_id,
            "token": api.token,
            "backend": "sim",
            "poll_wait": 1,
            "heartbeat_interval": 60.0,
            "backoff_initial": 0.01,
            "backoff_max": 0.05,
            "watch_interval": 0.0,
            "result_retry_seconds": 5.0,
        }
        stop = asyncio.Event()
        config = AgentConfig(**(options | overrides))
        running.append((asyncio.create_task(run_agent(config, stop, backend=backend)), stop))
        return backend

    yield start
    for task, stop in running:
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def test_an_order_round_trips_over_the_link(
    api: RealAgentApi, run: Callable[..., SimBackend], logs: LogEvents
) -> None:
    backend = run()
    await logs.wait_for("event=link_opened")
    job_id = await api.add_job(
        "trade", {"symbol": "EURUSD", "side": "buy", "volume": 0.1, "sl": None, "tp": None}
    )
    result = await api.wait_result(job_id)
    assert result["status"] == "completed"
    assert result["output_data"]["volume"] == 0.1
    assert isinstance(backend, HeldSim)
    assert backend.executed == ["trade"]
    # Pushed and answered on the link: no long poll, no result posted over HTTP.
    assert api.polls == 0
    assert api.calls["result"] == 0


async def test_a_result_kept_across_a_dropped_link_is_sent_again_and_taken_once(
    api: RealAgentApi, run: Callable[..., SimBackend], logs: LogEvents
) -> None:
    proxy = SilenceableProxy("127.0.0.1", api.port)
    await proxy.start()
    try:
        backend = HeldSim()
        backend.gate.clear()
        run(backend, api_url=f"http://{proxy.host_port}", link_backoff_initial=0.05)
        await logs.wait_for("event=link_opened")
        job_id = await api.add_job("get_account", {})
        await asyncio.to_thread(backend.started.wait, WAIT)
        proxy.cut()  # the link drops while the job runs
        await logs.wait_for("event=link_closed")
        backend.gate.set()
        result = await api.wait_result(job_id)
        assert result["status"] == "completed"
        await logs.wait_for("event=link_opened", times=2)
        # Run once, whether the server had its `claimed` (the result sent again is taken)
        # or not (the job pushed again gets the result kept, not a second execution).
        assert backend.executed == ["get_account"]
        # Taken once: the job's record is the first answer, and stays so.
        assert (await api.job(job_id)).status == "completed"
    finally:
        await proxy.stop()


async def test_a_job_pushed_again_after_a_drop_is_not_run_twice(
    api: RealAgentApi, run: Callable[..., SimBackend], logs: LogEvents
) -> None:
    """However the drop fell (``claimed`` lost or not), each job runs once and is answered."""
    proxy = SilenceableProxy("127.0.0.1", api.port)
    await proxy.start()
    try:
        backend = HeldSim()
        backend.gate.clear()
        run(backend, api_url=f"http://{proxy.host_port}", link_backoff_initial=0.05)
        await logs.wait_for("event=link_opened")
        first = await api.add_job("get_account", {})
        await asyncio.to_thread(backend.started.wait, WAIT)
        second = await api.add_job("get_positions", {})
        await logs.wait_for(f"event=job_pushed job_id={second}")  # queued behind the first
        proxy.cut()
        await logs.wait_for("event=link_closed")
        backend.gate.set()
        for job_id in (first, second):
            assert (await api.wait_result(job_id))["status"] == "completed"
        assert sorted(backend.executed) == ["get_account", "get_positions"]
    finally:
        await proxy.stop()


@pytest.fixture
async def link_disabled_api(store: Store) -> AsyncIterator[RealAgentApi]:
    await reset_store(store)
    real = RealAgentApi(make_settings(store, agent_link_enabled=False))
    await real.start()
    await real.onboard()
    yield real
    await real.stop()


async def test_the_agent_falls_back_to_http_when_the_server_refuses_the_link(
    link_disabled_api: RealAgentApi, logs: LogEvents
) -> None:
    api = link_disabled_api
    stop = asyncio.Event()
    config = AgentConfig(
        api_url=api.url,
        agent_id=api.agent_id,
        token=api.token,
        backend="sim",
        poll_wait=1,
        heartbeat_interval=60.0,
        watch_interval=0.0,
        link_retry=1.0,
    )
    task = asyncio.create_task(run_agent(config, stop, backend=HeldSim()))
    try:
        await logs.wait_for("event=link_fallback reason=http_403")
        job_id = await api.add_job("get_account", {})
        assert (await api.wait_result(job_id))["status"] == "completed"
        assert api.polls >= 1
        assert api.calls["result"] == 1
        # Tried again every link_retry seconds, and refused again.
        await logs.wait_for("event=link_fallback", times=2)
        assert logs.count("link_opened") == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


NOISE: list[str | bytes] = [
    "not json",
    "[1, 2, 3]",
    "{}",
    json.dumps({"type": "mystery"}),
    json.dumps({"type": "job", "job": {"id": "not-a-uuid", "job_type": "trade"}}),
    json.dumps({"type": "job", "job": "a string"}),
    json.dumps({"type": "result_accepted", "job_id": str(uuid.uuid4()), "status": "completed"}),
    json.dumps({"type": "result_accepted", "job_id": 12}),
    json.dumps({"type": "events_accepted", "ref": "x", "accepted": 1}),
    json.dumps({"type": "heartbeat_accepted", "server_time": "yesterday"}),
    json.dumps({"type": "error", "detail": "something else", "message": "x" * 5000}),
    json.dumps({"type": "error", "detail": "job_not_running", "job_id": str(uuid.uuid4())}),
    b"\xff\xfe\x00binary",
]


async def test_frames_the_agent_cannot_read_are_skipped_and_the_link_keeps_working(
    api: RealAgentApi, run: Callable[..., SimBackend], logs: LogEvents
) -> None:
    api.faults.link_noise = list(NOISE)
    run()
    await logs.wait_for("event=link_opened")
    await logs.wait_for("event=link_bad_frame", times=6)
    job_id = await api.add_job("get_account", {})
    assert (await api.wait_result(job_id))["status"] == "completed"
    assert logs.count("link_closed") == 0
    assert logs.count("link_frame_crashed") == 0
    assert api.links_opened == 1


async def test_the_watchers_events_reach_the_account_stream_over_the_link(
    api: RealAgentApi, run: Callable[..., SimBackend], logs: LogEvents
) -> None:
    assert api.trader is not None
    url = api.url.replace("http://", "ws://", 1) + "/ws/account"
    async with websockets.connect(
        url, additional_headers=api.trader.headers, open_timeout=WAIT
    ) as stream:
        async with asyncio.timeout(WAIT):
            assert json.loads(await stream.recv())["type"] == "snapshot"
        run(watch_interval=0.05)
        await logs.wait_for("event=link_opened")
        async with httpx.AsyncClient(
            base_url=f"{api.url}/api/v1", headers=api.trader.headers, timeout=WAIT
        ) as http:
            order = {"symbol": "EURUSD", "side": "buy", "volume": 0.1}
            response = await http.post("/orders", json=order)
            assert response.status_code in (200, 201), response.text
        async with asyncio.timeout(WAIT):
            while True:
                message = json.loads(await stream.recv())
                if message["type"] == "event" and message["event"]["kind"] == "position_opened":
                    break
    # The position's events rode the link (only the watcher's first look, before the link
    # opened, may have gone over HTTP).
    over_http = [e["kind"] for batch in api.event_batches for e in batch]
    assert "position_opened" not in over_http


async def test_a_token_rotated_while_on_the_link_stops_the_agent_as_a_401_does(
    api: RealAgentApi, logs: LogEvents
) -> None:
    assert api.trader is not None
    stop = asyncio.Event()
    config = AgentConfig(
        api_url=api.url,
        agent_id=api.agent_id,
        token=api.token,
        backend="sim",
        heartbeat_interval=60.0,
        watch_interval=0.0,
    )
    task = asyncio.create_task(run_agent(config, stop, backend=HeldSim()))
    try:
        await logs.wait_for("event=link_opened")
        async with httpx.AsyncClient(base_url=f"{api.url}/api/v1", timeout=WAIT) as http:
            await provision_agent(http, api.trader.user, api.trader.connection_id)
        with pytest.raises(TokenRefused) as refused:
            await asyncio.wait_for(task, WAIT)
        assert refused.value.cause.status_code == 401
        await logs.wait_for("event=link_closed code=4001")
        assert logs.count("link_opened") == 1  # not opened again with a dead token
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, WAIT)
