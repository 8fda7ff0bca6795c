"""Live prices over WebSocket: the contract's seed criteria, tokens, the multi-instrument
socket, slow clients, churn, a Redis restart and several processes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection

from app.core.config import Settings
from app.core.redis import create_redis
from app.core.security import create_access_token
from app.services.agents import set_price_source
from app.ws.ticks import channel_for
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.flows import TestUser, onboard_trader, register_user
from tests.private_redis import private_redis
from tests.servers import RunningApi, run_api, start_serve
from tests.stores import Store, reset_store
from tests.tcp_proxy import silenceable_proxy
from tests.ws_clients import (
    close_code,
    connect,
    connect_with_small_buffer,
    new_instrument,
    publish,
    recv_json,
    recv_tick,
    serve,
    subscribe,
    tick,
    wait_live,
)

SINGLE, MULTI = "/ws/prices/{instrument}", "/ws/prices"

# These need a real Redis (and PostgreSQL, shared by several processes).
ONLY_POSTGRES = pytest.mark.parametrize("store", ["postgres"], indirect=True)


@pytest.fixture
def instrument() -> str:
    return new_instrument()


@pytest.fixture(params=["channels", "pattern"])
async def price_api(request: pytest.FixtureRequest, store: Store) -> AsyncIterator[RunningApi]:
    """The app under each way of subscribing to Redis."""
    async with serve(store, ws_redis_subscription=request.param) as running:
        yield running


@pytest.fixture
async def price_user(price_api: RunningApi) -> TestUser:
    async with httpx.AsyncClient(base_url=f"{price_api.base_url}/api/v1") as http:
        return await register_user(http)


# -- the seed's criteria -----------------------------------------------------------------


async def test_client_receives_last_known_price_immediately_on_connect(
    price_api: RunningApi, price_user: TestUser, instrument: str
) -> None:
    await publish(price_api.resources.redis, tick(instrument, 1.0845, 1.0847, 1764018903120))
    async with connect(price_api, f"/ws/prices/{instrument}", price_user.token) as ws:
        message = await recv_json(ws)
    assert message == {
        "type": "tick",
        "data": {"instrument": instrument, "bid": 1.0845, "ask": 1.0847, "ts": 1764018903120},
    }


async def test_client_receives_price_updates_within_2s_of_agent_push(
    price_api: RunningApi, instrument: str
) -> None:
    async with httpx.AsyncClient(base_url=f"{price_api.base_url}/api/v1") as http:
        trader = await onboard_trader(http)
        await set_price_source(
            price_api.resources.session_factory,
            agent_id=uuid.UUID(trader.agent.id),
            enabled=True,
        )
        async with connect(price_api, f"/ws/prices/{instrument}", trader.user.token) as ws:
            await wait_live(price_api.resources.ws, instrument, sockets=1)
            for bid in (1.1, 1.2, 1.3):
                pushed_at = time.monotonic()
                response = await http.post(
                    trader.agent.path("prices"),
                    json={instrument: {"bid": bid, "ask": bid + 0.0002}},
                    headers=trader.agent.headers,
                )
                assert response.status_code == 202, response.text
                data = await recv_tick(ws)
                assert time.monotonic() - pushed_at <= 2.0
                assert data["instrument"] == instrument
                assert data["bid"] == bid
                assert isinstance(data["ts"], int)


async def test_two_simultaneous_clients_both_receive_the_same_tick(
    price_api: RunningApi, price_user: TestUser, instrument: str
) -> None:
    path = f"/ws/prices/{instrument}"
    async with (
        connect(price_api, path, price_user.token) as first,
        connect(price_api, path, price_user.token) as second,
    ):
        await wait_live(price_api.resources.ws, instrument, sockets=2)
        await publish(price_api.resources.redis, tick(instrument, 1.5, 1.6, 42))
        received = await asyncio.gather(first.recv(), second.recv())
    assert received[0] == received[1]
    assert json.loads(received[0])["data"] == tick(instrument, 1.5, 1.6, 42)


async def test_a_hundred_clients_connecting_at_once_all_receive_the_next_tick(
    price_api: RunningApi, price_user: TestUser, instrument: str
) -> None:
    """The connect-storm trap: each client, once it has its snapshot, misses nothing."""
    redis = price_api.resources.redis
    await publish(redis, tick(instrument, 1.0, 1.1, 1))
    path = f"/ws/prices/{instrument}"
    sockets = await asyncio.gather(
        *(connect(price_api, path, price_user.token) for _ in range(100))
    )
    try:
        snapshots = await asyncio.gather(*(recv_tick(ws) for ws in sockets))
        assert all(s["ts"] == 1 for s in snapshots)
        await publish(redis, tick(instrument, 2.0, 2.1, 2))
        updates = await asyncio.gather(*(recv_tick(ws) for ws in sockets))
        assert [u["ts"] for u in updates] == [2] * 100
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))


async def test_a_hundred_multi_instrument_clients_subscribing_at_once_all_get_the_next_tick(
    price_api: RunningApi, price_user: TestUser
) -> None:
    instruments = [new_instrument() for _ in range(3)]
    sockets = await asyncio.gather(
        *(connect(price_api, MULTI, price_user.token) for _ in range(100))
    )
    try:
        await asyncio.gather(*(subscribe(ws, *instruments) for ws in sockets))
        for n, name in enumerate(instruments):
            await publish(price_api.resources.redis, tick(name, 1.0, 1.1, n))

        async def ticks_of(ws: ClientConnection) -> list[dict[str, Any]]:
            return [await recv_tick(ws) for _ in instruments]

        received = await asyncio.gather(*(ticks_of(ws) for ws in sockets))
        for per_socket in received:
            assert [t["instrument"] for t in per_socket] == instruments
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))


# -- tokens --------------------------------------------------------------------------------


def bad_tokens(user_id: str) -> dict[str, str | None]:
    now = datetime.now(UTC)
    claims = {"sub": user_id, "exp": now + timedelta(hours=1)}
    return {
        "missing": None,
        "malformed": "not-a-jwt",
        "bad_signature": jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256"),
        "expired": jwt.encode(
            {"sub": user_id, "exp": now - timedelta(seconds=5)}, TEST_JWT_SECRET, algorithm="HS256"
        ),
        "alg_none": jwt.encode(claims, None, algorithm="none"),
        "unknown_user": jwt.encode(
            {"sub": str(uuid.uuid4()), "exp": now + timedelta(hours=1)},
            TEST_JWT_SECRET,
            algorithm="HS256",
        ),
    }


@pytest.mark.parametrize(
    "case", ["missing", "malformed", "bad_signature", "expired", "alg_none", "unknown_user"]
)
@pytest.mark.parametrize("path", [SINGLE, MULTI])
async def test_bad_token_closes_the_socket_with_4001(
    api: RunningApi, user: TestUser, case: str, path: str
) -> None:
    token = bad_tokens(user.id)[case]
    async with connect(api, path.format(instrument="EURUSD"), token) as ws:
        assert await close_code(ws) == 4001
        assert ws.close_reason == "invalid_token"
    assert api.resources.ws.stats()["sockets"] == 0


async def test_token_that_expires_while_open_closes_the_socket_with_4001(
    api: RunningApi, user: TestUser, instrument: str
) -> None:
    manager = api.resources.ws
    short = create_access_token(
        uuid.UUID(user.id), secret=TEST_JWT_SECRET, algorithm="HS256", ttl_seconds=3
    )
    expires_at = jwt.decode(short.token, options={"verify_signature": False})["exp"]
    async with connect(api, f"/ws/prices/{instrument}", short.token) as ws:
        # The socket is authenticated and registered: from here on, only expiry closes it.
        await manager.wait_until(lambda: manager.stats()["sockets"] == 1, 5)
        assert time.time() < expires_at, "the socket opened after its token had expired"
        assert await close_code(ws) == 4001
        assert ws.close_reason == "token_expired"
        assert time.time() >= expires_at - 0.05  # at the expiry, not before it
    await manager.wait_until(lambda: manager.stats()["sockets"] == 0, 5)


async def test_invalid_instrument_in_the_path_closes_with_1008(
    api: RunningApi, user: TestUser
) -> None:
    async with connect(api, "/ws/prices/EUR%20USD!", user.token) as ws:
        assert await close_code(ws) == 1008
        assert ws.close_reason == "invalid_instrument"


async def test_every_close_is_logged_with_its_code_and_who_closed(
    api: RunningApi, user: TestUser, instrument: str, caplog: pytest.LogCaptureFixture
) -> None:
    manager = api.resources.ws
    path = f"/ws/prices/{instrument}"
    with caplog.at_level(logging.INFO, logger="mt5gate.ws"):
        async with connect(api, path, "not-a-token") as ws:
            assert await close_code(ws) == 4001
        async with connect(api, "/ws/prices/EUR%20USD!", user.token) as ws:
            assert await close_code(ws) == 1008
        async with connect(api, path, user.token) as ws:
            await manager.wait_until(lambda: manager.stats()["sockets"] == 1, 5)
            await ws.close(4321, "bye")
        await manager.wait_until(lambda: manager.stats()["sockets"] == 0, 5)
    closes = [
        r.getMessage().rsplit(" seconds=", 1)[0]
        for r in caplog.records
        if r.getMessage().startswith("event=ws_closed ")
    ]
    assert closes == [
        f"event=ws_closed path='{path}' code=4001 reason=invalid_token by=server close_frame=sent",
        "event=ws_closed path='/ws/prices/EUR USD!' code=1008 reason=invalid_instrument"
        " by=server close_frame=sent",
        f"event=ws_closed path='{path}' code=4321 reason=- by=client",
    ]


# -- the multi-instrument socket ---------------------------------------------------------------


async def test_subscribe_sends_last_ticks_then_streams_until_unsubscribe(
    price_api: RunningApi, price_user: TestUser
) -> None:
    a, b, c = (new_instrument() for _ in range(3))
    redis = price_api.resources.redis
    await publish(redis, tick(a, 1.0, 1.1, 1))
    await publish(redis, tick(b, 2.0, 2.1, 1))
    async with connect(price_api, MULTI, price_user.token) as ws:
        assert sorted(await subscribe(ws, a, b)) == sorted([a, b])
        await publish(redis, tick(c, 3.0, 3.1, 2))  # not subscribed
        await publish(redis, tick(a, 1.2, 1.3, 2))
        await publish(redis, tick(b, 2.2, 2.3, 2))
        assert (await recv_tick(ws))["instrument"] == a
        assert (await recv_tick(ws))["instrument"] == b

        assert await subscribe(ws, a, kind="unsubscribe") == []
        await publish(redis, tick(a, 1.4, 1.5, 3))
        await publish(redis, tick(b, 2.4, 2.5, 3))
        assert await recv_tick(ws) == tick(b, 2.4, 2.5, 3)  # a's tick never came

        await ws.send(json.dumps({"type": "subscribe", "instruments": [a, b]}))
        assert await recv_json(ws) == {"type": "tick", "data": tick(a, 1.4, 1.5, 3)}
        assert await recv_json(ws) == {"type": "subscriptions", "instruments": sorted([a, b])}


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"type": "subscribe"}', "invalid_instruments"),
        ('{"type": "subscribe", "instruments": []}', "invalid_instruments"),
        ('{"type": "subscribe", "instruments": "EURUSD"}', "invalid_instruments"),
        ('{"type": "subscribe", "instruments": ["EUR USD"]}', "invalid_instrument"),
        ('{"type": "subscribe", "instruments": [42]}', "invalid_instrument"),
        ('{"type": "subscribe", "instruments": ["' + "X" * 33 + '"]}', "invalid_instrument"),
        ('{"type": "order", "instruments": ["EURUSD"]}', "unknown_message_type"),
        (b"\x00binary", "invalid_message"),
        ("x" * 20_000, "message_too_large"),
        (
            json.dumps({"type": "subscribe", "instruments": [f"S{n}" for n in range(101)]}),
            "too_many_instruments",
        ),
    ],
)
async def test_malformed_client_message_gets_an_error_and_the_socket_stays_open(
    api: RunningApi, user: TestUser, instrument: str, message: str | bytes, code: str
) -> None:
    async with connect(api, MULTI, user.token) as ws:
        await ws.send(message)
        error = await recv_json(ws)
        assert error["type"] == "error"
        assert error["detail"] == code
        await publish(api.resources.redis, tick(instrument, 1.0, 1.1, 7))
        assert await subscribe(ws, instrument) == [instrument]
    assert api.resources.ws.stats()["instruments"] <= 1


async def test_instruments_per_socket_are_bounded_across_messages(
    api: RunningApi, user: TestUser
) -> None:
    async with connect(api, MULTI, user.token) as ws:
        await subscribe(ws, *(f"A{n}" for n in range(60)))
        await ws.send(
            json.dumps({"type": "subscribe", "instruments": [f"B{n}" for n in range(41)]})
        )
        assert (await recv_json(ws))["detail"] == "too_many_instruments"
        await subscribe(ws, *(f"B{n}" for n in range(40)))


# -- what Redis carries is outside input -----------------------------------------------------


async def test_malformed_ticks_on_redis_are_dropped_and_the_stream_goes_on(
    api: RunningApi, user: TestUser, instrument: str
) -> None:
    redis = api.resources.redis
    async with connect(api, f"/ws/prices/{instrument}", user.token) as ws:
        await wait_live(api.resources.ws, instrument, sockets=1)
        for garbage in (
            b"\xff\xfe not utf-8",
            "{not json",
            "[]",
            json.dumps(tick("OTHER", 1.0, 1.1, 1)),
            json.dumps({"instrument": instrument, "bid": "1.0", "ask": 1.1, "ts": 1}),
            json.dumps({"instrument": instrument, "bid": -1.0, "ask": 1.1, "ts": 1}),
            json.dumps({"instrument": instrument, "bid": 1.0, "ask": 1.1, "ts": "now"}),
            json.dumps({"instrument": instrument, "bid": 1.0, "ask": 1.1}),
            '{"instrument": "' + instrument + '", "bid": NaN, "ask": 1.1, "ts": 1}',
            "x" * 10_000,
        ):
            await publish(redis, garbage, channel=instrument)
        await publish(redis, tick(instrument, 1.3, 1.4, 9))
        assert await recv_tick(ws) == tick(instrument, 1.3, 1.4, 9)


async def test_malformed_last_tick_is_not_sent_on_connect(
    api: RunningApi, user: TestUser, instrument: str
) -> None:
    await publish(api.resources.redis, "{broken", channel=instrument)
    async with connect(api, f"/ws/prices/{instrument}", user.token) as ws:
        await wait_live(api.resources.ws, instrument, sockets=1)
        await publish(api.resources.redis, tick(instrument, 1.3, 1.4, 9))
        assert await recv_tick(ws) == tick(instrument, 1.3, 1.4, 9)


# -- slow clients ----------------------------------------------------------------------------


async def publish_batch(api: RunningApi, instrument: str, start: int, count: int) -> None:
    async with api.resources.redis.pipeline(transaction=False) as pipe:
        for ts in range(start, start + count):
            pipe.publish(
                channel_for(api.resources.redis, instrument),
                json.dumps(tick(instrument, 1.1, 1.2, ts)),
            )
        await pipe.execute()


async def test_stalled_client_does_not_delay_a_fast_one_and_is_closed_with_1013(
    store: Store, instrument: str
) -> None:
    async with serve(store, ws_stall_timeout_seconds=1.0) as api:
        async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as http:
            user = await register_user(http)
        manager = api.resources.ws
        path = f"/ws/prices/{instrument}"
        async with (
            connect_with_small_buffer(api, path, user.token) as stalled,
            connect(api, path, user.token) as fast,
        ):
            await wait_live(manager, instrument, sockets=2)
            sent = 0
            # The fast client reads every tick, in order, while the other one reads nothing,
            # until the server gives up on the stalled one.
            while manager.stats()["sockets"] == 2:
                await publish_batch(api, instrument, sent, 100)
                for ts in range(sent, sent + 100):
                    assert (await recv_tick(fast))["ts"] == ts
                sent += 100
                assert sent < 200_000, "the stalled client was never closed"
            assert await close_code(stalled) == 1013
            assert stalled.close_reason == "stalled"
            await publish_batch(api, instrument, sent, 1)
            assert (await recv_tick(fast))["ts"] == sent


async def test_a_stalled_client_that_reads_again_later_gets_the_1013_close(
    store: Store, instrument: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The close frame is queued behind the ticks the client has not read (waiting for room
    would outlast it), so that a client that reads again later learns why it was closed."""
    stall_timeout = 0.5
    async with serve(store, ws_stall_timeout_seconds=stall_timeout) as api:
        async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as http:
            user = await register_user(http)
        manager = api.resources.ws
        with caplog.at_level(logging.INFO, logger="mt5gate.ws"):
            async with connect_with_small_buffer(
                api, SINGLE.format(instrument=instrument), user.token
            ) as ws:
                await wait_live(manager, instrument, sockets=1)
                sent = 0
                while manager.stats()["sockets"] == 1:
                    await publish_batch(api, instrument, sent, 100)
                    sent += 100
                    assert sent < 200_000, "the stalled client was never closed"
                # The client stays away longer than the server would wait for room.
                await asyncio.sleep(2 * stall_timeout)
                assert await close_code(ws) == 1013
                assert ws.close_reason == "stalled"
        lines = [r.getMessage() for r in caplog.records]
        assert any(line.startswith("event=ws_stalled blocked_seconds=") for line in lines)
        assert any(
            line.startswith(f"event=ws_closed path='/ws/prices/{instrument}' code=1013 ")
            and "reason=stalled by=server close_frame=sent" in line
            for line in lines
        ), lines


