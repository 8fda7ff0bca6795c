"""The account watcher's snapshots and differences, over the real simulator and the fake
MetaTrader5 module: which events a change at the broker becomes, in which order, and how
often."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
from agent_support import ManualClock

from mt5gate_agent.backends import Backend, BackendWorker
from mt5gate_agent.backends.base import iso_utc
from mt5gate_agent.backends.mt5 import Mt5Backend
from mt5gate_agent.backends.sim import DEFAULT_SYMBOLS, SimBackend
from mt5gate_agent.client import AgentClient
from mt5gate_agent.runner import Backoff
from mt5gate_agent.watch import CLOSE_GRACE_SECONDS, AccountWatcher, EventSender, JobGate

Event = dict[str, Any]
EURUSD = DEFAULT_SYMBOLS[0]


class Watch:
    """A watcher over ``backend`` whose looks a test takes one by one (the outbox is not
    posted: what a look reports is what it returns)."""

    def __init__(self, backend: Backend, clock: ManualClock, last_deal_ticket: int | None):
        self.backend = backend
        self.clock = clock
        self.worker = BackendWorker(backend)
        self.gate = JobGate()
        self.client = AgentClient("http://127.0.0.1:9", "agent", "token")
        self.sender = EventSender(
            self.client, backoff=lambda: Backoff(0.01, 0.05), on_refused_token=lambda _: False
        )
        self.watcher = AccountWatcher(
            self.worker,
            self.sender,
            self.gate,
            interval=0.25,
            server_clock=clock,
            last_deal_ticket=lambda: last_deal_ticket,
        )

    async def look(self, after: float = 0.0) -> list[Event]:
        """The events of a look ``after`` seconds later."""
        self.clock.advance(after)
        return await self.watcher.look(self.clock())

    async def close(self) -> None:
        await self.client.aclose()
        await self.worker.aclose(close_backend=False)


def kinds(events: list[Event]) -> list[str]:
    return [e["kind"] for e in events]


def only(events: list[Event], kind: str) -> dict[str, Any]:
    found = [e["data"] for e in events if e["kind"] == kind]
    assert len(found) == 1, kinds(events)
    return found[0]


@pytest.fixture
async def watch_over() -> AsyncIterator[Callable[..., Watch]]:
    made: list[Watch] = []

    def make(backend: Backend, clock: ManualClock, last_deal_ticket: int | None = None) -> Watch:
        watch = Watch(backend, clock, last_deal_ticket)
        made.append(watch)
        return watch

    yield make
    for watch in made:
        await watch.close()


@pytest.fixture
def eurusd(clock: ManualClock) -> SimBackend:
    """EURUSD only, so that no other symbol's ticks move the account between looks."""
    return SimBackend(seed=5, clock=clock, symbols=[replace(EURUSD, mean_tick_interval=1e9)])


@pytest.fixture
async def sim_watch(
    eurusd: SimBackend, clock: ManualClock, watch_over: Callable[..., Watch]
) -> Watch:
    watch = watch_over(eurusd, clock)
    assert kinds(await watch.look()) == ["state"]
    return watch


def buy(sim: SimBackend, volume: float = 0.1, **fields: Any) -> int:
    body = {"symbol": "EURUSD", "side": "buy", "volume": volume, "sl": None, "tp": None}
    ticket: int = sim.execute("trade", body | fields)["ticket"]
    return ticket


def move(sim: SimBackend, points: int) -> None:
    bid, ask = sim.quote("EURUSD")
    sim.set_quote("EURUSD", round(bid + points * 1e-5, 5), round(ask + points * 1e-5, 5))


# -- state first -------------------------------------------------------------------------------


