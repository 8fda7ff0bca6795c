"""The real backend: a MetaTrader 5 terminal on this machine, through the ``MetaTrader5`` package.

The package's functions answer None (or False) on failure and leave the reason in
``last_error()``; every call here checks for that. Market orders go through
:meth:`Mt5Backend._send_market`, which picks the filling mode from the symbol's
``filling_mode`` flags and falls back to the next one on retcode 10030 (``invalid_fill``),
the classic trap of brokers that support only IOC or only FOK. Requotes are retried at the
fresh price, twice at most.

``MetaTrader5`` is imported when the backend logs in, so this module imports anywhere.
All calls must come from one thread (the agent's :class:`BackendWorker`).

Every order's filling mode (market orders, closes, pending orders) comes from the symbol's
flags: FOK, else IOC, else RETURN, with the same fallback on 10030.

Times: the terminal counts every time (ticks, positions, orders, deals, bars) in the broker
server's zone as if it were UTC — a broker on UTC+2 reports 14:00 UTC as 16:00 "UTC". The
agent measures that offset (:meth:`Mt5Backend.server_offset`): the newest tick time among
the Market Watch symbols minus the UTC clock, rounded to half an hour; a measurement is
trusted only when it lies within two minutes of that rounding and between UTC-12 and
UTC+14, and (after the first) when the newest tick moved since the previous probe, i.e. the
market is open. It is redone every ten minutes, so a daylight-saving change is followed;
while none succeeds (a closed market) the last offset holds, 0 at first, and the probe is
retried every minute. Every time the
agent reports is converted to UTC with it, and every time it sends (a `specified`
expiration, a history range) is converted to the server's zone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from mt5gate_agent.backends.base import (
    BrokerError,
    HistoryRequest,
    iso_utc,
    job_handler,
    optional_price,
    parse_candles_request,
    parse_expiration,
    parse_history_request,
    parse_pending_request,
    parse_positive,
    parse_side,
    parse_ticket,
    require,
    round_volume,
)
from mt5gate_agent.retcodes import (
    SUCCESS_RETCODES,
    TERMINAL_LINK_ERRORS,
    TRADE_RETCODE_INVALID_CLOSE_VOLUME,
    TRADE_RETCODE_INVALID_FILL,
    TRADE_RETCODE_INVALID_ORDER,
    TRADE_RETCODE_INVALID_VOLUME,
    TRADE_RETCODE_NO_CHANGES,
    TRADE_RETCODE_PRICE_CHANGED,
    TRADE_RETCODE_PRICE_OFF,
    TRADE_RETCODE_REQUOTE,
    last_error_code,
    trade_retcode_code,
)

log = logging.getLogger("mt5gate_agent.mt5")

# The symbol's ``filling_mode`` flags (MQL5's SYMBOL_FILLING_*; the Python package does
# not export them).
SYMBOL_FILLING_FOK = 1
SYMBOL_FILLING_IOC = 2
# SYMBOL_EXPIRATION_* and SYMBOL_ORDER_* flags, likewise not exported by the package.
EXPIRATION_FLAGS = (("gtc", 1), ("day", 2), ("specified", 4))
ORDER_FLAGS = (
    ("market", 1),
    ("limit", 2),
    ("stop", 4),
    ("stop_limit", 8),
    ("sl", 16),
    ("tp", 32),
    ("close_by", 64),
)
TRADE_MODES = {0: "disabled", 1: "long_only", 2: "short_only", 3: "close_only", 4: "full"}
EXECUTION_MODES = {0: "request", 1: "instant", 2: "market", 3: "exchange"}
# MT5's ORDER_TYPE_* of a pending order, by (side, type), and back.
PENDING_ORDER_TYPES = {
    ("buy", "limit"): "ORDER_TYPE_BUY_LIMIT",
    ("sell", "limit"): "ORDER_TYPE_SELL_LIMIT",
    ("buy", "stop"): "ORDER_TYPE_BUY_STOP",
    ("sell", "stop"): "ORDER_TYPE_SELL_STOP",
    ("buy", "stop_limit"): "ORDER_TYPE_BUY_STOP_LIMIT",
    ("sell", "stop_limit"): "ORDER_TYPE_SELL_STOP_LIMIT",
}
ORDER_TYPE_NAMES = {
    0: ("buy", "market"),
    1: ("sell", "market"),
    2: ("buy", "limit"),
    3: ("sell", "limit"),
    4: ("buy", "stop"),
    5: ("sell", "stop"),
    6: ("buy", "stop_limit"),
    7: ("sell", "stop_limit"),
    8: ("buy", "close_by"),
}
ORDER_STATES = {2: "cancelled", 3: "partial", 4: "filled", 5: "rejected", 6: "expired"}
# DEAL_REASON_* / ORDER_REASON_* (the same numbers up to 6).
REASONS = {
    0: "client",
    1: "mobile",
    2: "web",
    3: "expert",
    4: "sl",
    5: "tp",
    6: "stop_out",
    7: "rollover",
    8: "vmargin",
    9: "split",
}
DEAL_TYPES = {0: "buy", 1: "sell", 2: "balance", 3: "credit", 7: "commission"}
DEAL_ENTRIES = {0: "in", 1: "out", 2: "inout", 3: "out_by"}
# ORDER_TIME_* by the contract's expiration type; SPECIFIED_DAY (3) reads as `specified`.
EXPIRATION_TIMES = {"gtc": 0, "day": 1, "specified": 2}
EXPIRATION_NAMES = {0: "gtc", 1: "day", 2: "specified", 3: "specified"}
# The server's zone is measured from tick times (see the module docstring).
# Servers keep whole or half hours; zones run from UTC-12 to UTC+14.
OFFSET_STEP_SECONDS = 1800
MIN_OFFSET_SECONDS = -12 * 3600
MAX_OFFSET_SECONDS = 14 * 3600
OFFSET_TOLERANCE_SECONDS = 120
OFFSET_REMEASURE_SECONDS = 600
OFFSET_RETRY_SECONDS = 60
OFFSET_PROBE_SYMBOLS = 50
REQUOTE_RETRIES = 2
MAGIC = 5_500_500
COMMENT = "mt5gate"
RATE_FIELDS = ("time", "open", "high", "low", "close", "tick_volume")


class Mt5Backend:
    """A MetaTrader 5 account, through the terminal the ``MetaTrader5`` package talks to."""

    def __init__(
        self,
        *,
        terminal_path: str | None = None,
        deviation: int = 20,
        magic: int = MAGIC,
        module: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.terminal_path = terminal_path
        self.deviation = deviation
        self.magic = magic
        self._mt5 = module
        self._clock = clock
        self._credentials: tuple[str, int, str] | None = None
        self._initialized = False
        self._link_lost = False
        self._selected: set[str] = set()
        self._offset = 0.0
        self._offset_known = False
        self._newest_seen: float | None = None
        self._offset_measured_at: float | None = None

    # -- the Backend protocol ------------------------------------------------------------

    def login(self, server: str, login: int, password: str) -> None:
        mt5 = self._module()
        self._credentials = (server, int(login), password)
        options = {"path": self.terminal_path} if self.terminal_path else {}
        if not mt5.initialize(**options):
            raise self._last_error("initialize")
        self._initialized = True
        if not mt5.login(int(login), password=password, server=server):
            error = self._last_error("login")
            mt5.shutdown()
            self._initialized = False
            raise error
        self._link_lost = False
        terminal = mt5.terminal_info()
        if terminal is not None and not terminal.trade_allowed:
            log.warning(
                "event=algo_trading_disabled note=\"press 'Algo Trading' in the terminal's "
                'toolbar, or every order fails with client_disables_autotrading"'
            )

    def is_connected(self) -> bool:
        if not self._initialized:
            return False
        terminal = self._module().terminal_info()
        return bool(terminal is not None and terminal.connected)

    def close(self) -> None:
        if self._initialized:
            self._module().shutdown()
            self._initialized = False

    def ticks(self, symbols: list[str]) -> dict[str, dict[str, Any]]:
        self._ensure_ready()
        mt5 = self._module()
        result: dict[str, dict[str, Any]] = {}
        for symbol in symbols:
            tick = mt5.symbol_info_tick(symbol)
            if tick is None and symbol not in self._selected:
                # A symbol hidden from Market Watch has no ticks until it is selected.
                self._selected.add(symbol)
                if mt5.symbol_select(symbol, True):
                    tick = mt5.symbol_info_tick(symbol)
            if tick is None or not tick.bid or not tick.ask:
                continue
            ts = int(tick.time_msc) if getattr(tick, "time_msc", 0) else int(tick.time) * 1000
            ts -= int(self.server_offset() * 1000)
            result[symbol] = {"bid": float(tick.bid), "ask": float(tick.ask), "ts": ts}
        return result

    def execute(self, job_type: str, input_data: dict[str, Any]) -> dict[str, Any]:
        handler = job_handler(self, job_type)
        self._ensure_ready()
        return handler(input_data)

    # -- jobs ----------------------------------------------------------------------------

    def _trade(self, input_data: dict[str, Any]) -> dict[str, Any]:
        mt5 = self._module()
        symbol = str(require(input_data, "symbol"))
        side = parse_side(require(input_data, "side"))
        requested = parse_positive(input_data, "volume")
        assert requested is not None
        sl = parse_positive(input_data, "sl", optional=True)
        tp = parse_positive(input_data, "tp", optional=True)
        info = self._symbol(symbol)
        volume = self._normalize_volume(info, requested)
        request: dict[str, Any] = {
            "action": mt5.TRADE_ACTION_DEAL,
            "symbol": symbol,
            "volume": volume,
            "type": mt5.ORDER_TYPE_BUY if side == "buy" else mt5.ORDER_TYPE_SELL,
            "sl": sl or 0.0,
            "tp": tp or 0.0,
            "deviation": self.deviation,
            "magic": self.magic,
            "comment": COMMENT,
            "type_time": mt5.ORDER_TIME_GTC,
        }
        result = self._send_market(request, info, side)
        deals = self._order_deals(result.order)
        ticket = int(deals[0].position_id) if deals and deals[0].position_id else result.order
        price = _first_price(result.price, _average_price(deals), request["price"])
        filled_at = self._utc(_deal_time(deals[-1])) if deals else self._clock()
        return {
            "ticket": int(ticket),
            "fill_price": price,
            "volume": float(result.volume or volume),
            "filled_at": iso_utc(filled_at),
        }

    def _get_positions(self, input_data: dict[str, Any]) -> dict[str, Any]:
        positions = self._module().positions_get()
        if positions is None:
            code, _ = self._module().last_error()
            if code in TERMINAL_LINK_ERRORS or code < 0:
                raise self._last_error("positions_get")
            positions = ()
        offset = self.server_offset()
        return {"positions": [_position_view(self._module(), p, offset) for p in positions]}

    def _close_position(self, input_data: dict[str, Any]) -> dict[str, Any]:
        mt5 = self._module()
        ticket = parse_ticket(input_data)
        position = self._position(ticket)
        info = self._symbol(position.symbol)
        requested = parse_positive(input_data, "volume", optional=True)
        volume = (
            float(position.volume) if requested is None else self._normalize_volume(info, requested)
        )
        if volume > position.volume + 1e-9:
            raise BrokerError(
                "invalid_close_volume",
                f"close volume {volume} exceeds the position's {position.volume} lots",
                TRADE_RETCODE_INVALID_CLOSE_VOLUME,
            )
        closing_side = "sell" if position.type == mt5.POSITION_TYPE_BUY else "buy"
        request: dict[str, Any] = {
            "action": mt5.TRADE_ACTION_DEAL,
            "symbol": position.symbol,
            "volume": volume,
            "type": mt5.ORDER_TYPE_SELL if closing_side == "sell" else mt5.ORDER_TYPE_BUY,
            "position": ticket,
            "deviation": self.deviation,
            "magic": self.magic,
            "comment": COMMENT,
            "type_time": mt5.ORDER_TIME_GTC,
        }
        result = self._send_market(request, info, closing_side)
        closed_volume = float(result.volume or volume)
        deals = self._order_deals(result.order)
        if deals:
            pnl = sum(
                float(getattr(deal, name, 0.0) or 0.0)
                for deal in deals
                for name in ("profit", "swap", "commission", "fee")
            )
            closed_at = self._utc(_deal_time(deals[-1]))
        else:
            # The deals are not in the history yet: the position's share of its floating P&L.
            pnl = float(position.profit) * closed_volume / float(position.volume)
            closed_at = self._clock()
        return {
            "closed_price": _first_price(result.price, _average_price(deals), request["price"]),
            "volume": closed_volume,
            "pnl": round(pnl, 2),
            "closed_at": iso_utc(closed_at),
        }

    def _modify_position(self, input_data: dict[str, Any]) -> dict[str, Any]:
        mt5 = self._module()
        ticket = parse_ticket(input_data)
        position = self._position(ticket)
        sl = optional_price(input_data, "sl", float(position.sl) or None)
        tp = optional_price(input_data, "tp", float(position.tp) or None)
        request = {
            "action": mt5.TRADE_ACTION_SLTP,
            "symbol": position.symbol,
            "position": ticket,
            "sl": sl or 0.0,
            "tp": tp or 0.0,
            "magic": self.magic,
        }
        result = mt5.order_send(request)
        if result is None:
            raise self._last_error("order_send")
        # Setting the levels a position already has is not an error for an API user.
        if result.retcode not in SUCCESS_RETCODES and result.retcode != TRADE_RETCODE_NO_CHANGES:
            raise _trade_error(result)
        return {"position": _position_view(mt5, self._position(ticket), self.server_offset())}

    def _get_account(self, input_data: dict[str, Any]) -> dict[str, Any]:
        account = self._module().account_info()
        if account is None:
            raise self._last_error("account_info")
        return {
            "balance": float(account.balance),
            "equity": float(account.equity),
            "margin_used": float(account.margin),
            "margin_available": float(account.margin_free),
            "currency": str(account.currency),
            "leverage": int(account.leverage),
        }

    def _get_candles(self, input_data: dict[str, Any]) -> dict[str, Any]:
        mt5 = self._module()
        symbol, timeframe, count = parse_candles_request(input_data)
        self._symbol(symbol)
        rates = mt5.copy_rates_from_pos(symbol, getattr(mt5, f"TIMEFRAME_{timeframe}"), 0, count)
        if rates is None:
            raise self._last_error("copy_rates_from_pos")
        offset = int(self.server_offset())
        return {"candles": [_candle(row, offset) for row in rates]}

    def _place_pending_order(self, input_data: dict[str, Any]) -> dict[str, Any]:
        mt5 = self._module()
        order = parse_pending_request(input_data)
        info = self._symbol(order.symbol)
        request: dict[str, Any] = {
            "action": mt5.TRADE_ACTION_PENDING,
            "symbol": order.symbol,
            "volume": self._normalize_volume(info, order.volume),
            "type": getattr(mt5, PENDING_ORDER_TYPES[(order.side, order.type)]),
            "price": order.price,
            "stoplimit": order.stop_limit_price or 0.0,
            "sl": order.sl or 0.0,
            "tp": order.tp or 0.0,
            "deviation": self.deviation,
            "magic": self.magic,
            "comment": COMMENT,
            **self._expiration_fields(input_data),
        }
        result = self._send_with_filling(request, info)
        placed = self._pending(int(result.order), missing_ok=True)
        placed_at = self._clock() if placed is None else self._utc(_setup_time(placed))
        return {"ticket": int(result.order), "placed_at": iso_utc(placed_at)}

    def _get_pending_orders(self, input_data: dict[str, Any]) -> dict[str, Any]:
        orders = self._module().orders_get()
        if orders is None:
            raise self._last_error("orders_get")
        offset = self.server_offset()
        return {
            "pending_orders": [
                _pending_view(order, offset)
                for order in orders
                if ORDER_TYPE_NAMES.get(int(order.type), ("", ""))[1] in PENDING_TYPES
            ]
        }

    def _modify_pending_order(self, input_data: dict[str, Any]) -> dict[str, Any]:
        mt5 = self._module()
        ticket = parse_ticket(input_data)
        order = self._pending(ticket)
        request: dict[str, Any] = {
            "action": mt5.TRADE_ACTION_MODIFY,
            "order": ticket,
            "symbol": order.symbol,
            "price": parse_positive(input_data, "price", optional=True) or float(order.price_open),
            "stoplimit": parse_positive(input_data, "stop_limit_price", optional=True)
            or float(order.price_stoplimit),
            "sl": optional_price(input_data, "sl", float(order.sl) or None) or 0.0,
            "tp": optional_price(input_data, "tp", float(order.tp) or None) or 0.0,
            "magic": self.magic,
        }
        if "expiration" in input_data:
            request.update(self._expiration_fields(input_data))
        else:
            request["type_time"] = int(order.type_time)
            request["expiration"] = int(order.time_expiration)
        result = mt5.order_send(request)
        if result is None:
            raise self._last_error("order_send")
        if result.retcode not in SUCCESS_RETCODES and result.retcode != TRADE_RETCODE_NO_CHANGES:
            raise _pending_error(result, ticket)
        return {"pending_order": _pending_view(self._pending(ticket), self.server_offset())}

    def _cancel_pending_order(self, input_data: dict[str, Any]) -> dict[str, Any]:
        mt5 = self._module()
        ticket = parse_ticket(input_data)
        order = self._pending(ticket)
        request = {"action": mt5.TRADE_ACTION_REMOVE, "order": ticket, "symbol": order.symbol}
        result = mt5.order_send(request)
        if result is None:
            raise self._last_error("order_send")
        if result.retcode not in SUCCESS_RETCODES:
            raise _pending_error(result, ticket)
        return {"ticket": ticket, "cancelled_at": iso_utc(self._clock())}

    def _get_history(self, input_data: dict[str, Any]) -> dict[str, Any]:
        request = parse_history_request(input_data)
        offset = self.server_offset()
        if request.kind == "deals":
            deals = [
                _deal_view(d, offset, self.magic)
                for d in self._history("history_deals_get", request, offset)
                if request.keeps(
                    int(d.ticket), _deal_time(d) - offset, str(d.symbol) or None, int(d.position_id)
                )
            ]
            deals.sort(key=lambda v: (v["time"], v["ticket"]), reverse=True)
            return {"deals": deals[: request.limit]}
        orders = [
            _history_order_view(o, offset, self.magic)
            for o in self._history("history_orders_get", request, offset)
            if int(o.state) in ORDER_STATES
            and request.keeps(
                int(o.ticket), _order_time(o) - offset, str(o.symbol), int(o.position_id)
            )
        ]
        orders.sort(key=lambda v: (v["done_at"] or v["placed_at"], v["ticket"]), reverse=True)
        return {"orders": orders[: request.limit]}

    def _get_symbols(self, input_data: dict[str, Any]) -> dict[str, Any]:
        mt5 = self._module()
        name = input_data.get("symbol")
        if name is not None:
            info = mt5.symbol_info(str(name))
            if info is None:
                error = self._last_error("symbol_info")
                if error.retcode in TERMINAL_LINK_ERRORS:
                    raise error
                raise BrokerError("symbol_not_found", f"the broker has no symbol {name!r}")
            return {"symbols": [_symbol_view(info)]}
        group = input_data.get("group")
        found = mt5.symbols_get(group=str(group)) if group else mt5.symbols_get()
        if found is None:
            raise self._last_error("symbols_get")
        # Without `all`, the symbols of Market Watch, as the terminal shows them.
        return {
            "symbols": [
                _symbol_view(info) for info in found if input_data.get("all") or info.visible
            ]
        }

    # -- the account watcher -----------------------------------------------------------

    def recent_deals(self, after_ticket: int, lookback_seconds: float) -> list[dict[str, Any]]:
        """Deals above ``after_ticket`` of the last ``lookback_seconds`` (the window in the
        server's time, up to a day ahead of it), oldest first."""
        self._ensure_ready()
        offset = self.server_offset()
        now = self._clock() + offset
        found = self._module().history_deals_get(int(now - lookback_seconds), int(now + 86_400))
        if found is None:
            error = self._last_error("history_deals_get")
            if error.retcode in TERMINAL_LINK_ERRORS or (error.retcode or 0) < 0:
                raise error
            found = ()
        deals = sorted((d for d in found if int(d.ticket) > after_ticket), key=lambda d: d.ticket)
        return [_deal_view(d, offset, self.magic) for d in deals]

    # -- the server's time zone --------------------------------------------------------

    def server_offset(self) -> float:
        """The broker server's zone in seconds east of UTC, measured from tick times (see
        the module docstring); the last good measurement while none can be made."""
        now = self._clock()
        tried_at = self._offset_measured_at
        if tried_at is not None and now - tried_at < OFFSET_REMEASURE_SECONDS:
            return self._offset
        newest = self._newest_tick_time()
        previous, self._newest_seen = self._newest_seen, newest
        # A tick that did not move since the last probe may be hours old (a closed market):
        # only the first probe, with nothing to compare, goes without that check.
        advanced = newest is not None and (previous is None or newest > previous)
        if newest is not None and advanced:
            difference = newest - now
            offset = round(difference / OFFSET_STEP_SECONDS) * OFFSET_STEP_SECONDS
            fresh = abs(difference - offset) <= OFFSET_TOLERANCE_SECONDS
            if fresh and MIN_OFFSET_SECONDS <= offset <= MAX_OFFSET_SECONDS:
                if offset != self._offset or not self._offset_known:
                    log.info("event=server_offset seconds=%d", offset)
                self._offset, self._offset_known = float(offset), True
                self._offset_measured_at = now
                return self._offset
        if not self._offset_known and tried_at is None:
            log.warning("event=server_offset_unknown assumed_seconds=%d", self._offset)
        # No fresh tick (the market is closed): keep the offset, try again in a minute.
        self._offset_measured_at = now - OFFSET_REMEASURE_SECONDS + OFFSET_RETRY_SECONDS
        return self._offset

    def _newest_tick_time(self) -> float | None:
        mt5 = self._module()
        symbols = mt5.symbols_get()
        if not symbols:
            return None
        newest: float | None = None
        for info in [s for s in symbols if s.visible][:OFFSET_PROBE_SYMBOLS]:
            tick = mt5.symbol_info_tick(info.name)
            if tick is None:
                continue
            moment = tick.time_msc / 1000 if getattr(tick, "time_msc", 0) else float(tick.time)
            newest = moment if newest is None else max(newest, moment)
        return newest

    def _utc(self, server_time: float) -> float:
        return server_time - self.server_offset()

    def _server_time(self, utc: float) -> int:
        return int(utc + self.server_offset())

    # -- helpers -------------------------------------------------------------------------

    def _module(self) -> Any:
        if self._mt5 is None:
            try:
                import MetaTrader5
            except ImportError:
                raise BrokerError(
                    "terminal_unavailable",
                    "the MetaTrader5 package is not installed: pip install MetaTrader5",
                ) from None
            self._mt5 = MetaTrader5
        return self._mt5

    def _ensure_ready(self) -> None:
        """Logs in again after the link to the terminal broke (the terminal restarted)."""
        if self._credentials is None:
            raise BrokerError("not_logged_in", "the agent has not logged into the terminal")
        if self._link_lost:
            log.warning("event=terminal_reconnect")
            self.close()
            self.login(*self._credentials)

    def _last_error(self, what: str) -> BrokerError:
        code, description = self._module().last_error()
        if code in TERMINAL_LINK_ERRORS:
            self._link_lost = True
        return BrokerError(last_error_code(code), f"{what} failed: {description}", code)

    def _symbol(self, symbol: str) -> Any:
        """The symbol's info, selected into Market Watch first if it is hidden."""
        mt5 = self._module()
        info = mt5.symbol_info(symbol)
        if info is None:
            error = self._last_error("symbol_info")
            if error.retcode in TERMINAL_LINK_ERRORS:
                raise error
            raise BrokerError("invalid_symbol", f"unknown symbol {symbol!r}")
        if not info.visible:
            if not mt5.symbol_select(symbol, True):
                error = self._last_error(f"symbol_select({symbol})")
                raise BrokerError("invalid_symbol", error.message, error.retcode)
            info = mt5.symbol_info(symbol) or info
        return info

    def _position(self, ticket: int) -> Any:
        positions = self._module().positions_get(ticket=ticket)
        if positions is None:
            error = self._last_error("positions_get")
            if error.retcode in TERMINAL_LINK_ERRORS:
                raise error
            positions = ()
        if not positions:
            raise BrokerError("position_not_found", f"no open position with ticket {ticket}")
        return positions[0]

    def _order_deals(self, order_ticket: int) -> tuple[Any, ...]:
        """The deals an order produced (several on a partial fill), oldest first; empty if
        the history does not show them (yet). ``history_deals_get(ticket=)`` selects by the
        ORDER's ticket (``DEAL_ORDER``), not by a deal's own ticket."""
        if not order_ticket:
            return ()
        deals = self._module().history_deals_get(ticket=order_ticket)
        if deals is None:
            code, description = self._module().last_error()
            log.warning(
                "event=deals_unavailable order=%s code=%s reason=%r",
                order_ticket,
                code,
                description,
            )
            return ()
        return tuple(sorted(deals, key=_deal_time))

    def _pending(self, ticket: int, *, missing_ok: bool = False) -> Any:
        orders = self._module().orders_get(ticket=ticket)
        if orders is None:
            error = self._last_error("orders_get")
            if error.retcode in TERMINAL_LINK_ERRORS:
                raise error
            orders = ()
        if not orders:
            if missing_ok:
                return None
            raise BrokerError("pending_order_not_found", f"no pending order with ticket {ticket}")
        return orders[0]

    def _expiration_fields(self, input_data: dict[str, Any]) -> dict[str, Any]:
        """``type_time`` and ``expiration`` (server time) of a pending order's request."""
        expiration, at = parse_expiration(input_data)
        fields: dict[str, Any] = {"type_time": EXPIRATION_TIMES[expiration["type"]]}
        fields["expiration"] = 0 if at is None else self._server_time(at)
        return fields

    def _history(self, function: str, request: HistoryRequest, offset: float) -> Any:
        """Deals or orders of the range (in server time), or of one position."""
        fetch = getattr(self._module(), function)
        if request.position_id is not None:
            found = fetch(position=request.position_id)
        else:
            found = fetch(int(request.start + offset), int(request.end + offset))
        if found is None:
            error = self._last_error(function)
            if error.retcode in TERMINAL_LINK_ERRORS or (error.retcode or 0) < 0:
                raise error
            found = ()
        return list(found)

    def _send_with_filling(self, request: dict[str, Any], info: Any) -> Any:
        """``order_send`` with the symbol's filling mode, falling back on 10030."""
        mt5 = self._module()
        modes = filling_modes(mt5, int(info.filling_mode))
        for index, mode in enumerate(modes):
            request["type_filling"] = mode
            result = mt5.order_send(request)
            if result is None:
                raise self._last_error("order_send")
            if result.retcode in SUCCESS_RETCODES:
                return result
            if result.retcode != TRADE_RETCODE_INVALID_FILL or index + 1 == len(modes):
                raise _trade_error(result)
            log.info(
                "event=filling_fallback symbol=%s rejected_mode=%s next_mode=%s",
                request["symbol"],
                mode,
                modes[index + 1],
            )
        raise AssertionError("filling_modes is never empty")

    @staticmethod
    def _normalize_volume(info: Any, volume: float) -> float:
        """Rounds to the symbol's ``volume_step`` and checks ``volume_min``/``volume_max``."""
        step = float(info.volume_step) or 0.01
        rounded = round_volume(math.floor(volume / step + 0.5 + 1e-9) * step)
        if rounded < info.volume_min - 1e-9 or rounded > info.volume_max + 1e-9:
            raise BrokerError(
                "invalid_volume",
                f"volume {volume} (rounded to {rounded}) is outside {info.name}'s range "
                f"{info.volume_min}–{info.volume_max} lots",
                TRADE_RETCODE_INVALID_VOLUME,
            )
        return rounded

    def _send_market(self, request: dict[str, Any], info: Any, side: str) -> Any:
        """``order_send`` at the current price, falling back through the filling modes on
        10030 and retrying requotes; returns the successful ``OrderSendResult``."""
        mt5 = self._module()
        modes = filling_modes(mt5, int(info.filling_mode))
        mode_index = 0
        requotes = 0
        while True:
            tick = mt5.symbol_info_tick(request["symbol"])
            if tick is None:
                raise self._last_error("symbol_info_tick")
            price = float(tick.ask if side == "buy" else tick.bid)
            if not price:
                raise BrokerError(
                    "price_off", f"no quotes for {request['symbol']}", TRADE_RETCODE_PRICE_OFF
                )
            request["price"] = price
            request["type_filling"] = modes[mode_index]
            result = mt5.order_send(request)
            if result is None:
                raise self._last_error("order_send")
            if result.retcode in SUCCESS_RETCODES:
                return result
            if result.retcode == TRADE_RETCODE_INVALID_FILL and mode_index + 1 < len(modes):
                log.info(
                    "event=filling_fallback symbol=%s rejected_mode=%s next_mode=%s",
                    request["symbol"],
                    modes[mode_index],
                    modes[mode_index + 1],
                )
                mode_index += 1
                continue
            if (
                result.retcode in (TRADE_RETCODE_REQUOTE, TRADE_RETCODE_PRICE_CHANGED)
                and requotes < REQUOTE_RETRIES
            ):
                requotes += 1
                continue
            raise _trade_error(result)


def filling_modes(mt5: Any, flags: int) -> list[int]:
    """The ``type_filling`` values to try, best first: the modes the symbol's flags allow
    (FOK, IOC), then RETURN, then the rest (some brokers' flags are wrong)."""
    modes: list[int] = []
    if flags & SYMBOL_FILLING_FOK:
        modes.append(mt5.ORDER_FILLING_FOK)
    if flags & SYMBOL_FILLING_IOC:
        modes.append(mt5.ORDER_FILLING_IOC)
    for mode in (mt5.ORDER_FILLING_RETURN, mt5.ORDER_FILLING_FOK, mt5.ORDER_FILLING_IOC):
        if mode not in modes:
            modes.append(mode)
    return modes


def _trade_error(result: Any) -> BrokerError:
    retcode = int(result.retcode)
    code = trade_retcode_code(retcode)
    comment = str(getattr(result, "comment", "") or "")
    return BrokerError(code, comment or code.replace("_", " "), retcode)


def _first_price(*candidates: Any) -> float:
    """The first non-zero price (some brokers answer ``price=0.0`` for market orders)."""
    for candidate in candidates:
        if candidate:
            return float(candidate)
    return 0.0


def _average_price(deals: tuple[Any, ...]) -> float:
    """The volume-weighted price of an order's deals; 0.0 without any."""
    if len(deals) == 1:
        return float(deals[0].price)
    volume = sum(float(deal.volume) for deal in deals)
    if not volume:
        return 0.0
    return round(sum(float(deal.price) * float(deal.volume) for deal in deals) / volume, 8)


def _deal_time(deal: Any) -> float:
    time_msc = getattr(deal, "time_msc", 0)
    return time_msc / 1000 if time_msc else float(deal.time)


def _position_view(mt5: Any, position: Any, offset: float) -> dict[str, Any]:
    time_msc = getattr(position, "time_msc", 0)
    return {
        "position_id": int(position.ticket),
        "symbol": str(position.symbol),
        "side": "buy" if position.type == mt5.POSITION_TYPE_BUY else "sell",
        "volume": float(position.volume),
        "open_price": float(position.price_open),
        "current_price": float(position.price_current),
        "sl": float(position.sl) or None,
        "tp": float(position.tp) or None,
        "profit": float(position.profit),
        "swap": float(position.swap),
        "opened_at": iso_utc((time_msc / 1000 if time_msc else float(position.time)) - offset),
    }


def _candle(row: Any, offset: int) -> dict[str, Any]:
    """One rate, whatever its shape: a numpy structured row (what the package returns), a
    mapping, a namedtuple, or a plain tuple in MT5's field order."""
    if getattr(getattr(row, "dtype", None), "names", None):
        values = [row[name] for name in RATE_FIELDS]
    elif isinstance(row, Mapping):
        values = [row[name] for name in RATE_FIELDS]
    elif hasattr(row, "_fields"):
        values = [getattr(row, name) for name in RATE_FIELDS]
    else:
        values = list(row[: len(RATE_FIELDS)])
    time_, open_, high, low, close, volume = values
    return {
        "time": int(time_) - offset,
        "open": float(open_),
        "high": float(high),
        "low": float(low),
        "close": float(close),
        "volume": int(volume),
    }


PENDING_TYPES = frozenset({"limit", "stop", "stop_limit"})


def _pending_error(result: Any, ticket: int) -> BrokerError:
    """A refused change of a pending order; an order that is gone is not found."""
    if int(result.retcode) == TRADE_RETCODE_INVALID_ORDER:
        return BrokerError(
            "pending_order_not_found", f"no pending order with ticket {ticket}", int(result.retcode)
        )
    return _trade_error(result)


def _setup_time(order: Any) -> float:
    msc = getattr(order, "time_setup_msc", 0)
    return msc / 1000 if msc else float(order.time_setup)


def _pending_view(order: Any, offset: float) -> dict[str, Any]:
    side, kind = ORDER_TYPE_NAMES[int(order.type)]
    expiration = EXPIRATION_NAMES.get(int(order.type_time), "gtc")
    at = None
    if expiration == "specified" and order.time_expiration:
        at = iso_utc(float(order.time_expiration) - offset)
    return {
        "ticket": int(order.ticket),
        "symbol": str(order.symbol),
        "side": side,
        "type": kind,
        "volume": float(order.volume_current or order.volume_initial),
        "price": float(order.price_open),
        "stop_limit_price": float(order.price_stoplimit) or None,
        "sl": float(order.sl) or None,
        "tp": float(order.tp) or None,
        "expiration": {"type": expiration, "at": at},
        "placed_at": iso_utc(_setup_time(order) - offset),
    }


def _reason(reason: int, magic: int, ours: int) -> str:
    """Who caused a deal or an order: `mt5gate` for what our agent sent (its magic number),
    unless the broker's own stop (sl, tp, stop-out) did."""
    name = REASONS.get(int(reason), "other")
    if int(magic) == ours and name not in ("sl", "tp", "stop_out"):
        return "mt5gate"
    return name


def _deal_view(deal: Any, offset: float, magic: int) -> dict[str, Any]:
    kind = DEAL_TYPES.get(int(deal.type), "other")
    trade = kind in ("buy", "sell")
    return {
        "ticket": int(deal.ticket),
        "order_ticket": int(deal.order) or None,
        "position_id": int(deal.position_id) or None,
        "type": kind,
        "symbol": str(deal.symbol) if trade and deal.symbol else None,
        "side": kind if trade else None,
        "entry": DEAL_ENTRIES.get(int(deal.entry)) if trade else None,
        "volume": float(deal.volume),
        "price": float(deal.price),
        "profit": float(deal.profit),
        "commission": float(deal.commission),
        "swap": float(deal.swap),
        "fee": float(getattr(deal, "fee", 0.0) or 0.0),
        "reason": _reason(deal.reason, deal.magic, magic),
        "time": iso_utc(_deal_time(deal) - offset),
    }


def _order_time(order: Any) -> float:
    """When an order finished (when it was placed, if it has no done time)."""
    done_msc = getattr(order, "time_done_msc", 0)
    done = done_msc / 1000 if done_msc else float(order.time_done)
    return done or _setup_time(order)


def _history_order_view(order: Any, offset: float, magic: int) -> dict[str, Any]:
    side, kind = ORDER_TYPE_NAMES.get(int(order.type), ("buy", "market"))
    done = float(order.time_done_msc) / 1000 if order.time_done_msc else float(order.time_done)
    return {
        "ticket": int(order.ticket),
        "position_id": int(order.position_id) or None,
        "symbol": str(order.symbol),
        "side": side,
        "type": kind,
        "volume_initial": float(order.volume_initial),
        "volume_filled": round_volume(float(order.volume_initial) - float(order.volume_current)),
        "price": float(order.price_open) or float(order.price_current),
        "state": ORDER_STATES[int(order.state)],
        "reason": _reason(order.reason, order.magic, magic),
        "placed_at": iso_utc(_setup_time(order) - offset),
        "done_at": iso_utc(done - offset) if done else None,
    }


def _symbol_view(info: Any) -> dict[str, Any]:
    flags = int(info.filling_mode)
    fillings = [
        name
        for name, bit in (("fok", SYMBOL_FILLING_FOK), ("ioc", SYMBOL_FILLING_IOC))
        if flags & bit
    ]
    # RETURN needs no flag: MT5 allows it in every execution mode but Market.
    if int(info.trade_exemode) != 2:
        fillings.append("return")
    expirations = int(getattr(info, "expiration_mode", 15))
    orders = int(info.order_mode)
    return {
        "name": str(info.name),
        "description": str(info.description),
        "digits": int(info.digits),
        "point": float(info.point),
        "contract_size": float(info.trade_contract_size),
        "currency_base": str(info.currency_base),
        "currency_profit": str(info.currency_profit),
        "volume_min": float(info.volume_min),
        "volume_max": float(info.volume_max),
        "volume_step": float(info.volume_step),
        "stops_level": int(info.trade_stops_level),
        "freeze_level": int(info.trade_freeze_level),
        "trade_mode": TRADE_MODES.get(int(info.trade_mode), "disabled"),
        "execution_mode": EXECUTION_MODES.get(int(info.trade_exemode), "market"),
        "filling_modes": fillings,
        "expiration_modes": [name for name, bit in EXPIRATION_FLAGS if expirations & bit],
        "order_modes": [name for name, bit in ORDER_FLAGS if orders & bit],
    }