async def test_slow_client_gets_the_newest_tick_of_each_instrument(store: Store) -> None:
    a, b = new_instrument(), new_instrument()
    async with serve(store, ws_stall_timeout_seconds=60.0, ws_queue_size=16) as api:
        async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as http:
            user = await register_user(http)
        manager = api.resources.ws
        async with connect_with_small_buffer(api, MULTI, user.token) as slow:
            await subscribe(slow, a, b)
            sent = 0
            # Publish until the server had to drop ticks for this client.
            while manager.stats()["dropped_ticks"] == 0:
                await publish_batch(api, a, sent, 200)
                await publish_batch(api, b, sent, 200)
                sent += 200
                assert sent < 200_000, "the slow client never fell behind"
            await publish_batch(api, a, sent, 1)
            await publish_batch(api, b, sent, 1)
            seen: dict[str, list[int]] = {a: [], b: []}
            while seen[a][-1:] != [sent] or seen[b][-1:] != [sent]:
                data = await recv_tick(slow)
                seen[data["instrument"]].append(data["ts"])
        # Some were dropped (of one instrument or both: conflation keeps the newest of
        # each in the outbox, whichever happened to fill it) ...
        assert sum(len(stamps) for stamps in seen.values()) < 2 * (sent + 1)
        for stamps in seen.values():
            assert stamps == sorted(stamps)  # never out of order
            assert stamps[-1] == sent  # ... but never the newest


