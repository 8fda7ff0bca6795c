"""Job dispatch: wake-ups, exactly-once claims, expiry, results, and the agent's own routes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app import dispatch
from app.core.config import Settings
from app.core.redis import redis_key
from app.services.agents import set_price_source
from tests.conftest import make_settings
from tests.flows import AgentHandle, Trader, onboard_trader
from tests.log_events import watch_log
from tests.servers import RunningApi, run_api
from tests.stores import Store, reset_store
from tests.trading_agent import ACCOUNT, CLOSED, POSITION, age_heartbeat

TRADE_INPUT = {"symbol": "EURUSD", "side": "buy", "volume": 0.1, "sl": None, "tp": None}
TRADE_OUTPUT = {
    "ticket": 123456,
    "fill_price": 1.08321,
    "volume": 0.1,
    "filled_at": "2026-11-24T21:15:03.120Z",
}


async def create_job(
    api: RunningApi, trader: Trader, job_type: str = "trade", ttl: float = 30, **input_data: Any
) -> uuid.UUID:
    job, created = await dispatch.create_job(
        api.resources.jobs,
        user_id=uuid.UUID(trader.user.id),
        agent_id=uuid.UUID(trader.agent.id),
        job_type=job_type,
        input_data=input_data or dict(TRADE_INPUT),
        ttl_seconds=ttl,
    )
    assert created
    return job.id


async def poll(client: httpx.AsyncClient, agent: AgentHandle, wait: float = 5) -> httpx.Response:
    return await client.get(agent.path("jobs/next"), params={"wait": wait}, headers=agent.headers)


async def answer(
    client: httpx.AsyncClient, agent: AgentHandle, job_id: object, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(agent.path(f"jobs/{job_id}/result"), json=body, headers=agent.headers)


async def next_message(pubsub: Any, timeout: float = 2) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
        if message is not None:
            return message  # type: ignore[no-any-return]
    return None


def completed(output: dict[str, Any] = TRADE_OUTPUT) -> dict[str, Any]:
    return {"status": "completed", "output_data": output}


# Far longer than any bound in this module: a job or a result that arrives in time was
# delivered by a wake-up, not by the fallback poll (which has tests of its own below).
WAKEUP_ONLY_POLL_SECONDS = 60.0
WAKEUP_BOUND_SECONDS = 2.0


@pytest.fixture
def settings(store: Store) -> Settings:
    return make_settings(store, job_poll_interval_seconds=WAKEUP_ONLY_POLL_SECONDS)


async def test_job_created_during_a_long_poll_is_delivered_at_once(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    with watch_log("mt5gate.agents") as log:
        waiting = asyncio.create_task(poll(client, trader.agent, wait=20))
        # Past its first claim and waiting: only a wake-up can bring it the job now.
        await log.wait_for("event=job_poll_waiting")
    started = time.monotonic()
    job_id = await create_job(api, trader)
    response = await waiting
    took = time.monotonic() - started
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(job_id)
    assert body["job_type"] == "trade"
    assert body["input_data"] == TRADE_INPUT
    assert body["expires_at"].endswith("Z")
    # The fallback poll runs once a minute here: the wake-up, not the timer, delivered it.
    assert api.settings.job_poll_interval_seconds == WAKEUP_ONLY_POLL_SECONDS
    assert took < WAKEUP_BOUND_SECONDS


async def test_poll_without_jobs_answers_204_after_wait(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    response = await poll(client, trader.agent, wait=0)
    assert response.status_code == 204


async def test_twenty_concurrent_polls_and_ten_jobs_deliver_each_job_once(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    polls = [asyncio.create_task(poll(client, trader.agent, wait=3)) for _ in range(20)]
    job_ids = {str(await create_job(api, trader)) for _ in range(10)}
    responses = await asyncio.gather(*polls)
    delivered = [r.json()["id"] for r in responses if r.status_code == 200]
    assert sorted(delivered) == sorted(job_ids)
    assert all(r.status_code in (200, 204) for r in responses)


@pytest.fixture
async def polling_only_api(store: Store) -> AsyncIterator[RunningApi]:
    """Wake-up messages off: only the process's fallback poll finds jobs and results."""
    await reset_store(store)
    settings = make_settings(store, job_wakeups_enabled=False, job_poll_interval_seconds=0.2)
    async with run_api(settings) as running:
        yield running