async def test_the_first_look_reports_the_whole_state_and_nothing_else(
    eurusd: SimBackend, clock: ManualClock, watch_over: Callable[..., Watch]
) -> None:
    position = buy(eurusd)
    bid, _ = eurusd.quote("EURUSD")
    eurusd.execute(
        "place_pending_order",
        {"symbol": "EURUSD", "side": "buy", "volume": 0.1, "type": "limit", "price": bid - 0.01},
    )
    watch = watch_over(eurusd, clock)
    events = await watch.look()
    assert kinds(events) == ["state"]
    state = events[0]["data"]
    assert [p["position_id"] for p in state["positions"]] == [position]
    assert [o["order_id"] for o in state["pending_orders"]] == [None]
    assert state["account"] == eurusd.execute("get_account", {})
    assert await watch.look(0.25) == []


async def test_when_a_state_is_wanted_the_next_look_is_a_state_again(sim_watch: Watch) -> None:
    sim_watch.sender.state_wanted = True
    assert kinds(await sim_watch.look(0.25)) == ["state"]
    assert not sim_watch.sender.state_wanted


# -- positions ---------------------------------------------------------------------------------


async def test_a_fill_is_position_opened_then_its_deal(
    sim_watch: Watch, eurusd: SimBackend
) -> None:
    ticket = buy(eurusd)
    events = await sim_watch.look(0.25)
    assert kinds(events) == ["position_opened", "deal"]
    assert events[0]["data"] == eurusd.execute("get_positions", {})["positions"][0]
    deal = events[1]["data"]
    assert (deal["position_id"], deal["entry"], deal["reason"]) == (ticket, "in", "mt5gate")


async def test_a_close_through_mt5gate_is_position_closed_with_the_deals_figures(
    sim_watch: Watch, eurusd: SimBackend
) -> None:
    ticket = buy(eurusd, 0.2)
    await sim_watch.look(0.25)
    closed = eurusd.execute("close_position", {"ticket": ticket})
    events = await sim_watch.look(0.25)
    assert kinds(events) == ["position_closed", "deal"]
    assert events[0]["data"] == {
        "position_id": ticket,
        "symbol": "EURUSD",
        "volume": 0.2,
        "closed_price": closed["closed_price"],
        "pnl": closed["pnl"],
        "reason": "mt5gate",
        "closed_at": closed["closed_at"],
    }


async def test_a_partial_close_is_position_changed_and_the_rest_closes_later(
    sim_watch: Watch, eurusd: SimBackend
) -> None:
    ticket = buy(eurusd, 0.3)
    await sim_watch.look(0.25)
    eurusd.execute("close_position", {"ticket": ticket, "volume": 0.1})
    events = await sim_watch.look(0.25)
    assert kinds(events) == ["position_changed", "deal"]
    assert events[0]["data"]["volume"] == 0.2
    eurusd.execute("close_position", {"ticket": ticket})
    events = await sim_watch.look(0.25)
    assert kinds(events) == ["position_closed", "deal"]
    assert events[0]["data"]["volume"] == 0.2


@pytest.mark.parametrize(("points", "reason"), [(-300, "sl"), (300, "tp")])
async def test_a_stop_hit_at_the_broker_is_position_closed_with_its_reason(
    sim_watch: Watch, eurusd: SimBackend, points: int, reason: str
) -> None:
    bid, ask = eurusd.quote("EURUSD")
    ticket = buy(eurusd, sl=round(bid - 0.002, 5), tp=round(bid + 0.002, 5))
    await sim_watch.look(0.25)
    move(eurusd, points)
    assert ticket not in eurusd.positions
    events = await sim_watch.look(0.25)
    assert kinds(events)[:2] == ["position_closed", "deal"]
    closed = events[0]["data"]
    assert (closed["position_id"], closed["reason"]) == (ticket, reason)
    assert events[1]["data"]["reason"] == reason


