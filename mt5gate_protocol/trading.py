"""The trading records that jobs carry: positions, the account, candles, pending orders,
history and symbols, as an agent reports them and the REST API shows them."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from mt5gate_protocol.types import (
    SYMBOL_PATTERN,
    Money,
    Price,
    Symbol,
    Ticket,
    UtcDatetime,
    Volume,
)

__all__ = ["SYMBOL_PATTERN", "Money", "Price", "Symbol", "Ticket", "Volume"]

Side = Literal["buy", "sell"]
Timeframe = Literal["M1", "M5", "M15", "M30", "H1", "H4", "D1", "W1", "MN1"]


class AgentRecord(BaseModel):
    """A record an agent reports: fields it adds that this protocol does not know are
    dropped, not refused (a newer agent may say more)."""

    model_config = ConfigDict(extra="ignore")


class Position(AgentRecord):
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


class Account(AgentRecord):
    balance: Money
    equity: Money
    margin_used: Money = Field(ge=0)
    margin_available: Money
    currency: Annotated[str, StringConstraints(min_length=1, max_length=16)]
    leverage: int = Field(gt=0)


class Candle(AgentRecord):
    time: int = Field(ge=0, description="Epoch seconds of the bar's open.")
    open: Price
    high: Price
    low: Price
    close: Price
    volume: int = Field(ge=0, lt=2**63, description="Tick volume.")


class ClosedPosition(AgentRecord):
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


class Expiration(AgentRecord):
    """`gtc` (the default), `day` (the broker's trading day) or `specified` with `at`."""

    type: Literal["gtc", "day", "specified"] = "gtc"
    at: UtcDatetime | None = None


class PendingOrder(AgentRecord):
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


class Deal(AgentRecord):
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


class HistoryOrder(AgentRecord):
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


class SymbolInfo(AgentRecord):
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
