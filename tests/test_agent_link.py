"""The agent link (`WS /ws/agents/{agent_id}`): jobs pushed, results and events back,
the newest link wins, rotation closes it, presence follows it. Real sockets, real servers,
both stores (the cross-process tests: PostgreSQL + Redis, with a `serve` process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from app import dispatch
from mt5gate_protocol.jobs import JobType
from tests.account_events import AT, connect_account, recv_events, recv_snapshot
from tests.account_events import deal as deal_data
from tests.conftest import make_settings
from tests.flows import AgentHandle, Trader, add_connection, onboard_trader, provision_agent
from tests.log_events import watch_log
from tests.private_redis import PrivateRedis, private_redis
from tests.servers import RunningApi, ServeProcess, run_api, start_serve
from tests.stores import Store, reset_store
from tests.test_jobs import TRADE_INPUT, TRADE_OUTPUT
from tests.trading_agent import ORDER

TIMEOUT = 10.0


class Link:
    """A test agent speaking the link protocol."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            body: dict[str, Any] = json.loads(await self.ws.recv())
        return body

    async def send(self, body: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(json.dumps(body) if isinstance(body, dict) else body)

    async def ask(self, body: dict[str, Any] | str | bytes) -> dict[str, Any]:
        await self.send(body)
        return await self.recv()

    async def job(self) -> dict[str, Any]:
        pushed = await self.recv()
        assert pushed["type"] == "job", pushed
        job: dict[str, Any] = pushed["job"]
        return job

    async def answer(self, job_id: str, output: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.ask(
            {
                "type": "result",
                "job_id": job_id,
                "result": {"status": "completed", "output_data": output or TRADE_OUTPUT},
            }
        )

    async def nothing_pushed(self) -> None:
        """Nothing is pushed before the answer to a ping (the server handles messages in
        order, and a push already claimed would have been written before)."""
        assert await self.ask({"type": "ping"}) == {"type": "pong"}

    async def close_code(self, timeout: float = TIMEOUT) -> int | None:
        async with asyncio.timeout(timeout):
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await self.ws.recv()
        return self.ws.close_code


def link_url(base_url: str, agent: AgentHandle) -> str:
    return f"{base_url.replace('http://', 'ws://', 1)}/ws/agents/{agent.id}"


@contextlib.asynccontextmanager
async def open_link(
    base_url: str, agent: AgentHandle, *, token: str | None = None
) -> AsyncIterator[Link]:
    """A link with the Bearer header, its welcome already read."""
    headers = {"Authorization": f"Bearer {token or agent.token}"}
    async with websockets.connect(
        link_url(base_url, agent), additional_headers=headers, open_timeout=TIMEOUT
    ) as ws:
        link = Link(ws)
        welcome = await link.recv()
        assert welcome["type"] == "welcome", welcome
        assert welcome["ping_interval"] > 0
        assert "server_time" in welcome
        assert "last_deal_ticket" in welcome
        yield link


async def create_job(api: RunningApi, trader: Trader) -> str:
    job, _ = await dispatch.create_job(
        api.resources.jobs,
        user_id=uuid.UUID(trader.user.id),
        agent_id=uuid.UUID(trader.agent.id),
        job_type=JobType.TRADE,
        input_data=dict(TRADE_INPUT),
        ttl_seconds=30,
    )
    return str(job.id)


async def job_status(api: RunningApi, job_id: str) -> str:
    job = await dispatch.get_job(api.resources.jobs, uuid.UUID(job_id))
    assert job is not None
    return job.status


async def agent_status(client: httpx.AsyncClient, trader: Trader) -> str:
    listed = await client.get("/broker-connections", headers=trader.headers)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    items = body["items"] if isinstance(body, dict) else body
    (connection,) = [c for c in items if c["id"] == trader.connection_id]
    status: str = connection["agent"]["status"]
    return status


async def order_through(client: httpx.AsyncClient, trader: Trader, link: Link) -> None:
    """`POST /orders` answered by the agent on `link`."""
    order = asyncio.create_task(client.post("/orders", json=ORDER, headers=trader.headers))
    job = await link.job()
    await link.send({"type": "claimed", "job_id": job["id"]})
    accepted = await link.answer(job["id"])
    assert accepted == {"type": "result_accepted", "job_id": job["id"], "status": "completed"}
    placed = await order
    assert placed.status_code == 201, placed.text
    assert placed.json()["order_id"] == job["id"]
    assert placed.json()["status"] == "filled"


async def test_an_order_round_trip_over_the_link(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    async with open_link(api.base_url, trader.agent) as link:
        await order_through(client, trader, link)
        beat = await link.ask({"type": "heartbeat", "heartbeat": {"terminal_connected": True}})
        assert beat["type"] == "heartbeat_accepted"
        assert "server_time" in beat
        assert await link.ask({"type": "ping"}) == {"type": "pong"}
        await order_through(client, trader, link)


async def test_the_token_may_come_as_a_query_parameter(api: RunningApi, trader: Trader) -> None:
    url = f"{link_url(api.base_url, trader.agent)}?token={trader.agent.token}"
    async with websockets.connect(url, open_timeout=TIMEOUT) as ws:
        assert (await Link(ws).recv())["type"] == "welcome"


@pytest.mark.parametrize("token", ["wrong-token", None])
async def test_a_bad_token_is_closed_4001(
    api: RunningApi, trader: Trader, token: str | None
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with websockets.connect(
        link_url(api.base_url, trader.agent), additional_headers=headers, open_timeout=TIMEOUT
    ) as ws:
        assert await Link(ws).close_code() == 4001
    other = AgentHandle(str(uuid.uuid4()), trader.agent.token)  # another agent's id
    async with websockets.connect(
        link_url(api.base_url, other),
        additional_headers={"Authorization": f"Bearer {trader.agent.token}"},
        open_timeout=TIMEOUT,
    ) as ws:
        assert await Link(ws).close_code() == 4001


async def test_a_disabled_link_refuses_the_handshake(store: Store) -> None:
    await reset_store(store)
    async with (
        run_api(make_settings(store, agent_link_enabled=False)) as api,
        httpx.AsyncClient(base_url=f"{api.base_url}/api/v1", timeout=30) as client,
    ):
        trader = await onboard_trader(client)
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with open_link(api.base_url, trader.agent):
                pass
        assert refused.value.response.status_code == 403
        # The HTTP routes still serve the agent.
        beat = await client.post(
            trader.agent.path("heartbeat"), json={}, headers=trader.agent.headers
        )
        assert beat.status_code == 200


async def test_bad_messages_get_an_error_frame_and_the_link_stays(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    async with open_link(api.base_url, trader.agent) as link:
        deep = "[" * 100_000 + "]" * 100_000
        for bad in ("not json", "[1, 2]", {"type": "nope"}, {"no": "type"}, b"\x00binary", deep):
            refused = await link.ask(bad)
            assert refused["type"] == "error", bad
            assert refused["detail"] == "invalid_message", bad
        wrong_shape = await link.ask({"type": "claimed", "job_id": "not-a-uuid"})
        assert wrong_shape["detail"] == "invalid_message"
        stranger = str(uuid.uuid4())
        not_running = await link.answer(stranger)
        assert not_running["detail"] == "job_not_running"
        assert not_running["job_id"] == stranger
        job_id = await create_job(api, trader)
        assert (await link.job())["id"] == job_id
        await link.send({"type": "claimed", "job_id": job_id})
        bad_output = await link.answer(job_id, {"ticket": "x"})
        assert bad_output["detail"] == "invalid_result"
        assert bad_output["job_id"] == job_id
        bad_result = await link.ask({"type": "result", "job_id": job_id, "result": {"x": 1}})
        assert bad_result["detail"] == "invalid_result"
        assert bad_result["job_id"] == job_id
        events = await link.ask({"type": "events", "ref": 7, "batch": {"events": [{"kind": "x"}]}})
        assert events["detail"] == "invalid_events"
        assert events["ref"] == 7
        assert events["errors"][0]["index"] == 0
        no_ref = await link.ask({"type": "events", "batch": {"events": []}})
        assert no_ref["detail"] == "invalid_message"
        # The job survived all of it: still running, and answered now.
        assert await job_status(api, job_id) == "running"
        accepted = await link.answer(job_id)
        assert accepted["type"] == "result_accepted"
        assert await job_status(api, job_id) == "completed"
        await order_through(client, trader, link)


async def test_events_ride_the_link(api: RunningApi, trader: Trader) -> None:
    deal = {"kind": "deal", "at": AT, "data": deal_data(900001)}
    async with open_link(api.base_url, trader.agent) as link:
        answer = await link.ask({"type": "events", "ref": 1, "batch": {"events": [deal]}})
        assert answer == {"type": "events_accepted", "ref": 1, "accepted": 1}
        again = await link.ask({"type": "events", "ref": 2, "batch": {"events": [deal]}})
        assert again == {"type": "events_accepted", "ref": 2, "accepted": 0}
        beat = await link.ask({"type": "heartbeat"})
        assert beat["last_deal_ticket"] == 900001


async def test_a_job_pushed_but_not_acknowledged_is_pushed_again_once(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    job_id = await create_job(api, trader)
    with watch_log("mt5gate.agent_link") as log:
        async with open_link(api.base_url, trader.agent) as link:
            assert (await link.job())["id"] == job_id
        await log.wait_for("event=agent_link_closed")  # dropped before `claimed`
    assert await job_status(api, job_id) == "pending"
    with watch_log("mt5gate.agent_link") as log:
        async with open_link(api.base_url, trader.agent) as link:
            assert (await link.job())["id"] == job_id
            await link.send({"type": "claimed", "job_id": job_id})
            await link.nothing_pushed()
        await log.wait_for("event=agent_link_closed")  # dropped after `claimed`
    assert await job_status(api, job_id) == "running"
    async with open_link(api.base_url, trader.agent) as link:
        await link.nothing_pushed()  # acknowledged: not pushed again
        assert (await link.answer(job_id))["type"] == "result_accepted"
        await order_through(client, trader, link)


async def test_a_job_made_where_its_link_is_held_is_stored_claimed_and_released_unacknowledged(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    with watch_log("mt5gate.agent_link") as log:
        async with open_link(api.base_url, trader.agent) as link:
            job_id = await create_job(api, trader)
            # Claimed by the link as it was stored (no claim after it), then pushed.
            assert await job_status(api, job_id) == "running"
            assert (await link.job())["id"] == job_id
        await log.wait_for("event=agent_link_closed")  # dropped before `claimed`
    assert await job_status(api, job_id) == "pending"
    async with open_link(api.base_url, trader.agent) as link:
        assert (await link.job())["id"] == job_id  # pushed again, once
        await link.send({"type": "claimed", "job_id": job_id})
        assert (await link.answer(job_id))["type"] == "result_accepted"
        await link.nothing_pushed()
        await order_through(client, trader, link)
    assert await job_status(api, job_id) == "completed"


async def test_many_jobs_at_once_are_each_pushed_exactly_once(
    api: RunningApi, trader: Trader
) -> None:
    async with open_link(api.base_url, trader.agent) as link:
        created = set(await asyncio.gather(*(create_job(api, trader) for _ in range(24))))
        pushed = [(await link.job())["id"] for _ in created]
        assert sorted(pushed) == sorted(created)
        for job_id in pushed:
            await link.send({"type": "claimed", "job_id": job_id})
            await link.send(
                {
                    "type": "result",
                    "job_id": job_id,
                    "result": {"status": "completed", "output_data": TRADE_OUTPUT},
                }
            )
        answers = [await link.recv() for _ in pushed]
        assert sorted(a["job_id"] for a in answers) == sorted(created)
        assert {a["type"] for a in answers} == {"result_accepted"}
        await link.nothing_pushed()
    for job_id in created:
        assert await job_status(api, job_id) == "completed"


async def test_a_result_sent_again_after_a_drop_is_accepted_once(
    api: RunningApi, trader: Trader
) -> None:
    job_id = await create_job(api, trader)
    waiter = asyncio.create_task(
        dispatch.wait_for_job_result(api.resources.jobs, job_id=uuid.UUID(job_id), timeout=20)
    )
    async with open_link(api.base_url, trader.agent) as link:
        assert (await link.job())["id"] == job_id
        await link.send({"type": "claimed", "job_id": job_id})
        first = await link.answer(job_id)
    assert first == {"type": "result_accepted", "job_id": job_id, "status": "completed"}
    finished = await waiter
    assert finished.status == "completed"
    async with open_link(api.base_url, trader.agent) as link:
        # The agent missed the acknowledgement (say): the repeat is acknowledged again.
        assert await link.answer(job_id) == first
        assert await link.answer(job_id, {"ticket": 1}) == first  # stored once, unchanged
        await link.nothing_pushed()
    job = await dispatch.get_job(api.resources.jobs, uuid.UUID(job_id))
    assert job is not None
    assert job.output_data == TRADE_OUTPUT


async def next_agent_event(stream: ClientConnection) -> dict[str, Any]:
    """The next `agent` event on an account stream (order events pass by)."""
    while True:
        (event,) = await recv_events(stream, 1)
        if event["kind"] == "agent":
            return event


async def test_a_closed_link_makes_the_agent_offline_at_once(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    async with connect_account(api, trader.user.token) as stream:
        assert (await recv_snapshot(stream))["agent"]["status"] == "online"
        with watch_log("mt5gate.agent_link") as log:
            async with open_link(api.base_url, trader.agent) as link:
                await order_through(client, trader, link)
            await log.wait_for("event=agent_link_closed")
        offline_event = await next_agent_event(stream)
        assert offline_event["data"]["status"] == "offline"
    offline = await client.post("/orders", json=ORDER, headers=trader.headers)
    assert offline.status_code == 503, offline.text
    assert offline.json()["detail"] == "agent_offline"
    assert await agent_status(client, trader) == "offline"
    # An HTTP heartbeat (an agent that fell back) makes it online again.
    beat = await client.post(trader.agent.path("heartbeat"), json={}, headers=trader.agent.headers)
    assert beat.status_code == 200
    assert await agent_status(client, trader) == "online"


async def test_a_linked_agent_whose_terminal_disconnected_gets_no_new_job(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    """The agent that served the account is remembered with its link open; the job is still
    stored only if the agent is online (here: its terminal reported disconnected)."""
    async with open_link(api.base_url, trader.agent) as link:
        await order_through(client, trader, link)
        beat = await link.ask({"type": "heartbeat", "heartbeat": {"terminal_connected": False}})
        assert beat["type"] == "heartbeat_accepted"
        refused = await client.post("/orders", json=ORDER, headers=trader.headers)
        assert refused.status_code == 503, refused.text
        assert refused.json()["detail"] == "agent_offline"
        await link.nothing_pushed()
        beat = await link.ask({"type": "heartbeat", "heartbeat": {"terminal_connected": True}})
        assert beat["type"] == "heartbeat_accepted"
        await order_through(client, trader, link)


async def test_another_user_naming_a_linked_agents_connection_gets_404_and_no_job(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    intruder = await onboard_trader(client)
    async with open_link(api.base_url, trader.agent) as link:
        await order_through(client, trader, link)  # the owner's agent is remembered, linked
        order = {**ORDER, "broker_connection_id": trader.connection_id}
        named = await client.post("/orders", json=order, headers=intruder.headers)
        assert named.status_code == 404, named.text
        params = {"broker_connection_id": trader.connection_id}
        account = await client.get("/account", params=params, headers=intruder.headers)
        assert account.status_code == 404, account.text
        await link.nothing_pushed()


async def test_the_oldest_connection_deleted_its_jobs_go_to_the_next_oldest(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    newer_connection = await add_connection(client, trader.user, login=5009876)
    newer_agent = await provision_agent(client, trader.user, newer_connection)
    async with open_link(api.base_url, newer_agent) as newer:
        async with open_link(api.base_url, trader.agent) as oldest:
            await order_through(client, trader, oldest)  # no connection named: the oldest
            deleted = await client.delete(
                f"/broker-connections/{trader.connection_id}", headers=trader.headers
            )
            assert deleted.status_code == 204
            assert await oldest.close_code() == 4001
        await order_through(client, trader, newer)


async def test_rotation_and_deletion_close_the_link_4001(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    async with open_link(api.base_url, trader.agent) as link:
        rotated = await client.post(
            f"/broker-connections/{trader.connection_id}/agent", headers=trader.headers
        )
        assert rotated.status_code == 201
        assert await link.close_code() == 4001
    new_agent = AgentHandle(rotated.json()["agent_id"], rotated.json()["agent_token"])
    async with open_link(api.base_url, new_agent) as link:
        deleted = await client.delete(
            f"/broker-connections/{trader.connection_id}", headers=trader.headers
        )
        assert deleted.status_code == 204
        assert await link.close_code() == 4001


async def test_two_links_for_one_agent_the_newer_wins(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    async with open_link(api.base_url, trader.agent) as older:
        async with open_link(api.base_url, trader.agent) as newer:
            assert await older.close_code() == 4009
            await order_through(client, trader, newer)  # online, and served by the newer


# Across processes: PostgreSQL + Redis (processes share no SQLite file or memory://).


@pytest.fixture
async def two_processes(
    store: Store, tmp_path: Path
) -> AsyncIterator[tuple[RunningApi, ServeProcess]]:
    await reset_store(store)
    # A fallback poll this slow cannot explain a delivery: only a wake-up can.
    settings = make_settings(store, job_poll_interval_seconds=10, ws_ping_interval_seconds=0.5)
    async with run_api(settings) as api_a:
        process_b = await asyncio.to_thread(start_serve, settings, tmp_path / "serve-b.log")
        try:
            yield api_a, process_b
        finally:
            process_b.stop()


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_a_job_created_on_one_process_reaches_a_link_on_another(
    two_processes: tuple[RunningApi, ServeProcess],
) -> None:
    api_a, process_b = two_processes
    async with httpx.AsyncClient(base_url=f"{api_a.base_url}/api/v1", timeout=30) as a:
        trader = await onboard_trader(a)
        async with open_link(process_b.base_url, trader.agent) as link:
            await order_through(a, trader, link)
            # Idle past the ping interval (0.5 s): the link, its subscription and its
            # process's connections still carry the next job at once.
            await asyncio.sleep(2.0)
            await order_through(a, trader, link)
        # Closed on B: offline on A.
        await process_b.wait_for_log("event=agent_link_closed")
        offline = await a.post("/orders", json=ORDER, headers=trader.headers)
        assert offline.status_code == 503
        assert offline.json()["detail"] == "agent_offline"


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_a_burst_made_on_one_process_reaches_a_link_on_another_each_job_once(
    two_processes: tuple[RunningApi, ServeProcess],
) -> None:
    """More jobs than one claim takes (`LINK_CLAIM_BATCH`), made side by side on A while
    the link is on B, and a long-poll of the same agent claiming beside it."""
    api_a, process_b = two_processes
    burst = dispatch.LINK_CLAIM_BATCH + 8
    async with httpx.AsyncClient(base_url=f"{api_a.base_url}/api/v1", timeout=30) as a:
        trader = await onboard_trader(a)
        async with open_link(process_b.base_url, trader.agent) as link:
            await order_through(a, trader, link)
            polled = asyncio.create_task(
                a.get(
                    f"/agents/{trader.agent.id}/jobs/next",
                    params={"wait": 5},
                    headers={"Authorization": f"Bearer {trader.agent.token}"},
                )
            )
            created = set(await asyncio.gather(*(create_job(api_a, trader) for _ in range(burst))))
            poll = await polled
            taken_by_poll = [poll.json()["id"]] if poll.status_code == 200 else []
            pushed = [(await link.job())["id"] for _ in range(burst - len(taken_by_poll))]
            assert len(pushed) == len(set(pushed))
            assert sorted(pushed + taken_by_poll) == sorted(created)
            for job_id in pushed:
                assert (await link.answer(job_id))["type"] == "result_accepted"
            await link.nothing_pushed()
    for job_id in pushed:
        assert await job_status(api_a, job_id) == "completed"


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_the_newer_link_wins_across_processes_and_rotation_reaches_both(
    two_processes: tuple[RunningApi, ServeProcess],
) -> None:
    api_a, process_b = two_processes
    async with httpx.AsyncClient(base_url=f"{api_a.base_url}/api/v1", timeout=30) as a:
        trader = await onboard_trader(a)
        async with open_link(api_a.base_url, trader.agent) as older:
            async with open_link(process_b.base_url, trader.agent) as newer:
                assert await older.close_code() == 4009
                await order_through(a, trader, newer)
                rotated = await a.post(
                    f"/broker-connections/{trader.connection_id}/agent", headers=trader.headers
                )
                assert rotated.status_code == 201
                assert await newer.close_code() == 4001


async def test_sigterm_closes_an_open_link_1001_and_releases_its_unacknowledged_job(
    store: Store, tmp_path: Path
) -> None:
    await reset_store(store)
    settings = make_settings(store, log_level="DEBUG")
    serve = await asyncio.to_thread(start_serve, settings, tmp_path / "serve.log")
    try:
        async with (
            httpx.AsyncClient(base_url=f"{serve.base_url}/api/v1", timeout=30) as client,
            run_api(settings) as api,  # where this test creates and reads the job
        ):
            trader = await onboard_trader(client)
            async with open_link(serve.base_url, trader.agent) as link:
                job_id = await create_job(api, trader)
                assert (await link.job())["id"] == job_id  # pushed, never acknowledged
                serve.process.send_signal(signal.SIGTERM)
                code = await link.close_code()
            exit_code = await asyncio.to_thread(serve.process.wait, 10)
            assert await job_status(api, job_id) == "pending"
            # The server left, not the agent: it is still online (it links again within
            # its backoff), so an order now waits for it instead of 503 agent_offline.
            async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as other:
                listed = await other.get("/broker-connections", headers=trader.headers)
            assert listed.json()[0]["agent"]["status"] == "online", listed.text
    finally:
        serve.stop()
    assert code in (1001, 1012)  # the link's own close, or uvicorn's if it came first
    assert exit_code == 0
    log_text = serve.log_path.read_text()
    assert "Exception in ASGI application" not in log_text
    assert "event=agent_link_handed_back" in log_text


# Wake-ups lost while Redis is away: the link's refresh re-reads the agent's row.

# The link refreshes its heartbeat every third of this (2 s), and the refresh reads the
# row: a token no longer its own closes it 4001, another link_id 4009.
OFFLINE_AFTER_SECONDS = 6.0
# Bounds a close that only the refresh can bring (no wake-up will): several refreshes.
RECHECK_TIMEOUT = 20.0


@contextlib.asynccontextmanager
async def processes_on_own_redis(
    store: Store, tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[RunningApi, ServeProcess, PrivateRedis]]:
    """Process A (in this test) and B (`serve`) on PostgreSQL and a Redis of the test's own,
    to stop and start again."""
    await reset_store(store)
    with private_redis(tmp_path) as redis_server:
        settings = make_settings(store, redis_url=redis_server.url, log_level="DEBUG", **overrides)
        async with run_api(settings) as api_a:
            process_b = await asyncio.to_thread(start_serve, settings, tmp_path / "serve-b.log")
            try:
                yield api_a, process_b, redis_server
            finally:
                process_b.stop()


@pytest.fixture
async def two_processes_own_redis(
    store: Store, tmp_path: Path
) -> AsyncIterator[tuple[RunningApi, ServeProcess, PrivateRedis]]:
    async with processes_on_own_redis(
        store, tmp_path, agent_offline_after_seconds=OFFLINE_AFTER_SECONDS
    ) as processes:
        yield processes


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_a_rotation_while_redis_is_down_still_closes_the_link_4001(
    two_processes_own_redis: tuple[RunningApi, ServeProcess, PrivateRedis],
) -> None:
    api_a, process_b, redis_server = two_processes_own_redis
    async with httpx.AsyncClient(base_url=f"{api_a.base_url}/api/v1", timeout=30) as a:
        trader = await onboard_trader(a)
        async with open_link(process_b.base_url, trader.agent) as link:
            await order_through(a, trader, link)
            with watch_log("mt5gate.job_events") as job_events:
                redis_server.stop()
                # On A, the link is on B: only Redis could tell B, and it is away.
                rotated = await a.post(
                    f"/broker-connections/{trader.connection_id}/agent", headers=trader.headers
                )
                assert rotated.status_code == 201, rotated.text
                await job_events.wait_for("event=wakeup_publish_failed")
            redis_server.start()
            # The wake-up is lost for good; the link's refresh finds the token replaced.
            assert await link.close_code(timeout=RECHECK_TIMEOUT) == 4001
        new_agent = AgentHandle(rotated.json()["agent_id"], rotated.json()["agent_token"])
        async with open_link(process_b.base_url, new_agent) as link:
            await order_through(a, trader, link)  # the rotated agent is served at once


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_a_newer_link_opened_while_redis_is_down_still_replaces_the_older_4009(
    two_processes_own_redis: tuple[RunningApi, ServeProcess, PrivateRedis],
) -> None:
    api_a, process_b, redis_server = two_processes_own_redis
    async with httpx.AsyncClient(base_url=f"{api_a.base_url}/api/v1", timeout=30) as a:
        trader = await onboard_trader(a)
        async with open_link(api_a.base_url, trader.agent) as older:
            await order_through(a, trader, older)
            redis_server.stop()
            # Opened on B, which cannot tell A (the older link's process).
            async with open_link(process_b.base_url, trader.agent) as newer:
                await process_b.wait_for_log("event=wakeup_publish_failed")
                redis_server.start()
                assert await older.close_code(timeout=RECHECK_TIMEOUT) == 4009
                # The newer link holds the agent: it stays open and gets its jobs.
                assert await newer.ask({"type": "ping"}) == {"type": "pong"}
                await order_through(a, trader, newer)


@pytest.fixture
async def slow_refresh_own_redis(
    store: Store, tmp_path: Path
) -> AsyncIterator[tuple[RunningApi, ServeProcess, PrivateRedis]]:
    """The links' own refresh 10 s apart (the default offline-after): within a test, a
    link learns of a rotation only from its wake-up."""
    async with processes_on_own_redis(store, tmp_path) as processes:
        yield processes


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_a_link_that_missed_its_rotation_is_handed_no_job_made_where_it_is_held(
    slow_refresh_own_redis: tuple[RunningApi, ServeProcess, PrivateRedis],
) -> None:
    """The attack: a leaked token's link, held on A, whose rotation (on B, Redis down)
    never reached A. A job made on A must not go to it on the strength of its being here."""
    api_a, process_b, redis_server = slow_refresh_own_redis
    agent_links = api_a.resources.jobs.links
    async with (
        httpx.AsyncClient(base_url=f"{api_a.base_url}/api/v1", timeout=30) as a,
        httpx.AsyncClient(base_url=f"{process_b.base_url}/api/v1", timeout=30) as b,
    ):
        trader = await onboard_trader(a)
        agent_id = uuid.UUID(trader.agent.id)
        async with open_link(api_a.base_url, trader.agent) as stale:
            await order_through(a, trader, stale)
            redis_server.stop()
            rotated = await b.post(
                f"/broker-connections/{trader.connection_id}/agent", headers=trader.headers
            )
            assert rotated.status_code == 201, rotated.text
            await process_b.wait_for_log("event=wakeup_publish_failed")
            assert agent_id in agent_links  # A still holds the stale link: it never heard
            job_id = await create_job(api_a, trader)
            assert await job_status(api_a, job_id) == "pending"  # not the stale link's
            frames = []
            with contextlib.suppress(websockets.ConnectionClosed):
                async with asyncio.timeout(TIMEOUT):
                    while True:
                        frames.append(json.loads(await stale.ws.recv()))
            assert stale.ws.close_code == 4001  # its claim of the job found the token replaced
            assert [frame for frame in frames if frame.get("type") == "job"] == []
        redis_server.start()
        new_agent = AgentHandle(rotated.json()["agent_id"], rotated.json()["agent_token"])
        async with open_link(api_a.base_url, new_agent) as link:
            assert (await link.job())["id"] == job_id  # the job waited for the new token
            assert (await link.answer(job_id))["type"] == "result_accepted"
