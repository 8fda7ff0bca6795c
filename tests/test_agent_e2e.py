"""The real agent process (`mt5gate agent --backend sim`) against a real `mt5gate serve`.

Each test runs both as separate processes, onboards a user over HTTP and trades through
the REST API, on SQLite + memory:// and on PostgreSQL + Redis. Tests await the agent's
log lines (``event=agent_online``, ``event=job_done``, ...) rather than sleeping.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.core.db import create_engine
from app.models import Job
from tests.agent_process import AgentProcess, start_agent
from tests.conftest import make_settings
from tests.flows import AgentHandle, Trader, onboard_trader, provision_agent
from tests.servers import ServeProcess, start_serve
from tests.stores import Store, reset_store

EURUSD_CONTRACT_SIZE = 100_000
SIM_LEVERAGE = 100
SIM_BALANCE = 10_000.0
BUY = {"symbol": "EURUSD", "side": "buy", "volume": 0.1}
# Long enough to send a signal while the job is in hand, short of the 10 s an order waits.
SLOW_EXECUTION_MS = 2_000


@dataclass
class Launcher:
    """Starts `mt5gate serve` and `mt5gate agent` processes and stops them all at the end,
    agents first (so no long poll holds a server's shutdown)."""

    store: Store
    directory: Path
    serves: list[ServeProcess] = field(default_factory=list)
    agents: list[AgentProcess] = field(default_factory=list)

    async def serve(self, *, port: int | None = None, **overrides: Any) -> ServeProcess:
        settings = make_settings(self.store, **overrides)
        log_path = self.directory / f"serve-{len(self.serves) + 1}.log"
        serve = await asyncio.to_thread(
            start_serve, settings, log_path, cwd=self.directory, port=port
        )
        self.serves.append(serve)
        return serve

    async def agent(
        self, serve: ServeProcess, trader: Trader, *args: str, token_in_env: bool = False
    ) -> AgentProcess:
        """An agent for ``trader``'s connection, once it is online."""
        agent = await self.start_agent(serve, trader.agent, *args, token_in_env=token_in_env)
        await agent.wait_for_line("event=agent_online", timeout=20)
        return agent

    async def start_agent(
        self, serve: ServeProcess, handle: AgentHandle, *args: str, token_in_env: bool = False
    ) -> AgentProcess:
        """An agent process with that id and token, just started."""
        log_path = self.directory / f"agent-{len(self.agents) + 1}.log"
        agent = await start_agent(
            serve.base_url, handle, log_path, *args, cwd=self.directory, token_in_env=token_in_env
        )
        self.agents.append(agent)
        return agent

    async def close(self) -> None:
        for agent in reversed(self.agents):
            await agent.stop()
        for serve in reversed(self.serves):
            await asyncio.to_thread(serve.stop)


@pytest.fixture
async def launch(store: Store, tmp_path: Path) -> AsyncIterator[Launcher]:
    await reset_store(store)
    launcher = Launcher(store, tmp_path)
    try:
        yield launcher
    finally:
        await launcher.close()


def api_client(serve: ServeProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"{serve.base_url}/api/v1", timeout=30)


@dataclass
class TraderWithAgent:
    """A running API, an onboarded trader on it and their running sim agent."""

    serve: ServeProcess
    client: httpx.AsyncClient
    trader: Trader
    agent: AgentProcess

    async def place(self, order: dict[str, Any] = BUY) -> dict[str, Any]:
        response = await self.client.post("/orders", json=order, headers=self.trader.headers)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params=params, headers=self.trader.headers)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
async def trading(launch: Launcher) -> AsyncIterator[TraderWithAgent]:
    serve = await launch.serve()
    async with api_client(serve) as client:
        trader = await onboard_trader(client, with_heartbeat=False)
        agent = await launch.agent(serve, trader)
        yield TraderWithAgent(serve, client, trader, agent)


def job_done_line(job_id: str) -> str:
    return f"event=job_done job_id={job_id} "


