"""A simulated broker: a hedging USD account on a random-walk market, with MT5's rules.

What a trader would recognise:

- symbols with MT5's specification (digits, point, contract size, volume min/max/step,
  stops level) and a spread that moves tick by tick;
- a random-walk tick stream (log-normal, volatility per symbol), ticks arriving at random
  intervals; buys fill at the ask, sells at the bid; charts are drawn on the bid, as in MT5;
- margin = lots × contract size × price / leverage, in the symbol's profit currency and
  converted to the account currency (the same figure as MT5's Forex and CFD-Leverage modes:
  for EURUSD it is lots × 100,000 / leverage EUR at the current rate);
- profit as MT5 computes it: (close − open) × contract size × lots for a buy, the opposite
  for a sell, in the profit currency (JPY for USDJPY) converted to USD at the current rate;
- equity = balance + floating profit, free margin = equity − margin, margin level;
- MT5's validation and retcodes: ``invalid_volume`` (10014), ``invalid_stops`` (10016),
  ``no_money`` (10019), ``invalid_close_volume`` (10038), ``invalid_symbol``;
- stop loss and take profit that trigger on the tick stream, at the tick's price;
- pending orders resting in the book with MT5's rules: placed on the right side of the
  market and at least ``stops_level`` points from it (``invalid_price`` 10015), their sl/tp
  checked against their own price, frozen within ``freeze_level`` points (``frozen``
  10029), triggered by the first tick at or beyond them (a buy limit when the ask comes
  down to it, a buy stop when it goes up to it; sells on the bid) and filled at that tick's
  price; a triggered stop-limit becomes a limit under the same ticket; ``day`` orders expire
  at the end of the (UTC) server day, ``specified`` ones at their time;
- a stop-out: when the margin level (equity / margin) falls below ``stop_out_level``
  percent, the most losing position is closed, then the next, until it is back above;
- the account history MT5 keeps: a deal per fill and close (``reason`` ``mt5gate`` for what
  the agent sent, ``sl``/``tp`` for the stops, ``stop_out``; the deposit is a ``balance``
  deal) and a
  finished order per market order, close, fill, cancellation and expiry;
- an optional execution latency (``latency_seconds``) on the requests that go to the
  trade server (orders, closes, SL/TP changes), as MT5's ``order_send`` takes tens of
  milliseconds; reads (positions, account, candles) are the terminal's own data, instant;
- candles built from the ticks themselves (after a seeded history: M1 bars for the last
  days, H1 bars for the year before, D1 bars for the twenty years before), so the chart and the
  fills agree.

Simplifications, on purpose: the market never closes (the demo works on a Sunday), there is
no swap, no commission, and margin is not reduced for hedged positions.

The market moves lazily: every call first generates the ticks due up to the clock's
``now``. With a fixed ``seed`` and an injected ``clock`` everything is deterministic; each
symbol draws from its own RNG, so its ticks do not depend on how often anyone looks.
"""

from __future__ import annotations

import heapq
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mt5gate_agent.backends.base import (
    BrokerError,
    HistoryRequest,
    is_on_step,
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
    symbol_matches_group,
)
from mt5gate_agent.retcodes import (
    TRADE_RETCODE_FROZEN,
    TRADE_RETCODE_INVALID_CLOSE_VOLUME,
    TRADE_RETCODE_INVALID_EXPIRATION,
    TRADE_RETCODE_INVALID_PRICE,
    TRADE_RETCODE_INVALID_STOPS,
    TRADE_RETCODE_INVALID_VOLUME,
    TRADE_RETCODE_NO_MONEY,
)
from mt5gate_protocol.jobs import JobType

