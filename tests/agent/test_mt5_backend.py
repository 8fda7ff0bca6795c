"""The mt5 backend against the fake ``MetaTrader5`` module (tests/fakes/MetaTrader5.py)."""

from __future__ import annotations

from typing import Any

import pytest

from mt5gate_agent.backends import BrokerError
from mt5gate_agent.backends.mt5 import Mt5Backend, filling_modes

CLOCK = 1_764_000_000.0


@pytest.fixture
def backend(fake_mt5: Any) -> Mt5Backend:
    backend = Mt5Backend(module=fake_mt5, clock=lambda: CLOCK)
    backend.login("Demo-Server", 12345678, "secret")
    return backend


def trade(
    backend: Mt5Backend,
    symbol: str = "EURUSD",
    side: str = "buy",
    volume: float = 1.0,
    **extra: Any,
) -> dict[str, Any]:
    return backend.execute(
        "trade",
        {
            "symbol": symbol,
            "side": side,
            "volume": volume,
            "sl": None,
            "tp": None,
            "client_order_id": "c-1",
        }
        | extra,
    )


def broker_error(call: Any) -> BrokerError:
    with pytest.raises(BrokerError) as caught:
        call()
    return caught.value


# -- login -------------------------------------------------------------------------------------


def test_login_initializes_the_terminal_and_logs_in(fake_mt5: Any) -> None:
    backend = Mt5Backend(module=fake_mt5)
    backend.login("Demo-Server", 12345678, "secret")
    assert fake_mt5.terminal.initialized
    assert fake_mt5.terminal.logged_in == 12345678
    assert backend.is_connected()


def test_a_wrong_password_is_auth_failed_and_shuts_the_terminal_link(fake_mt5: Any) -> None:
    backend = Mt5Backend(module=fake_mt5)
    error = broker_error(lambda: backend.login("Demo-Server", 12345678, "wrong"))
    assert (error.code, error.retcode) == ("auth_failed", -6)
    assert not fake_mt5.terminal.initialized


def test_a_terminal_that_cannot_start_is_reported_with_last_error(fake_mt5: Any) -> None:
    fake_mt5.terminal.fail_next["initialize"] = (-10003, "IPC initialize failed")
    error = broker_error(lambda: Mt5Backend(module=fake_mt5).login("Demo-Server", 1, "x"))
    assert (error.code, error.retcode) == ("ipc_init_failed", -10003)
    assert "IPC initialize failed" in error.message


def test_jobs_before_login_are_not_logged_in(fake_mt5: Any) -> None:
    error = broker_error(lambda: Mt5Backend(module=fake_mt5).execute("get_account", {}))
    assert error.code == "not_logged_in"