async def wait_until_claimed(store: Store, agent_id: str, job_type: str) -> None:
    """Waits until the agent has claimed a job of ``job_type`` (its row says ``running``):
    no HTTP call tells a claimed job from a queued one, the shared store does."""
    engine = create_engine(store.database_url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    query = select(Job.status).where(Job.agent_id == uuid.UUID(agent_id), Job.job_type == job_type)
    try:
        while loop.time() < deadline:
            async with engine.connect() as conn:
                statuses = list(await conn.scalars(query))
            if "running" in statuses:
                return
            assert not statuses or statuses == ["pending"], statuses
            await asyncio.sleep(0.02)
    finally:
        await engine.dispose()
    raise AssertionError(f"no {job_type} job was claimed by agent {agent_id} within 10 s")


# -- trading through the agent ------------------------------------------------------------


async def test_an_order_is_filled_by_the_sim_agent_and_appears_in_positions(
    trading: TraderWithAgent,
) -> None:
    order = await trading.place()
    assert order["status"] == "filled"
    assert (order["symbol"], order["side"], order["volume"]) == ("EURUSD", "buy", 0.1)
    assert order["fill_price"] > 0
    assert isinstance(order["ticket"], int)
    assert order["filled_at"] is not None
    # The agent logs the job once the API took its result, so maybe after this response.
    done = await trading.agent.wait_for_line(job_done_line(order["order_id"]))
    assert "job_type=trade outcome=completed" in trading.agent.lines[done]

    positions = await trading.get("/positions")
    assert [p["position_id"] for p in positions] == [order["ticket"]]
    position = positions[0]
    assert (position["symbol"], position["side"], position["volume"]) == ("EURUSD", "buy", 0.1)
    assert position["open_price"] == order["fill_price"]
    assert position["current_price"] > 0


async def test_account_shows_the_margin_the_position_uses(trading: TraderWithAgent) -> None:
    before = await trading.get("/account")
    assert before == {
        "balance": SIM_BALANCE,
        "equity": SIM_BALANCE,
        "margin_used": 0.0,
        "margin_available": SIM_BALANCE,
        "currency": "USD",
        "leverage": SIM_LEVERAGE,
    }

    order = await trading.place()
    account = await trading.get("/account")
    [position] = await trading.get("/positions")

    # Margin is taken at the current rate: within a second of the fill that is the fill
    # price give or take a few pips (0.05 % is 5 pips, about 5 cents here).
    expected_margin = 0.1 * EURUSD_CONTRACT_SIZE * order["fill_price"] / SIM_LEVERAGE
    assert account["margin_used"] == pytest.approx(expected_margin, rel=5e-4)
    assert account["balance"] == SIM_BALANCE
    # Floating profit moves by 1 USD per pip on 0.1 lot between the two calls; a pip of
    # slack covers a re-drawn spread.
    assert account["equity"] == pytest.approx(account["balance"] + position["profit"], abs=1.0)
    assert account["margin_available"] == pytest.approx(
        account["equity"] - account["margin_used"], abs=0.011
    )


async def test_closing_a_position_returns_the_pnl_the_simulator_computed(
    trading: TraderWithAgent,
) -> None:
    order = await trading.place()
    balance_before = (await trading.get("/account"))["balance"]

    response = await trading.client.delete(
        f"/positions/{order['ticket']}", headers=trading.trader.headers
    )
    assert response.status_code == 200, response.text
    closed = response.json()
    assert closed["position_id"] == order["ticket"]
    assert closed["volume"] == 0.1
    # A buy closes at the bid: (close − open) × lots × contract size, to the cent.
    expected_pnl = (closed["closed_price"] - order["fill_price"]) * 0.1 * EURUSD_CONTRACT_SIZE
    assert closed["pnl"] == pytest.approx(expected_pnl, abs=0.006)
    assert closed["closed_at"] is not None

    assert await trading.get("/positions") == []
    account = await trading.get("/account")
    assert account["balance"] == pytest.approx(balance_before + closed["pnl"], abs=0.001)
    assert account["equity"] == account["balance"]
    assert account["margin_used"] == 0.0


async def test_a_pending_order_lives_at_the_sim_agent_process(trading: TraderWithAgent) -> None:
    # Far under the market: it rests there while the test lists, modifies and cancels it.
    (eurusd,) = [s for s in await trading.get("/symbols") if s["name"] == "EURUSD"]
    assert eurusd["stops_level"] == 10
    order = await trading.place({**BUY, "type": "limit", "price": 0.9, "sl": 0.8})
    assert (order["status"], order["type"]) == ("placed", "limit")
    (resting,) = await trading.get("/pending-orders")
    assert (resting["ticket"], resting["order_id"], resting["sl"]) == (
        order["ticket"],
        order["order_id"],
        0.8,
    )
    headers = trading.trader.headers
    response = await trading.client.patch(
        f"/pending-orders/{order['ticket']}", json={"price": 0.95}, headers=headers
    )
    assert response.status_code == 200, response.text
    response = await trading.client.delete(f"/pending-orders/{order['ticket']}", headers=headers)
    assert response.status_code == 200, response.text
    assert await trading.get("/pending-orders") == []
    assert (await trading.get(f"/orders/{order['order_id']}"))["status"] == "cancelled"
    (record,) = await trading.get("/history/orders")
    assert (record["ticket"], record["state"], record["price"]) == (
        order["ticket"],
        "cancelled",
        0.95,
    )


async def test_candles_are_sane(trading: TraderWithAgent) -> None:
    response = await trading.client.get(
        "/candles/EURUSD",
        params={"timeframe": "M1", "count": 50, "source": "account"},
        headers=trading.trader.headers,
    )
    assert response.status_code == 200, response.text
    candles = response.json()
    assert len(candles) == 50
    times = [candle["time"] for candle in candles]
    assert all(isinstance(t, int) and t % 60 == 0 for t in times), times
    assert all(later > earlier for earlier, later in zip(times, times[1:], strict=False)), times
    for candle in candles:
        assert candle["high"] >= max(candle["open"], candle["close"]), candle
        assert candle["low"] <= min(candle["open"], candle["close"]), candle
        assert candle["low"] > 0
        assert candle["volume"] >= 0
    # The last candle is the one forming now (by the server's clock).
    server_now = parsedate_to_datetime(response.headers["date"]).timestamp()
    assert 0 <= server_now - times[-1] < 120


# -- the agent's process life ---------------------------------------------------------------


async def test_the_agent_survives_the_api_restarting_and_picks_up_jobs_afterwards(
    launch: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent's long poll holds a stopping server for its whole graceful timeout (5 s by
    # default); a second keeps this test short.
    monkeypatch.setenv("SHUTDOWN_TIMEOUT_SECONDS", "1")
    first = await launch.serve()
    async with api_client(first) as client:
        trader = await onboard_trader(client, with_heartbeat=False)
    agent = await launch.agent(first, trader)
    await agent.wait_for_line("event=link_opened")

    mark = agent.mark()
    await asyncio.to_thread(first.stop)
    await agent.wait_for_line("event=link_closed", start=mark)  # the agent's link (default)
    port = int(first.base_url.rsplit(":", 1)[1])
    second = await launch.serve(port=port)

    # The order goes once the agent is back on its link (its backoff is at most 10 s), at
    # the second server: while the first drained, the agent's quick retry may have opened
    # a link there too (closed 1001 at once), so its own `link_opened` does not say which
    # server holds the link.
    await second.wait_for_log("event=agent_link_opened", timeout=20)
    async with api_client(second) as client:
        response = await client.post("/orders", json=BUY, headers=trader.headers)
        assert response.status_code in (201, 202), response.text
        order_id = response.json()["order_id"]
        order = await wait_for_order_status(client, trader, order_id, "filled", timeout=25)
        positions = await client.get("/positions", headers=trader.headers)
    assert [p["position_id"] for p in positions.json()] == [order["ticket"]]
    assert agent.process.returncode is None
    done = await agent.wait_for_line(job_done_line(order_id), start=mark)
    reconnected = agent.find("event=link_opened", start=mark)
    assert reconnected is not None, agent.tail()
    assert reconnected < done


async def test_an_expired_order_is_not_executed(launch: Launcher) -> None:
    # The call stops waiting well before the order's time to live ends: it answers 202.
    serve = await launch.serve(trade_job_ttl_seconds=2, trade_wait_seconds=0.2)
    async with api_client(serve) as client:
        # The agent has been seen (a heartbeat) but is not running when the order comes.
        trader = await onboard_trader(client)
        response = await client.post("/orders", json=BUY, headers=trader.headers)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "pending"
        order_id = response.json()["order_id"]
        order = await wait_for_order_status(client, trader, order_id, "expired")
        assert (order["fill_price"], order["ticket"]) == (None, None)

        agent = await launch.agent(serve, trader)
        positions = await client.get("/positions", headers=trader.headers)
        assert positions.status_code == 200, positions.text
        assert positions.json() == []
        order = (await client.get(f"/orders/{order_id}", headers=trader.headers)).json()
    assert order["status"] == "expired"
    # Jobs are handed out oldest first and run one at a time: by the time the positions
    # read is done, the agent has had every chance to take the expired order.
    await agent.wait_for_line("job_type=get_positions")
    assert agent.find("job_type=trade") is None, agent.tail()


async def test_sigterm_mid_job_finishes_that_job_then_exits_0(
    launch: Launcher, store: Store
) -> None:
    serve = await launch.serve()
    async with api_client(serve) as client:
        trader = await onboard_trader(client, with_heartbeat=False)
        agent = await launch.agent(serve, trader, "--sim-latency-ms", str(SLOW_EXECUTION_MS))
        placing = asyncio.create_task(client.post("/orders", json=BUY, headers=trader.headers))
        await wait_until_claimed(store, trader.agent.id, "trade")
        mark = agent.mark()
        agent.send_signal(signal.SIGTERM)

        assert await agent.wait_exit() == 0, agent.tail()
        response = await placing
        assert response.status_code == 201, response.text
        order_id = response.json()["order_id"]
        order = (await client.get(f"/orders/{order_id}", headers=trader.headers)).json()
    assert order["status"] == "filled"
    assert order["ticket"] is not None

    # The signal came while the job was in hand: "stopping" is logged before its result.
    stopping = agent.find("event=stopping", start=mark)
    done = agent.find(job_done_line(order_id), start=mark)
    assert stopping is not None, agent.tail()
    assert done is not None, agent.tail()
    assert stopping < done
    assert "outcome=completed" in agent.lines[done]
    # Posted over HTTP (yes), or sent on the link (sent: acknowledged before the link closes).
    assert "reported=yes" in agent.lines[done] or "reported=sent" in agent.lines[done]
    assert agent.find("event=agent_stopped", start=done) is not None


async def wait_for_order_status(
    client: httpx.AsyncClient, trader: Trader, order_id: str, status: str, *, timeout: float = 10
) -> dict[str, Any]:
    """Polls GET /orders/{id} (nothing to await over HTTP) until ``status``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        response = await client.get(f"/orders/{order_id}", headers=trader.headers)
        assert response.status_code == 200, response.text
        order: dict[str, Any] = response.json()
        if order["status"] == status:
            return order
        assert order["status"] == "pending", order
        assert loop.time() < deadline, f"order still {order['status']!r}, not {status!r}"
        await asyncio.sleep(0.1)


async def test_a_stopped_agent_signs_off_and_orders_are_refused_at_once(
    trading: TraderWithAgent,
) -> None:
    trading.agent.send_signal(signal.SIGTERM)
    assert await trading.agent.wait_exit() == 0, trading.agent.tail()
    connections = await trading.get("/broker-connections")
    assert connections[0]["agent"]["status"] == "offline"
    response = await trading.client.post("/orders", json=BUY, headers=trading.trader.headers)
    assert response.status_code == 503
    assert response.json()["detail"] == "agent_offline"


TOKEN_REFUSED_EXIT = 3


def assert_stopped_for_its_token(agent: AgentProcess, returncode: int) -> None:
    assert returncode == TOKEN_REFUSED_EXIT, agent.tail()
    refused = [line for line in agent.lines if "refused the agent token" in line]
    assert len(refused) == 1, agent.tail()
    assert "Provision a new one" in refused[0]
    assert "MT5GATE_AGENT_TOKEN" in refused[0]


async def test_an_agent_whose_token_is_rotated_stops_with_one_line_and_exit_3(
    launch: Launcher,
) -> None:
    serve = await launch.serve()
    async with api_client(serve) as client:
        trader = await onboard_trader(client, with_heartbeat=False)
        agent = await launch.agent(serve, trader, token_in_env=True)
        with open(f"/proc/{agent.process.pid}/cmdline", "rb") as cmdline:
            assert trader.agent.token.encode() not in cmdline.read()  # not in `ps`
        new = await provision_agent(client, trader.user, trader.connection_id)
        assert new.id == trader.agent.id
        # Its long-poll ends at once (the rotation), and the next call is refused.
        assert_stopped_for_its_token(agent, await agent.wait_exit(timeout=15))


async def test_an_agent_with_a_wrong_token_stops_at_once_instead_of_retrying(
    launch: Launcher,
) -> None:
    serve = await launch.serve()
    async with api_client(serve) as client:
        trader = await onboard_trader(client, with_heartbeat=False)
    wrong = AgentHandle(trader.agent.id, "mt5a_" + "not-the-token-" + uuid.uuid4().hex)
    agent = await launch.start_agent(serve, wrong, token_in_env=True)
    assert_stopped_for_its_token(agent, await agent.wait_exit(timeout=15))
    assert agent.find("event=connect_failed") is None, agent.tail()  # no retry