# -- nothing left behind -----------------------------------------------------------------------


def price_handlers_running() -> int:
    """Tasks still inside a price socket's handler (found along each task's await chain)."""
    running = 0
    for task in asyncio.all_tasks():
        awaiting: Any = task.get_coro()
        while awaiting is not None and not task.done():
            if getattr(awaiting, "__qualname__", None) == "stream_prices":
                running += 1
                break
            awaiting = getattr(awaiting, "cr_await", None)
    return running


async def test_churn_leaves_no_socket_task_or_subscription_behind(
    api: RunningApi, user: TestUser
) -> None:
    manager = api.resources.ws
    instruments = [new_instrument() for _ in range(5)]
    for name in instruments:
        await publish(api.resources.redis, tick(name))

    async def single(n: int) -> None:
        async with connect(api, f"/ws/prices/{instruments[n % 5]}", user.token) as ws:
            await recv_tick(ws)
            if n % 3 == 0:
                ws.transport.abort()  # the client vanishes without a close frame

    async def multi(n: int) -> None:
        async with connect(api, MULTI, user.token) as ws:
            await subscribe(ws, *instruments[: 1 + n % 5])
            if n % 2:
                await subscribe(ws, instruments[0], kind="unsubscribe")
            if n % 3 == 0:
                ws.transport.abort()

    async def gone_before_subscribing(n: int) -> None:
        async with connect(api, MULTI, user.token) as ws:
            await ws.send(json.dumps({"type": "subscribe", "instruments": instruments}))
            ws.transport.abort()  # while the server may still be subscribing it

    for _round in range(3):
        await asyncio.gather(
            *(single(n) for n in range(40)),
            *(multi(n) for n in range(40)),
            *(gone_before_subscribing(n) for n in range(20)),
        )
    await manager.wait_until(
        lambda: manager.stats()["sockets"] == 0 and manager.stats()["redis_subscriptions"] == 0,
        timeout=10,
    )
    stats = manager.stats()
    assert (stats["sockets"], stats["instruments"], stats["blocked_writes"]) == (0, 0, 0)
    assert (stats["redis_subscriptions"], stats["redis_connected"]) == (0, 1)
    assert price_handlers_running() == 0
    # ... and the next client is served as usual.
    async with connect(api, f"/ws/prices/{instruments[0]}", user.token) as ws:
        assert (await recv_tick(ws))["instrument"] == instruments[0]


