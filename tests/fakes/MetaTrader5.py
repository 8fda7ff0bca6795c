"""A fake ``MetaTrader5`` module for Linux tests: the package's documented functions, constants
and namedtuple return shapes, over a tiny in-memory hedging account.

The real package is a blocking IPC client of a Windows terminal; this one follows its
contract (functions answer None or False on failure and leave ``(code, description)`` in
``last_error()``; ``order_send`` takes a request dict and returns an ``OrderSendResult``
whose ``retcode`` says what happened) and is scriptable per test through :data:`terminal`:

- ``terminal.script_retcodes``: retcodes the next ``order_send`` calls answer, in order;
- ``terminal.fail_next``: ``{"function_name": (code, description)}`` to make the next
  call of that function answer None/False;
- each symbol's ``accepted_fillings``: the ``type_filling`` values the broker takes (any
  other answers 10030, the invalid-fill trap);
- ``terminal.requests``: every request ``order_send`` received.

Call :func:`reset` between tests.
"""

from __future__ import annotations

import fnmatch
from collections import namedtuple
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__version__ = "5.0.4424"
__author__ = "fake"

# -- constants (values as in the real package) -----------------------------------------

TIMEFRAME_M1 = 1
TIMEFRAME_M5 = 5
TIMEFRAME_M15 = 15
TIMEFRAME_M30 = 30
TIMEFRAME_H1 = 1 | 0x4000
TIMEFRAME_H4 = 4 | 0x4000
TIMEFRAME_D1 = 24 | 0x4000
TIMEFRAME_W1 = 1 | 0x8000
TIMEFRAME_MN1 = 1 | 0xC000
TIMEFRAME_SECONDS = {
    TIMEFRAME_M1: 60,
    TIMEFRAME_M5: 300,
    TIMEFRAME_M15: 900,
    TIMEFRAME_M30: 1800,
    TIMEFRAME_H1: 3600,
    TIMEFRAME_H4: 14400,
    TIMEFRAME_D1: 86400,
    TIMEFRAME_W1: 604800,
    TIMEFRAME_MN1: 2592000,
}

TRADE_ACTION_DEAL = 1
TRADE_ACTION_PENDING = 5
TRADE_ACTION_SLTP = 6
TRADE_ACTION_MODIFY = 7
TRADE_ACTION_REMOVE = 8
TRADE_ACTION_CLOSE_BY = 10

ORDER_TYPE_BUY = 0
ORDER_TYPE_SELL = 1
ORDER_FILLING_FOK = 0
ORDER_FILLING_IOC = 1
ORDER_FILLING_RETURN = 2
ORDER_FILLING_BOC = 3
ORDER_TIME_GTC = 0

POSITION_TYPE_BUY = 0
POSITION_TYPE_SELL = 1
DEAL_TYPE_BUY = 0
DEAL_TYPE_SELL = 1
DEAL_ENTRY_IN = 0
DEAL_ENTRY_OUT = 1

SYMBOL_TRADE_MODE_FULL = 4

TRADE_RETCODE_REQUOTE = 10004
TRADE_RETCODE_REJECT = 10006
TRADE_RETCODE_DONE = 10009
TRADE_RETCODE_INVALID = 10013
TRADE_RETCODE_INVALID_VOLUME = 10014
TRADE_RETCODE_INVALID_PRICE = 10015
TRADE_RETCODE_INVALID_STOPS = 10016
TRADE_RETCODE_MARKET_CLOSED = 10018
TRADE_RETCODE_NO_MONEY = 10019
TRADE_RETCODE_NO_CHANGES = 10025
TRADE_RETCODE_INVALID_FILL = 10030
TRADE_RETCODE_POSITION_CLOSED = 10036

RES_S_OK = 1
RES_E_FAIL = -1
RES_E_INVALID_PARAMS = -2
RES_E_NOT_FOUND = -4
RES_E_AUTH_FAILED = -6
RES_E_INTERNAL_FAIL_CONNECT = -10004
RES_E_INTERNAL_FAIL_TIMEOUT = -10005

# -- return shapes ---------------------------------------------------------------------