def test_algo_trading_switched_off_is_logged_at_login(
    fake_mt5: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake_mt5.terminal.trade_allowed = False
    Mt5Backend(module=fake_mt5).login("Demo-Server", 12345678, "secret")
    assert "algo_trading_disabled" in caplog.text


# -- market orders -------------------------------------------------------------------------------


def test_a_market_buy_sends_a_deal_at_the_ask_and_returns_the_fill(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    fill = trade(backend, sl=1.08, tp=1.09)
    (request,) = fake_mt5.terminal.requests
    assert request["action"] == fake_mt5.TRADE_ACTION_DEAL
    assert request["type"] == fake_mt5.ORDER_TYPE_BUY
    assert request["price"] == 1.08510
    assert (request["sl"], request["tp"], request["deviation"]) == (1.08, 1.09, 20)
    assert request["type_filling"] == fake_mt5.ORDER_FILLING_FOK
    assert fill == {
        "ticket": fill["ticket"],
        "fill_price": 1.08510,
        "volume": 1.0,
        "filled_at": "2025-11-24T16:00:00.000Z",
    }
    assert fill["ticket"] in fake_mt5.terminal.positions


def test_a_market_sell_goes_at_the_bid_without_stops(backend: Mt5Backend, fake_mt5: Any) -> None:
    trade(backend, side="sell", volume=0.5)
    (request,) = fake_mt5.terminal.requests
    assert (request["type"], request["price"]) == (fake_mt5.ORDER_TYPE_SELL, 1.08500)
    assert (request["sl"], request["tp"]) == (0.0, 0.0)


def test_the_filling_mode_comes_from_the_symbol_flags(backend: Mt5Backend, fake_mt5: Any) -> None:
    trade(backend, "USDJPY")
    assert [r["type_filling"] for r in fake_mt5.terminal.requests] == [fake_mt5.ORDER_FILLING_IOC]


def test_invalid_fill_falls_back_to_the_next_filling_mode(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    # The broker claims FOK but only takes IOC: the retcode 10030 trap.
    fake_mt5.terminal.symbols["EURUSD"].accepted_fillings = (fake_mt5.ORDER_FILLING_IOC,)
    fill = trade(backend)
    assert [r["type_filling"] for r in fake_mt5.terminal.requests] == [
        fake_mt5.ORDER_FILLING_FOK,
        fake_mt5.ORDER_FILLING_RETURN,
        fake_mt5.ORDER_FILLING_IOC,
    ]
    assert fill["volume"] == 1.0


def test_no_accepted_filling_mode_is_invalid_fill(backend: Mt5Backend, fake_mt5: Any) -> None:
    fake_mt5.terminal.symbols["EURUSD"].accepted_fillings = ()
    error = broker_error(lambda: trade(backend))
    assert (error.code, error.retcode) == ("invalid_fill", 10030)
    assert len(fake_mt5.terminal.requests) == 3


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(1, [0, 2, 1]), (2, [1, 2, 0]), (3, [0, 1, 2]), (0, [2, 0, 1])],
)
def test_filling_modes_order(fake_mt5: Any, flags: int, expected: list[int]) -> None:
    assert filling_modes(fake_mt5, flags) == expected


def test_a_hidden_symbol_is_selected_before_trading(backend: Mt5Backend, fake_mt5: Any) -> None:
    assert not fake_mt5.terminal.symbols["GBPUSD"].visible
    trade(backend, "GBPUSD", volume=0.1)
    assert fake_mt5.terminal.symbols["GBPUSD"].visible


def test_an_unknown_symbol_is_invalid_symbol(backend: Mt5Backend, fake_mt5: Any) -> None:
    assert broker_error(lambda: trade(backend, "NOPE")).code == "invalid_symbol"
    assert fake_mt5.terminal.requests == []


@pytest.mark.parametrize(
    ("requested", "sent"), [(0.123, 0.12), (0.126, 0.13), (0.015, 0.02), (2.0000000001, 2.0)]
)
def test_volume_is_rounded_to_the_volume_step(
    backend: Mt5Backend, fake_mt5: Any, requested: float, sent: float
) -> None:
    trade(backend, volume=requested)
    assert fake_mt5.terminal.requests[0]["volume"] == sent


@pytest.mark.parametrize("volume", [0.004, 100.5])
def test_volume_outside_min_max_is_invalid_volume(
    backend: Mt5Backend, fake_mt5: Any, volume: float
) -> None:
    error = broker_error(lambda: trade(backend, volume=volume))
    assert (error.code, error.retcode) == ("invalid_volume", 10014)
    assert fake_mt5.terminal.requests == []


@pytest.mark.parametrize(
    ("retcode", "code"),
    [
        (10006, "rejected"),
        (10013, "invalid_request"),
        (10014, "invalid_volume"),
        (10015, "invalid_price"),
        (10016, "invalid_stops"),
        (10017, "trade_disabled"),
        (10018, "market_closed"),
        (10019, "no_money"),
        (10024, "too_many_requests"),
        (10027, "client_disables_autotrading"),
        (10031, "connection"),
        (10040, "limit_positions"),
        (10044, "close_only"),
        (10046, "hedge_prohibited"),
        (19999, "trade_retcode_19999"),
    ],
)
def test_trade_retcodes_map_to_contract_codes(
    backend: Mt5Backend, fake_mt5: Any, retcode: int, code: str
) -> None:
    fake_mt5.terminal.script_retcodes = [retcode]
    error = broker_error(lambda: trade(backend))
    assert (error.code, error.retcode) == (code, retcode)
    assert error.as_error() == {"code": code, "message": "scripted", "retcode": retcode}


def test_a_requote_is_retried_at_the_fresh_price(backend: Mt5Backend, fake_mt5: Any) -> None:
    fake_mt5.terminal.script_retcodes = [10004]
    fill = trade(backend)
    assert len(fake_mt5.terminal.requests) == 2
    assert fill["fill_price"] == 1.08510


def test_requotes_that_persist_are_requote(backend: Mt5Backend, fake_mt5: Any) -> None:
    fake_mt5.terminal.script_retcodes = [10004, 10004, 10004]
    error = broker_error(lambda: trade(backend))
    assert (error.code, error.retcode) == ("requote", 10004)
    assert len(fake_mt5.terminal.requests) == 3


def test_order_send_none_reports_last_error(backend: Mt5Backend, fake_mt5: Any) -> None:
    fake_mt5.terminal.fail_next["order_send"] = (-2, 'Invalid "comment" argument')
    error = broker_error(lambda: trade(backend))
    assert (error.code, error.retcode) == ("invalid_params", -2)
    assert 'Invalid "comment" argument' in error.message


def test_a_lost_terminal_link_logs_in_again_on_the_next_job(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    fake_mt5.terminal.fail_next["account_info"] = (-10004, "No IPC connection")
    error = broker_error(lambda: backend.execute("get_account", {}))
    assert (error.code, error.retcode) == ("terminal_not_connected", -10004)
    fake_mt5.terminal.initialized = False  # the terminal restarted
    assert backend.execute("get_account", {})["currency"] == "USD"
    assert fake_mt5.terminal.initialized


def test_a_zero_fill_price_falls_back_to_the_deal(backend: Mt5Backend, fake_mt5: Any) -> None:
    original = fake_mt5.order_send

    def zero_price(request: dict[str, Any]) -> Any:
        return original(request)._replace(price=0.0)

    fake_mt5.order_send = zero_price
    try:
        assert trade(backend)["fill_price"] == 1.08510
    finally:
        fake_mt5.order_send = original


def test_without_the_deal_in_history_the_order_ticket_is_the_position(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    fake_mt5.terminal.history_visible = False
    fill = trade(backend)
    assert fill["ticket"] in fake_mt5.terminal.positions
    assert fill["filled_at"] == "2025-11-24T16:00:00.000Z"


# -- positions ----------------------------------------------------------------------------------


def test_positions_have_the_contract_shape(backend: Mt5Backend, fake_mt5: Any) -> None:
    ticket = trade(backend, side="sell", volume=0.3, sl=1.09)["ticket"]
    (position,) = backend.execute("get_positions", {})["positions"]
    assert position == {
        "position_id": ticket,
        "symbol": "EURUSD",
        "side": "sell",
        "volume": 0.3,
        "open_price": 1.085,
        "current_price": 1.0851,
        "sl": 1.09,
        "tp": None,
        "profit": 0.0,
        "swap": 0.0,
        "opened_at": "2025-11-24T16:00:00.000Z",
    }


def test_no_positions_is_an_empty_list(backend: Mt5Backend) -> None:
    assert backend.execute("get_positions", {}) == {"positions": []}


def test_positions_get_none_reports_last_error(backend: Mt5Backend, fake_mt5: Any) -> None:
    fake_mt5.terminal.fail_next["positions_get"] = (-10005, "IPC timeout")
    error = broker_error(lambda: backend.execute("get_positions", {}))
    assert (error.code, error.retcode) == ("ipc_timeout", -10005)


def test_a_full_close_sends_the_opposite_side_by_ticket(backend: Mt5Backend, fake_mt5: Any) -> None:
    ticket = trade(backend, volume=1.0)["ticket"]
    fake_mt5.terminal.symbols["EURUSD"].bid = 1.08600
    closed = backend.execute("close_position", {"ticket": ticket})
    request = fake_mt5.terminal.requests[-1]
    assert (request["position"], request["type"], request["price"], request["volume"]) == (
        ticket,
        fake_mt5.ORDER_TYPE_SELL,
        1.08600,
        1.0,
    )
    # The deal's profit (0.0009 × 100,000) plus its commission (-0.5).
    assert closed == {
        "closed_price": 1.086,
        "volume": 1.0,
        "pnl": 89.5,
        "closed_at": "2025-11-24T16:00:00.000Z",
    }
    assert ticket not in fake_mt5.terminal.positions


def test_closing_a_sell_buys_at_the_ask(backend: Mt5Backend, fake_mt5: Any) -> None:
    ticket = trade(backend, "USDJPY", side="sell", volume=0.2)["ticket"]
    backend.execute("close_position", {"ticket": ticket})
    request = fake_mt5.terminal.requests[-1]
    assert (request["type"], request["price"]) == (fake_mt5.ORDER_TYPE_BUY, 151.512)


def test_a_partial_close_sends_the_part_and_leaves_the_rest(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    ticket = trade(backend, volume=1.0)["ticket"]
    closed = backend.execute("close_position", {"ticket": ticket, "volume": 0.4})
    assert closed["volume"] == 0.4
    assert fake_mt5.terminal.positions[ticket]["volume"] == 0.6


def test_closing_more_than_the_position_is_invalid_close_volume(backend: Mt5Backend) -> None:
    ticket = trade(backend, volume=0.1)["ticket"]
    error = broker_error(
        lambda: backend.execute("close_position", {"ticket": ticket, "volume": 0.5})
    )
    assert (error.code, error.retcode) == ("invalid_close_volume", 10038)


def test_closing_an_unknown_ticket_is_position_not_found(backend: Mt5Backend) -> None:
    error = broker_error(lambda: backend.execute("close_position", {"ticket": 999}))
    assert error.code == "position_not_found"


def test_close_pnl_without_the_deal_is_the_positions_share(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    ticket = trade(backend, volume=1.0)["ticket"]
    fake_mt5.terminal.positions[ticket]["profit"] = 50.0
    fake_mt5.terminal.history_visible = False
    closed = backend.execute("close_position", {"ticket": ticket, "volume": 0.5})
    assert closed["pnl"] == 25.0
    assert closed["closed_price"] == 1.085


def test_a_close_reports_its_own_orders_deal_when_a_deal_ticket_is_another_orders_number(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    """Order and deal tickets are separate sequences: the close's deal may carry the number
    of the opening ORDER. history_deals_get(ticket=) selects by order, so asking with the
    deal's ticket would read the opening deal (no profit, the open's time)."""
    terminal = fake_mt5.terminal
    ticket = trade(backend, volume=1.0)["ticket"]
    terminal.next_deal_ticket = ticket  # the close's deal gets the opening order's number
    terminal.now += 90
    terminal.symbols["EURUSD"].bid = 1.08600
    closed = backend.execute("close_position", {"ticket": ticket})
    (close_deal,) = fake_mt5.history_deals_get(ticket=terminal.next_ticket - 1)  # the close order
    assert close_deal.ticket == ticket  # the trap is set: a deal numbered like the open order
    assert closed == {
        "closed_price": 1.086,
        "volume": 1.0,
        "pnl": 89.5,  # the close deal's profit and commission, not the open's -0.5
        "closed_at": "2025-11-24T16:01:30.000Z",  # the close deal's time, not the open's
    }


def test_a_close_filled_in_several_deals_sums_them(backend: Mt5Backend, fake_mt5: Any) -> None:
    ticket = trade(backend, volume=1.0)["ticket"]
    fake_mt5.terminal.symbols["EURUSD"].bid = 1.08600
    original = fake_mt5.order_send

    def split_fill(request: dict[str, Any]) -> Any:
        """The broker fills the close in two deals: 0.6 lots, then 0.4 a second later."""
        result = original(request)
        terminal = fake_mt5.terminal
        (deal,) = [d for d in terminal.deals.values() if d.order == result.order]
        second = terminal.deal_ticket()
        terminal.deals[deal.ticket] = deal._replace(volume=0.6, profit=54.0)
        terminal.deals[second] = deal._replace(
            ticket=second,
            time=deal.time + 1,
            time_msc=deal.time_msc + 1000,
            volume=0.4,
            price=1.08610,
            profit=40.0,
        )
        return result._replace(price=0.0)  # some brokers answer no price for a market fill

    fake_mt5.order_send = split_fill
    try:
        closed = backend.execute("close_position", {"ticket": ticket})
    finally:
        fake_mt5.order_send = original
    assert closed == {
        "closed_price": 1.08604,  # 0.6 at 1.08600 and 0.4 at 1.08610
        "volume": 1.0,
        "pnl": 93.0,  # 54 + 40 and both deals' commission (-0.5 each)
        "closed_at": "2025-11-24T16:00:01.000Z",  # the last deal's time
    }


def test_modify_sends_sltp_and_returns_the_position(backend: Mt5Backend, fake_mt5: Any) -> None:
    ticket = trade(backend, volume=0.1, sl=1.08)["ticket"]
    result = backend.execute("modify_position", {"ticket": ticket, "tp": 1.095})
    request = fake_mt5.terminal.requests[-1]
    assert request["action"] == fake_mt5.TRADE_ACTION_SLTP
    assert (request["position"], request["sl"], request["tp"]) == (ticket, 1.08, 1.095)
    assert (result["position"]["sl"], result["position"]["tp"]) == (1.08, 1.095)


def test_modify_with_null_removes_a_stop(backend: Mt5Backend, fake_mt5: Any) -> None:
    ticket = trade(backend, volume=0.1, sl=1.08, tp=1.09)["ticket"]
    result = backend.execute("modify_position", {"ticket": ticket, "sl": None, "tp": 1.09})
    assert fake_mt5.terminal.requests[-1]["sl"] == 0.0
    assert (result["position"]["sl"], result["position"]["tp"]) == (None, 1.09)


def test_modify_to_the_same_levels_is_not_an_error(backend: Mt5Backend) -> None:
    ticket = trade(backend, volume=0.1, sl=1.08)["ticket"]
    result = backend.execute("modify_position", {"ticket": ticket, "sl": 1.08, "tp": None})
    assert result["position"]["sl"] == 1.08


def test_modify_rejected_stops_are_invalid_stops(backend: Mt5Backend, fake_mt5: Any) -> None:
    ticket = trade(backend, volume=0.1)["ticket"]
    fake_mt5.terminal.script_retcodes = [10016]
    error = broker_error(lambda: backend.execute("modify_position", {"ticket": ticket, "sl": 1.2}))
    assert (error.code, error.retcode) == ("invalid_stops", 10016)


def test_modify_an_unknown_ticket_is_position_not_found(backend: Mt5Backend) -> None:
    error = broker_error(lambda: backend.execute("modify_position", {"ticket": 5, "sl": 1.0}))
    assert error.code == "position_not_found"


# -- account, candles, ticks -------------------------------------------------------------------


def test_account_maps_account_info(backend: Mt5Backend) -> None:
    trade(backend, volume=1.0)
    assert backend.execute("get_account", {}) == {
        "balance": 10_000.0,
        "equity": 10_000.0,
        "margin_used": 1000.0,
        "margin_available": 9000.0,
        "currency": "USD",
        "leverage": 100,
    }


def test_account_info_none_reports_last_error(backend: Mt5Backend, fake_mt5: Any) -> None:
    fake_mt5.terminal.fail_next["account_info"] = (-1, "Terminal: Call failed")
    error = broker_error(lambda: backend.execute("get_account", {}))
    assert (error.code, error.retcode) == ("terminal_error", -1)


def test_candles_use_the_timeframe_constant_and_the_structured_rates(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    candles = backend.execute("get_candles", {"symbol": "GBPUSD", "timeframe": "H1", "count": 3})[
        "candles"
    ]
    assert fake_mt5.terminal.rates_calls == [("GBPUSD", fake_mt5.TIMEFRAME_H1, 0, 3)]
    assert [c["time"] for c in candles] == sorted(c["time"] for c in candles)
    assert all(c["time"] % 3600 == 0 for c in candles)
    for candle in candles:
        assert set(candle) == {"time", "open", "high", "low", "close", "volume"}
        assert candle["high"] >= max(candle["open"], candle["close"])
        assert isinstance(candle["time"], int)
        assert isinstance(candle["volume"], int)


@pytest.mark.parametrize(
    "rates",
    [
        [(1_764_000_000, 1.1, 1.2, 1.0, 1.15, 42, 10, 0)],
        [
            {
                "time": 1_764_000_000,
                "open": 1.1,
                "high": 1.2,
                "low": 1.0,
                "close": 1.15,
                "tick_volume": 42,
                "spread": 10,
                "real_volume": 0,
            }
        ],
    ],
)
def test_candles_accept_tuples_and_mappings(backend: Mt5Backend, fake_mt5: Any, rates: Any) -> None:
    fake_mt5.terminal.rates = rates
    candles = backend.execute("get_candles", {"symbol": "EURUSD", "timeframe": "M1", "count": 1})[
        "candles"
    ]
    assert candles == [
        {"time": 1_764_000_000, "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.15, "volume": 42}
    ]


@pytest.mark.parametrize("timeframe", ["M1", "M5", "M15", "M30", "H1", "H4", "D1", "W1", "MN1"])
def test_every_timeframe_has_its_constant(
    backend: Mt5Backend, fake_mt5: Any, timeframe: str
) -> None:
    backend.execute("get_candles", {"symbol": "EURUSD", "timeframe": timeframe, "count": 2})
    assert fake_mt5.terminal.rates_calls[-1][1] == getattr(fake_mt5, f"TIMEFRAME_{timeframe}")


def test_copy_rates_none_reports_last_error(backend: Mt5Backend, fake_mt5: Any) -> None:
    fake_mt5.terminal.fail_next["copy_rates_from_pos"] = (-2, "Invalid params")
    error = broker_error(lambda: backend.execute("get_candles", {"symbol": "EURUSD", "count": 5}))
    assert (error.code, error.retcode) == ("invalid_params", -2)


def test_ticks_select_hidden_symbols_and_skip_unknown_ones(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    ticks = backend.ticks(["EURUSD", "GBPUSD", "NOPE"])
    assert ticks == {
        "EURUSD": {"bid": 1.085, "ask": 1.0851, "ts": 1_764_000_000_000},
        "GBPUSD": {"bid": 1.27, "ask": 1.27012, "ts": 1_764_000_000_000},
    }


def test_close_shuts_the_terminal_link(backend: Mt5Backend, fake_mt5: Any) -> None:
    backend.close()
    assert not fake_mt5.terminal.initialized
    assert not backend.is_connected()


# -- the fake module follows the package's documentation ------------------------------------


def test_fake_history_deals_get_selects_by_order_by_position_or_by_dates(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    from datetime import UTC, datetime

    position = trade(backend, volume=1.0)["ticket"]
    backend.execute("close_position", {"ticket": position})
    opening, closing = sorted(fake_mt5.terminal.deals.values(), key=lambda d: d.entry)
    assert fake_mt5.history_deals_get(ticket=opening.order) == (opening,)
    assert fake_mt5.history_deals_get(ticket=closing.order) == (closing,)
    assert fake_mt5.history_deals_get(ticket=closing.ticket) == ()  # a deal's ticket: no order
    assert fake_mt5.history_deals_get(position=position) == (opening, closing)
    now = fake_mt5.terminal.now
    assert fake_mt5.history_deals_get(now - 1, now + 1) == (opening, closing)
    assert fake_mt5.history_deals_get(now - 1, now + 1, group="*,!EUR*") == ()
    since = datetime.fromtimestamp(now + 1, UTC)
    assert fake_mt5.history_deals_get(since, datetime.fromtimestamp(now + 60, UTC)) == ()
    assert fake_mt5.history_deals_get() is None
    assert fake_mt5.last_error()[0] == fake_mt5.RES_E_INVALID_PARAMS


def test_fake_symbol_select_selects_unless_told_false(fake_mt5: Any) -> None:
    fake_mt5.initialize()
    assert fake_mt5.symbol_select("GBPUSD")
    assert fake_mt5.symbol_info("GBPUSD").visible
    assert fake_mt5.symbol_select("GBPUSD", False)
    assert not fake_mt5.symbol_info("GBPUSD").visible


def test_fake_positions_get_ignores_the_ticket_when_a_symbol_is_given(
    backend: Mt5Backend, fake_mt5: Any
) -> None:
    eurusd = trade(backend)["ticket"]
    usdjpy = trade(backend, "USDJPY")["ticket"]
    assert [p.ticket for p in fake_mt5.positions_get(ticket=usdjpy)] == [usdjpy]
    assert [p.ticket for p in fake_mt5.positions_get(symbol="EURUSD", ticket=usdjpy)] == [eurusd]
    assert [p.ticket for p in fake_mt5.positions_get(group="*JPY*")] == [usdjpy]


def test_fake_initialize_with_an_account_logs_in_and_version_needs_the_link(
    fake_mt5: Any,
) -> None:
    assert fake_mt5.version() is None
    assert fake_mt5.last_error()[0] == fake_mt5.RES_E_INTERNAL_FAIL_CONNECT
    assert not fake_mt5.initialize(login=12345678, password="wrong", server="Demo-Server")
    assert fake_mt5.last_error()[0] == fake_mt5.RES_E_AUTH_FAILED
    assert fake_mt5.initialize(login=12345678, password="secret", server="Demo-Server")
    assert fake_mt5.terminal.logged_in == 12345678
    assert fake_mt5.version() is not None
