"""The account events stream: `POST /agents/{agent_id}/events` and `WS /ws/account`, on both
stores, over real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.account_events import (
    account,
    closed,
    connect_account,
    deal,
    event,
    pending_order,
    ping,
    position,
    recv_events,
    recv_snapshot,
    report,
    reported,
    state,
)
from tests.flows import Trader, add_connection, onboard_trader, provision_agent, register_user
from tests.servers import RunningApi
from tests.stores import Store
from tests.ws_clients import close_code, recv_json, serve


async def test_snapshot_shows_the_account_the_agent_reported(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    async with connect_account(api, trader.user.token) as ws:
        before = await recv_snapshot(ws)
    assert before["account"] is None  # the agent is online but has reported nothing yet
    assert before["positions"] is None
    assert before["agent"]["status"] == "online"
    assert isinstance(before["last_event_id"], int)

    opened = position(1001)
    order = pending_order(2001)
    await reported(client, trader.agent, state([opened], [order], balance=5000.0))
    async with connect_account(api, trader.user.token) as ws:
        after = await recv_snapshot(ws)
    assert after["account"] == account(balance=5000.0)
    assert after["positions"] == [opened]
    assert after["pending_orders"] == [order]
    # position_opened, pending_order_placed, account
    assert after["last_event_id"] == before["last_event_id"] + 3
    assert after["agent"] == {
        "status": "online",
        "terminal_connected": None,
        "last_heartbeat_at": after["agent"]["last_heartbeat_at"],
    }


async def test_reported_events_reach_an_open_socket_in_order_with_consecutive_ids(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    async with connect_account(api, trader.user.token) as ws:
        snapshot = await recv_snapshot(ws)
        accepted = await reported(
            client,
            trader.agent,
            event("position_opened", position(1001)),
            event("deal", deal(3001)),
            event("position_changed", position(1001, sl=1.05)),
        )
        assert accepted == 3
        messages = [await recv_json(ws) for _ in range(3)]
    assert [m["seq"] for m in messages] == [1, 2, 3]
    first = snapshot["last_event_id"]
    assert [m["event"]["id"] for m in messages] == [first + 1, first + 2, first + 3]
    assert [m["event"]["kind"] for m in messages] == ["position_opened", "deal", "position_changed"]
    assert messages[2]["event"] == {
        "id": first + 3,
        "kind": "position_changed",
        "at": "2026-12-01T19:00:00.000Z",
        "data": position(1001, sl=1.05),
    }


async def test_reconnecting_with_since_replays_exactly_what_was_missed(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    async with connect_account(api, trader.user.token) as ws:
        last = (await recv_snapshot(ws))["last_event_id"]
        await reported(client, trader.agent, event("position_opened", position(1)))
        (seen,) = await recv_events(ws, 1)
    await reported(
        client,
        trader.agent,
        event("position_opened", position(2)),
        event("pending_order_placed", pending_order(20)),
        event("position_closed", closed(1)),
    )
    async with connect_account(api, trader.user.token, since=seen["id"]) as ws:
        missed = [await recv_json(ws) for _ in range(3)]
        await ping(ws)  # nothing else came before the pong: no duplicate, no snapshot
        await reported(client, trader.agent, event("deal", deal(5)))
        (live,) = await recv_events(ws, 1)
    assert [m["seq"] for m in missed] == [0, 1, 2]
    assert [m["event"]["id"] for m in missed] == [last + 2, last + 3, last + 4]
    assert [m["event"]["kind"] for m in missed] == [
        "position_opened",
        "pending_order_placed",
        "position_closed",
    ]
    assert live["id"] == last + 5


async def test_a_replay_ends_with_the_latest_profit_and_account_not_each_one(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    await reported(client, trader.agent, state([position(1), position(2)]))
    async with connect_account(api, trader.user.token) as ws:
        since = (await recv_snapshot(ws))["last_event_id"]
    for profit in (1.0, 2.0, 3.0):
        await reported(
            client,
            trader.agent,
            event("position_changed", position(1, profit=profit, current_price=1.1 + profit)),
            event("account", account(equity=10_000 + profit)),
        )
    await reported(client, trader.agent, event("position_changed", position(2, tp=1.3)))
    await reported(client, trader.agent, event("position_changed", position(2, tp=1.4)))
    async with connect_account(api, trader.user.token, since=since) as ws:
        replayed = await recv_events(ws, 4)
        await ping(ws)
    assert [(e["kind"], e["data"].get("position_id")) for e in replayed] == [
        ("position_changed", 1),
        ("account", None),
        ("position_changed", 2),
        ("position_changed", 2),
    ]
    assert replayed[0]["data"]["profit"] == 3.0
    assert replayed[1]["data"]["equity"] == 10_003.0
    assert [e["data"]["tp"] for e in replayed[2:]] == [1.3, 1.4]
    assert [e["id"] for e in replayed] == sorted(e["id"] for e in replayed)
    assert replayed[-1]["id"] == since + 8


async def test_a_since_the_log_never_held_gets_a_snapshot(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    await reported(client, trader.agent, state([position(1)]))
    async with connect_account(api, trader.user.token) as ws:
        last = (await recv_snapshot(ws))["last_event_id"]
    for since in (last + 1, 0):
        async with connect_account(api, trader.user.token, since=since) as ws:
            snapshot = await recv_snapshot(ws)
        assert snapshot["last_event_id"] == last
        assert snapshot["positions"] == [position(1)]


async def test_a_since_trimmed_from_the_log_gets_a_snapshot(store: Store) -> None:
    async with serve(store, account_events_keep_count=3, account_events_keep_seconds=0) as api:
        async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as client:
            trader = await onboard_trader(client)
            async with connect_account(api, trader.user.token) as ws:
                start = (await recv_snapshot(ws))["last_event_id"]
            for ticket in range(1, 9):
                await reported(client, trader.agent, event("deal", deal(ticket)))
            async with connect_account(api, trader.user.token, since=start) as ws:
                snapshot = await recv_snapshot(ws)
            assert snapshot["last_event_id"] == start + 8
            # The newest are still held: resuming from one of them replays the rest.
            async with connect_account(api, trader.user.token, since=start + 6) as ws:
                replayed = await recv_events(ws, 2)
            assert [e["data"]["ticket"] for e in replayed] == [7, 8]


async def test_a_restarted_agent_reporting_the_same_state_adds_nothing(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    terminal = state([position(1), position(2)], [pending_order(20)])
    assert await reported(client, trader.agent, terminal) == 4
    assert await reported(client, trader.agent, terminal) == 0


async def test_a_state_without_a_known_position_closes_it_and_shows_what_changed(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    await reported(client, trader.agent, state([position(1), position(2)], [pending_order(20)]))
    async with connect_account(api, trader.user.token) as ws:
        await recv_snapshot(ws)
        await reported(
            client, trader.agent, state([position(2, sl=1.0), position(3)], [], balance=9000.0)
        )
        found = await recv_events(ws, 5)
    assert [(e["kind"], e["data"].get("position_id", e["data"].get("ticket"))) for e in found] == [
        ("position_closed", 1),
        ("position_changed", 2),
        ("position_opened", 3),
        ("pending_order_removed", 20),
        ("account", None),
    ]
    assert found[0]["data"]["reason"] == "other"
    assert found[3]["data"] == {"ticket": 20, "reason": "cancelled"}


async def test_integral_numbers_are_integers_as_the_schema_says(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    assert await reported(client, trader.agent, event("deal", deal(7.0, volume=1))) == 1


async def test_a_deal_ticket_already_recorded_is_ignored(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    assert await reported(client, trader.agent, event("deal", deal(7)), event("deal", deal(7))) == 1
    assert await reported(client, trader.agent, event("deal", deal(7)), event("deal", deal(8))) == 1


@pytest.mark.parametrize(
    ("events", "index", "loc"),
    [
        ([event("position_opened", position(1, volume=-1))], 0, ["data", "volume"]),
        (
            [event("deal", deal()), event("deal", {**deal(), "reason": "magic"})],
            1,
            ["data", "reason"],
        ),
        ([event("order", {"order_id": "x"})], 0, ["kind"]),
        ([event("agent", {"status": "online", "terminal_connected": True})], 0, ["kind"]),
        ([{"kind": "account", "data": account()}], 0, ["at"]),
        ([event("account", account(), at="yesterday")], 0, ["at"]),
        ([event("account", account(margin_available=False))], 0, ["data", "margin_available"]),
        ([event("deal", deal(ticket="7"))], 0, ["data", "ticket"]),
        ([], None, ["events"]),
        ([event("deal", deal(n)) for n in range(501)], None, ["events"]),
    ],
)
async def test_a_malformed_batch_is_refused_whole_and_nothing_is_stored(
    api: RunningApi,
    client: httpx.AsyncClient,
    trader: Trader,
    events: list[dict[str, Any]],
    index: int | None,
    loc: list[str],
) -> None:
    async with connect_account(api, trader.user.token) as ws:
        last = (await recv_snapshot(ws))["last_event_id"]
    response = await report(client, trader.agent, *events)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"] == "invalid_events"
    assert isinstance(body["message"], str)
    assert [(e["index"], e["loc"][: len(loc)]) for e in body["errors"]] == [(index, loc)]
    async with connect_account(api, trader.user.token) as ws:
        assert (await recv_snapshot(ws))["last_event_id"] == last


async def test_a_body_that_is_not_json_is_invalid_events(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    response = await client.post(
        trader.agent.path("events"),
        content=b"{not json",
        headers={**trader.agent.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"] == "invalid_events"


async def test_an_agent_cannot_report_for_another_connection(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    other = await onboard_trader(client)
    response = await client.post(
        other.agent.path("events"),
        json={"events": [event("position_opened", position(1))]},
        headers=trader.agent.headers,  # its own token, another agent's id
    )
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid_agent_token"
    async with connect_account(api, other.user.token) as ws:
        assert (await recv_snapshot(ws))["positions"] is None


# -- the socket's rules ---------------------------------------------------------------------


async def test_ping_gets_pong_and_a_malformed_message_an_error_on_a_socket_that_stays_open(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    async with connect_account(api, trader.user.token) as ws:
        await recv_snapshot(ws)
        for bad, detail in (
            ("not json", "invalid_json"),
            ('{"type": "subscribe"}', "unknown_message_type"),
            ("[1]", "unknown_message_type"),
        ):
            await ws.send(bad)
            answer = await recv_json(ws)
            assert answer["type"] == "error"
            assert answer["detail"] == detail
        await ws.send(b"\x00binary")
        assert (await recv_json(ws))["detail"] == "invalid_message"
        await ping(ws)
        await reported(client, trader.agent, event("deal", deal(1)))
        (message,) = [await recv_json(ws)]
    assert message["seq"] == 1  # errors and pongs are outside the sequence


async def test_bad_credentials_close_with_4001(api: RunningApi, client: httpx.AsyncClient) -> None:
    for token in (None, "nonsense", "mt5g_unknownkey"):
        async with connect_account(api, token) as ws:
            assert await close_code(ws) == 4001


async def test_a_user_not_onboarded_is_closed_with_4003(
    api: RunningApi, client: httpx.AsyncClient
) -> None:
    user = await register_user(client)
    await add_connection(client, user)
    async with connect_account(api, user.token) as ws:
        assert await close_code(ws) == 4003


async def test_another_users_connection_is_closed_with_4004(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    other = await onboard_trader(client)
    for connection in (other.connection_id, "not-a-uuid"):
        async with connect_account(api, trader.user.token, broker_connection_id=connection) as ws:
            assert await close_code(ws) == 4004


async def test_a_named_connection_streams_that_connection(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    second = await add_connection(client, trader.user, login=777)
    agent = await provision_agent(client, trader.user, second)
    await reported(client, agent, state([position(9)]))
    async with connect_account(api, trader.user.token, broker_connection_id=second) as ws:
        snapshot = await recv_snapshot(ws)
    assert snapshot["positions"] == [position(9)]
    async with connect_account(api, trader.user.token) as ws:  # the oldest: the first one
        assert (await recv_snapshot(ws))["positions"] is None  # its agent reported nothing


async def test_past_the_socket_limit_a_socket_is_closed_with_1008(store: Store) -> None:
    async with serve(store, ws_max_account_sockets_per_user=2) as api:
        async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as client:
            trader = await onboard_trader(client)
            async with (
                connect_account(api, trader.user.token) as first,
                connect_account(api, trader.user.token) as second,
            ):
                await recv_snapshot(first)
                await recv_snapshot(second)
                async with connect_account(api, trader.user.token) as third:
                    assert await close_code(third) == 1008
            async with connect_account(api, trader.user.token) as again:  # room again
                await recv_snapshot(again)


async def test_an_api_key_in_the_header_streams_the_account(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    response = await client.post(
        "/api-keys", json={"name": "bot", "scopes": ["read"]}, headers=trader.headers
    )
    key = response.json()["key"]
    async with connect_account(api, None, headers={"Authorization": f"Bearer {key}"}) as ws:
        await recv_snapshot(ws)
        await reported(client, trader.agent, event("deal", deal(1)))
        await recv_events(ws, 1)


async def test_two_sockets_get_the_same_sequence(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    async with (
        connect_account(api, trader.user.token) as first,
        connect_account(api, trader.user.token) as second,
    ):
        await recv_snapshot(first)
        await recv_snapshot(second)
        batches = [[event("deal", deal(n * 10 + i)) for i in range(5)] for n in range(4)]
        await asyncio.gather(*(reported(client, trader.agent, *batch) for batch in batches))
        one = await recv_events(first, 20)
        two = await recv_events(second, 20)
    assert one == two
    ids = [e["id"] for e in one]
    assert ids == list(range(ids[0], ids[0] + 20))
