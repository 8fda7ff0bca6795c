"""The trading vocabulary shared by the user routes and the agent results."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.schemas.common import UtcDatetime

SYMBOL_PATTERN = r"^[A-Za-z0-9._#-]{1,32}$"
Symbol = Annotated[str, StringConstraints(pattern=SYMBOL_PATTERN)]
Side = Literal["buy", "sell"]
Timeframe = Literal["M1", "M5", "M15", "M30", "H1", "H4", "D1", "W1", "MN1"]
Price = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Money = Annotated[float, Field(allow_inf_nan=False)]
Volume = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]
Ticket = Annotated[int, Field(ge=0, lt=2**63)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Position(Strict):
    position_id: Ticket
    symbol: Symbol
    side: Side
    volume: Volume
    open_price: Price
    current_price: Price
    sl: Price | None = None
    tp: Price | None = None
    profit: Money
    swap: Money = 0.0
    opened_at: UtcDatetime


class Account(Strict):
    balance: Money
    equity: Money
    margin_used: Money = Field(ge=0)
    margin_available: Money
    currency: Annotated[str, StringConstraints(min_length=1, max_length=16)]
    leverage: int = Field(gt=0)


class Candle(Strict):
    time: int = Field(ge=0, description="Epoch seconds of the bar's open.")
    open: Price
    high: Price
    low: Price
    close: Price
    volume: int = Field(ge=0, lt=2**63, description="Tick volume.")


class ClosedPosition(Strict):
    closed_price: Price
    volume: Volume
    pnl: Money
    closed_at: UtcDatetime


# -- pending orders, history, symbols -------------------------------------------------------

PendingType = Literal["limit", "stop", "stop_limit"]
OrderType = Literal["market", "limit", "stop", "stop_limit"]
DealReason = Literal[
    "mt5gate",
    "client",
    "mobile",
    "web",
    "expert",
    "sl",
    "tp",
    "stop_out",
    "rollover",
    "vmargin",
    "split",
    "other",
]


class Expiration(Strict):
    """`gtc` (the default), `day` (the broker's trading day) or `specified` with `at`."""

    type: Literal["gtc", "day", "specified"] = "gtc"
    at: UtcDatetime | None = None


class PendingOrder(Strict):
    ticket: Ticket
    order_id: uuid.UUID | None = Field(
        default=None, description="The order's id in mt5gate; null for one placed elsewhere."
    )
    symbol: Symbol
    side: Side
    type: PendingType
    volume: Volume
    price: Price
    stop_limit_price: Price | None = None
    sl: Price | None = None
    tp: Price | None = None
    expiration: Expiration = Field(default_factory=Expiration)
    placed_at: UtcDatetime


class Deal(Strict):
    ticket: Ticket
    order_ticket: Ticket | None = None
    position_id: Ticket | None = None
    type: Literal["buy", "sell", "balance", "credit", "commission", "other"]
    symbol: Symbol | None = None
    side: Side | None = None
    entry: Literal["in", "out", "inout", "out_by"] | None = None
    volume: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    price: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    profit: Money = 0.0
    commission: Money = 0.0
    swap: Money = 0.0
    fee: Money = 0.0
    reason: DealReason
    time: UtcDatetime


class HistoryOrder(Strict):
    ticket: Ticket
    order_id: uuid.UUID | None = Field(
        default=None, description="The order's id in mt5gate; null for one placed elsewhere."
    )
    position_id: Ticket | None = None
    symbol: Symbol
    side: Side
    type: Literal["market", "limit", "stop", "stop_limit", "close_by"]
    volume_initial: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    volume_filled: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    price: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    state: Literal["filled", "partial", "cancelled", "expired", "rejected"]
    reason: DealReason
    placed_at: UtcDatetime
    done_at: UtcDatetime | None = None


Points = Annotated[int, Field(ge=0, lt=2**31)]


class SymbolInfo(Strict):
    name: Symbol
    description: Annotated[str, StringConstraints(max_length=256)] = ""
    digits: int = Field(ge=0, le=16)
    point: Price
    contract_size: Price
    currency_base: Annotated[str, StringConstraints(max_length=16)]
    currency_profit: Annotated[str, StringConstraints(max_length=16)]
    volume_min: Price
    volume_max: Price
    volume_step: Price
    stops_level: Points = Field(description="In points.")
    freeze_level: Points = Field(description="In points.")
    trade_mode: Literal["full", "long_only", "short_only", "close_only", "disabled"]
    execution_mode: Literal["request", "instant", "market", "exchange"]
    filling_modes: list[Literal["fok", "ioc", "return"]]
    expiration_modes: list[Literal["gtc", "day", "specified"]]
    order_modes: list[Literal["market", "limit", "stop", "stop_limit", "sl", "tp", "close_by"]]


# What a job's `input_data` holds, for the job types that have a model of it.
class PlacePendingOrderInput(Strict):
    symbol: Symbol
    side: Side
    volume: Volume
    type: PendingType
    price: Price
    stop_limit_price: Price | None = None
    expiration: Expiration = Field(default_factory=Expiration)
    sl: Price | None = None
    tp: Price | None = None
    client_order_id: str | None = None


class CancelPendingOrderInput(Strict):
    ticket: Ticket


class GetHistoryInput(Strict):
    kind: Literal["deals", "orders"]
    from_: UtcDatetime = Field(alias="from")
    to: UtcDatetime
    limit: int = Field(ge=1, le=1000)
    before: Ticket | None = None
    symbol: Symbol | None = None
    position_id: Ticket | None = None


class GetSymbolsInput(Strict):
    symbol: Symbol | None = None
    group: Annotated[str, StringConstraints(max_length=256)] | None = None
    all: bool = False


# What an agent's `output_data` must look like, per job type.
class TradeOutput(Strict):
    ticket: Ticket
    fill_price: Price
    volume: Volume
    filled_at: UtcDatetime


class PositionsOutput(Strict):
    positions: list[Position]


class ModifyPositionOutput(Strict):
    position: Position


class CandlesOutput(Strict):
    candles: list[Candle]


class PlacedPendingOrder(Strict):
    ticket: Ticket
    placed_at: UtcDatetime


class PendingOrdersOutput(Strict):
    pending_orders: list[PendingOrder]


class ModifyPendingOrderOutput(Strict):
    pending_order: PendingOrder


class CancelledPendingOrder(Strict):
    ticket: Ticket
    cancelled_at: UtcDatetime


class HistoryOutput(Strict):
    """`deals` for `kind: deals`, `orders` for `kind: orders`."""

    deals: list[Deal] | None = None
    orders: list[HistoryOrder] | None = None


class SymbolsOutput(Strict):
    symbols: list[SymbolInfo]


# The job types that are an order (`order_id` is their job id; their result's `ticket` is
# the order's broker ticket).
ORDER_JOB_TYPES = frozenset({"trade", "place_pending_order"})
OUTPUT_MODELS: dict[str, type[BaseModel]] = {
    "trade": TradeOutput,
    "get_positions": PositionsOutput,
    "close_position": ClosedPosition,
    "modify_position": ModifyPositionOutput,
    "get_account": Account,
    "get_candles": CandlesOutput,
    "place_pending_order": PlacedPendingOrder,
    "get_pending_orders": PendingOrdersOutput,
    "modify_pending_order": ModifyPendingOrderOutput,
    "cancel_pending_order": CancelledPendingOrder,
    "get_history": HistoryOutput,
    "get_symbols": SymbolsOutput,
}
JobType = Literal[
    "trade",
    "get_positions",
    "close_position",
    "modify_position",
    "get_account",
    "get_candles",
    "place_pending_order",
    "get_pending_orders",
    "modify_pending_order",
    "cancel_pending_order",
    "get_history",
    "get_symbols",
]
