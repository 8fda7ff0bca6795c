"""The agent's messages other than jobs: its heartbeat, its credentials, its price pushes."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, model_validator

from mt5gate_protocol.types import JSON_INTEGER, STORABLE, SYMBOL_PATTERN, UtcDatetime

MAX_INSTRUMENTS_PER_PUSH = 1000


class Heartbeat(BaseModel):
    version: Annotated[str, StringConstraints(max_length=64), STORABLE] | None = None
    terminal_connected: bool | None = Field(default=None, strict=True)


class ServerTime(BaseModel):
    server_time: UtcDatetime
    last_deal_ticket: int | None = Field(
        default=None,
        description="The newest deal the server has recorded for this connection (null: "
        "none yet); the agent reports the deals after it.",
    )


class Credentials(BaseModel):
    server: str
    login: int
    password: str = Field(repr=False)  # never in a log line


class TickIn(BaseModel):
    """A quote; `ask` must not be below `bid` (a crossed quote is a 422)."""

    # Strict numbers, as the schema says: a string "1.1" or `false` is a 422, not a guess.
    bid: float = Field(gt=0, allow_inf_nan=False, strict=True)
    ask: float = Field(gt=0, allow_inf_nan=False, strict=True)
    ts: Annotated[int, Field(ge=0, lt=2**53), JSON_INTEGER] | None = Field(
        default=None, description="Epoch milliseconds."
    )

    @model_validator(mode="after")
    def _ask_not_below_bid(self) -> TickIn:
        if self.ask < self.bid or not (math.isfinite(self.bid) and math.isfinite(self.ask)):
            raise ValueError("ask must be >= bid")
        return self


PricesByInstrument = Annotated[
    dict[Annotated[str, StringConstraints(pattern=SYMBOL_PATTERN)], TickIn],
    Field(min_length=1, max_length=MAX_INSTRUMENTS_PER_PUSH),
]


class PricePush(RootModel[PricesByInstrument]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"EURUSD": {"bid": 1.0845, "ask": 1.0847}}]}
    )


class PricesAccepted(BaseModel):
    accepted: int
