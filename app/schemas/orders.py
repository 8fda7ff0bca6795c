"""Orders: what a client sends to trade, and the order it gets back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    model_validator,
)

from app.schemas.common import IN_UTC_RANGE, Text, UtcDatetime
from app.schemas.trading import (
    SYMBOL_PATTERN,
    Expiration,
    OrderType,
    PlacePendingOrderInput,
    Side,
)
from mt5gate_protocol.jobs import JobType

# Strict numbers: a JSON string such as "0.1" or a boolean is a 422, not a guess.
OrderVolume = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False, strict=True)]
OrderPrice = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
ClientOrderId = Annotated[Text, StringConstraints(min_length=1, max_length=64)]

OrderStatus = Literal["pending", "filled", "placed", "cancelled", "rejected", "expired", "unknown"]

ORDER_STATUS_DESCRIPTION = """\
Derived from the order's job, never stored twice:

* `pending`: no result yet (the agent has not taken it, or is executing it).
* `filled`: executed; `fill_price`, `ticket`, `filled_at` are set.
* `placed`: a pending order (`limit`, `stop`, `stop_limit`) rests at the broker under
  `ticket` since `placed_at`.
* `cancelled`: a placed order deleted through `DELETE /pending-orders/{ticket}`. (A
  placed order that the broker triggers, cancels or expires stays `placed` here until the
  account events report it.)
* `rejected`: the broker (or the terminal) said no; `error` = `{code, message, retcode}`.
* `expired`: no agent took it before it expired, so it will never execute.
* `unknown`: the agent took it but never reported back in time (it may have died
  mid-order). The outcome is unknown: check `GET /positions` before placing it again.
  Should the agent report late, the order becomes `filled` or `rejected`.
"""


class GoodTillCancelled(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["gtc"]


class GoodForTheDay(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["day"]


class GoodTillSpecified(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["specified"]
    # In UTC range: the job carries it in UTC.
    at: Annotated[AwareDatetime, IN_UTC_RANGE] = Field(
        description="ISO-8601 with a zone (UTC), in the future."
    )

    @model_validator(mode="after")
    def _in_the_future(self) -> GoodTillSpecified:
        if self.at <= datetime.now(UTC):
            raise ValueError("expiration.at must be in the future")
        return self


ExpirationIn = Annotated[
    GoodTillCancelled | GoodForTheDay | GoodTillSpecified, Discriminator("type")
]


def expiration_input(expiration: ExpirationIn | None) -> dict[str, Any]:
    """The job's `expiration`: `{type}`, plus `at` (ISO-8601 UTC) for `specified`."""
    if isinstance(expiration, GoodTillSpecified):
        return Expiration(type="specified", at=expiration.at).model_dump(mode="json")
    return {"type": expiration.type if expiration is not None else "gtc", "at": None}


class OrderCreate(BaseModel):
    """A market or pending order. Unknown fields are refused (422): a mistyped `stop_loss`
    must not be dropped silently."""

    model_config = ConfigDict(extra="forbid")

    symbol: Annotated[str, StringConstraints(pattern=SYMBOL_PATTERN)] = Field(examples=["EURUSD"])
    side: Side
    volume: OrderVolume = Field(description="Lots, > 0 and ≤ 100.", examples=[0.1])
    type: OrderType = Field(
        default="market", description="`market`, `limit`, `stop` or `stop_limit`."
    )
    price: OrderPrice | None = Field(
        default=None,
        description="Required for pending types, forbidden for `market`: the limit price of a "
        "`limit`, the trigger price of a `stop` or `stop_limit`.",
    )
    stop_limit_price: OrderPrice | None = Field(
        default=None,
        description="`stop_limit` only (required there): the price of the limit order a "
        "triggered stop-limit places (≤ `price` for a buy, ≥ for a sell).",
    )
    expiration: ExpirationIn | None = Field(
        default=None, description="Pending types only: `gtc` (the default), `day`, `specified`."
    )
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

    @model_validator(mode="after")
    def _fields_fit_the_type(self) -> OrderCreate:
        if self.type == "market":
            given = [f for f in ("price", "stop_limit_price", "expiration") if getattr(self, f)]
            if given:
                raise ValueError(f"{', '.join(given)} not allowed on a market order")
            return self
        if self.price is None:
            raise ValueError(f"price is required for a {self.type} order")
        if self.type == "stop_limit":
            if self.stop_limit_price is None:
                raise ValueError("stop_limit_price is required for a stop_limit order")
            # The limit a triggered stop-limit places: at or below the trigger for a buy.
            sign = 1 if self.side == "buy" else -1
            if sign * (self.price - self.stop_limit_price) < 0:
                word = "≤" if self.side == "buy" else "≥"
                raise ValueError(f"a {self.side} stop_limit needs stop_limit_price {word} price")
        elif self.stop_limit_price is not None:
            raise ValueError("stop_limit_price is only allowed on a stop_limit order")
        return self

    @property
    def is_pending(self) -> bool:
        return self.type != "market"

    def job_type(self) -> JobType:
        return JobType.PLACE_PENDING_ORDER if self.is_pending else JobType.TRADE

    def job_input(self) -> dict[str, object]:
        """The job's `input_data`, as the agent contract names it (`trade` for a market
        order, `place_pending_order` for the others)."""
        if self.is_pending:
            return PlacePendingOrderInput.model_validate(
                {
                    "symbol": self.symbol,
                    "side": self.side,
                    "volume": self.volume,
                    "type": self.type,
                    "price": self.price,
                    "stop_limit_price": self.stop_limit_price,
                    "expiration": expiration_input(self.expiration),
                    "sl": self.sl,
                    "tp": self.tp,
                    "client_order_id": self.client_order_id,
                }
            ).model_dump(mode="json")
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
    order_id: uuid.UUID = Field(description="The order's job id.")
    client_order_id: str | None
    status: OrderStatus = Field(description=ORDER_STATUS_DESCRIPTION)
    type: OrderType
    symbol: str
    side: Side
    volume: float = Field(
        description="Lots: as requested, or as executed once `filled` (they differ only on a "
        "partial fill)."
    )
    price: float | None = Field(description="A pending order's price (null for `market`).")
    stop_limit_price: float | None
    expiration: Expiration | None = Field(description="A pending order's; null for `market`.")
    sl: float | None
    tp: float | None
    fill_price: float | None
    ticket: int | None = Field(
        description="The MT5 ticket: of the fill's position, or of the placed pending order."
    )
    position_id: int | None = Field(description="The position a fill opened.")
    error: OrderError | None
    created_at: UtcDatetime
    placed_at: UtcDatetime | None
    filled_at: UtcDatetime | None


class OrderRejectedBody(BaseModel):
    detail: Literal["order_rejected"]
    message: str
    order: OrderRead