async def test_a_stop_out_closes_the_most_losing_position_first_reason_stop_out(
    clock: ManualClock, watch_over: Callable[..., Watch]
) -> None:
    sim = SimBackend(
        seed=5,
        clock=clock,
        balance=1_000.0,
        symbols=[replace(EURUSD, mean_tick_interval=1e9)],
    )
    watch = watch_over(sim, clock)
    first = buy(sim, 0.5)
    second = buy(sim, 0.3)  # margin ≈ 868 of 1,000 equity
    await watch.look()
    move(sim, -150)  # equity ≈ 1,000 - 0.8 × 150 ≈ 880 > 50 % of margin: nothing yet
    assert set(sim.positions) == {first, second}
    # ~850 points down: equity ≈ 320 < 50 % of 868, so the 0.5 lot buy (the biggest loss)
    # goes; with the 0.3 lot's margin alone (≈ 325) the level is back above 50 %.
    move(sim, -700)
    assert set(sim.positions) == {second}
    level = sim.margin_level()
    assert level is not None
    assert level >= sim.stop_out_level
    events = await watch.look(1.0)
    closed = only(events, "position_closed")
    assert (closed["position_id"], closed["reason"]) == (first, "stop_out")
    assert only(events, "deal")["reason"] == "stop_out"
    assert only(events, "position_changed")["position_id"] == second
    assert kinds(events)[-1] == "account"


async def test_an_sl_change_is_position_changed_at_once(
    sim_watch: Watch, eurusd: SimBackend
) -> None:
    ticket = buy(eurusd)
    await sim_watch.look(0.25)
    bid, _ = eurusd.quote("EURUSD")
    eurusd.execute("modify_position", {"ticket": ticket, "sl": round(bid - 0.003, 5)})
    events = await sim_watch.look(0.01)
    assert kinds(events) == ["position_changed"]
    assert events[0]["data"]["sl"] == round(bid - 0.003, 5)


async def test_profit_alone_and_the_account_are_reported_once_a_second_with_the_latest(
    sim_watch: Watch, eurusd: SimBackend
) -> None:
    ticket = buy(eurusd)  # a quarter second after the state (and its account)
    assert kinds(await sim_watch.look(0.25)) == ["position_opened", "deal"]
    for step in range(1, 9):  # two seconds of looks, the market moving at each
        move(eurusd, 5)
        events = await sim_watch.look(0.25)
        expected = []
        if step in (4, 8):  # a second since the open, then since the last report
            expected.append("position_changed")
            assert events[0]["data"] == eurusd.execute("get_positions", {})["positions"][0]
            assert events[0]["data"]["position_id"] == ticket
        if step in (3, 7):  # a second since the state, then since the last report
            expected.append("account")
            assert events[-1]["data"] == eurusd.execute("get_account", {})
        assert kinds(events) == expected, step


# -- pending orders ----------------------------------------------------------------------------


def place(sim: SimBackend, kind: str, price: float, **fields: Any) -> int:
    body = {"symbol": "EURUSD", "side": "buy", "volume": 0.1, "type": kind, "price": price}
    ticket: int = sim.execute("place_pending_order", body | fields)["ticket"]
    return ticket


async def test_a_pending_order_placed_changed_and_cancelled(
    sim_watch: Watch, eurusd: SimBackend
) -> None:
    bid, ask = eurusd.quote("EURUSD")
    ticket = place(eurusd, "limit", round(ask - 0.005, 5))
    events = await sim_watch.look(0.25)
    assert kinds(events) == ["pending_order_placed"]
    assert events[0]["data"]["ticket"] == ticket
    assert events[0]["data"]["order_id"] is None
    eurusd.execute("modify_pending_order", {"ticket": ticket, "price": round(ask - 0.006, 5)})
    events = await sim_watch.look(0.25)
    assert kinds(events) == ["pending_order_changed"]
    assert events[0]["data"]["price"] == round(ask - 0.006, 5)
    eurusd.execute("cancel_pending_order", {"ticket": ticket})
    events = await sim_watch.look(0.25)
    assert events == [
        {
            "kind": "pending_order_removed",
            "data": {"ticket": ticket, "reason": "cancelled"},
            "at": events[0]["at"],
        }
    ]


async def test_a_triggered_pending_order_is_removed_triggered_then_position_opened(
    sim_watch: Watch, eurusd: SimBackend
) -> None:
    _, ask = eurusd.quote("EURUSD")
    ticket = place(eurusd, "stop", round(ask + 0.001, 5))
    await sim_watch.look(0.25)
    move(eurusd, 200)
    events = await sim_watch.look(0.25)
    assert kinds(events) == ["pending_order_removed", "position_opened", "deal"]
    assert events[0]["data"] == {"ticket": ticket, "reason": "triggered"}
    assert events[1]["data"]["position_id"] == ticket