SECONDS_PER_YEAR = 365 * 86_400
# A call after a long pause generates at most this many ticks per symbol (spaced evenly).
MAX_CATCHUP_TICKS = 5_000
TIMEFRAME_SECONDS = {
    "M1": 60,
    "M5": 300,
    "M15": 900,
    "M30": 1_800,
    "H1": 3_600,
    "H4": 14_400,
    "D1": 86_400,
    "W1": 604_800,
    "MN1": 2_592_000,  # nominal; months are bucketed on the calendar
}
# The jobs that are a round trip to the broker's trade server (``order_send`` in MT5).
TRADE_SERVER_JOBS = frozenset(
    {
        JobType.TRADE,
        JobType.CLOSE_POSITION,
        JobType.MODIFY_POSITION,
        JobType.PLACE_PENDING_ORDER,
        JobType.MODIFY_PENDING_ORDER,
        JobType.CANCEL_PENDING_ORDER,
    }
)
# 1970-01-04 was a Sunday: MT5's weekly bars open on Sunday 00:00.
_FIRST_SUNDAY = 3 * 86_400


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One symbol's contract specification, as MT5's ``symbol_info`` describes it."""

    name: str
    digits: int
    contract_size: float
    base_currency: str
    profit_currency: str
    start_price: float
    spread_points: tuple[int, int]
    stops_level: int
    volume_min: float = 0.01
    volume_max: float = 100.0
    volume_step: float = 0.01
    annual_volatility: float = 0.08
    mean_tick_interval: float = 0.5
    # Inside this many points of the price that would trigger it, a pending order can be
    # neither modified nor deleted (MT5's SYMBOL_TRADE_FREEZE_LEVEL).
    freeze_level: int = 0
    description: str = ""

    @property
    def point(self) -> float:
        return 10.0**-self.digits

    def view(self) -> dict[str, Any]:
        """The contract's `symbol`: the specification as MT5's ``symbol_info`` gives it."""
        return {
            "name": self.name,
            "description": self.description or f"{self.base_currency} vs {self.profit_currency}",
            "digits": self.digits,
            "point": self.point,
            "contract_size": self.contract_size,
            "currency_base": self.base_currency,
            "currency_profit": self.profit_currency,
            "volume_min": self.volume_min,
            "volume_max": self.volume_max,
            "volume_step": self.volume_step,
            "stops_level": self.stops_level,
            "freeze_level": self.freeze_level,
            "trade_mode": "full",
            "execution_mode": "market",
            "filling_modes": ["fok", "ioc"],
            "expiration_modes": ["gtc", "day", "specified"],
            "order_modes": ["market", "limit", "stop", "stop_limit", "sl", "tp", "close_by"],
        }


DEFAULT_SYMBOLS: tuple[SymbolSpec, ...] = (
    SymbolSpec("EURUSD", 5, 100_000, "EUR", "USD", 1.08500, (6, 12), 10, annual_volatility=0.07),
    SymbolSpec("GBPUSD", 5, 100_000, "GBP", "USD", 1.27000, (9, 16), 10),
    SymbolSpec("USDJPY", 3, 100_000, "USD", "JPY", 151.500, (8, 15), 10, annual_volatility=0.09),
    SymbolSpec("USDCHF", 5, 100_000, "USD", "CHF", 0.88500, (10, 18), 10, mean_tick_interval=0.8),
    SymbolSpec("AUDUSD", 5, 100_000, "AUD", "USD", 0.65500, (8, 14), 10, mean_tick_interval=0.8),
    SymbolSpec("EURGBP", 5, 100_000, "EUR", "GBP", 0.85400, (10, 18), 10, mean_tick_interval=1.0),
    SymbolSpec(
        "XAUUSD",
        2,
        100,
        "XAU",
        "USD",
        2650.00,
        (20, 35),
        50,
        volume_max=50.0,
        annual_volatility=0.15,
        mean_tick_interval=0.3,
        freeze_level=20,
        description="Gold vs US Dollar",
    ),
)


@dataclass(slots=True)
class SimPosition:
    ticket: int
    symbol: str
    side: str
    volume: float
    open_price: float
    sl: float | None
    tp: float | None
    opened_at: float


@dataclass(slots=True)
class SimDeal:
    """A deal as the account history of MT5 shows it (the contract's `deal`)."""

    ticket: int
    order_ticket: int | None
    position_id: int | None
    type: str  # "buy", "sell" or "balance"
    symbol: str | None
    side: str | None  # the deal's own direction: closing a buy is a sell deal
    entry: str | None  # "in" or "out"
    volume: float
    price: float
    profit: float
    reason: str  # "mt5gate" (sent by the agent), "sl", "tp", "stop_out", "client" (deposit)
    time: float

    def view(self) -> dict[str, Any]:
        return {
            "ticket": self.ticket,
            "order_ticket": self.order_ticket,
            "position_id": self.position_id,
            "type": self.type,
            "symbol": self.symbol,
            "side": self.side,
            "entry": self.entry,
            "volume": self.volume,
            "price": self.price,
            "profit": self.profit,
            "commission": 0.0,
            "swap": 0.0,
            "fee": 0.0,
            "reason": self.reason,
            "time": iso_utc(self.time),
        }


@dataclass(slots=True)
class SimPendingOrder:
    """An order resting in the book until the market reaches it (or it expires)."""

    ticket: int
    symbol: str
    side: str
    type: str  # "limit", "stop" or "stop_limit"
    volume: float
    price: float
    stop_limit_price: float | None
    sl: float | None
    tp: float | None
    expiration: dict[str, Any]  # {"type", "at"} as the contract writes it
    expires_at: float | None  # epoch seconds, None for gtc
    placed_at: float
    client_order_id: str | None = None
    # What it was placed as: a triggered stop-limit becomes a limit under the same ticket.
    placed_type: str = ""

    @property
    def open_price(self) -> float:
        """The price its position would open at: the limit price of a stop-limit."""
        if self.type == "stop_limit" and self.stop_limit_price is not None:
            return self.stop_limit_price
        return self.price

    def view(self) -> dict[str, Any]:
        return {
            "ticket": self.ticket,
            "symbol": self.symbol,
            "side": self.side,
            "type": self.type,
            "volume": self.volume,
            "price": self.price,
            "stop_limit_price": self.stop_limit_price,
            "sl": self.sl,
            "tp": self.tp,
            "expiration": self.expiration,
            "placed_at": iso_utc(self.placed_at),
        }


@dataclass(slots=True)
class SimHistoryOrder:
    """A finished order (the contract's `history_order`)."""

    ticket: int
    position_id: int | None
    symbol: str
    side: str
    type: str
    volume_initial: float
    volume_filled: float
    price: float
    state: str
    reason: str
    placed_at: float
    done_at: float

    def view(self) -> dict[str, Any]:
        return {
            "ticket": self.ticket,
            "position_id": self.position_id,
            "symbol": self.symbol,
            "side": self.side,
            "type": self.type,
            "volume_initial": self.volume_initial,
            "volume_filled": self.volume_filled,
            "price": self.price,
            "state": self.state,
            "reason": self.reason,
            "placed_at": iso_utc(self.placed_at),
            "done_at": iso_utc(self.done_at),
        }


@dataclass(slots=True)
class _Market:
    """One symbol's live state: last tick, its RNG, and the M1 bars its ticks drew."""

    spec: SymbolSpec
    rng: random.Random
    mid: float
    bid: float = 0.0
    ask: float = 0.0
    time: float = 0.0
    next_time: float = 0.0
    # M1 bars [time, open, high, low, close, tick_volume], oldest first, on the bid.
    bars: list[list[float]] = field(default_factory=list)


# (time, open, high, low, close, tick_volume, duration_seconds)
Bar = tuple[int, float, float, float, float, int, int]


class SimBackend:
    """A simulated MT5 account. Blocking methods, like the real backend; not thread-safe."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        symbols: Iterable[SymbolSpec] = DEFAULT_SYMBOLS,
        balance: float = 10_000.0,
        leverage: int = 100,
        currency: str = "USD",
        history_minutes: int = 5 * 1440,
        history_hours: int = 400 * 24,
        history_days: int = 20 * 365,
        first_ticket: int = 50_000_001,
        first_deal_ticket: int = 40_000_001,
        latency_seconds: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        stop_out_level: float = 50.0,
    ) -> None:
        if not 0 <= latency_seconds < math.inf:
            raise ValueError("latency_seconds must be a finite number >= 0")
        self._seed = seed
        self.latency_seconds = float(latency_seconds)
        self._sleep = sleep
        self._clock = clock
        self.balance = float(balance)
        self.leverage = int(leverage)
        self.currency = currency
        self.stop_out_level = float(stop_out_level)
        self._history_minutes = history_minutes
        self._history_hours = history_hours
        self._history_days = history_days
        self._next_ticket = first_ticket
        self._next_deal = first_deal_ticket
        self.positions: dict[int, SimPosition] = {}
        self.pending_orders: dict[int, SimPendingOrder] = {}
        self.deals: list[SimDeal] = []
        self.history_orders: list[SimHistoryOrder] = []
        self.logged_in_as: int | None = None
        # Tests and scenarios move quotes (`set_quote`) from another thread than the
        # agent's backend worker: every public entry point holds this lock.
        self._lock = threading.RLock()
        self._start = clock()
        self._record_deal(
            None, None, "balance", None, None, None, 0.0, 0.0, self.balance, "client", self._start
        )
        self._markets: dict[str, _Market] = {}
        self._history: dict[str, list[Bar]] = {}
        for spec in symbols:
            self._markets[spec.name] = self._open_market(spec)
        self._queue: list[tuple[float, str]] = [
            (market.next_time, name) for name, market in self._markets.items()
        ]
        heapq.heapify(self._queue)

    # -- the Backend protocol ------------------------------------------------------------

    def login(self, server: str, login: int, password: str) -> None:
        self.logged_in_as = int(login)

    def is_connected(self) -> bool:
        with self._lock:
            self._advance()
        return True

    def close(self) -> None:
        pass

    def ticks(self, symbols: list[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            return self._ticks(symbols)

    def _ticks(self, symbols: list[str]) -> dict[str, dict[str, Any]]:
        self._advance()
        result: dict[str, dict[str, Any]] = {}
        for name in symbols:
            market = self._markets.get(name)
            if market is not None:
                result[name] = {"bid": market.bid, "ask": market.ask, "ts": int(market.time * 1000)}
        return result

    def execute(self, job_type: str, input_data: dict[str, Any]) -> dict[str, Any]:
        handler = job_handler(self, job_type)
        if self.latency_seconds and job_type in TRADE_SERVER_JOBS:
            # The request travels to the trade server first: it executes at the price of
            # when it arrives, not of when it was sent.
            self._sleep(self.latency_seconds)
        with self._lock:
            self._advance()
            return handler(input_data)

    # -- jobs ----------------------------------------------------------------------------

    def _trade(self, input_data: dict[str, Any]) -> dict[str, Any]:
        market = self._market(str(require(input_data, "symbol")))
        spec = market.spec
        side = parse_side(require(input_data, "side"))
        volume = parse_positive(input_data, "volume")
        assert volume is not None
        sl = parse_positive(input_data, "sl", optional=True)
        tp = parse_positive(input_data, "tp", optional=True)
        self._check_volume(spec, volume)
        volume = round_volume(volume)
        self._check_stops(market, side, sl, tp)
        price = market.ask if side == "buy" else market.bid
        required = self.margin_for(spec.name, volume)
        free = self.equity() - self.margin_used()
        if required > free:
            raise BrokerError(
                "no_money",
                f"not enough money: {volume} lots of {spec.name} need {required:.2f} "
                f"{self.currency} margin, free margin is {free:.2f}",
                TRADE_RETCODE_NO_MONEY,
            )
        now = self._clock()
        ticket = self._take_ticket()
        self._open_position(ticket, spec.name, side, volume, price, sl, tp, now)
        self.history_orders.append(
            SimHistoryOrder(
                ticket, ticket, spec.name, side, "market", volume, volume, price, "filled",
                "mt5gate", now, now,
            )
        )  # fmt: skip
        return {"ticket": ticket, "fill_price": price, "volume": volume, "filled_at": iso_utc(now)}

    def _get_positions(self, input_data: dict[str, Any]) -> dict[str, Any]:
        positions = sorted(self.positions.values(), key=lambda p: p.ticket)
        return {"positions": [self.position_view(p) for p in positions]}

    def _close_position(self, input_data: dict[str, Any]) -> dict[str, Any]:
        position = self._position(parse_ticket(input_data))
        spec = self._markets[position.symbol].spec
        volume = parse_positive(input_data, "volume", optional=True)
        if volume is None:
            volume = position.volume
        self._check_volume(spec, volume)
        volume = round_volume(volume)
        if volume > position.volume + 1e-9:
            raise BrokerError(
                "invalid_close_volume",
                f"close volume {volume} exceeds the position's {position.volume} lots",
                TRADE_RETCODE_INVALID_CLOSE_VOLUME,
            )
        remaining = round_volume(position.volume - volume)
        if 0 < remaining < spec.volume_min - 1e-9:
            raise BrokerError(
                "invalid_volume",
                f"closing {volume} lots would leave {remaining}, under the minimum "
                f"{spec.volume_min}",
                TRADE_RETCODE_INVALID_VOLUME,
            )
        deal = self._close(position, volume, reason="mt5gate")
        return {
            "closed_price": deal.price,
            "volume": deal.volume,
            "pnl": deal.profit,
            "closed_at": iso_utc(deal.time),
        }

    def _modify_position(self, input_data: dict[str, Any]) -> dict[str, Any]:
        position = self._position(parse_ticket(input_data))
        sl = optional_price(input_data, "sl", position.sl)
        tp = optional_price(input_data, "tp", position.tp)
        self._check_stops(self._markets[position.symbol], position.side, sl, tp)
        position.sl, position.tp = sl, tp
        return {"position": self.position_view(position)}

    def _get_account(self, input_data: dict[str, Any]) -> dict[str, Any]:
        # Rounded first, so that the figures a user sees add up to the cent.
        equity = round(self.equity(), 2)
        margin = round(self.margin_used(), 2)
        return {
            "balance": round(self.balance, 2),
            "equity": equity,
            "margin_used": margin,
            "margin_available": round(equity - margin, 2),
            "currency": self.currency,
            "leverage": self.leverage,
        }

    def _get_candles(self, input_data: dict[str, Any]) -> dict[str, Any]:
        symbol, timeframe, count = parse_candles_request(input_data)
        self._market(symbol)
        return {"candles": self.candles(symbol, timeframe, count)}

    def _place_pending_order(self, input_data: dict[str, Any]) -> dict[str, Any]:
        request = parse_pending_request(input_data)
        market = self._market(request.symbol)
        spec = market.spec
        self._check_volume(spec, request.volume)
        now = self._clock()
        order = SimPendingOrder(
            ticket=self._take_ticket(),
            symbol=spec.name,
            side=request.side,
            type=request.type,
            volume=round_volume(request.volume),
            price=round(request.price, spec.digits),
            stop_limit_price=None
            if request.stop_limit_price is None
            else round(request.stop_limit_price, spec.digits),
            sl=request.sl,
            tp=request.tp,
            expiration=request.expiration,
            expires_at=self._expiry(request.expiration, request.expires_at, now),
            placed_at=now,
            client_order_id=input_data.get("client_order_id"),
            placed_type=request.type,
        )
        self._check_pending(market, order)
        self.pending_orders[order.ticket] = order
        return {"ticket": order.ticket, "placed_at": iso_utc(now)}

    def _get_pending_orders(self, input_data: dict[str, Any]) -> dict[str, Any]:
        orders = sorted(self.pending_orders.values(), key=lambda o: o.ticket)
        return {"pending_orders": [o.view() for o in orders]}

    def _modify_pending_order(self, input_data: dict[str, Any]) -> dict[str, Any]:
        order = self._pending(parse_ticket(input_data))
        market = self._markets[order.symbol]
        self._check_not_frozen(market, order)
        changed = SimPendingOrder(**{name: getattr(order, name) for name in order.__slots__})
        if "price" in input_data:
            changed.price = round(
                float(parse_positive(input_data, "price") or 0), market.spec.digits
            )
        if "stop_limit_price" in input_data and order.type == "stop_limit":
            changed.stop_limit_price = parse_positive(input_data, "stop_limit_price")
        changed.sl = optional_price(input_data, "sl", order.sl)
        changed.tp = optional_price(input_data, "tp", order.tp)
        if "expiration" in input_data:
            expiration, at = parse_expiration(input_data)
            changed.expiration = expiration
            changed.expires_at = self._expiry(expiration, at, self._clock())
        self._check_pending(market, changed)
        self.pending_orders[order.ticket] = changed
        return {"pending_order": changed.view()}

    def _cancel_pending_order(self, input_data: dict[str, Any]) -> dict[str, Any]:
        order = self._pending(parse_ticket(input_data))
        self._check_not_frozen(self._markets[order.symbol], order)
        now = self._clock()
        self._finish_pending(order, "cancelled", now)
        return {"ticket": order.ticket, "cancelled_at": iso_utc(now)}

    def _get_history(self, input_data: dict[str, Any]) -> dict[str, Any]:
        request = parse_history_request(input_data)
        return {request.kind: [record.view() for record in self.history(request)]}

    def history(self, request: HistoryRequest) -> list[SimDeal] | list[SimHistoryOrder]:
        """Deals or finished orders that the request selects, newest first."""
        if request.kind == "deals":
            deals = [
                d for d in self.deals if request.keeps(d.ticket, d.time, d.symbol, d.position_id)
            ]
            deals.sort(key=lambda d: (d.time, d.ticket), reverse=True)
            return deals[: request.limit]
        orders = [
            o
            for o in self.history_orders
            if request.keeps(o.ticket, o.done_at, o.symbol, o.position_id)
        ]
        orders.sort(key=lambda o: (o.done_at, o.ticket), reverse=True)
        return orders[: request.limit]

    def _get_symbols(self, input_data: dict[str, Any]) -> dict[str, Any]:
        name = input_data.get("symbol")
        if name is not None:
            market = self._markets.get(str(name))
            if market is None:
                raise BrokerError("symbol_not_found", f"the broker has no symbol {name!r}")
            return {"symbols": [market.spec.view()]}
        group = input_data.get("group")
        # Every simulated symbol is in Market Watch: `all` selects the same list.
        return {
            "symbols": [
                m.spec.view()
                for m in self._markets.values()
                if symbol_matches_group(m.spec.name, None if group is None else str(group))
            ]
        }

    def recent_deals(self, after_ticket: int, lookback_seconds: float) -> list[dict[str, Any]]:
        """Deals above ``after_ticket`` of the last ``lookback_seconds``, oldest first: the
        newest end of the history only, however long it is."""
        with self._lock:
            self._advance()
            since = self._clock() - lookback_seconds
            found: list[dict[str, Any]] = []
            for deal in reversed(self.deals):  # recorded in ticket order
                if deal.ticket <= after_ticket:
                    break
                if deal.time >= since:
                    found.append(deal.view())
            found.reverse()
            return found

    def set_quote(self, symbol: str, bid: float, ask: float) -> None:
        """Moves ``symbol`` to this quote now, as a tick would (stops and pending orders
        trigger): for scenarios and tests. The random walk continues from there."""
        with self._lock:
            self._advance()
            market = self._market(symbol)
            if not 0 < bid <= ask:
                raise ValueError("a quote needs 0 < bid <= ask")
            spec = market.spec
            market.mid = (bid + ask) / 2
            at = max(self._clock(), market.time)
            self._record(market, at, round(bid, spec.digits), round(ask, spec.digits))
            self._on_tick(market)

    # -- money ---------------------------------------------------------------------------

    def quote(self, symbol: str) -> tuple[float, float]:
        """The current (bid, ask) of ``symbol``, without moving the market."""
        market = self._market(symbol)
        return market.bid, market.ask

    def to_account_currency(self, amount: float, currency: str) -> float:
        """Converts at the current mid rate of ``CCYUSD`` or ``USDCCY``."""
        if currency == self.currency:
            return amount
        direct = self._markets.get(currency + self.currency)
        if direct is not None:
            return amount * (direct.bid + direct.ask) / 2
        inverse = self._markets.get(self.currency + currency)
        if inverse is not None:
            return amount / ((inverse.bid + inverse.ask) / 2)
        raise BrokerError("invalid_symbol", f"no rate to convert {currency} to {self.currency}")

    def margin_for(self, symbol: str, volume: float) -> float:
        """Margin of ``volume`` lots: lots × contract × price / leverage, in account currency."""
        market = self._market(symbol)
        spec = market.spec
        mid = (market.bid + market.ask) / 2
        in_profit_currency = volume * spec.contract_size * mid / self.leverage
        return self.to_account_currency(in_profit_currency, spec.profit_currency)

    def profit_of(self, position: SimPosition, volume: float | None = None) -> float:
        """Floating profit in account currency, closing at the bid (buy) or the ask (sell)."""
        market = self._markets[position.symbol]
        lots = position.volume if volume is None else volume
        if position.side == "buy":
            difference = market.bid - position.open_price
        else:
            difference = position.open_price - market.ask
        in_profit_currency = difference * market.spec.contract_size * lots
        return round(self.to_account_currency(in_profit_currency, market.spec.profit_currency), 2)

    def margin_used(self) -> float:
        return sum(self.margin_for(p.symbol, p.volume) for p in self.positions.values())

    def floating_profit(self) -> float:
        return sum(self.profit_of(p) for p in self.positions.values())

    def equity(self) -> float:
        return self.balance + self.floating_profit()

    def margin_level(self) -> float | None:
        """Equity / margin in percent; None without open positions (MT5 shows 0)."""
        margin = self.margin_used()
        return None if margin == 0 else self.equity() / margin * 100

    def position_view(self, position: SimPosition) -> dict[str, Any]:
        market = self._markets[position.symbol]
        return {
            "position_id": position.ticket,
            "symbol": position.symbol,
            "side": position.side,
            "volume": position.volume,
            "open_price": position.open_price,
            "current_price": market.bid if position.side == "buy" else market.ask,
            "sl": position.sl,
            "tp": position.tp,
            "profit": self.profit_of(position),
            "swap": 0.0,
            "opened_at": iso_utc(position.opened_at),
        }

    # -- validation ----------------------------------------------------------------------

    def _market(self, symbol: str) -> _Market:
        market = self._markets.get(symbol)
        if market is None:
            raise BrokerError("invalid_symbol", f"unknown symbol {symbol!r}")
        return market

    def _position(self, ticket: int) -> SimPosition:
        position = self.positions.get(ticket)
        if position is None:
            raise BrokerError("position_not_found", f"no open position with ticket {ticket}")
        return position

    @staticmethod
    def _check_volume(spec: SymbolSpec, volume: float) -> None:
        if volume < spec.volume_min - 1e-9 or volume > spec.volume_max + 1e-9:
            raise BrokerError(
                "invalid_volume",
                f"volume {volume} is outside {spec.name}'s range "
                f"{spec.volume_min}–{spec.volume_max} lots",
                TRADE_RETCODE_INVALID_VOLUME,
            )
        if not is_on_step(volume, spec.volume_step):
            raise BrokerError(
                "invalid_volume",
                f"volume {volume} is not a multiple of {spec.name}'s step {spec.volume_step}",
                TRADE_RETCODE_INVALID_VOLUME,
            )

    @staticmethod
    def _check_stops(market: _Market, side: str, sl: float | None, tp: float | None) -> None:
        """MT5's rule: stops sit on the right side of the closing price, at least
        ``stops_level`` points away (closing price: bid for a buy, ask for a sell)."""
        spec = market.spec
        distance = spec.stops_level * spec.point
        close_price = market.bid if side == "buy" else market.ask
        # Half a point of tolerance: prices are decimals stored as floats.
        tolerance = spec.point / 2
        sign = 1 if side == "buy" else -1
        if sl is not None and sign * (close_price - sl) < max(distance, spec.point) - tolerance:
            raise BrokerError(
                "invalid_stops",
                f"stop loss {sl} is on the wrong side of {close_price} or closer than "
                f"{spec.stops_level} points",
                TRADE_RETCODE_INVALID_STOPS,
            )
        if tp is not None and sign * (tp - close_price) < max(distance, spec.point) - tolerance:
            raise BrokerError(
                "invalid_stops",
                f"take profit {tp} is on the wrong side of {close_price} or closer than "
                f"{spec.stops_level} points",
                TRADE_RETCODE_INVALID_STOPS,
            )

    # -- pending orders ------------------------------------------------------------------

    def _pending(self, ticket: int) -> SimPendingOrder:
        order = self.pending_orders.get(ticket)
        if order is None:
            raise BrokerError("pending_order_not_found", f"no pending order with ticket {ticket}")
        return order

    @staticmethod
    def _expiry(expiration: dict[str, Any], at: float | None, now: float) -> float | None:
        """When an order expires: `day` at the end of the server's day (the simulated
        server keeps UTC), `specified` at its time, `gtc` never."""
        if expiration["type"] == "day":
            return (now // 86_400 + 1) * 86_400
        if expiration["type"] == "specified":
            assert at is not None
            if at <= now:
                raise BrokerError(
                    "invalid_expiration",
                    f"expiration {iso_utc(at)} is not in the future",
                    TRADE_RETCODE_INVALID_EXPIRATION,
                )
            return at
        return None

    @staticmethod
    def _trigger_price(market: _Market, order: SimPendingOrder) -> float:
        """The side of the book an order watches: the ask for buys, the bid for sells."""
        return market.ask if order.side == "buy" else market.bid

    @staticmethod
    def _distance(market: _Market, order: SimPendingOrder) -> float:
        """How far the order sits from triggering, positive on the right side: a limit
        waits for the price to come down to it (buy) or up (sell), a stop the opposite."""
        current = SimBackend._trigger_price(market, order)
        below = order.type == "limit"  # a buy limit rests below the ask
        if order.side == "sell":
            below = not below
        return current - order.price if below else order.price - current

    def _check_pending(self, market: _Market, order: SimPendingOrder) -> None:
        """MT5's rules for a pending order: its price on the right side of the market and
        at least `stops_level` points away; a stop-limit's limit on the right side of its
        trigger; sl and tp on the right side of the price it would open at."""
        spec = market.spec
        tolerance = spec.point / 2
        minimum = max(spec.stops_level * spec.point, spec.point)
        if self._distance(market, order) < minimum - tolerance:
            raise BrokerError(
                "invalid_price",
                f"a {order.side} {order.type} at {order.price} must be on the other side of "
                f"{self._trigger_price(market, order)} and at least {spec.stops_level} points "
                "from it",
                TRADE_RETCODE_INVALID_PRICE,
            )
        if order.stop_limit_price is not None:
            sign = 1 if order.side == "buy" else -1
            if sign * (order.price - order.stop_limit_price) < -tolerance:
                raise BrokerError(
                    "invalid_price",
                    f"a {order.side} stop_limit needs its limit price "
                    f"{'at or below' if sign > 0 else 'at or above'} its trigger {order.price}",
                    TRADE_RETCODE_INVALID_PRICE,
                )
        sign = 1 if order.side == "buy" else -1
        opens = order.open_price
        for name, level, wrong in (
            ("stop loss", order.sl, lambda lvl: sign * (opens - lvl)),
            ("take profit", order.tp, lambda lvl: sign * (lvl - opens)),
        ):
            if level is not None and wrong(level) < minimum - tolerance:
                raise BrokerError(
                    "invalid_stops",
                    f"{name} {level} is on the wrong side of {opens} or closer than "
                    f"{spec.stops_level} points",
                    TRADE_RETCODE_INVALID_STOPS,
                )

    def _check_not_frozen(self, market: _Market, order: SimPendingOrder) -> None:
        spec = market.spec
        if spec.freeze_level and self._distance(market, order) < spec.freeze_level * spec.point:
            raise BrokerError(
                "frozen",
                f"order {order.ticket} is within {spec.name}'s freeze level "
                f"({spec.freeze_level} points) of the market and cannot be changed",
                TRADE_RETCODE_FROZEN,
            )

    def _on_tick(self, market: _Market) -> None:
        if self.pending_orders:
            self._expire_pending(market.time)
            self._trigger_pending(market)
        if self.positions:
            self._trigger_stops(market)
        if self.positions:
            self._stop_out()

    def _trigger_pending(self, market: _Market) -> None:
        """MT5's triggers: a buy limit at or below its price (the ask), a sell limit at or
        above (the bid), a buy stop at or above, a sell stop at or below; a triggered
        stop-limit becomes a limit at its stop-limit price, which may fill on the same
        tick."""
        name = market.spec.name
        for order in [o for o in self.pending_orders.values() if o.symbol == name]:
            if self._distance(market, order) > 0:
                continue
            if order.type == "stop_limit":
                assert order.stop_limit_price is not None
                order.type, order.price, order.stop_limit_price = (
                    "limit",
                    order.stop_limit_price,
                    None,
                )
                if self._distance(market, order) > 0:
                    continue
            self._fill_pending(market, order)

    def _fill_pending(self, market: _Market, order: SimPendingOrder) -> None:
        price = self._trigger_price(market, order)
        spec = market.spec
        free = self.equity() - self.margin_used()
        if self.margin_for(spec.name, order.volume) > free:
            self._finish_pending(order, "rejected", market.time)  # MT5 cancels it: no money
            return
        del self.pending_orders[order.ticket]
        self._open_position(
            order.ticket, spec.name, order.side, order.volume, price, order.sl, order.tp,
            market.time,
        )  # fmt: skip
        self.history_orders.append(
            SimHistoryOrder(
                order.ticket, order.ticket, spec.name, order.side, order.placed_type,
                order.volume, order.volume, price, "filled", "mt5gate", order.placed_at,
                market.time,
            )
        )  # fmt: skip

    def _expire_pending(self, now: float) -> None:
        for order in list(self.pending_orders.values()):
            if order.expires_at is not None and order.expires_at <= now:
                self._finish_pending(order, "expired", order.expires_at)

    def _finish_pending(self, order: SimPendingOrder, state: str, at: float) -> None:
        del self.pending_orders[order.ticket]
        self.history_orders.append(
            SimHistoryOrder(
                order.ticket, None, order.symbol, order.side, order.placed_type, order.volume,
                0.0, order.price, state, "mt5gate", order.placed_at, at,
            )
        )  # fmt: skip

    # -- closing -------------------------------------------------------------------------

    def _close(self, position: SimPosition, volume: float, *, reason: str) -> SimDeal:
        market = self._markets[position.symbol]
        price = market.bid if position.side == "buy" else market.ask
        profit = self.profit_of(position, volume)
        self.balance = round(self.balance + profit, 2)
        remaining = round_volume(position.volume - volume)
        if remaining <= 0:
            del self.positions[position.ticket]
        else:
            position.volume = remaining
        at = self._clock() if reason == "mt5gate" else market.time
        side = "sell" if position.side == "buy" else "buy"
        order = self._take_ticket()
        self.history_orders.append(
            SimHistoryOrder(
                order, position.ticket, position.symbol, side, "market", volume, volume, price,
                "filled", reason, at, at,
            )
        )  # fmt: skip
        return self._record_deal(
            order, position.ticket, side, position.symbol, side, "out", volume, price, profit,
            reason, at,
        )  # fmt: skip

    def _open_position(
        self,
        ticket: int,
        symbol: str,
        side: str,
        volume: float,
        price: float,
        sl: float | None,
        tp: float | None,
        at: float,
    ) -> None:
        """A new position under the ticket of the order that opened it, and its deal."""
        self.positions[ticket] = SimPosition(ticket, symbol, side, volume, price, sl, tp, at)
        self._record_deal(
            ticket, ticket, side, symbol, side, "in", volume, price, 0.0, "mt5gate", at
        )

    def _record_deal(
        self,
        order_ticket: int | None,
        position_id: int | None,
        deal_type: str,
        symbol: str | None,
        side: str | None,
        entry: str | None,
        volume: float,
        price: float,
        profit: float,
        reason: str,
        at: float,
    ) -> SimDeal:
        deal = SimDeal(
            self._next_deal, order_ticket, position_id, deal_type, symbol, side, entry, volume,
            price, profit, reason, at,
        )  # fmt: skip
        self._next_deal += 1
        self.deals.append(deal)
        return deal

    def _take_ticket(self) -> int:
        ticket = self._next_ticket
        self._next_ticket += 1
        return ticket

    def _trigger_stops(self, market: _Market) -> None:
        name = market.spec.name
        for position in [p for p in self.positions.values() if p.symbol == name]:
            if position.side == "buy":
                hit_sl = position.sl is not None and market.bid <= position.sl
                hit_tp = position.tp is not None and market.bid >= position.tp
            else:
                hit_sl = position.sl is not None and market.ask >= position.sl
                hit_tp = position.tp is not None and market.ask <= position.tp
            if hit_sl or hit_tp:
                self._close(position, position.volume, reason="sl" if hit_sl else "tp")

    def _stop_out(self) -> None:
        """MT5's stop-out: below ``stop_out_level`` percent of margin level, the most
        losing position is closed (deal reason ``stop_out``), until the level recovers."""
        while self.positions:
            level = self.margin_level()
            if level is None or level >= self.stop_out_level:
                return
            worst = min(self.positions.values(), key=lambda p: (self.profit_of(p), p.ticket))
            self._close(worst, worst.volume, reason="stop_out")

    # -- the tick stream -----------------------------------------------------------------

    def _rng(self, *parts: str) -> random.Random:
        if self._seed is None:
            return random.Random()
        return random.Random(":".join((str(self._seed), *parts)))

    def _open_market(self, spec: SymbolSpec) -> _Market:
        market = _Market(spec, self._rng(spec.name, "ticks"), mid=spec.start_price)
        self._quote(market, self._start)
        market.next_time = self._start + market.rng.expovariate(1 / spec.mean_tick_interval)
        return market

    def _quote(self, market: _Market, at: float) -> None:
        """A new tick around the market's mid, with a freshly drawn spread."""
        spec = market.spec
        spread = market.rng.randint(*spec.spread_points)
        bid = round(market.mid - spread * spec.point / 2, spec.digits)
        self._record(market, at, bid, round(bid + spread * spec.point, spec.digits))

    @staticmethod
    def _record(market: _Market, at: float, bid: float, ask: float) -> None:
        market.bid, market.ask, market.time = bid, ask, at
        minute = float(int(at // 60) * 60)
        if market.bars and market.bars[-1][0] == minute:
            bar = market.bars[-1]
            bar[2] = max(bar[2], bid)
            bar[3] = min(bar[3], bid)
            bar[4] = bid
            bar[5] += 1
        else:
            market.bars.append([minute, bid, bid, bid, bid, 1])

    def _advance(self) -> None:
        """Generates every tick due up to now, in time order across symbols."""
        now = self._clock()
        queue = self._queue
        while queue and queue[0][0] <= now:
            at, name = heapq.heappop(queue)
            market = self._markets[name]
            spec = market.spec
            elapsed = at - market.time
            sigma = spec.annual_volatility * math.sqrt(max(elapsed, 1e-6) / SECONDS_PER_YEAR)
            market.mid *= math.exp(market.rng.gauss(0.0, sigma))
            self._quote(market, at)
            self._on_tick(market)
            interval = market.rng.expovariate(1 / spec.mean_tick_interval)
            backlog = now - at
            if backlog > MAX_CATCHUP_TICKS * spec.mean_tick_interval:
                # Catching up after a long pause: fewer, larger steps. Below that, the
                # ticks do not depend on how often the market is looked at.
                interval = max(interval, backlog / MAX_CATCHUP_TICKS)
            market.next_time = at + interval
            heapq.heappush(queue, (market.next_time, name))
        self._expire_pending(now)

    # -- candles -------------------------------------------------------------------------

    def candles(self, symbol: str, timeframe: str, count: int) -> list[dict[str, Any]]:
        """The last ``count`` candles (the forming one included), oldest first, on the bid."""
        market = self._market(symbol)
        seconds = TIMEFRAME_SECONDS[timeframe]
        history = self._seeded_history(market)
        live: list[Bar] = [(int(b[0]), b[1], b[2], b[3], b[4], int(b[5]), 60) for b in market.bars]
        # Hourly history bars cannot be split into minutes: intraday frames use minutes only.
        bars = [b for b in history if b[6] <= seconds] + live
        candles: list[dict[str, Any]] = []
        for start, open_, high, low, close, volume, _ in bars:
            bucket = _bucket_start(start, timeframe)
            if candles and candles[-1]["time"] == bucket:
                candle = candles[-1]
                candle["high"] = max(candle["high"], high)
                candle["low"] = min(candle["low"], low)
                candle["close"] = close
                candle["volume"] += volume
            else:
                candles.append(
                    {
                        "time": bucket,
                        "open": open_,
                        "high": high,
                        "low": low,
                        "close": close,
                        "volume": volume,
                    }
                )
        return candles[-count:]

    def _seeded_history(self, market: _Market) -> list[Bar]:
        """Bars before the simulation started, walked backwards from the first tick's bid:
        D1 bars for ``history_days``, H1 bars for ``history_hours`` (day-aligned), then M1
        bars for ``history_minutes`` (hour-aligned)."""
        spec = market.spec
        cached = self._history.get(spec.name)
        if cached is not None:
            return cached
        rng = self._rng(spec.name, "history")
        first_minute = int(self._start // 60) * 60
        minutes_start = (first_minute - self._history_minutes * 60) // 3600 * 3600
        first_bid = market.bars[0][1]
        minutes = _walk_back(spec, rng, first_bid, minutes_start, first_minute, 60)
        hours_start = (minutes_start - self._history_hours * 3600) // 86_400 * 86_400
        first_close = minutes[0][1] if minutes else first_bid
        hours = _walk_back(spec, rng, first_close, hours_start, minutes_start, 3600)
        days_start = hours_start - self._history_days * 86_400
        first_close = hours[0][1] if hours else first_close
        days = _walk_back(spec, rng, first_close, days_start, hours_start, 86_400)
        history = days + hours + minutes
        self._history[spec.name] = history
        return history


def _walk_back(
    spec: SymbolSpec, rng: random.Random, close: float, start: int, end: int, duration: int
) -> list[Bar]:
    """Bars of ``duration`` seconds from ``start`` to ``end``, the last closing at ``close``;
    each bar's close is the next bar's open, so the series joins the live ticks seamlessly."""
    sigma = spec.annual_volatility * math.sqrt(duration / SECONDS_PER_YEAR)
    ticks_per_bar = duration / spec.mean_tick_interval
    bars: list[Bar] = []
    at = end - duration
    while at >= start:
        open_ = round(close * math.exp(-rng.gauss(0.0, sigma)), spec.digits)
        high = max(open_, close) * (1 + abs(rng.gauss(0.0, sigma)) * 0.6)
        low = min(open_, close) * (1 - abs(rng.gauss(0.0, sigma)) * 0.6)
        high = max(round(high, spec.digits), open_, close)
        low = min(round(low, spec.digits), open_, close)
        volume = max(1, int(ticks_per_bar * rng.uniform(0.5, 1.5)))
        bars.append((at, open_, high, low, close, volume, duration))
        close = open_
        at -= duration
    bars.reverse()
    return bars


def _bucket_start(epoch_seconds: int, timeframe: str) -> int:
    if timeframe == "MN1":
        moment = datetime.fromtimestamp(epoch_seconds, UTC)
        return int(datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp())
    if timeframe == "W1":
        return (epoch_seconds - _FIRST_SUNDAY) // 604_800 * 604_800 + _FIRST_SUNDAY
    seconds = TIMEFRAME_SECONDS[timeframe]
    return epoch_seconds // seconds * seconds
