"""The account events stream end to end from the agent's side: the agent (``run_agent``,
its watcher at the default interval) on the simulator or the fake MT5 terminal, the real
API (in-process, over real TCP), and a client on a real ``WS /ws/account`` socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import websockets
from real_api import RealAgentApi
from websockets.asyncio.client import ClientConnection

from mt5gate_agent.backends import Backend
from mt5gate_agent.backends.mt5 import Mt5Backend
from mt5gate_agent.backends.sim import SimBackend
from mt5gate_agent.config import AgentConfig
from mt5gate_agent.runner import run_agent

# The server side of the events stream (branch events-server): these run once it is merged.

RECV_TIMEOUT = 10.0
Event = dict[str, Any]


class AccountStream:
    """A client's account socket: the events it received, awaited by what they say."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[Event] = []

    async def until(self, predicate: Callable[[Event], bool]) -> Event:
        """Reads until an event that ``predicate`` accepts (the ones before it are kept)."""
        async with asyncio.timeout(RECV_TIMEOUT):
            while True:
                message = json.loads(await self.ws.recv())
                if message["type"] != "event":
                    continue
                event: Event = message["event"]
                self.events.append(event)
                if predicate(event):
                    return event


def about(kind: str, position_id: int) -> Callable[[Event], bool]:
    return lambda e: e["kind"] == kind and e["data"].get("position_id") == position_id


@pytest.fixture
async def stream(api: RealAgentApi) -> AsyncIterator[AccountStream]:
    assert api.trader is not None
    url = api.url.replace("http://", "ws://", 1) + "/ws/account"
    async with websockets.connect(
        url, additional_headers=api.trader.headers, open_timeout=RECV_TIMEOUT
    ) as ws:
        async with asyncio.timeout(RECV_TIMEOUT):
            first = json.loads(await ws.recv())
        assert first["type"] == "snapshot"
        yield AccountStream(ws)


@pytest.fixture
async def trader_http(api: RealAgentApi) -> AsyncIterator[httpx.AsyncClient]:
    assert api.trader is not None
    async with httpx.AsyncClient(
        base_url=f"{api.url}/api/v1", headers=api.trader.headers, timeout=RECV_TIMEOUT
    ) as http:
        yield http


def reported(api: RealAgentApi, kind: str) -> list[Event]:
    """What the server took from the agent, of one kind."""
    return [e for batch in api.event_batches for e in batch if e["kind"] == kind]


class WatchingAgents:
    """Agents run on a backend, with the watcher at its default interval."""

    def __init__(self, api: RealAgentApi) -> None:
        self.api = api
        self.running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(self, backend: Backend) -> None:
        """Starts one and waits for its first report (the state), after which every change
        is an event."""
        api = self.api
        config = AgentConfig(api.url, api.agent_id, api.token, "sim", poll_wait=1)
        stop = asyncio.Event()
        states = len(reported(self.api, "state"))
        task = asyncio.create_task(run_agent(config, stop, backend=backend))
        self.running.append((stop, task))
        await self.api.wait_for(lambda: len(reported(self.api, "state")) > states)

    async def stop_all(self) -> None:
        for stop, task in self.running:
            stop.set()
            await asyncio.wait_for(task, 10)
        self.running.clear()


@pytest.fixture
async def agents(api: RealAgentApi) -> AsyncIterator[WatchingAgents]:
    running = WatchingAgents(api)
    yield running
    await running.stop_all()


@pytest.fixture
async def market_sim(agents: WatchingAgents) -> SimBackend:
    """The simulator, watched by a running agent."""
    sim = SimBackend(seed=21)
    await agents.start(sim)
    return sim


async def buy(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"symbol": "EURUSD", "side": "buy", "volume": 0.1, **fields}
    response = await http.post("/orders", json=body)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    assert order["status"] == "filled"
    return order


