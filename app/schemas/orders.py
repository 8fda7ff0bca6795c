"""Orders: what a client sends to trade, and the order it gets back."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.schemas.common import Text, UtcDatetime
from app.schemas.trading import SYMBOL_PATTERN, Side

# Strict numbers: a JSON string such as "0.1" or a boolean is a 422, not a guess.
OrderVolume = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False, strict=True)]
OrderPrice = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
ClientOrderId = Annotated[Text, StringConstraints(min_length=1, max_length=64)]

OrderStatus = Literal["pending", "filled", "rejected", "expired", "unknown"]

ORDER_STATUS_DESCRIPTION = """\
Derived from the order's trade job, never stored twice:

* `pending`: no result yet (the agent has not taken it, or is executing it).
* `filled`: executed; `fill_price`, `ticket`, `filled_at` are set.
* `rejected`: the broker (or the terminal) said no; `error` = `{code, message, retcode}`.
* `expired`: no agent took it before it expired, so it will never execute.
* `unknown`: the agent took it but never reported back in time (it may have died
  mid-order). The outcome is unknown: check `GET /positions` before placing it again.
  Should the agent report late, the order becomes `filled` or `rejected`.
"""


class OrderCreate(BaseModel):
    """A market order. Unknown fields are refused (422): a mistyped `stop_loss` must not be
    dropped silently."""

    model_config = ConfigDict(extra="forbid")

    symbol: Annotated[str, StringConstraints(pattern=SYMBOL_PATTERN)] = Field(examples=["EURUSD"])
    side: Side
    volume: OrderVolume = Field(description="Lots, > 0 and ≤ 100.", examples=[0.1])
    sl: OrderPrice | None = Field(default=None, description="Stop-loss price.")
    tp: OrderPrice | None = Field(default=None, description="Take-profit price.")
    client_order_id: ClientOrderId | None = Field(
        default=None,
        description="Makes the call idempotent per user: a repeat with the same id returns "
        "the existing order and creates nothing; the same id with a different order is "
        "`409 client_order_id_conflict`.",
    )
    broker_connection_id: uuid.UUID | None = Field(
        default=None, description="The connection to trade on; the oldest one when omitted."
    )

    def job_input(self) -> dict[str, object]:
        """The `trade` job's `input_data`, as the agent contract names it."""
        return {
            "symbol": self.symbol,
            "side": self.side,
            "volume": self.volume,
            "sl": self.sl,
            "tp": self.tp,
            "client_order_id": self.client_order_id,
        }


class OrderError(BaseModel):
    code: str = Field(description="snake_case, e.g. `no_money`, `market_closed`, `expired`.")
    message: str
    retcode: int | None = Field(default=None, description="MT5's numeric retcode, if any.")


class OrderRead(BaseModel):
    order_id: uuid.UUID = Field(description="The order's trade job id.")
    client_order_id: str | None
    status: OrderStatus = Field(description=ORDER_STATUS_DESCRIPTION)
    symbol: str
    side: Side
    volume: float = Field(
        description="Lots: as requested, or as executed once `filled` (they differ only on a "
        "partial fill)."
    )
    sl: float | None
    tp: float | None
    fill_price: float | None
    ticket: int | None = Field(description="The MT5 ticket of the fill.")
    error: OrderError | None
    created_at: UtcDatetime
    filled_at: UtcDatetime | None


class OrderRejectedBody(BaseModel):
    detail: Literal["order_rejected"]
    message: str
    order: OrderRead