async def test_server_shutdown_closes_open_sockets_with_1012(store: Store, instrument: str) -> None:
    await reset_store(store)
    async with run_api(make_settings(store)) as api:
        async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as http:
            user = await register_user(http)
        ws = await connect(api, f"/ws/prices/{instrument}", user.token)
        multi = await connect(api, MULTI, user.token)
        await subscribe(multi, instrument)
        await wait_live(api.resources.ws, instrument, sockets=2)
        assert price_handlers_running() == 2
    # run_api returned: uvicorn's graceful shutdown did not wait on the open sockets.
    assert await close_code(ws) == 1012
    assert await close_code(multi) == 1012
    assert price_handlers_running() == 0


# -- Redis goes away, several processes -----------------------------------------------------------


@ONLY_POSTGRES  # needs a real Redis
async def test_ticks_flow_again_after_redis_restarts(
    store: Store, tmp_path: Path, instrument: str
) -> None:
    with private_redis(tmp_path) as redis_server:
        async with serve(store, redis_url=redis_server.url) as api:
            manager = api.resources.ws
            async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as http:
                user = await register_user(http)
            async with (
                connect(api, f"/ws/prices/{instrument}", user.token) as single,
                connect(api, MULTI, user.token) as multi,
            ):
                await subscribe(multi, instrument)
                await wait_live(manager, instrument, sockets=2)

                redis_server.stop()
                await manager.wait_until(lambda: manager.stats()["redis_connected"] == 0, 10)
                await asyncio.wait_for(single.ping(), 5)  # the sockets stay open
                await asyncio.wait_for(multi.ping(), 5)

                redis_server.start()
                await wait_live(manager, instrument)
                await publish_fresh(api.settings, tick(instrument, 1.7, 1.8, 5))
                assert await recv_tick(single) == tick(instrument, 1.7, 1.8, 5)
                assert await recv_tick(multi) == tick(instrument, 1.7, 1.8, 5)