async def test_without_wakeups_the_fallback_poll_delivers_every_job_once_and_every_result(
    polling_only_api: RunningApi,
) -> None:
    api = polling_only_api
    async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1", timeout=30) as client:
        trader = await onboard_trader(client)
        started = time.monotonic()
        # Waits far longer than the poll interval: only the fallback poll can end them soon.
        polls = [asyncio.create_task(poll(client, trader.agent, wait=20)) for _ in range(8)]
        job_ids = [await create_job(api, trader) for _ in range(4)]
        waiters = [
            asyncio.create_task(
                dispatch.wait_for_job_result(api.resources.jobs, job_id=job_id, timeout=20)
            )
            for job_id in job_ids
        ]
        delivered = []
        for finished in asyncio.as_completed(polls):
            response = await finished
            if response.status_code == 200:
                delivered.append(response.json()["id"])
                assert (await answer(client, trader.agent, delivered[-1], completed())).is_success
            if len(delivered) == len(job_ids):
                break
        assert sorted(delivered) == sorted(str(job_id) for job_id in job_ids)
        done = await asyncio.gather(*waiters)
        assert [job.status for job in done] == ["completed"] * len(job_ids)
        assert time.monotonic() - started < 5, "not found by the fallback poll"
        for task in polls:
            task.cancel()


