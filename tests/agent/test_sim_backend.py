"""The simulated broker: MT5's fills, money arithmetic, validation, stops and candles."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import pytest
from agent_support import START, ManualClock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mt5gate_agent.backends import BrokerError
from mt5gate_agent.backends.sim import DEFAULT_SYMBOLS, TIMEFRAME_SECONDS, SimBackend, SimDeal

SPECS = {spec.name: spec for spec in DEFAULT_SYMBOLS}
FX_USD_QUOTED = ["EURUSD", "GBPUSD", "AUDUSD"]
HYPOTHESIS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def trade(
    sim: SimBackend, symbol: str = "EURUSD", side: str = "buy", volume: float = 1.0, **extra: Any
) -> dict[str, Any]:
    return sim.execute(
        "trade",
        {
            "symbol": symbol,
            "side": side,
            "volume": volume,
            "sl": None,
            "tp": None,
            "client_order_id": None,
        }
        | extra,
    )


def broker_error(call: Any) -> BrokerError:
    with pytest.raises(BrokerError) as caught:
        call()
    return caught.value


def mid(sim: SimBackend, symbol: str) -> float:
    bid, ask = sim.quote(symbol)
    return (bid + ask) / 2


# -- the market ---------------------------------------------------------------------------


def test_quotes_have_the_symbol_digits_and_a_realistic_spread(
    sim: SimBackend, clock: ManualClock
) -> None:
    for _ in range(200):
        clock.advance(0.3)
        for name, tick in sim.ticks(list(SPECS)).items():
            spec = SPECS[name]
            assert tick["bid"] == round(tick["bid"], spec.digits)
            spread_points = round((tick["ask"] - tick["bid"]) / spec.point)
            assert spec.spread_points[0] - 1 <= spread_points <= spec.spread_points[1] + 1


def test_ticks_skip_unknown_symbols_and_carry_epoch_milliseconds(
    sim: SimBackend, clock: ManualClock
) -> None:
    clock.advance(5)
    ticks = sim.ticks(["EURUSD", "NOPE"])
    assert list(ticks) == ["EURUSD"]
    assert START * 1000 <= ticks["EURUSD"]["ts"] <= clock.now * 1000


def test_same_seed_and_clock_give_the_same_market_however_often_it_is_read() -> None:
    often_clock, once_clock = ManualClock(), ManualClock()
    often = SimBackend(seed=3, clock=often_clock)
    once = SimBackend(seed=3, clock=once_clock)
    for _ in range(240):
        often_clock.advance(0.25)
        often.ticks(["EURUSD"])
    once_clock.advance(60)
    assert often.ticks(["EURUSD", "XAUUSD"]) == once.ticks(["EURUSD", "XAUUSD"])


def test_the_market_moves(sim: SimBackend, clock: ManualClock) -> None:
    first = sim.quote("EURUSD")
    clock.advance(600)
    sim.ticks(["EURUSD"])
    assert sim.quote("EURUSD") != first


# -- fills ----------------------------------------------------------------------------------


def test_a_buy_fills_at_the_ask(sim: SimBackend) -> None:
    _, ask = sim.quote("EURUSD")
    fill = trade(sim, side="buy", volume=0.5)
    assert fill["fill_price"] == ask
    assert fill["volume"] == 0.5
    assert isinstance(fill["ticket"], int)
    assert fill["filled_at"].endswith("Z")
    datetime.fromisoformat(fill["filled_at"])


def test_a_sell_fills_at_the_bid(sim: SimBackend) -> None:
    bid, _ = sim.quote("USDJPY")
    assert trade(sim, "USDJPY", side="sell")["fill_price"] == bid


def test_a_position_has_the_contract_shape(sim: SimBackend) -> None:
    fill = trade(sim, side="sell", volume=0.3, sl=1.2, tp=1.0)
    (position,) = sim.execute("get_positions", {})["positions"]
    assert set(position) == {
        "position_id",
        "symbol",
        "side",
        "volume",
        "open_price",
        "current_price",
        "sl",
        "tp",
        "profit",
        "swap",
        "opened_at",
    }
    assert position["position_id"] == fill["ticket"]
    assert (position["side"], position["volume"], position["sl"], position["tp"]) == (
        "sell",
        0.3,
        1.2,
        1.0,
    )
    assert position["current_price"] == sim.quote("EURUSD")[1]


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("volume", [0.001, 0.015, 100.01, 250])
def test_volumes_off_the_symbol_grid_are_invalid_volume(sim: SimBackend, volume: float) -> None:
    error = broker_error(lambda: trade(sim, volume=volume))
    assert (error.code, error.retcode) == ("invalid_volume", 10014)


def test_an_unknown_symbol_is_invalid_symbol(sim: SimBackend) -> None:
    assert broker_error(lambda: trade(sim, "FOOBAR")).code == "invalid_symbol"


@pytest.mark.parametrize(
    ("side", "field", "offset_points"),
    [
        ("buy", "sl", +5),  # above the bid: wrong side
        ("buy", "sl", -5),  # right side, closer than the 10-point stops level
        ("buy", "tp", -5),
        ("buy", "tp", +5),
        ("sell", "sl", -5),
        ("sell", "sl", +5),
        ("sell", "tp", +5),
        ("sell", "tp", -5),
    ],
)
def test_stops_on_the_wrong_side_or_too_close_are_invalid_stops(
    sim: SimBackend, side: str, field: str, offset_points: int
) -> None:
    bid, ask = sim.quote("EURUSD")
    reference = bid if side == "buy" else ask
    price = round(reference + offset_points * SPECS["EURUSD"].point, 5)
    error = broker_error(lambda: trade(sim, side=side, **{field: price}))
    assert (error.code, error.retcode) == ("invalid_stops", 10016)


def test_stops_beyond_the_stops_level_are_accepted(sim: SimBackend) -> None:
    bid, ask = sim.quote("EURUSD")
    trade(sim, side="buy", sl=round(bid - 0.0011, 5), tp=round(bid + 0.0011, 5))
    trade(sim, side="sell", sl=round(ask + 0.0011, 5), tp=round(ask - 0.0011, 5))
    assert len(sim.positions) == 2


def test_an_order_above_the_free_margin_is_no_money(sim: SimBackend) -> None:
    # 10 lots of EURUSD need ~10,850 USD of margin at 1:100; the account has 10,000.
    error = broker_error(lambda: trade(sim, volume=10))
    assert (error.code, error.retcode) == ("no_money", 10019)
    assert trade(sim, volume=9)["volume"] == 9


def test_an_unknown_job_type_is_refused(sim: SimBackend) -> None:
    assert broker_error(lambda: sim.execute("launch_rocket", {})).code == "unsupported_job_type"


# -- money ------------------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", ["EURUSD", "GBPUSD", "USDJPY", "USDCHF", "EURGBP", "XAUUSD"])
def test_margin_is_lots_times_contract_times_price_over_leverage_in_usd(
    sim: SimBackend, symbol: str
) -> None:
    spec = SPECS[symbol]
    in_profit_currency = 2 * spec.contract_size * mid(sim, symbol) / 100
    expected = sim.to_account_currency(in_profit_currency, spec.profit_currency)
    assert sim.margin_for(symbol, 2) == pytest.approx(expected)


def test_margin_of_usd_based_pairs_is_the_contract_over_leverage(sim: SimBackend) -> None:
    assert sim.margin_for("USDJPY", 1) == pytest.approx(1000)
    assert sim.margin_for("USDCHF", 0.5) == pytest.approx(500)


def test_account_shows_the_margin_a_position_uses(sim: SimBackend) -> None:
    trade(sim, "XAUUSD", volume=1)
    account = sim.execute("get_account", {})
    assert account["margin_used"] == pytest.approx(100 * mid(sim, "XAUUSD") / 100, abs=0.01)
    assert account["margin_available"] == pytest.approx(
        account["equity"] - account["margin_used"], abs=0.005
    )
    assert (account["currency"], account["leverage"]) == ("USD", 100)


def test_usdjpy_profit_is_converted_from_yen(sim: SimBackend) -> None:
    fill = trade(sim, "USDJPY", side="buy", volume=1)
    sim.set_quote("USDJPY", 152.500, 152.512)
    (position,) = sim.execute("get_positions", {})["positions"]
    expected_jpy = (152.500 - fill["fill_price"]) * 100_000
    assert position["profit"] == pytest.approx(expected_jpy / 152.506, abs=0.01)


def test_closing_returns_the_pnl_the_simulator_computed_and_books_it(sim: SimBackend) -> None:
    fill = trade(sim, "EURUSD", side="sell", volume=2)
    sim.set_quote("EURUSD", 1.08000, 1.08008)
    closed = sim.execute("close_position", {"ticket": fill["ticket"]})
    assert closed["closed_price"] == 1.08008
    assert closed["volume"] == 2
    assert closed["pnl"] == pytest.approx((fill["fill_price"] - 1.08008) * 200_000, abs=0.01)
    assert sim.balance == pytest.approx(10_000 + closed["pnl"])
    assert sim.positions == {}


PRICE_MOVES = st.floats(min_value=-0.02, max_value=0.02, allow_nan=False)
LOTS = st.integers(min_value=1, max_value=500).map(lambda steps: round(steps * 0.01, 2))


@HYPOTHESIS
@given(
    symbol=st.sampled_from(FX_USD_QUOTED + ["USDJPY", "EURGBP", "XAUUSD"]),
    side=st.sampled_from(["buy", "sell"]),
    lots=LOTS,
    move=PRICE_MOVES,
)
def test_profit_has_the_sign_of_the_move_and_scales_with_lots(
    symbol: str, side: str, lots: float, move: float
) -> None:
    sim = SimBackend(seed=1, clock=ManualClock(), balance=10_000_000)
    spec = SPECS[symbol]
    fill = trade(sim, symbol, side=side, volume=lots)
    bid, ask = sim.quote(symbol)
    new_bid = round(bid * (1 + move), spec.digits)
    sim.set_quote(symbol, new_bid, round(new_bid + (ask - bid), spec.digits))
    if not sim.positions:  # an MT5 broker has no stops here, nothing closes it
        pytest.fail("position vanished")
    (position,) = sim.execute("get_positions", {})["positions"]
    close_price = new_bid if side == "buy" else position["current_price"]
    gain = (close_price - fill["fill_price"]) * (1 if side == "buy" else -1)
    expected = sim.to_account_currency(gain * spec.contract_size * lots, spec.profit_currency)
    assert position["profit"] == pytest.approx(expected, abs=0.01)
    if abs(expected) >= 0.01:
        assert math.copysign(1, position["profit"]) == math.copysign(1, gain)


@HYPOTHESIS
@given(
    orders=st.lists(
        st.tuples(
            st.sampled_from(["EURUSD", "USDJPY", "XAUUSD", "GBPUSD"]),
            st.sampled_from(["buy", "sell"]),
            LOTS,
        ),
        min_size=1,
        max_size=6,
    ),
    seconds=st.floats(min_value=0, max_value=600),
)
def test_equity_is_balance_plus_floating_profit_and_free_margin_the_rest(
    orders: list[tuple[str, str, float]], seconds: float
) -> None:
    clock = ManualClock()
    sim = SimBackend(seed=2, clock=clock, balance=1_000_000)
    for symbol, side, lots in orders:
        trade(sim, symbol, side=side, volume=lots)
    clock.advance(seconds)
    positions = sim.execute("get_positions", {})["positions"]
    account = sim.execute("get_account", {})
    floating = sum(p["profit"] for p in positions)
    assert account["equity"] == pytest.approx(account["balance"] + floating, abs=0.01)
    margin = sum(sim.margin_for(p["symbol"], p["volume"]) for p in positions)
    assert account["margin_used"] == pytest.approx(margin, abs=0.01)
    assert account["margin_available"] == pytest.approx(
        account["equity"] - account["margin_used"], abs=0.01
    )
    level = sim.margin_level()
    assert level is not None
    assert level == pytest.approx(sim.equity() / sim.margin_used() * 100)


@HYPOTHESIS
@given(
    lots=st.integers(min_value=2, max_value=300),
    cuts=st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=5),
    side=st.sampled_from(["buy", "sell"]),
)
def test_partial_closes_add_up_to_the_position(lots: int, cuts: list[int], side: str) -> None:
    clock = ManualClock()
    sim = SimBackend(seed=4, clock=clock, balance=1_000_000)
    volume = round(lots * 0.01, 2)
    ticket = trade(sim, "GBPUSD", side=side, volume=volume)["ticket"]
    closed: list[float] = []
    pnl = 0.0
    for cut in cuts:
        remaining = sim.positions[ticket].volume
        part = round(min(cut * 0.01, remaining), 2)
        if part >= remaining:
            break
        clock.advance(10)
        result = sim.execute("close_position", {"ticket": ticket, "volume": part})
        closed.append(result["volume"])
        pnl += result["pnl"]
        assert sim.positions[ticket].volume == pytest.approx(remaining - part)
    last = sim.execute("close_position", {"ticket": ticket})
    closed.append(last["volume"])
    pnl += last["pnl"]
    assert sum(closed) == pytest.approx(volume)
    assert ticket not in sim.positions
    assert sim.balance == pytest.approx(1_000_000 + pnl, abs=0.01)


# -- closing and modifying ---------------------------------------------------------------------


def test_a_partial_close_keeps_the_ticket_with_the_rest(sim: SimBackend) -> None:
    ticket = trade(sim, volume=1)["ticket"]
    assert sim.execute("close_position", {"ticket": ticket, "volume": 0.4})["volume"] == 0.4
    (position,) = sim.execute("get_positions", {})["positions"]
    assert (position["position_id"], position["volume"]) == (ticket, 0.6)


def test_closing_an_unknown_position_is_position_not_found(sim: SimBackend) -> None:
    error = broker_error(lambda: sim.execute("close_position", {"ticket": 424242}))
    assert error.code == "position_not_found"


def test_closing_more_than_the_position_is_invalid_close_volume(sim: SimBackend) -> None:
    ticket = trade(sim, volume=0.1)["ticket"]
    error = broker_error(lambda: sim.execute("close_position", {"ticket": ticket, "volume": 0.2}))
    assert (error.code, error.retcode) == ("invalid_close_volume", 10038)


def test_modify_sets_keeps_and_removes_stops(sim: SimBackend) -> None:
    bid, _ = sim.quote("EURUSD")
    ticket = trade(sim, volume=0.1)["ticket"]
    sl, tp = round(bid - 0.002, 5), round(bid + 0.003, 5)
    position = sim.execute("modify_position", {"ticket": ticket, "sl": sl, "tp": tp})["position"]
    assert (position["sl"], position["tp"]) == (sl, tp)
    position = sim.execute("modify_position", {"ticket": ticket, "sl": None})["position"]
    assert (position["sl"], position["tp"]) == (None, tp)


def test_modify_with_a_stop_on_the_wrong_side_is_invalid_stops(sim: SimBackend) -> None:
    bid, _ = sim.quote("EURUSD")
    ticket = trade(sim, volume=0.1)["ticket"]
    error = broker_error(
        lambda: sim.execute("modify_position", {"ticket": ticket, "sl": round(bid + 0.001, 5)})
    )
    assert error.code == "invalid_stops"


def closing_deals(sim: SimBackend) -> list[SimDeal]:
    return [deal for deal in sim.deals if deal.entry == "out"]


def test_a_stop_loss_triggers_on_the_tick_that_reaches_it(sim: SimBackend) -> None:
    bid, _ = sim.quote("EURUSD")
    fill = trade(sim, volume=1, sl=round(bid - 0.0020, 5))
    sim.set_quote("EURUSD", round(bid - 0.0025, 5), round(bid - 0.0024, 5))
    assert sim.positions == {}
    (deal,) = closing_deals(sim)
    assert (deal.reason, deal.price, deal.position_id) == (
        "sl",
        round(bid - 0.0025, 5),
        fill["ticket"],
    )
    assert sim.balance == pytest.approx(10_000 + deal.profit)
    assert deal.profit < 0


def test_a_take_profit_of_a_sell_triggers_on_the_ask(sim: SimBackend) -> None:
    _, ask = sim.quote("EURUSD")
    trade(sim, side="sell", volume=1, tp=round(ask - 0.0020, 5))
    sim.set_quote("EURUSD", round(ask - 0.0022, 5), round(ask - 0.0021, 5))
    (deal,) = closing_deals(sim)
    assert deal.reason == "tp"
    assert deal.profit > 0


def test_stops_trigger_on_the_random_tick_stream(sim: SimBackend, clock: ManualClock) -> None:
    bid, _ = sim.quote("EURUSD")
    trade(sim, volume=1, sl=round(bid - 0.0003, 5), tp=round(bid + 0.0003, 5))
    for _ in range(7200):
        clock.advance(0.5)
        sim.ticks(["EURUSD"])
        if not sim.positions:
            break
    (deal,) = closing_deals(sim)
    assert deal.reason in ("sl", "tp")
    level = bid - 0.0003 if deal.reason == "sl" else bid + 0.0003
    # Closed by the first tick across the level: within a few points of it.
    assert abs(deal.price - level) < 0.0002


# -- candles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("timeframe", ["H1", "D1", "M1", "M15", "M30", "H4", "W1", "MN1"])
def test_two_hundred_candles_are_there_from_the_start(sim: SimBackend, timeframe: str) -> None:
    candles = sim.execute(
        "get_candles", {"symbol": "EURUSD", "timeframe": timeframe, "count": 200}
    )["candles"]
    assert len(candles) == 200


def assert_sane(candles: list[dict[str, Any]], timeframe: str) -> None:
    times = [c["time"] for c in candles]
    assert times == sorted(set(times)), "oldest first, one candle per period"
    for candle in candles:
        assert set(candle) == {"time", "open", "high", "low", "close", "volume"}
        assert candle["high"] >= max(candle["open"], candle["close"])
        assert candle["low"] <= min(candle["open"], candle["close"])
        assert candle["volume"] >= 1
        if timeframe not in ("W1", "MN1"):
            assert candle["time"] % TIMEFRAME_SECONDS[timeframe] == 0


@settings(HYPOTHESIS, max_examples=40)
@given(
    timeframe=st.sampled_from(list(TIMEFRAME_SECONDS)),
    count=st.integers(min_value=1, max_value=400),
    symbol=st.sampled_from(["EURUSD", "USDJPY", "XAUUSD"]),
    seconds=st.floats(min_value=0, max_value=600),
)
def test_candles_are_consistent_ohlc(
    timeframe: str, count: int, symbol: str, seconds: float
) -> None:
    clock = ManualClock()
    sim = SimBackend(seed=5, clock=clock, history_minutes=1440, history_hours=240, history_days=500)
    clock.advance(seconds)
    candles = sim.execute(
        "get_candles", {"symbol": symbol, "timeframe": timeframe, "count": count}
    )["candles"]
    assert 1 <= len(candles) <= count
    assert_sane(candles, timeframe)


def test_the_last_candle_closes_at_the_current_bid_and_contains_the_fills(
    sim: SimBackend, clock: ManualClock
) -> None:
    for _ in range(100):
        clock.advance(1.7)
        sim.ticks(["EURUSD"])
        sell = trade(sim, side="sell", volume=0.01)
        (last,) = sim.execute("get_candles", {"symbol": "EURUSD", "timeframe": "M1", "count": 1})[
            "candles"
        ]
        assert last["close"] == sim.quote("EURUSD")[0]
        assert last["low"] <= sell["fill_price"] <= last["high"]
        assert last["time"] == int(clock.now // 60 * 60)


def test_history_joins_the_live_candles_without_a_gap(sim: SimBackend, clock: ManualClock) -> None:
    clock.advance(600)
    candles = sim.execute("get_candles", {"symbol": "EURUSD", "timeframe": "M1", "count": 30})[
        "candles"
    ]
    for before, after in zip(candles, candles[1:], strict=False):
        assert after["time"] - before["time"] <= 180
        assert abs(after["open"] - before["close"]) < 0.0005


@pytest.mark.parametrize(
    "request_",
    [
        {"symbol": "EURUSD", "timeframe": "H2", "count": 10},
        {"symbol": "EURUSD", "timeframe": "H1", "count": 0},
        {"symbol": "EURUSD", "timeframe": "H1", "count": 5001},
    ],
)
def test_bad_candle_requests_are_invalid_request(sim: SimBackend, request_: dict[str, Any]) -> None:
    assert broker_error(lambda: sim.execute("get_candles", request_)).code == "invalid_request"
