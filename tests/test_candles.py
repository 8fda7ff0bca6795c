"""GET /candles: the feed and the account sources, their caches, X-Cache, single-flight
misses, and Redis being down."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Coroutine

import httpx
import pytest

from app.core.redis import redis_key
from app.services.agents import set_price_source
from tests.flows import TestUser, Trader, add_connection, heartbeat, onboard_trader, provision_agent
from tests.servers import RunningApi, free_port
from tests.stores import Store
from tests.trading_agent import (
    SHORT_BUDGETS,
    FakeAgent,
    age_heartbeat,
    candles,
    completed,
    failed,
    fake_agent,
    second_api,
)


async def get_candles(
    client: httpx.AsyncClient, trader: Trader, instrument: str = "EURUSD", **params: str | int
) -> httpx.Response:
    return await client.get(f"/candles/{instrument}", params=params, headers=trader.headers)


async def make_price_source(api: RunningApi, trader: Trader) -> None:
    await set_price_source(
        api.resources.session_factory, agent_id=uuid.UUID(trader.agent.id), enabled=True
    )


@pytest.fixture
async def feed(api: RunningApi, client: httpx.AsyncClient) -> FakeAgent:
    """The platform's price feed: an operator's agent marked as a price source, online."""
    operator = await onboard_trader(client)
    await make_price_source(api, operator)
    return fake_agent(client, operator)


async def cached(api: RunningApi, key: str) -> object:
    """What Redis holds under `key` (as the contract names it), parsed (None when nothing
    is there)."""
    redis = api.resources.redis
    return json.loads(await redis.get(redis_key(redis, key)) or b"null")


async def take_feed_offline(api: RunningApi, feed: FakeAgent) -> None:
    """Makes the price source's last heartbeat an hour old."""
    operator = Trader(TestUser("", "", ""), "", feed.handle)  # only the agent id is used
    await age_heartbeat(api, operator, minutes=60)


async def served_once(
    agent: FakeAgent, request: Coroutine[object, object, httpx.Response]
) -> httpx.Response:
    """The response to `request`, whose one job `agent` takes and answers.

    Unlike `agent.running()`, leaves no long-poll of the agent in flight: the server may
    still be handling a cancelled one, and its heartbeat write can land after the test
    aged the heartbeat (then the agent is online again).
    """
    response = asyncio.create_task(request)
    await agent.serve()
    return await response


def made_up(n: int) -> list[dict[str, object]]:
    """Bars a user's own agent invents: nothing like the feed's."""
    return candles(n, start=1_000_000_000, step=60)


async def test_second_candles_call_is_a_cache_hit(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, feed: FakeAgent
) -> None:
    first = asyncio.create_task(get_candles(client, trader, timeframe="M5", count=3))
    job = await feed.take()
    assert (job["job_type"], job["input_data"]) == (
        "get_candles",
        {"symbol": "EURUSD", "timeframe": "M5", "count": 3},
    )
    await feed.answer(job, completed({"candles": candles(3)}))
    miss = await first
    assert miss.status_code == 200
    assert miss.headers["x-cache"] == "miss"
    assert miss.json() == candles(3)

    hit = await get_candles(client, trader, timeframe="M5", count=3)
    assert hit.status_code == 200
    assert hit.headers["x-cache"] == "hit"
    assert hit.json() == candles(3)
    await feed.expect_no_job()
    await fake_agent(client, trader).expect_no_job()  # the feed is not the user's agent

    redis = api.resources.redis
    key = redis_key(redis, "candles:EURUSD:M5")
    assert json.loads(await redis.get(key) or b"null") == candles(3)
    assert 0 < await redis.ttl(key) <= 30


async def test_cache_serves_fewer_candles_from_the_end_and_misses_on_more(
    client: httpx.AsyncClient, trader: Trader, feed: FakeAgent
) -> None:
    async with feed.running():
        assert (await get_candles(client, trader, count=10)).headers["x-cache"] == "miss"
    fewer = await get_candles(client, trader, count=4)
    assert fewer.headers["x-cache"] == "hit"
    assert fewer.json() == candles(10)[-4:]
    await feed.expect_no_job()
    async with feed.running():
        more = await get_candles(client, trader, count=11)
    assert more.headers["x-cache"] == "miss"
    assert len(more.json()) == 11


async def test_cache_is_per_instrument_and_timeframe(
    client: httpx.AsyncClient, trader: Trader, feed: FakeAgent
) -> None:
    async with feed.running():
        await get_candles(client, trader, count=5)  # EURUSD H1 (the default)
        assert (await get_candles(client, trader, count=5, timeframe="D1")).headers[
            "x-cache"
        ] == "miss"
        assert (await get_candles(client, trader, "GBPUSD", count=5)).headers["x-cache"] == "miss"
        assert (await get_candles(client, trader, count=5, timeframe="H1")).headers[
            "x-cache"
        ] == "hit"
    assert len(feed.taken) == 3


