"""What agents send and receive."""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, model_validator

from app.schemas.common import JSON_INTEGER, STORABLE, UtcDatetime
from app.schemas.trading import SYMBOL_PATTERN, JobType

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
    password: str


class JobRead(BaseModel):
    id: uuid.UUID
    job_type: JobType
    input_data: dict[str, Any]
    created_at: UtcDatetime
    expires_at: UtcDatetime


class JobError(BaseModel):
    code: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    message: Annotated[str, StringConstraints(max_length=1000), STORABLE] = ""
    retcode: Annotated[int, Field(ge=-(2**31), lt=2**31), JSON_INTEGER] | None = None


class CompletedResult(BaseModel):
    status: Literal["completed"]
    output_data: dict[str, Any]


class FailedResult(BaseModel):
    status: Literal["failed"]
    error: JobError


JobResult = Annotated[CompletedResult | FailedResult, Field(discriminator="status")]


class JobResultAccepted(BaseModel):
    job_id: uuid.UUID
    status: str


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
