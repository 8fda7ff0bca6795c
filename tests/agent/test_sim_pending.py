"""The simulator's pending orders: MT5's trigger rules, stops and freeze levels, expiry,
and the deals and history orders they leave."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from agent_support import START, ManualClock
from hypothesis import given, settings
from hypothesis import strategies as st

from mt5gate_agent.backends.base import BrokerError
from mt5gate_agent.backends.sim import DEFAULT_SYMBOLS, SimBackend

POINT = 0.00001
EURUSD = DEFAULT_SYMBOLS[0]
EVER = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "limit": 1000}


def eurusd_only(**changes: Any) -> SimBackend:
    return SimBackend(seed=3, clock=ManualClock(), symbols=[replace(EURUSD, **changes)])


def place(sim: SimBackend, kind: str, side: str, price: float, **fields: Any) -> int:
    body = {"symbol": "EURUSD", "side": side, "volume": 0.1, "type": kind, "price": price}
    ticket: int = sim.execute("place_pending_order", {**body, **fields})["ticket"]
    return ticket


def refused(call: Any) -> BrokerError:
    with pytest.raises(BrokerError) as caught:
        call()
    return caught.value


def resting_side(kind: str, side: str) -> int:
    """-1 when the order rests below the price it watches, +1 above."""
    below = (kind == "limit") == (side == "buy")
    return -1 if below else 1


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["limit", "stop"]),
    side=st.sampled_from(["buy", "sell"]),
    distance=st.integers(min_value=10, max_value=200),
    path=st.lists(
        st.tuples(
            st.integers(min_value=-400, max_value=400), st.integers(min_value=1, max_value=30)
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_a_pending_order_fills_on_the_first_tick_at_or_beyond_its_price_at_that_tick(
    kind: str, side: str, distance: int, path: list[tuple[int, int]]
) -> None:
    # A buy stop never fills below its price, a buy limit never above, and so on, whatever
    # the path: it fills on the first tick whose price (ask for a buy, bid for a sell)
    # reaches it, at that tick's price, and not before.
    sim = eurusd_only()
    bid, ask = sim.quote("EURUSD")
    reference = ask if side == "buy" else bid
    price = round(reference + resting_side(kind, side) * distance * POINT, 5)
    ticket = place(sim, kind, side, price)
    mid = (bid + ask) / 2
    for offset, spread in path:
        new_bid = round(mid + offset * POINT, 5)
        new_ask = round(new_bid + spread * POINT, 5)
        sim.set_quote("EURUSD", new_bid, new_ask)
        watched = new_ask if side == "buy" else new_bid
        reached = (watched <= price) if resting_side(kind, side) < 0 else (watched >= price)
        if reached:
            position = sim.positions[ticket]
            assert position.open_price == watched
            if (kind, side) in (("stop", "buy"), ("limit", "sell")):
                assert position.open_price >= price
            else:
                assert position.open_price <= price
            return
        assert ticket in sim.pending_orders
    assert sim.positions == {}


@settings(max_examples=40, deadline=None)
@given(
    path=st.lists(st.integers(min_value=-300, max_value=300), min_size=1, max_size=40),
)
def test_a_buy_stop_limit_becomes_a_limit_when_its_stop_triggers(path: list[int]) -> None:
    sim = eurusd_only()
    _, ask = sim.quote("EURUSD")
    trigger = round(ask + 50 * POINT, 5)
    limit = round(trigger - 30 * POINT, 5)
    ticket = place(sim, "stop_limit", "buy", trigger, stop_limit_price=limit)
    triggered = False
    for offset in path:
        new_ask = round(ask + offset * POINT, 5)
        sim.set_quote("EURUSD", round(new_ask - 5 * POINT, 5), new_ask)
        if not triggered and new_ask >= trigger:
            triggered = True
            order = sim.pending_orders[ticket]
            assert (order.type, order.price, order.stop_limit_price) == ("limit", limit, None)
            continue
        if triggered and new_ask <= limit:
            assert sim.positions[ticket].open_price == new_ask
            assert sim.positions[ticket].open_price <= limit
            return
        assert sim.positions == {}
        assert ticket in sim.pending_orders
        assert sim.pending_orders[ticket].type == ("limit" if triggered else "stop_limit")


@pytest.mark.parametrize(
    ("kind", "side"), [("limit", "buy"), ("limit", "sell"), ("stop", "buy"), ("stop", "sell")]
)
def test_a_price_on_the_wrong_side_or_inside_the_stops_level_is_invalid_price(
    kind: str, side: str
) -> None:
    sim = eurusd_only(stops_level=10)
    bid, ask = sim.quote("EURUSD")
    reference = ask if side == "buy" else bid
    direction = resting_side(kind, side)
    for points in (-20, 0, 9):
        price = round(reference + direction * points * POINT, 5)
        error = refused(lambda price=price: place(sim, kind, side, price))
        assert (error.code, error.retcode) == ("invalid_price", 10015)
    place(sim, kind, side, round(reference + direction * 10 * POINT, 5))


def test_stops_are_checked_against_the_pending_orders_own_price() -> None:
    sim = eurusd_only(stops_level=10)
    _, ask = sim.quote("EURUSD")
    price = round(ask - 0.0050, 5)
    error = refused(lambda: place(sim, "limit", "buy", price, sl=round(price + 0.0010, 5)))
    assert (error.code, error.retcode) == ("invalid_stops", 10016)
    # Below the market but above the order's own price: still the wrong side.
    error = refused(lambda: place(sim, "limit", "buy", price, sl=round(price - 5 * POINT, 5)))
    assert error.code == "invalid_stops"
    place(sim, "limit", "buy", price, sl=round(price - 10 * POINT, 5), tp=round(ask, 5))


def test_inside_the_freeze_level_an_order_can_be_neither_modified_nor_cancelled() -> None:
    sim = eurusd_only(stops_level=10, freeze_level=30)
    bid, ask = sim.quote("EURUSD")
    price = round(ask - 0.0020, 5)
    ticket = place(sim, "limit", "buy", price)
    # The ask comes within 30 points of the limit without reaching it.
    sim.set_quote("EURUSD", round(price + 12 * POINT, 5), round(price + 20 * POINT, 5))
    for job_type, extra in (("modify_pending_order", {"tp": 1.2}), ("cancel_pending_order", {})):
        error = refused(
            lambda job_type=job_type, extra=extra: sim.execute(
                job_type, {"ticket": ticket, **extra}
            )
        )
        assert (error.code, error.retcode) == ("frozen", 10029)
    sim.set_quote("EURUSD", bid, ask)
    sim.execute("cancel_pending_order", {"ticket": ticket})
    assert sim.pending_orders == {}


def test_a_day_order_expires_at_the_end_of_the_servers_day() -> None:
    clock = ManualClock()
    sim = SimBackend(seed=3, clock=clock, symbols=[EURUSD])
    _, ask = sim.quote("EURUSD")
    ticket = place(sim, "limit", "buy", round(ask - 0.01, 5), expiration={"type": "day"})
    midnight = (START // 86_400 + 1) * 86_400
    clock.now = midnight - 1
    sim.ticks(["EURUSD"])
    assert ticket in sim.pending_orders
    clock.now = midnight + 1
    sim.ticks(["EURUSD"])
    assert sim.pending_orders == {}
    (record,) = sim.execute("get_history", {"kind": "orders", **EVER})["orders"]
    assert (record["state"], record["done_at"]) == ("expired", "2025-11-25T00:00:00.000Z")


def test_a_specified_expiration_in_the_past_is_invalid_expiration() -> None:
    sim = eurusd_only()
    _, ask = sim.quote("EURUSD")
    error = refused(
        lambda: place(
            sim,
            "limit",
            "buy",
            round(ask - 0.01, 5),
            expiration={"type": "specified", "at": "2025-11-24T15:59:00Z"},
        )
    )
    assert (error.code, error.retcode) == ("invalid_expiration", 10022)


def test_an_unknown_ticket_is_pending_order_not_found() -> None:
    sim = eurusd_only()
    for job_type in ("modify_pending_order", "cancel_pending_order"):
        assert refused(
            lambda job_type=job_type: sim.execute(job_type, {"ticket": 5, "tp": 1.2})
        ).code == ("pending_order_not_found")


def test_a_stop_loss_hit_leaves_a_deal_and_an_order_with_reason_sl() -> None:
    sim = eurusd_only()
    bid, _ = sim.quote("EURUSD")
    opened = sim.execute(
        "trade", {"symbol": "EURUSD", "side": "buy", "volume": 0.1, "sl": round(bid - 0.002, 5)}
    )
    sim.set_quote("EURUSD", round(bid - 0.003, 5), round(bid - 0.0029, 5))
    deals = sim.execute("get_history", {"kind": "deals", **EVER})["deals"]
    closing, opening, deposit = deals
    assert (closing["reason"], closing["entry"], closing["side"], closing["type"]) == (
        "sl",
        "out",
        "sell",
        "sell",
    )
    assert closing["position_id"] == opening["position_id"] == opened["ticket"]
    assert (opening["reason"], opening["entry"]) == ("mt5gate", "in")
    assert (deposit["type"], deposit["symbol"], deposit["profit"]) == ("balance", None, 10_000.0)
    orders = sim.execute("get_history", {"kind": "orders", **EVER})["orders"]
    assert [o["reason"] for o in orders] == ["sl", "mt5gate"]


def test_history_is_filtered_by_time_symbol_position_and_before_newest_first() -> None:
    clock = ManualClock()
    sim = SimBackend(seed=3, clock=clock)
    tickets = []
    for symbol in ("EURUSD", "GBPUSD", "EURUSD"):
        clock.advance(60)
        tickets.append(
            sim.execute("trade", {"symbol": symbol, "side": "buy", "volume": 0.1})["ticket"]
        )

    def deals(**query: Any) -> list[int]:
        found = sim.execute("get_history", {"kind": "deals", **EVER, **query})["deals"]
        return [d["position_id"] for d in found]

    assert deals() == [*reversed(tickets), None]
    assert deals(symbol="EURUSD") == [tickets[2], tickets[0]]
    assert deals(position_id=tickets[1]) == [tickets[1]]
    assert deals(**{"from": "2025-11-24T16:01:30Z", "to": "2025-11-24T16:03:00Z"}) == [tickets[1]]
    assert deals(limit=2) == [tickets[2], tickets[1]]
    newest = sim.execute("get_history", {"kind": "deals", **EVER, "limit": 1})["deals"][0]
    assert deals(before=newest["ticket"], limit=1) == [tickets[1]]


def test_symbols_carry_their_specification_and_the_group_filter_applies() -> None:
    sim = SimBackend(seed=3, clock=ManualClock())
    (gold,) = sim.execute("get_symbols", {"symbol": "XAUUSD"})["symbols"]
    assert (gold["digits"], gold["contract_size"], gold["stops_level"], gold["freeze_level"]) == (
        2,
        100,
        50,
        20,
    )
    names = [s["name"] for s in sim.execute("get_symbols", {"group": "*USD*,!XAU*"})["symbols"]]
    assert names == ["EURUSD", "GBPUSD", "USDJPY", "USDCHF", "AUDUSD"]
    assert (
        refused(lambda: sim.execute("get_symbols", {"symbol": "NOPE"})).code == "symbol_not_found"
    )


def test_every_output_validates_against_the_servers_models() -> None:
    # The job protocol has one definition of each output, the server's; the simulator's
    # answers must fit it.
    from mt5gate_protocol.jobs import OUTPUT_MODELS

    sim = eurusd_only()
    _, ask = sim.quote("EURUSD")
    order = {"symbol": "EURUSD", "side": "buy", "volume": 0.1, "type": "stop_limit"}
    placed = sim.execute(
        "place_pending_order",
        {**order, "price": round(ask + 0.002, 5), "stop_limit_price": round(ask + 0.001, 5)},
    )
    ticket = placed["ticket"]
    outputs = {
        "get_pending_orders": sim.execute("get_pending_orders", {}),
        "modify_pending_order": sim.execute("modify_pending_order", {"ticket": ticket, "tp": 1.5}),
        "get_symbols": sim.execute("get_symbols", {}),
        "get_history": sim.execute("get_history", {"kind": "deals", **EVER}),
        "cancel_pending_order": sim.execute("cancel_pending_order", {"ticket": ticket}),
        "place_pending_order": placed,
    }
    for job_type, output in outputs.items():
        OUTPUT_MODELS[job_type].model_validate(output)


def test_an_unknown_job_type_is_unsupported_job_type() -> None:
    assert (
        refused(lambda: eurusd_only().execute("trailing_stop", {})).code == "unsupported_job_type"
    )


def test_pending_orders_trigger_on_the_random_walk() -> None:
    clock = ManualClock()
    sim = SimBackend(seed=5, clock=clock, symbols=[EURUSD])
    _, ask = sim.quote("EURUSD")
    limit_price, stop_price = round(ask - 12 * POINT, 5), round(ask + 12 * POINT, 5)
    below = place(sim, "limit", "buy", limit_price)
    above = place(sim, "stop", "buy", stop_price)
    for _ in range(20_000):
        clock.advance(0.5)
        sim.ticks(["EURUSD"])
        if len(sim.positions) == 2:
            break
    assert sim.pending_orders == {}
    assert sim.positions[below].open_price <= limit_price
    assert sim.positions[above].open_price >= stop_price
    filled = sim.execute("get_history", {"kind": "orders", **EVER})["orders"]
    assert sorted((o["ticket"], o["state"]) for o in filled) == [
        (below, "filled"),
        (above, "filled"),
    ]