async def test_concurrent_misses_of_different_users_make_one_feed_job(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, feed: FakeAgent
) -> None:
    others = [trader, *[await onboard_trader(client) for _ in range(4)]]
    callers = [asyncio.create_task(get_candles(client, others[i % 5], count=50)) for i in range(10)]
    job = await feed.take()
    flights = api.app.state.candle_flights
    while flights.waiting < 10:  # every caller has joined the one fetch in flight
        await asyncio.sleep(0.001)
    await feed.answer(job, completed({"candles": candles(50)}))
    responses = await asyncio.gather(*callers)
    assert [r.status_code for r in responses] == [200] * 10
    assert {r.headers["x-cache"] for r in responses} == {"miss"}
    assert all(r.json() == candles(50) for r in responses)
    await feed.expect_no_job()
    assert flights.in_flight == 0


async def test_a_smaller_request_joins_a_larger_fetch_in_flight(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, feed: FakeAgent
) -> None:
    large = asyncio.create_task(get_candles(client, trader, count=20))
    job = await feed.take()
    small = asyncio.create_task(get_candles(client, trader, count=5))
    while api.app.state.candle_flights.waiting < 2:
        await asyncio.sleep(0.001)
    await feed.answer(job, completed({"candles": candles(20)}))
    assert len((await large).json()) == 20
    assert (await small).json() == candles(20)[-5:]
    await feed.expect_no_job()