async def test_result_wakes_the_waiting_caller(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    job_id = await create_job(api, trader)
    waiter = asyncio.create_task(
        dispatch.wait_for_job_result(api.resources.jobs, job_id=job_id, timeout=10)
    )
    claimed = await poll(client, trader.agent)
    assert claimed.json()["id"] == str(job_id)
    response = await answer(client, trader.agent, job_id, completed())
    assert response.status_code == 200
    assert response.json() == {"job_id": str(job_id), "status": "completed"}
    job = await asyncio.wait_for(waiter, WAKEUP_BOUND_SECONDS)
    assert job.status == "completed"
    assert job.output_data == TRADE_OUTPUT


async def test_failed_result_keeps_the_broker_error(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    job_id = await create_job(api, trader)
    await poll(client, trader.agent)
    error = {"code": "no_money", "message": "Not enough money", "retcode": 10019}
    response = await answer(client, trader.agent, job_id, {"status": "failed", "error": error})
    assert response.status_code == 200
    job = await dispatch.get_job(api.resources.jobs, job_id)
    assert job is not None
    assert (job.status, job.error) == ("failed", error)


async def test_second_result_for_the_same_job_is_409(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    job_id = await create_job(api, trader)
    await poll(client, trader.agent)
    assert (await answer(client, trader.agent, job_id, completed())).status_code == 200
    again = await answer(
        client, trader.agent, job_id, {"status": "failed", "error": {"code": "rejected"}}
    )
    assert again.status_code == 409
    assert again.json()["detail"] == "job_not_running"
    job = await dispatch.get_job(api.resources.jobs, job_id)
    assert job is not None
    assert job.status == "completed"


async def test_result_for_an_unclaimed_job_is_409(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    job_id = await create_job(api, trader)
    response = await answer(client, trader.agent, job_id, completed())
    assert response.status_code == 409
    assert response.json()["detail"] == "job_not_running"


@pytest.mark.parametrize(
    "output",
    [
        {},
        {"ticket": "abc", "fill_price": 1.1, "volume": 0.1, "filled_at": "2026-11-24T00:00:00Z"},
        {**TRADE_OUTPUT, "fill_price": -1},
        {**TRADE_OUTPUT, "fill_price": float("nan")},
        {**TRADE_OUTPUT, "filled_at": "yesterday"},
    ],
)
async def test_malformed_result_is_422_and_leaves_the_job_running(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, output: dict[str, Any]
) -> None:
    job_id = await create_job(api, trader)
    await poll(client, trader.agent)
    response = await client.post(
        trader.agent.path(f"jobs/{job_id}/result"),
        content=json.dumps({"status": "completed", "output_data": output}),
        headers={**trader.agent.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    job = await dispatch.get_job(api.resources.jobs, job_id)
    assert job is not None
    assert job.status == "running"
    assert (await answer(client, trader.agent, job_id, completed())).status_code == 200


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        (b'{"status": "completed", "output_data": {}', "json_invalid"),  # cut short
        (
            b'{"status": "failed", "error": {"code": "rejected", "message": "\\ud800"}}',
            "no lone surrogates",
        ),
        # UTF-16, which json.loads reads: a body it parses, then checked as any answer.
        ('{"status": "completed", "output_data": {}}'.encode("utf-16"), "invalid_result"),
    ],
)
async def test_a_result_body_the_rust_parser_refuses_is_read_as_json_loads_reads_it(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, body: bytes, refusal: str
) -> None:
    """Malformed JSON, a lone surrogate, UTF-16: the standard library decides, as before
    the Rust parser went in front of it, and the job stays running."""
    job_id = await create_job(api, trader)
    await poll(client, trader.agent)
    response = await client.post(
        trader.agent.path(f"jobs/{job_id}/result"),
        content=body,
        headers={**trader.agent.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert refusal in response.text
    job = await dispatch.get_job(api.resources.jobs, job_id)
    assert job is not None
    assert job.status == "running"


async def test_answer_reaching_a_process_that_did_not_hand_the_job_out_is_checked_the_same(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    """A process remembers the jobs it handed out, to check their answers without a read;
    an answer that arrives elsewhere (here: after the process forgot) reads the job."""
    job_id = await create_job(api, trader)
    assert (await poll(client, trader.agent)).json()["id"] == str(job_id)
    api.resources.jobs.handed_out.clear()
    malformed = await answer(client, trader.agent, job_id, completed({"ticket": "abc"}))
    assert malformed.status_code == 422
    assert malformed.json()["detail"] == "invalid_result"
    assert (await answer(client, trader.agent, job_id, completed())).status_code == 200
    job = await dispatch.get_job(api.resources.jobs, job_id)
    assert job is not None
    assert (job.status, job.output_data) == ("completed", TRADE_OUTPUT)


async def test_expired_trade_job_is_never_delivered(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    job_id = await create_job(api, trader, ttl=0.05)
    # The sweeper marks it expired (and wakes its waiters) once its time to live passes.
    job = await dispatch.wait_for_job_result(api.resources.jobs, job_id=job_id, timeout=10)
    assert job.status == "expired"
    assert job.error is not None
    assert job.error["code"] == "expired"
    # The agent comes back later: the job is not handed out.
    response = await poll(client, trader.agent, wait=0)
    assert response.status_code == 204


async def test_agent_token_only_works_for_its_own_agent(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    other = await onboard_trader(client)
    impostor = AgentHandle(other.agent.id, trader.agent.token)
    for response in (
        await client.post(impostor.path("heartbeat"), json={}, headers=impostor.headers),
        await client.get(impostor.path("credentials"), headers=impostor.headers),
        await poll(client, impostor, wait=0),
    ):
        assert response.status_code == 401
        assert response.json()["detail"] == "invalid_agent_token"


async def test_agent_cannot_answer_another_agents_job(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    other = await onboard_trader(client)
    job_id = await create_job(api, trader)
    await poll(client, trader.agent)
    response = await answer(client, other.agent, job_id, completed())
    assert response.status_code == 409
    assert response.json()["detail"] == "job_not_running"
    job = await dispatch.get_job(api.resources.jobs, job_id)
    assert job is not None
    assert job.status == "running"


@pytest.mark.parametrize("agent_id", ["not-a-uuid", str(uuid.uuid4())])
async def test_unknown_agent_id_is_401(
    client: httpx.AsyncClient, trader: Trader, agent_id: str
) -> None:
    response = await client.post(
        f"/agents/{agent_id}/heartbeat", json={}, headers=trader.agent.headers
    )
    assert response.status_code == 401


async def test_credentials_are_decrypted_for_the_agent(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    response = await client.get(trader.agent.path("credentials"), headers=trader.agent.headers)
    assert response.status_code == 200
    assert response.json() == {
        "server": "Demo-Server",
        "login": 5001234,
        "password": "mt5-secret-pw",
    }


async def test_heartbeat_marks_the_agent_online(client: httpx.AsyncClient, trader: Trader) -> None:
    response = await client.post(
        trader.agent.path("heartbeat"),
        json={"version": "1.0", "terminal_connected": True},
        headers=trader.agent.headers,
    )
    assert response.status_code == 200
    assert response.json()["server_time"].endswith("Z")
    listing = await client.get("/broker-connections", headers=trader.headers)
    assert listing.json()[0]["agent"]["status"] == "online"


async def test_prices_from_an_agent_that_is_no_price_source_are_403(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    response = await client.post(
        trader.agent.path("prices"),
        json={"EURUSD": {"bid": 1.1, "ask": 1.1002}},
        headers=trader.agent.headers,
    )
    assert response.status_code == 403
    assert response.json()["detail"] == "not_price_source"


async def test_price_source_push_sets_and_publishes_each_tick(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    await set_price_source(
        api.resources.session_factory, agent_id=uuid.UUID(trader.agent.id), enabled=True
    )
    instrument = f"T{uuid.uuid4().hex[:8].upper()}"
    redis = api.resources.redis
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(redis_key(redis, f"prices:{instrument}"))
        response = await client.post(
            trader.agent.path("prices"),
            json={instrument: {"bid": 1.1, "ask": 1.1002, "ts": 1764000000000}},
            headers=trader.agent.headers,
        )
        assert response.status_code == 202
        assert response.json() == {"accepted": 1}
        message = await next_message(pubsub)
    expected = (
        b'{"instrument":"%s","bid":1.1,"ask":1.1002,"ts":1764000000000}' % instrument.encode()
    )
    assert message is not None
    assert message["data"] == expected
    assert await redis.get(redis_key(redis, f"prices:{instrument}")) == expected


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"EURUSD": {"bid": 1.2, "ask": 1.1}},
        {"EURUSD": {"bid": -1, "ask": 1.1}},
        {"EURUSD": {"bid": 0, "ask": 1.1}},
        {"EUR USD": {"bid": 1.1, "ask": 1.2}},
        {"EURUSD": {"bid": "x", "ask": 1.2}},
        '{"EURUSD": {"bid": 1e309, "ask": 1e309}}',
        '{"EURUSD": {"bid": NaN, "ask": Infinity}}',
        [1, 2],
    ],
)
async def test_bad_ticks_are_422_and_neither_stored_nor_published(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, body: object
) -> None:
    await set_price_source(
        api.resources.session_factory, agent_id=uuid.UUID(trader.agent.id), enabled=True
    )
    redis = api.resources.redis
    content = body if isinstance(body, str) else json.dumps(body)
    headers = {**trader.agent.headers, "Content-Type": "application/json"}
    async with redis.pubsub() as pubsub:
        await pubsub.psubscribe(redis_key(redis, "prices:*"))
        response = await client.post(trader.agent.path("prices"), content=content, headers=headers)
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert isinstance(detail, list)
        assert detail
        assert all(error["loc"][0] == "body" for error in detail), detail
        assert await redis.keys(redis_key(redis, "prices:*")) == []
        # A good tick after it is the first message on the channels: the refused batch
        # published nothing before it.
        good = {"EURUSD": {"bid": 1.1, "ask": 1.1002, "ts": 1764000000000}}
        accepted = await client.post(trader.agent.path("prices"), json=good, headers=headers)
        assert accepted.status_code == 202
        message = await next_message(pubsub)
    assert message is not None
    assert json.loads(message["data"]) == {"instrument": "EURUSD", **good["EURUSD"]}


async def test_long_poll_whose_client_left_claims_nothing(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    events = api.resources.jobs.events
    abandoned = asyncio.create_task(poll(client, trader.agent, wait=20))
    while events.waiter_count == 0:
        await asyncio.sleep(0.001)
    abandoned.cancel()  # the agent goes away: httpx drops the connection
    with contextlib.suppress(asyncio.CancelledError):
        await abandoned
    while events.waiter_count:  # the server notices the disconnect and stops waiting
        await asyncio.sleep(0.001)
    job_id = await create_job(api, trader)
    job = await dispatch.get_job(api.resources.jobs, job_id)
    assert job is not None
    assert job.status == "pending"
    async with httpx.AsyncClient(base_url=str(client.base_url)) as fresh:
        response = await poll(fresh, trader.agent, wait=1)
    assert response.json()["id"] == str(job_id)


@pytest.fixture
async def short_result_timeout_api(store: Store) -> AsyncIterator[RunningApi]:
    await reset_store(store)
    async with run_api(make_settings(store, job_result_timeout_seconds=0.2)) as running:
        yield running


async def test_claimed_job_never_answered_ends_lost_and_accepts_a_late_answer(
    short_result_timeout_api: RunningApi,
) -> None:
    api = short_result_timeout_api
    async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1", timeout=30) as client:
        trader = await onboard_trader(client)
        job_id = await create_job(api, trader)
        assert (await poll(client, trader.agent)).status_code == 200
        job = await dispatch.wait_for_job_result(api.resources.jobs, job_id=job_id, timeout=10)
        assert job.status == "lost"
        assert job.error is not None
        assert job.error["code"] == "agent_lost"
        late = await answer(client, trader.agent, job_id, completed())
        assert late.status_code == 200
        assert late.json()["status"] == "completed"


async def test_redis_key_prefix_is_put_before_price_keys_and_job_channels(store: Store) -> None:
    await reset_store(store)
    settings = make_settings(store, redis_key_prefix="deployment-b:")
    async with (
        run_api(settings) as api,
        httpx.AsyncClient(base_url=f"{api.base_url}/api/v1", timeout=30) as http,
    ):
        trader = await onboard_trader(http)
        await set_price_source(
            api.resources.session_factory, agent_id=uuid.UUID(trader.agent.id), enabled=True
        )
        redis = api.resources.redis
        instrument = f"P{uuid.uuid4().hex[:8].upper()}"  # nobody else's key on a shared Redis
        async with redis.pubsub() as pubsub:
            await pubsub.subscribe(
                f"deployment-b:prices:{instrument}", "deployment-b:mt5gate:jobs:created"
            )
            pushed = await http.post(
                trader.agent.path("prices"),
                json={instrument: {"bid": 1.1, "ask": 1.2, "ts": 5}},
                headers=trader.agent.headers,
            )
            assert pushed.status_code == 202
            tick = await next_message(pubsub)
            await create_job(api, trader)  # no poll waits here: the news goes through Redis
            created = await next_message(pubsub)
        assert tick is not None
        assert tick["channel"] == f"deployment-b:prices:{instrument}".encode()
        assert created is not None
        assert created["channel"] == b"deployment-b:mt5gate:jobs:created"
        assert await redis.get(f"deployment-b:prices:{instrument}") is not None
        assert await redis.get(f"prices:{instrument}") is None


# -- paths of the agent protocol ----------------------------------------------------------


async def agent_status(client: httpx.AsyncClient, trader: Trader) -> str:
    listing = await client.get("/broker-connections", headers=trader.headers)
    status: str = listing.json()[0]["agent"]["status"]
    return status


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "credentials", None),
        ("GET", "jobs/next?wait=0", None),
        ("POST", f"jobs/{uuid.uuid4()}/result", completed()),
        ("POST", "prices", {"EURUSD": {"bid": 1.1, "ask": 1.2}}),
    ],
)
async def test_every_authenticated_agent_call_counts_as_a_heartbeat(
    api: RunningApi,
    client: httpx.AsyncClient,
    trader: Trader,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    await age_heartbeat(api, trader, minutes=30)
    assert await agent_status(client, trader) == "offline"
    response = await client.request(
        method, trader.agent.path(suffix), json=body, headers=trader.agent.headers
    )
    # Whatever the call answers (a 409 for a job it does not hold, a 403 from no price
    # source), the agent showed it is alive.
    assert response.status_code in (200, 202, 204, 403, 409), response.text
    assert await agent_status(client, trader) == "online"


async def test_a_bad_agent_token_is_no_heartbeat(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    await age_heartbeat(api, trader, minutes=30)
    impostor = {"Authorization": "Bearer not-the-token"}
    response = await client.get(trader.agent.path("credentials"), headers=impostor)
    assert response.status_code == 401
    assert await agent_status(client, trader) == "offline"


async def test_jobs_are_handed_out_oldest_first(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    created = [await create_job(api, trader, symbol=f"SYM{i}") for i in range(5)]
    handed_out = [(await poll(client, trader.agent, wait=0)).json()["id"] for _ in created]
    assert handed_out == [str(job_id) for job_id in created]


async def test_a_tick_without_ts_gets_the_servers_time(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    await set_price_source(
        api.resources.session_factory, agent_id=uuid.UUID(trader.agent.id), enabled=True
    )
    before = int(time.time() * 1000)
    response = await client.post(
        trader.agent.path("prices"),
        json={"EURUSD": {"bid": 1.1, "ask": 1.1002}},
        headers=trader.agent.headers,
    )
    after = int(time.time() * 1000)
    assert response.status_code == 202
    redis = api.resources.redis
    stored = json.loads(await redis.get(redis_key(redis, "prices:EURUSD")) or b"null")
    assert stored["instrument"] == "EURUSD"
    assert before <= stored["ts"] <= after


@pytest.mark.parametrize("wait", ["-0.1", "30.01", "31", "nan", "inf", "soon"])
async def test_a_long_poll_wait_outside_0_to_30_seconds_is_422(
    client: httpx.AsyncClient, trader: Trader, wait: str
) -> None:
    response = await client.get(
        trader.agent.path("jobs/next"), params={"wait": wait}, headers=trader.agent.headers
    )
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["query", "wait"]]


async def test_a_long_poll_may_wait_up_to_30_seconds(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    job_id = await create_job(api, trader)
    response = await poll(client, trader.agent, wait=30)
    assert response.json()["id"] == str(job_id)


async def test_a_long_poll_without_wait_waits_25_seconds(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    """Without `wait` the poll is a long one (the contract's default is 25 s): still
    waiting when a job arrives seconds later, it gets it at once."""
    with watch_log("mt5gate.agents") as log:
        waiting = asyncio.create_task(
            client.get(trader.agent.path("jobs/next"), headers=trader.agent.headers)
        )
        await log.wait_for("event=job_poll_waiting")
    # A poll with wait=0 would have answered 204 by now; this one is still open.
    done, _ = await asyncio.wait({waiting}, timeout=1.0)
    assert not done
    job_id = await create_job(api, trader)
    response = await asyncio.wait_for(waiting, WAKEUP_BOUND_SECONDS)
    assert response.json()["id"] == str(job_id)
    parameter = next(
        p
        for p in api.app.openapi()["paths"]["/api/v1/agents/{agent_id}/jobs/next"]["get"][
            "parameters"
        ]
        if p["name"] == "wait"
    )
    assert parameter["schema"]["default"] == 25


MALFORMED_OUTPUTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("get_positions", {}, {}),
    ("get_positions", {}, {"positions": [{"position_id": 1}]}),
    ("get_positions", {}, {"positions": [{**POSITION, "volume": -1}]}),
    ("get_account", {}, {"balance": 1.0}),
    ("get_account", {}, {**ACCOUNT, "leverage": 0}),
    ("get_account", {}, {**ACCOUNT, "equity": "lots"}),
    ("get_candles", {"symbol": "EURUSD", "timeframe": "H1", "count": 1}, {"candles": "none"}),
    (
        "get_candles",
        {"symbol": "EURUSD", "timeframe": "H1", "count": 1},
        {"candles": [{"time": -1, "open": 1, "high": 1, "low": 1, "close": 1, "volume": 1}]},
    ),
    ("close_position", {"ticket": 50123}, {"closed_price": 1.1}),
    ("close_position", {"ticket": 50123}, {**CLOSED, "pnl": float("inf")}),
    # A time that cannot be written in UTC (past 9999-12-31 once its offset is applied).
    ("close_position", {"ticket": 50123}, {**CLOSED, "closed_at": "9999-12-31T23:59:59-05:00"}),
    ("get_positions", {}, {"positions": [{**POSITION, "opened_at": "0001-01-01T00:00:00+01:00"}]}),
    ("modify_position", {"ticket": 50123, "sl": 1.05}, {"position": {"position_id": "x"}}),
    ("modify_position", {"ticket": 50123, "sl": 1.05}, {}),
]


@pytest.mark.parametrize(("job_type", "input_data", "output"), MALFORMED_OUTPUTS)
async def test_a_malformed_result_of_any_job_type_is_422_and_leaves_it_running(
    api: RunningApi,
    client: httpx.AsyncClient,
    trader: Trader,
    job_type: str,
    input_data: dict[str, Any],
    output: dict[str, Any],
) -> None:
    job_id = await create_job(api, trader, job_type, **input_data)
    assert (await poll(client, trader.agent)).json()["id"] == str(job_id)
    response = await client.post(
        trader.agent.path(f"jobs/{job_id}/result"),
        content=json.dumps({"status": "completed", "output_data": output}),
        headers={**trader.agent.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "invalid_result"
    job = await dispatch.get_job(api.resources.jobs, job_id)
    assert job is not None
    assert (job.status, job.output_data) == ("running", None)
