"""GET /candles: the Redis cache, X-Cache, single-flight misses, and Redis being down."""

from __future__ import annotations

import asyncio
import json

import httpx

from app.core.redis import redis_key
from tests.flows import Trader, onboard_trader
from tests.servers import RunningApi, free_port
from tests.stores import Store
from tests.trading_agent import SHORT_BUDGETS, candles, completed, failed, fake_agent, second_api


async def get_candles(
    client: httpx.AsyncClient, trader: Trader, instrument: str = "EURUSD", **params: str | int
) -> httpx.Response:
    return await client.get(f"/candles/{instrument}", params=params, headers=trader.headers)


async def test_second_candles_call_is_a_cache_hit(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    first = asyncio.create_task(get_candles(client, trader, timeframe="M5", count=3))
    job = await agent.take()
    assert (job["job_type"], job["input_data"]) == (
        "get_candles",
        {"symbol": "EURUSD", "timeframe": "M5", "count": 3},
    )
    await agent.answer(job, completed({"candles": candles(3)}))
    miss = await first
    assert miss.status_code == 200
    assert miss.headers["x-cache"] == "miss"
    assert miss.json() == candles(3)

    hit = await get_candles(client, trader, timeframe="M5", count=3)
    assert hit.status_code == 200
    assert hit.headers["x-cache"] == "hit"
    assert hit.json() == candles(3)
    await agent.expect_no_job()

    redis = api.resources.redis
    key = redis_key(redis, "candles:EURUSD:M5")
    assert json.loads(await redis.get(key) or b"null") == candles(3)
    assert 0 < await redis.ttl(key) <= 30


async def test_cache_serves_fewer_candles_from_the_end_and_misses_on_more(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    async with agent.running():
        assert (await get_candles(client, trader, count=10)).headers["x-cache"] == "miss"
    fewer = await get_candles(client, trader, count=4)
    assert fewer.headers["x-cache"] == "hit"
    assert fewer.json() == candles(10)[-4:]
    await agent.expect_no_job()
    async with agent.running():
        more = await get_candles(client, trader, count=11)
    assert more.headers["x-cache"] == "miss"
    assert len(more.json()) == 11


async def test_cache_is_per_instrument_and_timeframe(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    async with agent.running():
        await get_candles(client, trader, count=5)  # EURUSD H1 (the default)
        assert (await get_candles(client, trader, count=5, timeframe="D1")).headers[
            "x-cache"
        ] == "miss"
        assert (await get_candles(client, trader, "GBPUSD", count=5)).headers["x-cache"] == "miss"
        assert (await get_candles(client, trader, count=5, timeframe="H1")).headers[
            "x-cache"
        ] == "hit"
    assert len(agent.taken) == 3


async def test_concurrent_misses_for_the_same_candles_make_one_job(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    callers = [asyncio.create_task(get_candles(client, trader, count=50)) for _ in range(10)]
    job = await agent.take()
    flights = api.app.state.candle_flights
    while flights.waiting < 10:  # every caller has joined the one fetch in flight
        await asyncio.sleep(0.001)
    await agent.answer(job, completed({"candles": candles(50)}))
    responses = await asyncio.gather(*callers)
    assert [r.status_code for r in responses] == [200] * 10
    assert {r.headers["x-cache"] for r in responses} == {"miss"}
    assert all(r.json() == candles(50) for r in responses)
    await agent.expect_no_job()
    assert flights.in_flight == 0


async def test_a_smaller_request_joins_a_larger_fetch_in_flight(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    large = asyncio.create_task(get_candles(client, trader, count=20))
    job = await agent.take()
    small = asyncio.create_task(get_candles(client, trader, count=5))
    while api.app.state.candle_flights.waiting < 2:
        await asyncio.sleep(0.001)
    await agent.answer(job, completed({"candles": candles(20)}))
    assert len((await large).json()) == 20
    assert (await small).json() == candles(20)[-5:]
    await agent.expect_no_job()


async def test_candles_answer_as_a_miss_when_redis_is_down(store: Store, trader: Trader) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with second_api(store, redis_url=down) as broken:
        agent = fake_agent(broken.client, trader)
        for _ in range(2):  # nothing is cached: each call is a miss with a job
            asking = asyncio.create_task(get_candles(broken.client, trader, count=3))
            await agent.serve(lambda job: completed({"candles": candles(3)}))
            response = await asking
            assert response.status_code == 200
            assert response.headers["x-cache"] == "miss"
            assert response.json() == candles(3)


async def test_garbage_in_the_cache_is_a_miss_and_is_replaced(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    redis = api.resources.redis
    await redis.set(redis_key(redis, "candles:EURUSD:H1"), b"{not json")
    agent = fake_agent(client, trader)
    async with agent.running():
        response = await get_candles(client, trader, count=2)
    assert response.headers["x-cache"] == "miss"
    cached = await redis.get(redis_key(redis, "candles:EURUSD:H1"))
    assert json.loads(cached or b"null") == candles(2)


async def test_cache_is_shared_by_all_users_as_the_contract_says(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    other = await onboard_trader(client)
    async with fake_agent(client, trader).running():
        await get_candles(client, trader, count=5)
    hit = await get_candles(client, other, count=5)
    assert hit.headers["x-cache"] == "hit"
    await fake_agent(client, other).expect_no_job()


async def test_candles_without_an_answer_in_time_are_504_and_a_miss(
    store: Store, trader: Trader
) -> None:
    async with second_api(store, **SHORT_BUDGETS) as short:
        response = await get_candles(short.client, trader)
    assert response.status_code == 504
    assert response.json()["detail"] == "agent_timeout"
    assert response.headers["x-cache"] == "miss"


async def test_unknown_symbol_from_the_broker_is_422_broker_error(
    client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    asking = asyncio.create_task(get_candles(client, trader, "NOPE"))
    job = await agent.take()
    await agent.answer(job, failed("invalid_symbol", "Unknown symbol NOPE"))
    response = await asking
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_symbol"
    assert response.headers["x-cache"] == "miss"


async def test_cache_hit_needs_no_agent_but_a_miss_does(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    from tests.trading_agent import age_heartbeat

    async with fake_agent(client, trader).running():
        await get_candles(client, trader, count=5)
    await age_heartbeat(api, trader, minutes=60)
    assert (await get_candles(client, trader, count=5)).headers["x-cache"] == "hit"
    offline = await get_candles(client, trader, count=6)
    assert offline.status_code == 503
    assert offline.headers["x-cache"] == "miss"