async def test_candles_answer_as_a_miss_when_redis_is_down(
    store: Store, trader: Trader, feed: FakeAgent
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with second_api(store, redis_url=down) as broken:
        feed_there = FakeAgent(broken.client, feed.handle)
        for _ in range(2):  # nothing is cached: each call is a miss with a job
            asking = asyncio.create_task(get_candles(broken.client, trader, count=3))
            await feed_there.serve(lambda job: completed({"candles": candles(3)}))
            response = await asking
            assert response.status_code == 200
            assert response.headers["x-cache"] == "miss"
            assert response.json() == candles(3)


async def test_garbage_in_the_cache_is_a_miss_and_is_replaced(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, feed: FakeAgent
) -> None:
    redis = api.resources.redis
    await redis.set(redis_key(redis, "candles:EURUSD:H1"), b"{not json")
    async with feed.running():
        response = await get_candles(client, trader, count=2)
    assert response.headers["x-cache"] == "miss"
    cached = await redis.get(redis_key(redis, "candles:EURUSD:H1"))
    assert json.loads(cached or b"null") == candles(2)


async def test_the_feed_cache_is_shared_by_all_users(
    client: httpx.AsyncClient, trader: Trader, feed: FakeAgent
) -> None:
    other = await onboard_trader(client)
    async with feed.running():
        await get_candles(client, trader, count=5)
    hit = await get_candles(client, other, count=5)
    assert hit.headers["x-cache"] == "hit"
    assert hit.json() == candles(5)
    await feed.expect_no_job()


async def test_a_users_own_agent_never_fills_what_another_user_gets(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, feed: FakeAgent
) -> None:
    """The attack: user A's agent answers its candle jobs with made-up bars. User B, asking
    for the same candles (feed or account), must never be served them."""
    attacker = fake_agent(client, trader)
    asking = asyncio.create_task(get_candles(client, trader, count=5, source="account"))
    await attacker.serve(lambda job: completed({"candles": made_up(job["input_data"]["count"])}))
    assert (await asking).json() == made_up(5)  # A gets what A's broker said, for A only
    # A's default call goes to the feed too, never to A's agent.
    async with feed.running():
        assert (await get_candles(client, trader, count=5)).json() == candles(5)
    await attacker.expect_no_job()

    victim = await onboard_trader(client)
    from_feed = await get_candles(client, victim, count=5)
    assert from_feed.headers["x-cache"] == "hit"
    assert from_feed.json() == candles(5)
    own = asyncio.create_task(get_candles(client, victim, count=5, source="account"))
    await fake_agent(client, victim).serve()
    assert (await own).headers["x-cache"] == "miss"
    assert (await own).json() == candles(5)

    assert await cached(api, "candles:EURUSD:H1") == candles(5)
    assert await cached(api, f"candles:{trader.connection_id}:EURUSD:H1") == made_up(5)


async def test_without_a_price_source_a_users_agent_is_not_asked_for_the_feed(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    response = await get_candles(client, trader, count=5)
    assert response.status_code == 503
    assert response.json()["detail"] == "feed_offline"
    assert response.headers["x-cache"] == "miss"
    await fake_agent(client, trader).expect_no_job()


async def test_an_offline_price_source_is_feed_offline(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, feed: FakeAgent
) -> None:
    await take_feed_offline(api, feed)
    response = await get_candles(client, trader, count=5)
    assert response.status_code == 503
    assert response.json()["detail"] == "feed_offline"
    assert response.headers["x-cache"] == "miss"


async def test_a_feed_answer_from_an_agent_unmarked_in_flight_is_not_cached(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, feed: FakeAgent
) -> None:
    asking = asyncio.create_task(get_candles(client, trader, count=5))
    job = await feed.take()
    await set_price_source(
        api.resources.session_factory, agent_id=uuid.UUID(feed.handle.id), enabled=False
    )
    await feed.answer(job, completed({"candles": made_up(5)}))
    response = await asking
    assert response.status_code == 503
    assert response.json()["detail"] == "feed_offline"
    redis = api.resources.redis
    assert await redis.get(redis_key(redis, "candles:EURUSD:H1")) is None


async def test_a_connection_id_with_the_feed_source_is_422(
    client: httpx.AsyncClient, trader: Trader, feed: FakeAgent
) -> None:
    for params in ({}, {"source": "feed"}):
        response = await get_candles(
            client, trader, broker_connection_id=trader.connection_id, **params
        )
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "broker_connection_id"]
        assert response.headers["x-cache"] == "miss"
    await feed.expect_no_job()


async def test_every_candles_error_carries_x_cache(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    unauthenticated = await client.get("/candles/EURUSD")
    assert unauthenticated.status_code == 401
    bad_source = await get_candles(client, trader, source="broker")
    bad_count = await get_candles(client, trader, count=0)
    assert [bad_source.status_code, bad_count.status_code] == [422, 422]
    for response in (unauthenticated, bad_source, bad_count):
        assert response.headers["x-cache"] == "miss"


async def test_account_candles_are_cached_per_connection(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    second_connection = await add_connection(client, trader.user, login=5009999)
    second = FakeAgent(client, await provision_agent(client, trader.user, second_connection))
    await heartbeat(client, second.handle)
    first = fake_agent(client, trader)
    async with first.running():  # the oldest connection by default
        assert (await get_candles(client, trader, count=5, source="account")).headers[
            "x-cache"
        ] == "miss"
        named = await get_candles(
            client, trader, count=5, source="account", broker_connection_id=trader.connection_id
        )
        assert named.headers["x-cache"] == "hit"
    asking = asyncio.create_task(
        get_candles(
            client, trader, count=5, source="account", broker_connection_id=second_connection
        )
    )
    await second.serve(lambda job: completed({"candles": made_up(5)}))
    other = await asking
    assert other.headers["x-cache"] == "miss"
    assert other.json() == made_up(5)
    await first.expect_no_job()
    assert await cached(api, "candles:EURUSD:H1") is None  # neither wrote the feed's cache
    assert await cached(api, f"candles:{second_connection}:EURUSD:H1") == made_up(5)


async def test_another_users_connection_is_404_even_when_cached(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    async with fake_agent(client, trader).running():
        await get_candles(client, trader, count=5, source="account")
    other = await onboard_trader(client)
    response = await get_candles(
        client, other, count=5, source="account", broker_connection_id=trader.connection_id
    )
    assert response.status_code == 404
    assert response.headers["x-cache"] == "miss"


async def test_candles_without_an_answer_in_time_are_504_and_a_miss(
    store: Store, trader: Trader, feed: FakeAgent
) -> None:
    async with second_api(store, **SHORT_BUDGETS) as short:
        response = await get_candles(short.client, trader)
    assert response.status_code == 504
    assert response.json()["detail"] == "agent_timeout"
    assert response.headers["x-cache"] == "miss"


async def test_unknown_symbol_from_the_broker_is_422_broker_error(
    client: httpx.AsyncClient, trader: Trader, feed: FakeAgent
) -> None:
    asking = asyncio.create_task(get_candles(client, trader, "NOPE"))
    job = await feed.take()
    await feed.answer(job, failed("invalid_symbol", "Unknown symbol NOPE"))
    response = await asking
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_symbol"
    assert response.headers["x-cache"] == "miss"


async def test_a_feed_hit_needs_no_price_source_but_a_miss_does(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader, feed: FakeAgent
) -> None:
    assert (await served_once(feed, get_candles(client, trader, count=5))).status_code == 200
    await take_feed_offline(api, feed)
    assert (await get_candles(client, trader, count=5)).headers["x-cache"] == "hit"
    offline = await get_candles(client, trader, count=6)
    assert offline.status_code == 503
    assert offline.json()["detail"] == "feed_offline"
    assert offline.headers["x-cache"] == "miss"


async def test_an_account_hit_needs_no_agent_but_a_miss_does(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    fetched = await served_once(
        fake_agent(client, trader), get_candles(client, trader, count=5, source="account")
    )
    assert fetched.status_code == 200
    await age_heartbeat(api, trader, minutes=60)
    assert (await get_candles(client, trader, count=5, source="account")).headers[
        "x-cache"
    ] == "hit"
    offline = await get_candles(client, trader, count=6, source="account")
    assert offline.status_code == 503
    assert offline.json()["detail"] == "agent_offline"
    assert offline.headers["x-cache"] == "miss"


async def test_refusals_before_the_route_runs_are_a_miss_too(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    """X-Cache on every answer: a 401 (no token) and a validation 422 never reach the cache."""
    anonymous = await client.get("/candles/EURUSD")
    assert anonymous.status_code == 401
    assert anonymous.headers["x-cache"] == "miss"
    invalid = await client.get("/candles/EURUSD", params={"count": 0}, headers=trader.headers)
    assert invalid.status_code == 422
    assert invalid.headers["x-cache"] == "miss"