async def test_a_triggered_stop_limit_becomes_a_limit_under_the_same_ticket(
    sim_watch: Watch, eurusd: SimBackend
) -> None:
    _, ask = eurusd.quote("EURUSD")
    trigger = round(ask + 0.001, 5)
    ticket = place(eurusd, "stop_limit", trigger, stop_limit_price=round(trigger - 0.0005, 5))
    await sim_watch.look(0.25)
    move(eurusd, 105)  # past the trigger, above the limit: it rests as a limit
    events = await sim_watch.look(0.25)
    assert kinds(events) == ["pending_order_changed"]
    changed = events[0]["data"]
    assert (changed["ticket"], changed["type"], changed["price"]) == (
        ticket,
        "limit",
        round(trigger - 0.0005, 5),
    )


async def test_an_expired_pending_order_is_removed_expired(
    sim_watch: Watch, eurusd: SimBackend, clock: ManualClock
) -> None:
    _, ask = eurusd.quote("EURUSD")
    at = clock() + 60
    ticket = place(
        eurusd,
        "limit",
        round(ask - 0.005, 5),
        expiration={"type": "specified", "at": iso_utc(at)},
    )
    await sim_watch.look(0.25)
    events = await sim_watch.look(61)
    assert [e["data"] for e in events if e["kind"] == "pending_order_removed"] == [
        {"ticket": ticket, "reason": "expired"}
    ]


async def test_a_pending_order_the_broker_rejects_on_trigger_is_removed_rejected(
    clock: ManualClock, watch_over: Callable[..., Watch]
) -> None:
    sim = SimBackend(
        seed=5, clock=clock, balance=100.0, symbols=[replace(EURUSD, mean_tick_interval=1e9)]
    )
    watch = watch_over(sim, clock)
    _, ask = sim.quote("EURUSD")
    ticket = place(sim, "stop", round(ask + 0.001, 5), volume=1.0)  # margin ≈ 1,085 > 100
    await watch.look()
    move(sim, 200)
    events = await watch.look(0.25)
    assert [e["data"] for e in events if e["kind"] == "pending_order_removed"] == [
        {"ticket": ticket, "reason": "rejected"}
    ]


# -- deals -------------------------------------------------------------------------------------


async def test_deals_start_after_the_servers_last_deal_ticket_and_come_once_each(
    eurusd: SimBackend, clock: ManualClock, watch_over: Callable[..., Watch]
) -> None:
    first = buy(eurusd)
    eurusd.execute("close_position", {"ticket": first})
    deals = [d.ticket for d in eurusd.deals]  # the deposit, the open, the close
    watch = watch_over(eurusd, clock, last_deal_ticket=deals[1])
    events = await watch.look()
    assert kinds(events) == ["state", "deal"]
    assert events[1]["data"]["ticket"] == deals[2]
    buy(eurusd)
    later = await watch.look(0.25)
    assert [e["data"]["ticket"] for e in later if e["kind"] == "deal"] == [deals[2] + 1]
    assert await watch.look(0.25) == []


async def test_without_a_last_deal_ticket_the_deals_already_there_are_not_news(
    eurusd: SimBackend, clock: ManualClock, watch_over: Callable[..., Watch]
) -> None:
    buy(eurusd)
    watch = watch_over(eurusd, clock)
    assert kinds(await watch.look()) == ["state"]
    buy(eurusd)
    assert kinds(await watch.look(0.25)) == ["position_opened", "deal"]


# -- the MT5 terminal --------------------------------------------------------------------------


@pytest.fixture
async def mt5_watch(fake_mt5: Any, watch_over: Callable[..., Watch]) -> Watch:
    clock = ManualClock(fake_mt5.terminal.now)
    backend = Mt5Backend(module=fake_mt5, clock=clock)
    backend.login("Demo-Server", 12345678, "secret")
    watch = watch_over(backend, clock)
    assert kinds(await watch.look()) == ["state"]
    return watch