TerminalInfo = namedtuple(
    "TerminalInfo",
    "community_account community_connection connected dlls_allowed trade_allowed "
    "tradeapi_disabled email_enabled ftp_enabled notifications_enabled mqid build maxbars "
    "codepage ping_last community_balance retransmission company name language path "
    "data_path commondata_path",
)
AccountInfo = namedtuple(
    "AccountInfo",
    "login trade_mode leverage limit_orders margin_so_mode trade_allowed trade_expert "
    "margin_mode currency_digits fifo_close balance credit profit equity margin margin_free "
    "margin_level margin_so_call margin_so_so margin_initial margin_maintenance assets "
    "liabilities commission_blocked name server currency company",
)
SymbolInfo = namedtuple(
    "SymbolInfo",
    "custom chart_mode select visible digits spread spread_float trade_calc_mode trade_mode "
    "trade_stops_level trade_freeze_level trade_exemode filling_mode order_mode bid ask "
    "point trade_tick_value trade_tick_size trade_contract_size volume_min volume_max "
    "volume_step currency_base currency_profit currency_margin description path name",
)
Tick = namedtuple("Tick", "time bid ask last volume time_msc flags volume_real")
TradePosition = namedtuple(
    "TradePosition",
    "ticket time time_msc time_update time_update_msc type magic identifier reason volume "
    "price_open sl tp price_current swap profit symbol comment external_id",
)
TradeDeal = namedtuple(
    "TradeDeal",
    "ticket order time time_msc type entry magic position_id reason volume price commission "
    "swap profit fee symbol comment external_id",
)
TradeRequest = namedtuple(
    "TradeRequest",
    "action magic order symbol volume price stoplimit sl tp deviation type type_filling "
    "type_time expiration comment position position_by",
)
OrderSendResult = namedtuple(
    "OrderSendResult",
    "retcode deal order volume price bid ask comment request_id retcode_external request",
)


class StructuredRates(list):  # type: ignore[type-arg]
    """Stands in for the numpy structured array ``copy_rates_*`` returns (numpy is not a
    test dependency): rows indexable by field name, a ``dtype`` with ``names``."""

    class _DType:
        names = ("time", "open", "high", "low", "close", "tick_volume", "spread", "real_volume")

    dtype = _DType()


class _Record(tuple):  # type: ignore[type-arg]
    dtype = StructuredRates._DType()

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self.dtype.names.index(key))
        return tuple.__getitem__(self, key)


# -- the fake terminal -----------------------------------------------------------------


@dataclass
class FakeSymbol:
    name: str
    bid: float
    ask: float
    digits: int = 5
    contract_size: float = 100_000
    volume_min: float = 0.01
    volume_max: float = 100.0
    volume_step: float = 0.01
    filling_mode: int = 1  # SYMBOL_FILLING_FOK
    accepted_fillings: tuple[int, ...] = (ORDER_FILLING_FOK,)
    visible: bool = True
    currency_profit: str = "USD"

    def info(self) -> Any:
        point = 10.0**-self.digits
        return SymbolInfo(
            custom=False,
            chart_mode=0,
            select=self.visible,
            visible=self.visible,
            digits=self.digits,
            spread=round((self.ask - self.bid) / point),
            spread_float=True,
            trade_calc_mode=0,
            trade_mode=SYMBOL_TRADE_MODE_FULL,
            trade_stops_level=0,
            trade_freeze_level=0,
            trade_exemode=2,
            filling_mode=self.filling_mode,
            order_mode=127,
            bid=self.bid,
            ask=self.ask,
            point=point,
            trade_tick_value=1.0,
            trade_tick_size=point,
            trade_contract_size=self.contract_size,
            volume_min=self.volume_min,
            volume_max=self.volume_max,
            volume_step=self.volume_step,
            currency_base=self.name[:3],
            currency_profit=self.currency_profit,
            currency_margin=self.name[:3],
            description=self.name,
            path=f"Forex\\{self.name}",
            name=self.name,
        )


