"""The real backend: a MetaTrader 5 terminal on this machine, through the ``MetaTrader5`` package.

The package's functions answer None (or False) on failure and leave the reason in
``last_error()``; every call here checks for that. Market orders go through
:meth:`Mt5Backend._send_market`, which picks the filling mode from the symbol's
``filling_mode`` flags and falls back to the next one on retcode 10030 (``invalid_fill``),
the classic trap of brokers that support only IOC or only FOK. Requotes are retried at the
fresh price, twice at most.

``MetaTrader5`` is imported when the backend logs in, so this module imports anywhere.
All calls must come from one thread (the agent's :class:`BackendWorker`).

Times: MT5 reports ``time``/``time_msc`` as epoch values; they are passed on unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from mt5gate_agent.backends.base import (
    BrokerError,
    iso_utc,
    optional_price,
    parse_candles_request,
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
            result[symbol] = {"bid": float(tick.bid), "ask": float(tick.ask), "ts": ts}
        return result

    def execute(self, job_type: str, input_data: dict[str, Any]) -> dict[str, Any]:
        handler = self._handlers.get(job_type)
        if handler is None:
            raise BrokerError("unsupported_job_type", f"unknown job type {job_type!r}")
        self._ensure_ready()
        return handler(self, input_data)

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
        filled_at = _deal_time(deals[-1]) if deals else self._clock()
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
        return {"positions": [_position_view(self._module(), p) for p in positions]}

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
            closed_at = _deal_time(deals[-1])
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
        return {"position": _position_view(mt5, self._position(ticket))}

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
        return {"candles": [_candle(row) for row in rates]}

    _handlers: dict[str, Callable[[Mt5Backend, dict[str, Any]], dict[str, Any]]] = {
        "trade": _trade,
        "get_positions": _get_positions,
        "close_position": _close_position,
        "modify_position": _modify_position,
        "get_account": _get_account,
        "get_candles": _get_candles,
    }

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


def _position_view(mt5: Any, position: Any) -> dict[str, Any]:
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
        "opened_at": iso_utc(time_msc / 1000 if time_msc else float(position.time)),
    }


def _candle(row: Any) -> dict[str, Any]:
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
        "time": int(time_),
        "open": float(open_),
        "high": float(high),
        "low": float(low),
        "close": float(close),
        "volume": int(volume),
    }
