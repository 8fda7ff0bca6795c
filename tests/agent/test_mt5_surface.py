"""The mt5 backend's pending orders, history, symbols and UTC conversion, against the fake
``MetaTrader5`` module set to a broker server that keeps UTC+2 (then UTC+3)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mt5gate_agent.backends import BrokerError
from mt5gate_agent.backends.mt5 import OFFSET_REMEASURE_SECONDS, Mt5Backend

CLOCK = 1_764_000_000.0  # 2025-11-24T16:00:00Z
UTC_PLUS_2 = 2 * 3600
BUY_LIMIT = {"symbol": "EURUSD", "side": "buy", "volume": 0.1, "type": "limit", "price": 1.08}


def iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class Clock:
    def __init__(self) -> None:
        self.now = CLOCK

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(fake_mt5: Any, clock: Clock) -> Mt5Backend:
    fake_mt5.terminal.server_offset = UTC_PLUS_2
    backend = Mt5Backend(module=fake_mt5, clock=clock)
    backend.login("Demo-Server", 12345678, "secret")
    return backend


def refused(call: Any) -> BrokerError:
    with pytest.raises(BrokerError) as caught:
        call()
    return caught.value


def last_request(fake_mt5: Any) -> dict[str, Any]:
    request: dict[str, Any] = fake_mt5.terminal.requests[-1]
    return request


# -- the server's zone ---------------------------------------------------------------------


def test_the_servers_offset_is_measured_from_its_tick_times(backend: Mt5Backend) -> None:
    assert backend.server_offset() == UTC_PLUS_2


def test_a_daylight_saving_change_is_followed_at_the_next_measurement(
    backend: Mt5Backend, fake_mt5: Any, clock: Clock
) -> None:
    assert backend.server_offset() == UTC_PLUS_2
    fake_mt5.terminal.server_offset = 3 * 3600
    assert backend.server_offset() == UTC_PLUS_2  # measured a moment ago
    clock.now += OFFSET_REMEASURE_SECONDS
    fake_mt5.terminal.now = clock.now
    assert backend.server_offset() == 3 * 3600


def test_a_start_with_the_market_closed_assumes_utc_until_ticks_come(
    fake_mt5: Any, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    fake_mt5.terminal.server_offset = UTC_PLUS_2
    clock.now = CLOCK + 3 * 86_400  # the last ticks are from three days ago
    backend = Mt5Backend(module=fake_mt5, clock=clock)
    caplog.set_level("INFO", logger="mt5gate_agent.mt5")
    backend.login("Demo-Server", 12345678, "secret")
    assert backend.server_offset() == 0
    assert "event=server_offset_unknown" in caplog.text
    fake_mt5.terminal.now = clock.now  # the market opens
    assert backend.server_offset() == 0  # probed again only after a minute
    clock.now += 61
    fake_mt5.terminal.now = clock.now
    assert backend.server_offset() == UTC_PLUS_2
    assert "event=server_offset seconds=7200" in caplog.text


def test_a_tick_that_stopped_moving_measures_nothing(
    backend: Mt5Backend, fake_mt5: Any, clock: Clock
) -> None:
    assert backend.server_offset() == UTC_PLUS_2
    # The market closes; ten hours later its last tick looks like a UTC-8 server's "now".
    clock.now += 10 * 3600
    assert backend.server_offset() == UTC_PLUS_2
    clock.now += 3600
    assert backend.server_offset() == UTC_PLUS_2


def test_ticks_positions_and_fills_are_reported_in_utc(backend: Mt5Backend, fake_mt5: Any) -> None:
    (tick,) = backend.ticks(["EURUSD"]).values()
    assert tick["ts"] == int(CLOCK * 1000)
    fill = backend.execute("trade", {"symbol": "EURUSD", "side": "buy", "volume": 0.1})
    assert fill["filled_at"] == iso(CLOCK)
    (position,) = backend.execute("get_positions", {})["positions"]
    assert position["opened_at"] == iso(CLOCK)


def test_candle_times_are_utc(backend: Mt5Backend) -> None:
    candles = backend.execute("get_candles", {"symbol": "EURUSD", "timeframe": "H1", "count": 3})
    assert candles["candles"][-1]["time"] == int(CLOCK) // 3600 * 3600


def test_a_history_range_in_utc_is_asked_in_server_time(backend: Mt5Backend, fake_mt5: Any) -> None:
    # A deposit an hour ago (UTC), stamped by the server in its own zone.
    fake_mt5.add_deal(time=CLOCK - 3600 + UTC_PLUS_2, profit=500.0)
    fake_mt5.add_deal(time=CLOCK - 5 * 3600 + UTC_PLUS_2, profit=100.0)
    window = {"from": iso(CLOCK - 2 * 3600), "to": iso(CLOCK - 1800), "limit": 100}
    (deal,) = backend.execute("get_history", {"kind": "deals", **window})["deals"]
    assert (deal["type"], deal["profit"], deal["time"]) == ("balance", 500.0, iso(CLOCK - 3600))
    assert (deal["symbol"], deal["side"], deal["entry"]) == (None, None, None)


def test_a_specified_expiration_is_sent_in_server_time_and_read_back_in_utc(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    at = CLOCK + 3600
    placed = backend.execute(
        "place_pending_order", {**BUY_LIMIT, "expiration": {"type": "specified", "at": iso(at)}}
    )
    request = last_request(fake_mt5)
    assert (request["type_time"], request["expiration"]) == (
        fake_mt5.ORDER_TIME_SPECIFIED,
        int(at) + UTC_PLUS_2,
    )
    assert placed["placed_at"] == iso(CLOCK)
    (order,) = backend.execute("get_pending_orders", {})["pending_orders"]
    assert order["expiration"] == {"type": "specified", "at": iso(at)}
    assert order["placed_at"] == iso(CLOCK)


# -- pending orders ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "kind", "price", "constant"),
    [
        ("buy", "limit", 1.08, "ORDER_TYPE_BUY_LIMIT"),
        ("sell", "limit", 1.09, "ORDER_TYPE_SELL_LIMIT"),
        ("buy", "stop", 1.09, "ORDER_TYPE_BUY_STOP"),
        ("sell", "stop", 1.08, "ORDER_TYPE_SELL_STOP"),
    ],
)
def test_a_pending_order_is_sent_as_trade_action_pending(
    backend: Mt5Backend, fake_mt5: Any, side: str, kind: str, price: float, constant: str
) -> None:
    body = {**BUY_LIMIT, "side": side, "type": kind, "price": price, "sl": None, "tp": None}
    placed = backend.execute("place_pending_order", body)
    request = last_request(fake_mt5)
    assert request["action"] == fake_mt5.TRADE_ACTION_PENDING
    assert request["type"] == getattr(fake_mt5, constant)
    assert (request["price"], request["stoplimit"], request["type_time"]) == (price, 0.0, 0)
    assert request["magic"] == 5_500_500
    (order,) = backend.execute("get_pending_orders", {})["pending_orders"]
    assert (order["ticket"], order["side"], order["type"], order["price"]) == (
        placed["ticket"],
        side,
        kind,
        price,
    )
    assert (order["sl"], order["tp"], order["stop_limit_price"]) == (None, None, None)


def test_a_stop_limit_carries_its_limit_price(backend: Mt5Backend, fake_mt5: Any) -> None:
    body = {**BUY_LIMIT, "type": "stop_limit", "price": 1.09, "stop_limit_price": 1.088}
    backend.execute("place_pending_order", body)
    request = last_request(fake_mt5)
    assert (request["type"], request["stoplimit"]) == (fake_mt5.ORDER_TYPE_BUY_STOP_LIMIT, 1.088)
    (order,) = backend.execute("get_pending_orders", {})["pending_orders"]
    assert (order["type"], order["stop_limit_price"]) == ("stop_limit", 1.088)


@pytest.mark.parametrize(
    ("symbol", "price", "mode"),
    [("EURUSD", 1.08, "ORDER_FILLING_FOK"), ("USDJPY", 150.0, "ORDER_FILLING_IOC")],
)
def test_a_pending_orders_filling_mode_is_the_symbols_own(
    backend: Mt5Backend, fake_mt5: Any, symbol: str, price: float, mode: str
) -> None:
    backend.execute("place_pending_order", {**BUY_LIMIT, "symbol": symbol, "price": price})
    assert last_request(fake_mt5)["type_filling"] == getattr(fake_mt5, mode)


def test_a_pending_order_falls_back_through_the_filling_modes_on_10030(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    fake_mt5.terminal.symbols["EURUSD"].accepted_fillings = ()
    backend.execute("place_pending_order", BUY_LIMIT)
    tried = [r["type_filling"] for r in fake_mt5.terminal.requests]
    assert tried == [fake_mt5.ORDER_FILLING_FOK, fake_mt5.ORDER_FILLING_RETURN]


def test_a_price_on_the_wrong_side_is_invalid_price(backend: Mt5Backend) -> None:
    error = refused(lambda: backend.execute("place_pending_order", {**BUY_LIMIT, "price": 1.09}))
    assert (error.code, error.retcode) == ("invalid_price", 10015)


def test_modify_sends_trade_action_modify_and_keeps_what_it_does_not_change(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    at = iso(CLOCK + 7200)
    ticket = backend.execute(
        "place_pending_order",
        {**BUY_LIMIT, "sl": 1.07, "expiration": {"type": "specified", "at": at}},
    )["ticket"]
    changed = backend.execute("modify_pending_order", {"ticket": ticket, "price": 1.079, "tp": 1.1})
    request = last_request(fake_mt5)
    assert (request["action"], request["order"]) == (fake_mt5.TRADE_ACTION_MODIFY, ticket)
    assert (request["price"], request["sl"], request["tp"]) == (1.079, 1.07, 1.1)
    order = changed["pending_order"]
    assert (order["price"], order["sl"], order["tp"]) == (1.079, 1.07, 1.1)
    assert order["expiration"] == {"type": "specified", "at": at}
    order = backend.execute("modify_pending_order", {"ticket": ticket, "sl": None})["pending_order"]
    assert order["sl"] is None


def test_cancel_sends_trade_action_remove_and_leaves_a_cancelled_history_order(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    ticket = backend.execute("place_pending_order", BUY_LIMIT)["ticket"]
    cancelled = backend.execute("cancel_pending_order", {"ticket": ticket})
    assert cancelled == {"ticket": ticket, "cancelled_at": iso(CLOCK)}
    assert last_request(fake_mt5)["action"] == fake_mt5.TRADE_ACTION_REMOVE
    assert backend.execute("get_pending_orders", {})["pending_orders"] == []
    window = {"from": iso(CLOCK - 60), "to": iso(CLOCK + 60), "limit": 10}
    (order,) = backend.execute("get_history", {"kind": "orders", **window})["orders"]
    assert (order["ticket"], order["state"], order["type"], order["reason"]) == (
        ticket,
        "cancelled",
        "limit",
        "mt5gate",
    )
    assert order["placed_at"] == order["done_at"] == iso(CLOCK)


@pytest.mark.parametrize("job_type", ["modify_pending_order", "cancel_pending_order"])
def test_an_unknown_ticket_is_pending_order_not_found(backend: Mt5Backend, job_type: str) -> None:
    error = refused(lambda: backend.execute(job_type, {"ticket": 42, "tp": 1.1}))
    assert error.code == "pending_order_not_found"


def test_an_order_inside_the_freeze_level_is_frozen(backend: Mt5Backend, fake_mt5: Any) -> None:
    fake_mt5.terminal.symbols["EURUSD"].freeze_level = 600
    ticket = backend.execute("place_pending_order", {**BUY_LIMIT, "price": 1.0849})["ticket"]
    error = refused(lambda: backend.execute("cancel_pending_order", {"ticket": ticket}))
    assert (error.code, error.retcode) == ("frozen", 10029)


def test_a_triggered_order_leaves_its_deal_with_reason_mt5gate(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    ticket = backend.execute("place_pending_order", {**BUY_LIMIT, "price": 1.0845})["ticket"]
    fake_mt5.terminal.symbols["EURUSD"].ask = 1.0844
    fake_mt5.trigger_pending()
    window = {"from": iso(CLOCK - 60), "to": iso(CLOCK + 60), "limit": 10}
    (deal,) = backend.execute("get_history", {"kind": "deals", **window})["deals"]
    assert (deal["type"], deal["entry"], deal["side"], deal["reason"]) == (
        "buy",
        "in",
        "buy",
        "mt5gate",
    )
    assert (deal["order_ticket"], deal["position_id"], deal["price"]) == (ticket, ticket, 1.0844)
    assert deal["time"] == iso(CLOCK)
    (order,) = backend.execute("get_history", {"kind": "orders", **window})["orders"]
    assert (order["state"], order["volume_filled"]) == ("filled", 0.1)


def test_history_reasons_and_filters(backend: Mt5Backend, fake_mt5: Any) -> None:
    now = CLOCK + UTC_PLUS_2
    common = {"type": fake_mt5.DEAL_TYPE_SELL, "symbol": "EURUSD", "volume": 0.1, "price": 1.08}
    fake_mt5.add_deal(
        **common,
        entry=1,
        position_id=7,
        reason=fake_mt5.DEAL_REASON_SL,
        magic=5_500_500,
        time=now - 30,
    )
    fake_mt5.add_deal(
        **common, entry=1, position_id=8, reason=fake_mt5.DEAL_REASON_TP, time=now - 20
    )
    fake_mt5.add_deal(
        **common, entry=0, position_id=9, reason=fake_mt5.DEAL_REASON_MOBILE, time=now - 10
    )
    fake_mt5.add_deal(
        **common, entry=1, position_id=9, reason=fake_mt5.DEAL_REASON_SO, time=now - 5
    )
    window = {"from": iso(CLOCK - 60), "to": iso(CLOCK + 60), "limit": 10}
    deals = backend.execute("get_history", {"kind": "deals", **window})["deals"]
    assert [d["reason"] for d in deals] == ["stop_out", "mobile", "tp", "sl"]
    assert [d["entry"] for d in deals] == ["out", "in", "out", "out"]
    by_position = backend.execute("get_history", {"kind": "deals", **window, "position_id": 9})
    assert [d["reason"] for d in by_position["deals"]] == ["stop_out", "mobile"]
    older = backend.execute(
        "get_history", {"kind": "deals", **window, "before": deals[1]["ticket"]}
    )
    assert [d["reason"] for d in older["deals"]] == ["tp", "sl"]
    assert (
        backend.execute("get_history", {"kind": "deals", **window, "limit": 1})["deals"]
        == deals[:1]
    )


# -- symbols -------------------------------------------------------------------------------


def test_symbols_are_market_watchs_unless_all(backend: Mt5Backend) -> None:
    names = [s["name"] for s in backend.execute("get_symbols", {})["symbols"]]
    assert names == ["EURUSD", "USDJPY"]
    everything = backend.execute("get_symbols", {"all": True})["symbols"]
    assert [s["name"] for s in everything] == ["EURUSD", "USDJPY", "GBPUSD"]
    jpy = backend.execute("get_symbols", {"group": "*JPY*", "all": True})["symbols"]
    assert [s["name"] for s in jpy] == ["USDJPY"]


def test_a_symbol_carries_its_specification(backend: Mt5Backend, fake_mt5: Any) -> None:
    fake_mt5.terminal.symbols["EURUSD"].stops_level = 10
    (spec,) = backend.execute("get_symbols", {"symbol": "EURUSD"})["symbols"]
    assert spec == {
        "name": "EURUSD",
        "description": "EURUSD",
        "digits": 5,
        "point": 0.00001,
        "contract_size": 100_000.0,
        "currency_base": "EUR",
        "currency_profit": "USD",
        "volume_min": 0.01,
        "volume_max": 100.0,
        "volume_step": 0.01,
        "stops_level": 10,
        "freeze_level": 0,
        "trade_mode": "full",
        "execution_mode": "market",
        "filling_modes": ["fok"],
        "expiration_modes": ["gtc", "day", "specified"],
        "order_modes": ["market", "limit", "stop", "stop_limit", "sl", "tp", "close_by"],
    }
    (gbp,) = backend.execute("get_symbols", {"symbol": "GBPUSD"})["symbols"]
    assert gbp["filling_modes"] == ["fok", "ioc"]


def test_an_unknown_symbol_is_symbol_not_found(backend: Mt5Backend) -> None:
    assert refused(lambda: backend.execute("get_symbols", {"symbol": "NOPE"})).code == (
        "symbol_not_found"
    )


def test_every_output_validates_against_the_servers_models(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    from mt5gate_protocol.jobs import OUTPUT_MODELS

    placed = backend.execute(
        "place_pending_order",
        {**BUY_LIMIT, "type": "stop_limit", "price": 1.09, "stop_limit_price": 1.089},
    )
    window = {"from": iso(CLOCK - 60), "to": iso(CLOCK + 60), "limit": 10}
    outputs = {
        "place_pending_order": placed,
        "get_pending_orders": backend.execute("get_pending_orders", {}),
        "modify_pending_order": backend.execute(
            "modify_pending_order", {"ticket": placed["ticket"], "tp": 1.1}
        ),
        "cancel_pending_order": backend.execute(
            "cancel_pending_order", {"ticket": placed["ticket"]}
        ),
        "get_history": backend.execute("get_history", {"kind": "orders", **window}),
        "get_symbols": backend.execute("get_symbols", {"all": True}),
    }
    for job_type, output in outputs.items():
        OUTPUT_MODELS[job_type].model_validate(output)