@dataclass
class FakeTerminal:
    initialized: bool = False
    logged_in: int | None = None
    connected: bool = True
    trade_allowed: bool = True
    accounts: dict[int, tuple[str, str]] = field(
        default_factory=lambda: {12345678: ("Demo-Server", "secret")}
    )
    symbols: dict[str, FakeSymbol] = field(default_factory=dict)
    positions: dict[int, dict[str, Any]] = field(default_factory=dict)
    deals: dict[int, Any] = field(default_factory=dict)
    balance: float = 10_000.0
    next_ticket: int = 1_000_001
    # Deals have tickets of their own, from another sequence (as on a real server).
    next_deal_ticket: int = 7_000_001
    error: tuple[int, str] = (RES_S_OK, "Success")
    script_retcodes: list[int] = field(default_factory=list)
    fail_next: dict[str, tuple[int, str]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    rates: Any = None
    rates_calls: list[tuple[str, int, int, int]] = field(default_factory=list)
    history_visible: bool = True
    now: float = 1_764_000_000.0

    def ticket(self) -> int:
        ticket = self.next_ticket
        self.next_ticket += 1
        return ticket

    def deal_ticket(self) -> int:
        ticket = self.next_deal_ticket
        self.next_deal_ticket += 1
        return ticket


terminal = FakeTerminal()


def reset() -> FakeTerminal:
    """A fresh terminal with EURUSD (FOK only), USDJPY (IOC only) and a hidden GBPUSD."""
    global terminal
    terminal = FakeTerminal()
    terminal.symbols = {
        "EURUSD": FakeSymbol("EURUSD", 1.08500, 1.08510),
        "USDJPY": FakeSymbol(
            "USDJPY",
            151.500,
            151.512,
            digits=3,
            filling_mode=2,
            accepted_fillings=(ORDER_FILLING_IOC,),
            currency_profit="JPY",
        ),
        "GBPUSD": FakeSymbol(
            "GBPUSD",
            1.27000,
            1.27012,
            visible=False,
            filling_mode=3,
            accepted_fillings=(ORDER_FILLING_FOK, ORDER_FILLING_IOC),
        ),
    }
    return terminal


reset()


def _fail(name: str) -> bool:
    failure = terminal.fail_next.pop(name, None)
    if failure is not None:
        terminal.error = failure
        return True
    return False


def _ok() -> None:
    terminal.error = (RES_S_OK, "Success")


def _link_ok() -> bool:
    if not terminal.initialized:
        terminal.error = (
            RES_E_INTERNAL_FAIL_CONNECT,
            "IPC initialize failed, MetaTrader 5 x64 not found",
        )
        return False
    return True


# -- the package's functions -----------------------------------------------------------


def initialize(
    path: str | None = None,
    *,
    login: int | None = None,
    password: str = "",
    server: str = "",
    timeout: int = 60_000,
    portable: bool = False,
) -> bool:
    """As documented: with ``login`` (and password, server) it also logs in."""
    if _fail("initialize"):
        return False
    terminal.initialized = True
    _ok()
    if login is not None:
        return _login(login, password=password, server=server, timeout=timeout)
    return True


def login(login: int, password: str = "", server: str = "", timeout: int = 60_000) -> bool:
    if not _link_ok() or _fail("login"):
        return False
    if terminal.accounts.get(login) != (server, password):
        terminal.error = (RES_E_AUTH_FAILED, "Authorization failed")
        return False
    terminal.logged_in = login
    _ok()
    return True


_login = login


def shutdown() -> None:
    terminal.initialized = False


def last_error() -> tuple[int, str]:
    return terminal.error


def version() -> tuple[int, int, str] | None:
    if not _link_ok():
        return None
    return (500, 4424, "01 Jun 2024")


def terminal_info() -> Any:
    if not _link_ok() or _fail("terminal_info"):
        return None
    return TerminalInfo(
        False,
        False,
        terminal.connected,
        False,
        terminal.trade_allowed,
        False,
        False,
        False,
        False,
        0,
        4424,
        100_000,
        0,
        12_000,
        0.0,
        0.0,
        "Fake Broker",
        "MetaTrader 5",
        "English",
        "C:\\MT5",
        "C:\\MT5\\data",
        "C:\\MT5\\common",
    )


def account_info() -> Any:
    if not _link_ok() or _fail("account_info"):
        return None
    profit = sum(p["profit"] for p in terminal.positions.values())
    margin = sum(p["volume"] * 1000 for p in terminal.positions.values())
    equity = terminal.balance + profit
    return AccountInfo(
        terminal.logged_in,
        0,
        100,
        200,
        0,
        True,
        True,
        2,
        2,
        False,
        terminal.balance,
        0.0,
        profit,
        equity,
        margin,
        equity - margin,
        equity / margin * 100 if margin else 0.0,
        50.0,
        30.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        "Test Trader",
        "Demo-Server",
        "USD",
        "Fake Broker",
    )


def symbol_info(symbol: str) -> Any:
    if not _link_ok() or _fail("symbol_info"):
        return None
    spec = terminal.symbols.get(symbol)
    if spec is None:
        terminal.error = (RES_E_NOT_FOUND, "Terminal: Not found")
        return None
    _ok()
    return spec.info()


def symbol_info_tick(symbol: str) -> Any:
    if not _link_ok() or _fail("symbol_info_tick"):
        return None
    spec = terminal.symbols.get(symbol)
    if spec is None or not spec.visible:
        terminal.error = (RES_E_NOT_FOUND, "Terminal: Not found")
        return None
    _ok()
    msc = int(terminal.now * 1000)
    return Tick(int(terminal.now), spec.bid, spec.ask, 0.0, 0, msc, 6, 0.0)


def symbol_select(symbol: str, enable: bool | None = None) -> bool:
    if not _link_ok() or _fail("symbol_select"):
        return False
    spec = terminal.symbols.get(symbol)
    if spec is None:
        terminal.error = (RES_E_NOT_FOUND, "Terminal: Not found")
        return False
    spec.visible = enable is not False  # documented: only False removes it
    _ok()
    return True


def positions_get(
    symbol: str | None = None, group: str | None = None, ticket: int | None = None
) -> Any:
    if not _link_ok() or _fail("positions_get"):
        return None
    _ok()
    rows = [
        _position_tuple(p)
        for p in terminal.positions.values()
        # Documented: with a symbol, the ticket is ignored.
        if (symbol is None and (ticket is None or p["ticket"] == ticket)) or p["symbol"] == symbol
        if group is None or _in_group(p["symbol"], group)
    ]
    return tuple(rows)


def positions_total() -> int:
    return len(terminal.positions)


def history_deals_get(
    date_from: Any = None,
    date_to: Any = None,
    *,
    group: str | None = None,
    ticket: int | None = None,
    position: int | None = None,
) -> Any:
    """As documented: ``ticket=`` is an ORDER's ticket and selects the deals it produced
    (``DEAL_ORDER``), ``position=`` selects by ``DEAL_POSITION_ID``, either one makes the
    other filters ignored; else deals between ``date_from`` and ``date_to`` (datetimes or
    epoch seconds), of the symbols matching ``group``. None + last_error() on failure."""
    if not _link_ok() or _fail("history_deals_get"):
        return None
    if ticket is None and position is None and (date_from is None or date_to is None):
        terminal.error = (RES_E_INVALID_PARAMS, "Invalid arguments")
        return None
    _ok()
    if not terminal.history_visible:
        return ()
    if ticket is not None:
        return tuple(d for d in terminal.deals.values() if d.order == ticket)
    if position is not None:
        return tuple(d for d in terminal.deals.values() if d.position_id == position)
    start, end = _epoch(date_from), _epoch(date_to)
    return tuple(
        d
        for d in terminal.deals.values()
        if start <= d.time <= end and (group is None or _in_group(d.symbol, group))
    )


def _in_group(symbol: str, group: str) -> bool:
    """The documented ``group`` filter: comma-separated masks with ``*``; a mask after
    ``!`` excludes what it matches."""
    masks = [mask.strip() for mask in group.split(",") if mask.strip()]
    included = any(fnmatch.fnmatchcase(symbol, m) for m in masks if not m.startswith("!"))
    excluded = any(fnmatch.fnmatchcase(symbol, m[1:]) for m in masks if m.startswith("!"))
    return included and not excluded


def _epoch(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def copy_rates_from_pos(symbol: str, timeframe: int, start_pos: int, count: int) -> Any:
    if not _link_ok() or _fail("copy_rates_from_pos"):
        return None
    terminal.rates_calls.append((symbol, timeframe, start_pos, count))
    if symbol not in terminal.symbols or timeframe not in TIMEFRAME_SECONDS:
        terminal.error = (RES_E_INVALID_PARAMS, "Invalid params")
        return None
    _ok()
    if terminal.rates is not None:
        return terminal.rates
    seconds = TIMEFRAME_SECONDS[timeframe]
    spec = terminal.symbols[symbol]
    start = int(terminal.now) // seconds * seconds - (count - 1) * seconds
    rows = StructuredRates()
    price = spec.bid
    for i in range(count):
        open_ = round(price, spec.digits)
        close = round(price * (1.0005 if i % 2 else 0.9996), spec.digits)
        rows.append(
            _Record(
                (
                    start + i * seconds,
                    open_,
                    max(open_, close) + 0.0002,
                    min(open_, close) - 0.0002,
                    close,
                    100 + i,
                    10,
                    0,
                )
            )
        )
        price = close
    return rows


def order_send(request: dict[str, Any]) -> Any:
    if not _link_ok() or _fail("order_send"):
        return None
    terminal.requests.append(dict(request))
    _ok()
    if terminal.script_retcodes:
        return _result(terminal.script_retcodes.pop(0), request, comment="scripted")
    action = request.get("action")
    spec = terminal.symbols.get(request.get("symbol", ""))
    if spec is None:
        terminal.error = (RES_E_INVALID_PARAMS, 'Invalid "symbol" argument')
        return None
    if action == TRADE_ACTION_SLTP:
        position = terminal.positions.get(request.get("position", 0))
        if position is None:
            return _result(TRADE_RETCODE_POSITION_CLOSED, request, comment="Position doesn't exist")
        sl, tp = request.get("sl", 0.0), request.get("tp", 0.0)
        if (position["sl"], position["tp"]) == (sl, tp):
            return _result(TRADE_RETCODE_NO_CHANGES, request, comment="No changes")
        position["sl"], position["tp"] = sl, tp
        return _result(TRADE_RETCODE_DONE, request, comment="Request executed")
    if action != TRADE_ACTION_DEAL:
        return _result(TRADE_RETCODE_INVALID, request, comment="Invalid request")
    if request.get("type_filling") not in spec.accepted_fillings:
        return _result(TRADE_RETCODE_INVALID_FILL, request, comment="Unsupported filling mode")
    if not terminal.trade_allowed:
        return _result(10027, request, comment="AutoTrading disabled by client")
    volume = request["volume"]
    buy = request["type"] == ORDER_TYPE_BUY
    price = spec.ask if buy else spec.bid
    order = terminal.ticket()
    deal_ticket = terminal.deal_ticket()
    now = terminal.now
    if "position" in request and request["position"]:
        position = terminal.positions.get(request["position"])
        if position is None:
            return _result(TRADE_RETCODE_POSITION_CLOSED, request, comment="Position doesn't exist")
        direction = 1 if position["type"] == POSITION_TYPE_BUY else -1
        profit = round(
            (price - position["price_open"]) * direction * spec.contract_size * volume, 2
        )
        if spec.currency_profit == "JPY":
            profit = round(profit / price, 2)
        terminal.balance += profit
        position["volume"] = round(position["volume"] - volume, 8)
        if position["volume"] <= 0:
            del terminal.positions[position["ticket"]]
        else:
            position["profit"] = round(
                position["profit"] * position["volume"] / (position["volume"] + volume), 2
            )
        terminal.deals[deal_ticket] = TradeDeal(
            deal_ticket,
            order,
            int(now),
            int(now * 1000),
            DEAL_TYPE_BUY if buy else DEAL_TYPE_SELL,
            DEAL_ENTRY_OUT,
            request.get("magic", 0),
            position["ticket"],
            3,
            volume,
            price,
            -0.5,
            0.0,
            profit,
            0.0,
            spec.name,
            request.get("comment", ""),
            "",
        )
    else:
        terminal.positions[order] = {
            "ticket": order,
            "time": int(now),
            "time_msc": int(now * 1000),
            "type": POSITION_TYPE_BUY if buy else POSITION_TYPE_SELL,
            "magic": request.get("magic", 0),
            "volume": volume,
            "price_open": price,
            "sl": request.get("sl", 0.0),
            "tp": request.get("tp", 0.0),
            "price_current": spec.bid if buy else spec.ask,
            "swap": 0.0,
            "profit": 0.0,
            "symbol": spec.name,
            "comment": request.get("comment", ""),
        }
        terminal.deals[deal_ticket] = TradeDeal(
            deal_ticket,
            order,
            int(now),
            int(now * 1000),
            DEAL_TYPE_BUY if buy else DEAL_TYPE_SELL,
            DEAL_ENTRY_IN,
            request.get("magic", 0),
            order,
            3,
            volume,
            price,
            -0.5,
            0.0,
            0.0,
            0.0,
            spec.name,
            request.get("comment", ""),
            "",
        )
    return _result(
        TRADE_RETCODE_DONE,
        request,
        deal=deal_ticket,
        order=order,
        volume=volume,
        price=price,
        comment="Request executed",
    )


def _result(
    retcode: int,
    request: dict[str, Any],
    *,
    deal: int = 0,
    order: int = 0,
    volume: float = 0.0,
    price: float = 0.0,
    comment: str = "",
) -> Any:
    fields = {name: request.get(name, 0) for name in TradeRequest._fields}
    return OrderSendResult(
        retcode, deal, order, volume, price, 0.0, 0.0, comment, 1, 0, TradeRequest(**fields)
    )


def _position_tuple(p: dict[str, Any]) -> Any:
    return TradePosition(
        p["ticket"],
        p["time"],
        p["time_msc"],
        p["time"],
        p["time_msc"],
        p["type"],
        p["magic"],
        p["ticket"],
        3,
        p["volume"],
        p["price_open"],
        p["sl"],
        p["tp"],
        p["price_current"],
        p["swap"],
        p["profit"],
        p["symbol"],
        p["comment"],
        "",
    )