async def test_a_hand_trade_in_the_terminal_is_position_opened_and_a_client_deal(
    mt5_watch: Watch, fake_mt5: Any
) -> None:
    ticket = fake_mt5.hand_trade("EURUSD", "sell", 0.2)
    events = await mt5_watch.look(0.25)
    assert kinds(events) == ["position_opened", "deal"]
    opened = events[0]["data"]
    assert (opened["position_id"], opened["side"], opened["volume"]) == (ticket, "sell", 0.2)
    assert events[1]["data"]["reason"] == "client"


async def test_a_stop_loss_in_the_terminal_is_position_closed_reason_sl(
    mt5_watch: Watch, fake_mt5: Any
) -> None:
    ticket = mt5_watch.backend.execute(
        "trade", {"symbol": "EURUSD", "side": "buy", "volume": 0.1, "sl": 1.08, "tp": None}
    )["ticket"]
    await mt5_watch.look(0.25)
    fake_mt5.set_quote("EURUSD", 1.07990, 1.08000)
    fake_mt5.close_by_broker(ticket, fake_mt5.DEAL_REASON_SL)
    events = await mt5_watch.look(1.0)
    closed = only(events, "position_closed")
    assert (closed["position_id"], closed["reason"], closed["closed_price"]) == (
        ticket,
        "sl",
        1.0799,
    )
    assert only(events, "deal")["reason"] == "sl"


async def test_a_close_whose_deal_the_history_never_shows_is_reported_after_a_grace(
    mt5_watch: Watch, fake_mt5: Any
) -> None:
    ticket = fake_mt5.hand_trade("EURUSD")
    await mt5_watch.look(0.25)
    fake_mt5.terminal.history_visible = False
    fake_mt5.close_by_broker(ticket)
    assert "position_closed" not in kinds(await mt5_watch.look(0.25))
    events = await mt5_watch.look(CLOSE_GRACE_SECONDS)
    closed = only(events, "position_closed")
    assert (closed["position_id"], closed["reason"]) == (ticket, "other")


async def test_a_look_that_misses_an_open_position_closes_nothing(
    mt5_watch: Watch, fake_mt5: Any
) -> None:
    fake_mt5.hand_trade("EURUSD")
    await mt5_watch.look(1.0)
    # Some terminal builds answer None with "Success" for no positions: the backend reads
    # it as none, once; the position is back at the next look.
    fake_mt5.terminal.fail_next["positions_get"] = (1, "Success")
    assert await mt5_watch.look(0.25) == []
    assert await mt5_watch.look(CLOSE_GRACE_SECONDS) == []


async def test_a_profit_move_in_the_terminal_is_throttled_too(
    mt5_watch: Watch, fake_mt5: Any
) -> None:
    fake_mt5.hand_trade("EURUSD")
    await mt5_watch.look(1.0)
    fake_mt5.set_quote("EURUSD", 1.08600, 1.08610)
    assert await mt5_watch.look(0.5) == []
    events = await mt5_watch.look(0.5)
    assert kinds(events) == ["position_changed", "account"]
    assert events[0]["data"]["current_price"] == 1.086


# -- jobs go first -----------------------------------------------------------------------------


async def test_a_job_in_hand_runs_before_the_next_snapshot_step(
    sim_watch: Watch, eurusd: SimBackend
) -> None:
    with sim_watch.gate.job():
        look = asyncio.create_task(sim_watch.look(0.25))
        await asyncio.sleep(0)  # the look is under way, waiting for the job in hand
        ticket = await sim_watch.worker.call(
            eurusd.execute,
            "trade",
            {"symbol": "EURUSD", "side": "buy", "volume": 0.1, "sl": None, "tp": None},
        )
    events = await look
    # Had the look's first step (the deals) run before the job, the deal would be missing.
    assert kinds(events) == ["position_opened", "deal"]
    assert events[1]["data"]["position_id"] == ticket["ticket"]
