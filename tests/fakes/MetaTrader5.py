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
- ``terminal.requests``: every request ``order_send`` received;
- ``terminal.server_offset``: the broker server's zone, in seconds east of UTC. As the real
  terminal does, every time the module reports (ticks, positions, orders, deals, rates) and
  every time it takes (``expiration``, ``date_from``/``date_to``) is in the server's zone
  counted as if it were UTC: ``terminal.now + server_offset`` for the UTC time ``now``.
- pending orders (``TRADE_ACTION_PENDING``/``MODIFY``/``REMOVE``) rest in
  ``terminal.orders``; :func:`trigger_pending` fills those the current quotes reach, and
  every finished order is kept for ``history_orders_get``.

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
ORDER_TYPE_BUY_LIMIT = 2
ORDER_TYPE_SELL_LIMIT = 3
ORDER_TYPE_BUY_STOP = 4
ORDER_TYPE_SELL_STOP = 5
ORDER_TYPE_BUY_STOP_LIMIT = 6
ORDER_TYPE_SELL_STOP_LIMIT = 7
ORDER_TYPE_CLOSE_BY = 8
ORDER_FILLING_FOK = 0
ORDER_FILLING_IOC = 1
ORDER_FILLING_RETURN = 2
ORDER_FILLING_BOC = 3
ORDER_TIME_GTC = 0
ORDER_TIME_DAY = 1
ORDER_TIME_SPECIFIED = 2
ORDER_TIME_SPECIFIED_DAY = 3
ORDER_STATE_STARTED = 0
ORDER_STATE_PLACED = 1
ORDER_STATE_CANCELED = 2
ORDER_STATE_PARTIAL = 3
ORDER_STATE_FILLED = 4
ORDER_STATE_REJECTED = 5
ORDER_STATE_EXPIRED = 6
ORDER_REASON_CLIENT = 0
ORDER_REASON_MOBILE = 1
ORDER_REASON_WEB = 2
ORDER_REASON_EXPERT = 3
ORDER_REASON_SL = 4
ORDER_REASON_TP = 5
ORDER_REASON_SO = 6

POSITION_TYPE_BUY = 0
POSITION_TYPE_SELL = 1
DEAL_TYPE_BUY = 0
DEAL_TYPE_SELL = 1
DEAL_TYPE_BALANCE = 2
DEAL_TYPE_CREDIT = 3
DEAL_TYPE_CHARGE = 4
DEAL_TYPE_COMMISSION = 7
DEAL_ENTRY_IN = 0
DEAL_ENTRY_OUT = 1
DEAL_ENTRY_INOUT = 2
DEAL_ENTRY_OUT_BY = 3
DEAL_REASON_CLIENT = 0
DEAL_REASON_MOBILE = 1
DEAL_REASON_WEB = 2
DEAL_REASON_EXPERT = 3
DEAL_REASON_SL = 4
DEAL_REASON_TP = 5
DEAL_REASON_SO = 6
DEAL_REASON_ROLLOVER = 7
DEAL_REASON_VMARGIN = 8
DEAL_REASON_SPLIT = 9

SYMBOL_TRADE_MODE_DISABLED = 0
SYMBOL_TRADE_MODE_LONGONLY = 1
SYMBOL_TRADE_MODE_SHORTONLY = 2
SYMBOL_TRADE_MODE_CLOSEONLY = 3
SYMBOL_TRADE_MODE_FULL = 4
SYMBOL_TRADE_EXECUTION_REQUEST = 0
SYMBOL_TRADE_EXECUTION_INSTANT = 1
SYMBOL_TRADE_EXECUTION_MARKET = 2
SYMBOL_TRADE_EXECUTION_EXCHANGE = 3

