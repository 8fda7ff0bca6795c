"""The account stream's own events (orders, the agent's status), across processes, and its
sockets over time: token expiry, key revocation, a slow client, idling past every interval."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest

from tests.account_events import (
    connect_account,
    deal,
    event,
    pending_order,
    ping,
    position,
    recv_events,
    recv_snapshot,
    reported,
)
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.flows import Trader, heartbeat, onboard_trader
from tests.servers import RunningApi, ServeProcess, start_serve
from tests.stores import Store, reset_store
from tests.trading_agent import FILL, PENDING_ORDER, fake_agent
from tests.ws_clients import close_code, recv_json, serve

ONLY_POSTGRES = pytest.mark.parametrize("store", ["postgres"], indirect=True)
MARKET_ORDER = {"symbol": "EURUSD", "side": "buy", "volume": 0.1}


async def test_a_fill_is_an_order_event_before_the_agent_reports_its_position(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    async with connect_account(api, trader.user.token) as ws:
        await recv_snapshot(ws)
        async with agent.running():
            response = await client.post("/orders", json=MARKET_ORDER, headers=trader.headers)
        assert response.status_code == 201, response.text
        order = response.json()
        # What the agent's watch sees next: the position the fill opened, and its deal.
        opened = position(int(str(FILL["ticket"])))
        await reported(
            client, trader.agent, event("position_opened", opened), event("deal", deal())
        )
        found = await recv_events(ws, 3)
    assert [e["kind"] for e in found] == ["order", "position_opened", "deal"]
    assert found[0]["data"] == order
    assert found[0]["data"]["status"] == "filled"


async def test_a_rejected_order_is_an_order_event(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = fake_agent(client, trader)
    async with connect_account(api, trader.user.token) as ws:
        await recv_snapshot(ws)
        placing = asyncio.create_task(
            client.post("/orders", json=MARKET_ORDER, headers=trader.headers)
        )
        job = await agent.take()
        await agent.answer(job, {"status": "failed", "error": {"code": "no_money"}})
        assert (await placing).status_code == 422
        (found,) = await recv_events(ws, 1)
    assert found["kind"] == "order"
    assert found["data"]["status"] == "rejected"
    assert found["data"]["error"]["code"] == "no_money"


async def test_an_order_nobody_took_is_an_expired_order_event(store: Store) -> None:
    async with serve(store, trade_job_ttl_seconds=0.2, trade_wait_seconds=0.1) as api:
        async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as client:
            trader = await onboard_trader(client)
            async with connect_account(api, trader.user.token) as ws:
                await recv_snapshot(ws)
                response = await client.post("/orders", json=MARKET_ORDER, headers=trader.headers)
                assert response.status_code == 202, response.text
                (found,) = await recv_events(ws, 1)  # the sweeper expires it within a second
                await ping(ws)
    assert found["kind"] == "order"
    assert found["data"]["order_id"] == response.json()["order_id"]
    assert found["data"]["status"] == "expired"


async def place_limit_order(client: httpx.AsyncClient, trader: Trader) -> tuple[str, int]:
    """A limit order placed through mt5gate, and seen by the agent's watch; returns its
    `order_id` and ticket."""
    body = {**MARKET_ORDER, "type": "limit", "price": 1.05}
    async with fake_agent(client, trader).running():
        response = await client.post("/orders", json=body, headers=trader.headers)
    assert response.status_code == 201, response.text
    ticket = int(str(PENDING_ORDER["ticket"]))
    await reported(client, trader.agent, event("pending_order_placed", pending_order(ticket)))
    return response.json()["order_id"], ticket


async def order_status(client: httpx.AsyncClient, trader: Trader, order_id: str) -> str:
    status: str = (await client.get(f"/orders/{order_id}", headers=trader.headers)).json()["status"]
    return status


async def test_a_triggered_pending_order_fills_its_order(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    order_id, ticket = await place_limit_order(client, trader)
    async with connect_account(api, trader.user.token) as ws:
        await recv_snapshot(ws)
        await reported(
            client,
            trader.agent,
            event("pending_order_removed", {"ticket": ticket, "reason": "triggered"}),
            event("position_opened", position(ticket)),
        )
        found = await recv_events(ws, 3)
    assert [e["kind"] for e in found] == ["pending_order_removed", "order", "position_opened"]
    assert found[1]["data"]["order_id"] == order_id
    assert found[1]["data"]["status"] == "filled"
    assert await order_status(client, trader, order_id) == "filled"


async def test_an_expired_pending_order_is_expired_and_said_once(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    order_id, ticket = await place_limit_order(client, trader)
    removed = event("pending_order_removed", {"ticket": ticket, "reason": "expired"})
    assert await reported(client, trader.agent, removed) == 2  # the removal, the order
    assert await reported(client, trader.agent, removed) == 0  # a repeat says nothing
    assert await order_status(client, trader, order_id) == "expired"


async def test_the_heartbeat_answers_the_newest_deal_recorded(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    path, headers = trader.agent.path("heartbeat"), trader.agent.headers
    assert (await client.post(path, json={}, headers=headers)).json()["last_deal_ticket"] is None
    await reported(client, trader.agent, event("deal", deal(41)), event("deal", deal(40)))
    assert (await client.post(path, json={}, headers=headers)).json()["last_deal_ticket"] == 41


# -- the agent's status ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def two_serve_processes(
    store: Store, tmp_path: Path, **overrides: object
) -> AsyncIterator[list[ServeProcess]]:
    await reset_store(store)
    settings = make_settings(store, **overrides)
    processes: list[ServeProcess] = []
    try:
        for name in ("one", "two"):
            processes.append(
                await asyncio.to_thread(start_serve, settings, tmp_path / f"{name}.log")
            )
        yield processes
    finally:
        for process in processes:
            await asyncio.to_thread(process.stop)


def ws_of(process: ServeProcess) -> str:
    return process.base_url.replace("http://", "ws://", 1)


@ONLY_POSTGRES
async def test_two_sockets_on_two_serve_processes_get_identical_sequences(
    store: Store, tmp_path: Path
) -> None:
    async with two_serve_processes(store, tmp_path) as (one, two):
        async with httpx.AsyncClient(base_url=f"{one.base_url}/api/v1") as client:
            trader = await onboard_trader(client)
            async with (
                connect_account(ws_of(one), trader.user.token) as first,
                connect_account(ws_of(two), trader.user.token) as second,
            ):
                await recv_snapshot(first)
                await recv_snapshot(second)
                async with httpx.AsyncClient(base_url=f"{two.base_url}/api/v1") as other:
                    await asyncio.gather(
                        *(
                            reported(
                                http,
                                trader.agent,
                                *(event("deal", deal(n * 100 + i)) for i in range(5)),
                            )
                            for n, http in enumerate([client, other] * 4)
                        )
                    )
                one_saw = [await recv_json(first) for _ in range(40)]
                two_saw = [await recv_json(second) for _ in range(40)]
    assert one_saw == two_saw
    ids = [m["event"]["id"] for m in one_saw]
    assert ids == list(range(ids[0], ids[0] + 40))
    assert [m["seq"] for m in one_saw] == list(range(1, 41))


@ONLY_POSTGRES
async def test_an_agent_gone_quiet_is_one_offline_event_whatever_the_processes(
    store: Store, tmp_path: Path
) -> None:
    async with two_serve_processes(store, tmp_path, agent_offline_after_seconds=3) as (
        one,
        two,
    ):
        async with httpx.AsyncClient(base_url=f"{one.base_url}/api/v1") as client:
            trader = await onboard_trader(client)  # its heartbeat said it online
            async with (
                connect_account(ws_of(one), trader.user.token) as first,
                connect_account(ws_of(two), trader.user.token) as second,
            ):
                snapshots = [await recv_snapshot(first), await recv_snapshot(second)]
                assert [s["agent"]["status"] for s in snapshots] == ["online", "online"]
                # Then nothing: offline 3 s later, said once by whichever process saw it.
                offline = [(await recv_events(ws, 1))[0] for ws in (first, second)]
                assert offline[0] == offline[1]
                assert offline[0]["data"] == {"status": "offline", "terminal_connected": None}
                # Back, with its terminal lost: one event again.
                response = await client.post(
                    trader.agent.path("heartbeat"),
                    json={"terminal_connected": False},
                    headers=trader.agent.headers,
                )
                assert response.status_code == 200
                for ws in (first, second):
                    (lost,) = await recv_events(ws, 1)
                    assert lost["data"] == {"status": "offline", "terminal_connected": False}
                    assert lost["id"] == offline[0]["id"] + 1
                    await ping(ws)


# -- the socket over time -------------------------------------------------------------------


async def test_a_token_that_expires_while_open_closes_the_socket_with_4001(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1)
    token = jwt.encode({"sub": trader.user.id, "exp": soon}, TEST_JWT_SECRET, algorithm="HS256")
    async with connect_account(api, token) as ws:
        await recv_snapshot(ws)
        assert await close_code(ws) == 4001
        assert ws.close_reason == "token_expired"


async def test_a_revoked_key_closes_its_sockets_with_4001(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    created = await client.post(
        "/api-keys", json={"name": "bot", "scopes": ["read"]}, headers=trader.headers
    )
    key = created.json()
    async with connect_account(api, key["key"]) as ws:
        await recv_snapshot(ws)
        response = await client.delete(f"/api-keys/{key['id']}", headers=trader.headers)
        assert response.status_code == 204
        assert await close_code(ws) == 4001
        assert ws.close_reason == "key_revoked"


async def test_a_client_that_does_not_read_is_closed_with_1013_and_resumes_with_since(
    store: Store,
) -> None:
    async with serve(store, ws_account_queue_size=8) as api:
        async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as client:
            trader = await onboard_trader(client)
            async with connect_account(api, trader.user.token) as ws:
                start = (await recv_snapshot(ws))["last_event_id"]
                ws.transport.pause_reading()  # a client that stops reading
                sent = 0
                streams = api.resources.account_events.streams
                while streams.stats()["sockets"]:
                    batch = [event("deal", deal(sent + i)) for i in range(100)]
                    await reported(client, trader.agent, *batch)
                    sent += 100
                    assert sent < 100_000, "the slow client was never closed"
                ws.transport.resume_reading()
                assert await close_code(ws) == 1013
            async with connect_account(api, trader.user.token, since=start) as again:
                replayed = await recv_events(again, sent)
            assert [e["id"] for e in replayed] == list(range(start + 1, start + sent + 1))


@ONLY_POSTGRES
async def test_an_idle_socket_outlives_its_ping_and_redis_intervals(store: Store) -> None:
    async with serve(
        store, ws_ping_interval_seconds=0.3, redis_health_check_interval_seconds=0.3
    ) as api:
        async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as client:
            trader = await onboard_trader(client)
            async with connect_account(api, trader.user.token) as ws:
                await recv_snapshot(ws)
                await asyncio.sleep(2.0)  # the point: several intervals of each, idle
                await heartbeat(client, trader.agent)
                await reported(client, trader.agent, event("deal", deal(1)))
                found = await recv_events(ws, 1)
    assert found[0]["data"]["ticket"] == 1