# Longer than the Redis health-check interval these tests set (1 s), by a margin.
QUIET_SPELL_SECONDS = 3.0


@ONLY_POSTGRES  # needs a real Redis: fakeredis has no health checks
async def test_a_socket_that_connects_after_a_quiet_spell_gets_live_ticks(
    store: Store, instrument: str
) -> None:
    """No socket for longer than the health-check interval, after start and after the last
    socket left: the next socket still gets every tick, not only the last-known one."""
    async with serve(store, redis_health_check_interval_seconds=1) as api:
        manager = api.resources.ws
        async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as http:
            user = await register_user(http)
        for spell in (1, 2):
            await manager.wait_until(lambda: manager.stats()["redis_subscriptions"] == 0, 10)
            await asyncio.sleep(QUIET_SPELL_SECONDS)  # the quiet spell itself is the test
            async with connect(api, f"/ws/prices/{instrument}", user.token) as ws:
                if spell > 1:
                    assert (await recv_tick(ws))["ts"] == spell - 1  # the last-known tick
                await wait_live(manager, instrument, sockets=1)
                await publish(api.resources.redis, tick(instrument, ts=spell))
                assert (await recv_tick(ws))["ts"] == spell


@ONLY_POSTGRES  # needs a real Redis
async def test_ticks_flow_again_after_the_subscription_connection_silently_dies(
    store: Store, instrument: str
) -> None:
    """A connection that a NAT or firewall dropped is never closed: the listener finds it
    silent, within twice the health-check interval, and subscribes on a new one."""
    async with silenceable_proxy(store.redis_url) as (proxy, proxied_url):
        async with serve(
            store, redis_url=proxied_url, redis_health_check_interval_seconds=1
        ) as api:
            manager = api.resources.ws
            async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as http:
                user = await register_user(http)
            async with connect(api, f"/ws/prices/{instrument}", user.token) as ws:
                await wait_live(manager, instrument, sockets=1)
                proxy.blackhole()
                await manager.wait_until(lambda: not manager.is_live(instrument), 10)
                await wait_live(manager, instrument)
                # Through a connection of its own: the app's pooled ones are silenced too.
                direct = api.settings.model_copy(update={"redis_url": store.redis_url})
                await publish_fresh(direct, tick(instrument, 1.7, 1.8, 5))
                assert await recv_tick(ws) == tick(instrument, 1.7, 1.8, 5)


