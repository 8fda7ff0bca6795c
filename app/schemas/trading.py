"""The trading vocabulary shared by the user routes and the agent results."""

from __future__ import annotations

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


OUTPUT_MODELS: dict[str, type[BaseModel]] = {
    "trade": TradeOutput,
    "get_positions": PositionsOutput,
    "close_position": ClosedPosition,
    "modify_position": ModifyPositionOutput,
    "get_account": Account,
    "get_candles": CandlesOutput,
}
JobType = Literal[
    "trade", "get_positions", "close_position", "modify_position", "get_account", "get_candles"
]
