"""Account events for tests: contract-shaped reports, an agent that posts them, and a
client of `WS /ws/account`."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from tests.flows import AgentHandle
from tests.servers import RunningApi
from tests.ws_clients import RECV_TIMEOUT, recv_json

AT = "2026-12-01T19:00:00.000Z"


def position(position_id: int = 1001, **fields: Any) -> dict[str, Any]:
    return {
        "position_id": position_id,
        "symbol": "EURUSD",
        "side": "buy",
        "volume": 0.1,
        "open_price": 1.1,
        "current_price": 1.1,
        "sl": None,
        "tp": None,
        "profit": 0.0,
        "swap": 0.0,
        "opened_at": AT,
        **fields,
    }


def account(**fields: Any) -> dict[str, Any]:
    return {
        "balance": 10_000.0,
        "equity": 10_000.0,
        "margin_used": 0.0,
        "margin_available": 10_000.0,
        "currency": "USD",
        "leverage": 100,
        **fields,
    }


def pending_order(ticket: int = 2001, **fields: Any) -> dict[str, Any]:
    return {
        "ticket": ticket,
        "order_id": None,
        "symbol": "EURUSD",
        "side": "buy",
        "type": "limit",
        "volume": 0.1,
        "price": 1.05,
        "stop_limit_price": None,
        "sl": None,
        "tp": None,
        "expiration": {"type": "gtc", "at": None},
        "placed_at": AT,
        **fields,
    }


def deal(ticket: int = 3001, **fields: Any) -> dict[str, Any]:
    return {
        "ticket": ticket,
        "order_ticket": 4001,
        "position_id": 1001,
        "type": "buy",
        "symbol": "EURUSD",
        "side": "buy",
        "entry": "in",
        "volume": 0.1,
        "price": 1.1,
        "profit": 0.0,
        "commission": 0.0,
        "swap": 0.0,
        "fee": 0.0,
        "reason": "client",
        "time": AT,
        **fields,
    }


def closed(position_id: int = 1001, **fields: Any) -> dict[str, Any]:
    return {
        "position_id": position_id,
        "symbol": "EURUSD",
        "volume": 0.1,
        "closed_price": 1.2,
        "pnl": 100.0,
        "reason": "client",
        "closed_at": AT,
        **fields,
    }


def event(kind: str, data: dict[str, Any], at: str = AT) -> dict[str, Any]:
    return {"kind": kind, "data": data, "at": at}


def state(
    positions: list[dict[str, Any]] | None = None,
    pending_orders: list[dict[str, Any]] | None = None,
    **account_fields: Any,
) -> dict[str, Any]:
    return event(
        "state",
        {
            "account": account(**account_fields),
            "positions": positions or [],
            "pending_orders": pending_orders or [],
        },
    )


async def report(
    client: httpx.AsyncClient, agent: AgentHandle, *events: dict[str, Any]
) -> httpx.Response:
    return await client.post(
        agent.path("events"), json={"events": list(events)}, headers=agent.headers
    )


async def reported(client: httpx.AsyncClient, agent: AgentHandle, *events: dict[str, Any]) -> int:
    response = await report(client, agent, *events)
    assert response.status_code == 202, response.text
    accepted: int = response.json()["accepted"]
    return accepted


def account_url(
    api: RunningApi | str,
    token: str | None,
    *,
    since: int | None = None,
    broker_connection_id: str | None = None,
) -> str:
    base = api if isinstance(api, str) else api.ws_url
    query = {
        name: value
        for name, value in (
            ("token", token),
            ("since", since),
            ("broker_connection_id", broker_connection_id),
        )
        if value is not None
    }
    return f"{base}/ws/account" + (f"?{urlencode(query)}" if query else "")


def connect_account(api: RunningApi | str, token: str | None, **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", None)
    return websockets.connect(
        account_url(api, token, **kwargs),
        open_timeout=RECV_TIMEOUT,
        additional_headers=headers,
        max_size=2**22,
    )


async def recv_snapshot(ws: ClientConnection) -> dict[str, Any]:
    message = await recv_json(ws)
    assert message["type"] == "snapshot", message
    assert message["seq"] == 0
    data: dict[str, Any] = message["data"]
    return data


async def recv_events(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next `count` messages, which must be events; returns the events."""
    found = []
    for _ in range(count):
        message = await recv_json(ws)
        assert message["type"] == "event", message
        found.append(message)
    return [message["event"] for message in found]


async def ping(ws: ClientConnection) -> None:
    """A round trip: everything sent before the pong has been received once it arrives."""
    await ws.send(json.dumps({"type": "ping"}))
    assert await recv_json(ws) == {"type": "pong"}