TRADE_RETCODE_REQUOTE = 10004
TRADE_RETCODE_REJECT = 10006
TRADE_RETCODE_PLACED = 10008
TRADE_RETCODE_DONE = 10009
TRADE_RETCODE_INVALID = 10013
TRADE_RETCODE_INVALID_VOLUME = 10014
TRADE_RETCODE_INVALID_PRICE = 10015
TRADE_RETCODE_INVALID_STOPS = 10016
TRADE_RETCODE_MARKET_CLOSED = 10018
TRADE_RETCODE_NO_MONEY = 10019
TRADE_RETCODE_INVALID_EXPIRATION = 10022
TRADE_RETCODE_NO_CHANGES = 10025
TRADE_RETCODE_FROZEN = 10029
TRADE_RETCODE_INVALID_FILL = 10030
TRADE_RETCODE_INVALID_ORDER = 10035
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
    "volume_step currency_base currency_profit currency_margin description path name "
    "time expiration_mode",
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
TradeOrder = namedtuple(
    "TradeOrder",
    "ticket time_setup time_setup_msc time_done time_done_msc time_expiration type type_time "
    "type_filling state magic position_id position_by_id reason volume_initial volume_current "
    "price_open sl tp price_current price_stoplimit symbol comment external_id",
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
    stops_level: int = 0
    freeze_level: int = 0
    execution_mode: int = SYMBOL_TRADE_EXECUTION_MARKET
    expiration_mode: int = 15  # SYMBOL_EXPIRATION_GTC | DAY | SPECIFIED | SPECIFIED_DAY

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
            trade_stops_level=self.stops_level,
            trade_freeze_level=self.freeze_level,
            trade_exemode=self.execution_mode,
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
            time=int(server_time()),
            expiration_mode=self.expiration_mode,
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
    now: float = 1_764_000_000.0  # UTC
    server_offset: int = 0  # the server's zone, seconds east of UTC
    orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    history_orders: dict[int, Any] = field(default_factory=dict)

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


def server_time() -> float:
    """Now on the broker server's clock, counted as if its zone were UTC (as MT5 does)."""
    return terminal.now + terminal.server_offset


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
    now = server_time()
    return Tick(int(now), spec.bid, spec.ask, 0.0, 0, int(now * 1000), 6, 0.0)


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
    start = int(server_time()) // seconds * seconds - (count - 1) * seconds
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
    if action == TRADE_ACTION_PENDING:
        return _place_pending(spec, request)
    if action in (TRADE_ACTION_MODIFY, TRADE_ACTION_REMOVE):
        return _change_pending(spec, request)
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
    now = server_time()
    if request.get("position") and request["position"] not in terminal.positions:
        return _result(TRADE_RETCODE_POSITION_CLOSED, request, comment="Position doesn't exist")
    terminal.history_orders[order] = _order_tuple(
        {
            **request,
            "ticket": order,
            "price": price,
            "time_setup": now,
            "position_id": request.get("position") or order,
        },
        state=ORDER_STATE_FILLED,
        done=now,
        filled=volume,
    )
    deal_ticket = _fill(spec, order, request, price)
    return _result(
        TRADE_RETCODE_DONE,
        request,
        deal=deal_ticket,
        order=order,
        volume=volume,
        price=price,
        comment="Request executed",
    )


def _fill(
    spec: FakeSymbol,
    order: int,
    request: dict[str, Any],
    price: float,
    reason: int = DEAL_REASON_EXPERT,
) -> int:
    """The deal of an order that executes at `price` (its ticket is returned): it opens a
    position under the order's ticket, or closes (part of) `request["position"]`, which
    exists. `reason` is the deal's: an order sent through this package is an expert's."""
    volume = request["volume"]
    buy = request["type"] in (ORDER_TYPE_BUY, ORDER_TYPE_BUY_LIMIT, ORDER_TYPE_BUY_STOP)
    deal_ticket = terminal.deal_ticket()
    now = server_time()
    if request.get("position"):
        position = terminal.positions[request["position"]]
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
            reason,
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
            reason,
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
    return deal_ticket


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


# -- pending orders and history ------------------------------------------------------------

PENDING_TYPES = (
    ORDER_TYPE_BUY_LIMIT,
    ORDER_TYPE_SELL_LIMIT,
    ORDER_TYPE_BUY_STOP,
    ORDER_TYPE_SELL_STOP,
    ORDER_TYPE_BUY_STOP_LIMIT,
    ORDER_TYPE_SELL_STOP_LIMIT,
)


def _distance(spec: FakeSymbol, order_type: int, price: float) -> float:
    """How far a pending order rests from triggering (negative: on the wrong side)."""
    if order_type == ORDER_TYPE_BUY_LIMIT:
        return spec.ask - price
    if order_type == ORDER_TYPE_SELL_LIMIT:
        return price - spec.bid
    if order_type in (ORDER_TYPE_BUY_STOP, ORDER_TYPE_BUY_STOP_LIMIT):
        return price - spec.ask
    return spec.bid - price


def _pending_error(spec: FakeSymbol, order: dict[str, Any]) -> tuple[int, str] | None:
    point = 10.0**-spec.digits
    if _distance(spec, order["type"], order["price"]) < max(spec.stops_level, 1) * point - 1e-9:
        return TRADE_RETCODE_INVALID_PRICE, "Invalid price"
    if order["type_time"] in (ORDER_TIME_SPECIFIED, ORDER_TIME_SPECIFIED_DAY):
        if order.get("expiration", 0) <= server_time():
            return TRADE_RETCODE_INVALID_EXPIRATION, "Invalid expiration"
    return None


def _place_pending(spec: FakeSymbol, request: dict[str, Any]) -> Any:
    if request.get("type") not in PENDING_TYPES:
        return _result(TRADE_RETCODE_INVALID, request, comment="Invalid request")
    if request.get("type_filling") not in (*spec.accepted_fillings, ORDER_FILLING_RETURN):
        return _result(TRADE_RETCODE_INVALID_FILL, request, comment="Unsupported filling mode")
    order = {
        "type_time": ORDER_TIME_GTC,
        "expiration": 0,
        "stoplimit": 0.0,
        "sl": 0.0,
        "tp": 0.0,
        **request,
        "time_setup": server_time(),
    }
    error = _pending_error(spec, order)
    if error is not None:
        return _result(error[0], request, comment=error[1])
    ticket = terminal.ticket()
    terminal.orders[ticket] = {**order, "ticket": ticket}
    return _result(
        TRADE_RETCODE_DONE,
        request,
        order=ticket,
        volume=request["volume"],
        comment="Request executed",
    )


def _change_pending(spec: FakeSymbol, request: dict[str, Any]) -> Any:
    order = terminal.orders.get(request.get("order", 0))
    if order is None:
        return _result(TRADE_RETCODE_INVALID_ORDER, request, comment="Invalid order")
    point = 10.0**-spec.digits
    if (
        spec.freeze_level
        and _distance(spec, order["type"], order["price"]) < spec.freeze_level * point
    ):
        return _result(TRADE_RETCODE_FROZEN, request, comment="Order is frozen")
    if request["action"] == TRADE_ACTION_REMOVE:
        del terminal.orders[order["ticket"]]
        terminal.history_orders[order["ticket"]] = _order_tuple(
            order, state=ORDER_STATE_CANCELED, done=server_time(), filled=0.0
        )
        return _result(
            TRADE_RETCODE_DONE, request, order=order["ticket"], comment="Request executed"
        )
    changed = {
        **order,
        **{
            k: request[k]
            for k in ("price", "stoplimit", "sl", "tp", "type_time", "expiration")
            if k in request
        },
    }
    error = _pending_error(spec, changed)
    if error is not None:
        return _result(error[0], request, comment=error[1])
    terminal.orders[order["ticket"]] = changed
    return _result(TRADE_RETCODE_DONE, request, order=order["ticket"], comment="Request executed")


def trigger_pending() -> None:
    """Fills the limit and stop orders the current quotes reach (a test's market move)."""
    for order in list(terminal.orders.values()):
        spec = terminal.symbols[order["symbol"]]
        if order["type"] in (ORDER_TYPE_BUY_STOP_LIMIT, ORDER_TYPE_SELL_STOP_LIMIT):
            continue
        if _distance(spec, order["type"], order["price"]) > 0:
            continue
        buy = order["type"] in (ORDER_TYPE_BUY_LIMIT, ORDER_TYPE_BUY_STOP)
        price = spec.ask if buy else spec.bid
        del terminal.orders[order["ticket"]]
        terminal.history_orders[order["ticket"]] = _order_tuple(
            {**order, "position_id": order["ticket"]},
            state=ORDER_STATE_FILLED,
            done=server_time(),
            filled=order["volume"],
        )
        _fill(spec, order["ticket"], {**order, "position": 0}, price)


def _order_tuple(order: dict[str, Any], *, state: int, done: float, filled: float) -> Any:
    setup = order.get("time_setup", server_time())
    return TradeOrder(
        ticket=order["ticket"],
        time_setup=int(setup),
        time_setup_msc=int(setup * 1000),
        time_done=int(done) if done else 0,
        time_done_msc=int(done * 1000) if done else 0,
        time_expiration=int(order.get("expiration", 0) or 0),
        type=order["type"],
        type_time=order.get("type_time", ORDER_TIME_GTC),
        type_filling=order.get("type_filling", ORDER_FILLING_RETURN),
        state=state,
        magic=order.get("magic", 0),
        position_id=order.get("position_id", 0),
        position_by_id=0,
        reason=ORDER_REASON_EXPERT if order.get("magic") else ORDER_REASON_CLIENT,
        volume_initial=order["volume"],
        volume_current=round(order["volume"] - filled, 8),
        price_open=order.get("price", 0.0),
        sl=order.get("sl", 0.0),
        tp=order.get("tp", 0.0),
        price_current=order.get("price", 0.0),
        price_stoplimit=order.get("stoplimit", 0.0),
        symbol=order["symbol"],
        comment=order.get("comment", ""),
        external_id="",
    )


def orders_get(
    symbol: str | None = None, group: str | None = None, ticket: int | None = None
) -> Any:
    if not _link_ok() or _fail("orders_get"):
        return None
    _ok()
    return tuple(
        _order_tuple(o, state=ORDER_STATE_PLACED, done=0, filled=0.0)
        for o in terminal.orders.values()
        if (ticket is None or o["ticket"] == ticket) and (symbol is None or o["symbol"] == symbol)
    )


def orders_total() -> int:
    return len(terminal.orders)


def history_orders_get(
    date_from: Any = None,
    date_to: Any = None,
    group: str | None = None,
    ticket: int | None = None,
    position: int | None = None,
) -> Any:
    if not _link_ok() or _fail("history_orders_get"):
        return None
    _ok()
    if not terminal.history_visible:
        return ()
    rows = list(terminal.history_orders.values())
    if ticket is not None:
        return tuple(o for o in rows if o.ticket == ticket)
    if position is not None:
        return tuple(o for o in rows if o.position_id == position)
    if date_from is None or date_to is None:
        terminal.error = (RES_E_INVALID_PARAMS, "Invalid arguments")
        return None
    start, end = _epoch(date_from), _epoch(date_to)
    return tuple(o for o in rows if start <= o.time_setup <= end)


def symbols_get(group: str | None = None) -> Any:
    if not _link_ok() or _fail("symbols_get"):
        return None
    _ok()
    return tuple(
        spec.info()
        for spec in terminal.symbols.values()
        if group is None or _in_group(spec.name, group)
    )


def symbols_total() -> int:
    return len(terminal.symbols)


def add_deal(**fields: Any) -> Any:
    """A deal in the account's history (a balance operation, a trade by hand), at server
    time `time` (default now)."""
    ticket = terminal.ticket()
    moment = fields.pop("time", server_time())
    values = {
        "ticket": ticket,
        "order": 0,
        "time": int(moment),
        "time_msc": int(moment * 1000),
        "type": DEAL_TYPE_BALANCE,
        "entry": DEAL_ENTRY_IN,
        "magic": 0,
        "position_id": 0,
        "reason": DEAL_REASON_CLIENT,
        "volume": 0.0,
        "price": 0.0,
        "commission": 0.0,
        "swap": 0.0,
        "profit": 0.0,
        "fee": 0.0,
        "symbol": "",
        "comment": "",
        "external_id": "",
        **fields,
    }
    deal = TradeDeal(**values)
    terminal.deals[ticket] = deal
    return deal


# -- what happens at the terminal without mt5gate ---------------------------------------------


def hand_trade(
    symbol: str,
    side: str = "buy",
    volume: float = 0.1,
    *,
    sl: float = 0.0,
    tp: float = 0.0,
    reason: int = DEAL_REASON_CLIENT,
) -> int:
    """A trade placed by hand in the desktop terminal (no magic number, reason `client`):
    a position mt5gate did not open. Returns its ticket."""
    spec = terminal.symbols[symbol]
    order = terminal.ticket()
    request = {
        "symbol": symbol,
        "volume": volume,
        "type": ORDER_TYPE_BUY if side == "buy" else ORDER_TYPE_SELL,
        "sl": sl,
        "tp": tp,
        "magic": 0,
    }
    now = server_time()
    terminal.history_orders[order] = _order_tuple(
        {**request, "ticket": order, "price": 0.0, "time_setup": now, "position_id": order},
        state=ORDER_STATE_FILLED,
        done=now,
        filled=volume,
    )
    _fill(spec, order, request, spec.ask if side == "buy" else spec.bid, reason)
    return order


def close_by_broker(ticket: int, reason: int = DEAL_REASON_SL) -> int:
    """The broker closes a position itself (its stop loss, take profit, a stop-out) at the
    current price, as the deal `reason` says. Returns the closing deal's ticket."""
    position = terminal.positions[ticket]
    spec = terminal.symbols[position["symbol"]]
    buy = position["type"] == POSITION_TYPE_BUY
    request = {
        "symbol": spec.name,
        "volume": position["volume"],
        "type": ORDER_TYPE_SELL if buy else ORDER_TYPE_BUY,
        "position": ticket,
        "magic": position["magic"],
    }
    return _fill(spec, terminal.ticket(), request, spec.bid if buy else spec.ask, reason)


def set_quote(symbol: str, bid: float, ask: float) -> None:
    """Moves a symbol's quote, and with it its positions' current price and profit."""
    spec = terminal.symbols[symbol]
    spec.bid, spec.ask = bid, ask
    for position in terminal.positions.values():
        if position["symbol"] != symbol:
            continue
        buy = position["type"] == POSITION_TYPE_BUY
        position["price_current"] = bid if buy else ask
        direction = 1 if buy else -1
        difference = (position["price_current"] - position["price_open"]) * direction
        position["profit"] = round(difference * spec.contract_size * position["volume"], 2)