@ONLY_POSTGRES  # several processes need PostgreSQL and Redis
async def test_client_on_one_process_receives_a_tick_pushed_through_another(
    store: Store, tmp_path: Path, instrument: str
) -> None:
    await reset_store(store)
    settings = make_settings(store)
    pusher = start_serve(settings, tmp_path / "a.log")
    streamer = start_serve(settings, tmp_path / "b.log")
    try:
        async with httpx.AsyncClient(base_url=f"{pusher.base_url}/api/v1", timeout=30) as http:
            trader = await onboard_trader(http)
            await set_price_source_in(settings.database_url, trader.agent.id)
            b_ws = streamer.base_url.replace("http://", "ws://", 1)
            async with connect(b_ws, MULTI, trader.user.token) as ws:
                await subscribe(ws, instrument)  # acknowledged once B's subscription is live
                response = await http.post(
                    trader.agent.path("prices"),
                    json={instrument: {"bid": 1.25, "ask": 1.26, "ts": 123}},
                    headers=trader.agent.headers,
                )
                assert response.status_code == 202, response.text
                assert await recv_tick(ws) == tick(instrument, 1.25, 1.26, 123)
    finally:
        pusher.stop()
        streamer.stop()


async def set_price_source_in(database_url: str, agent_id: str) -> None:
    from app.core.db import create_engine, create_session_factory

    engine = create_engine(database_url)
    try:
        await set_price_source(
            create_session_factory(engine), agent_id=uuid.UUID(agent_id), enabled=True
        )
    finally:
        await engine.dispose()


@ONLY_POSTGRES  # needs a real Redis
async def test_an_unreachable_redis_does_not_refuse_sockets(
    store: Store, tmp_path: Path, instrument: str
) -> None:
    with private_redis(tmp_path) as redis_server:
        async with serve(store, redis_url=redis_server.url) as api:
            async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as http:
                user = await register_user(http)
            redis_server.stop()
            manager = api.resources.ws
            await manager.wait_until(lambda: manager.stats()["redis_connected"] == 0, 10)
            async with connect(api, f"/ws/prices/{instrument}", user.token) as ws:
                await manager.wait_until(lambda: manager.stats()["sockets"] == 1, 10)
                redis_server.start()
                await wait_live(manager, instrument)
                await publish_fresh(api.settings, tick(instrument, 1.7, 1.8, 5))
                assert await recv_tick(ws) == tick(instrument, 1.7, 1.8, 5)


async def publish_fresh(settings: Settings, body: dict[str, Any]) -> None:
    """Publishes over a new connection (the app's pooled ones died with the old server)."""
    redis = create_redis(settings.redis_url, key_prefix=settings.redis_key_prefix)
    try:
        await publish(redis, body)
    finally:
        await redis.aclose()