async def test_an_order_filled_is_order_then_position_opened_then_its_deal(
    market_sim: SimBackend, stream: AccountStream, trader_http: httpx.AsyncClient
) -> None:
    order = await buy(trader_http)
    position_id = order["position_id"]
    await stream.until(lambda e: e["kind"] == "deal" and e["data"]["position_id"] == position_id)
    mine = [
        e["kind"]
        for e in stream.events
        if e["data"].get("position_id") == position_id
        and (e["kind"] != "order" or e["data"]["status"] == "filled")
    ]
    assert mine == ["order", "position_opened", "deal"]


async def test_a_close_through_mt5gate_is_position_closed_with_reason_mt5gate(
    market_sim: SimBackend, stream: AccountStream, trader_http: httpx.AsyncClient
) -> None:
    # The contract's deal reasons: `mt5gate` for what our agent sent, `client` for a trade
    # by hand in the desktop terminal.
    position_id = (await buy(trader_http))["position_id"]
    await stream.until(about("position_opened", position_id))
    closed = await trader_http.delete(f"/positions/{position_id}")
    assert closed.status_code == 200, closed.text
    event = await stream.until(about("position_closed", position_id))
    assert event["data"]["reason"] == "mt5gate"
    assert event["data"]["pnl"] == closed.json()["pnl"]
    assert event["data"]["closed_price"] == closed.json()["closed_price"]


async def test_a_stop_loss_hit_on_the_simulator_is_position_closed_reason_sl(
    market_sim: SimBackend, stream: AccountStream, trader_http: httpx.AsyncClient
) -> None:
    bid, ask = market_sim.quote("EURUSD")
    sl = round(bid - 0.003, 5)
    position_id = (await buy(trader_http, sl=sl))["position_id"]
    await stream.until(about("position_opened", position_id))
    market_sim.set_quote("EURUSD", round(sl - 0.0001, 5), round(sl - 0.0001 + ask - bid, 5))
    event = await stream.until(about("position_closed", position_id))
    assert (event["data"]["reason"], event["data"]["symbol"]) == ("sl", "EURUSD")
    deal = await stream.until(about("deal", position_id))
    assert (deal["data"]["entry"], deal["data"]["reason"]) == ("out", "sl")


async def test_a_hand_trade_in_the_mt5_terminal_is_position_opened(
    agents: WatchingAgents, fake_mt5: Any, stream: AccountStream
) -> None:
    # The connection's credentials (tests/flows.py) are an account of the fake terminal.
    fake_mt5.terminal.accounts = {5001234: ("Demo-Server", "mt5-secret-pw")}
    await agents.start(Mt5Backend(module=fake_mt5, clock=lambda: fake_mt5.terminal.now))
    ticket = fake_mt5.hand_trade("EURUSD", "sell", 0.3)
    opened = await stream.until(about("position_opened", ticket))
    assert (opened["data"]["side"], opened["data"]["volume"]) == ("sell", 0.3)
    deal = await stream.until(about("deal", ticket))
    assert deal["data"]["reason"] == "client"


async def test_a_restarted_agent_reports_the_deals_it_missed_and_only_those(
    api: RealAgentApi, agents: WatchingAgents, stream: AccountStream, trader_http: httpx.AsyncClient
) -> None:
    sim = SimBackend(seed=22)
    await agents.start(sim)
    position_id = (await buy(trader_http))["position_id"]
    await stream.until(about("deal", position_id))
    await agents.stop_all()
    # While no agent watches, the broker closes the position (a deal the server lacks).
    sim.execute("close_position", {"ticket": position_id})
    missed = sim.deals[-1].ticket
    api.event_batches.clear()
    await agents.start(sim)
    deal = await stream.until(about("deal", position_id))
    assert deal["data"]["ticket"] == missed
    # Only the missed deal: the heartbeat's last_deal_ticket says where the server is.
    assert {e["data"]["ticket"] for e in reported(api, "deal")} == {missed}
