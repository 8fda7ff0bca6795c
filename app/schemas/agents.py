"""What agents send and receive."""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, RootModel, StringConstraints, model_validator

from app.schemas.common import STORABLE, UtcDatetime
from app.schemas.trading import SYMBOL_PATTERN, JobType

MAX_INSTRUMENTS_PER_PUSH = 1000


class Heartbeat(BaseModel):
    version: Annotated[str, StringConstraints(max_length=64), STORABLE] | None = None
    terminal_connected: bool | None = None


class ServerTime(BaseModel):
    server_time: UtcDatetime


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
    retcode: int | None = Field(default=None, ge=-(2**31), lt=2**31)


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
    bid: float = Field(gt=0, allow_inf_nan=False)
    ask: float = Field(gt=0, allow_inf_nan=False)
    ts: int | None = Field(default=None, ge=0, lt=2**53, description="Epoch milliseconds.")

    @model_validator(mode="after")
    def _ask_not_below_bid(self) -> TickIn:
        if self.ask < self.bid or not (math.isfinite(self.bid) and math.isfinite(self.ask)):
            raise ValueError("ask must be >= bid")
        return self


class PricePush(RootModel[dict[Annotated[str, StringConstraints(pattern=SYMBOL_PATTERN)], TickIn]]):
    @model_validator(mode="after")
    def _bounded(self) -> PricePush:
        if not self.root:
            raise ValueError("no instruments")
        if len(self.root) > MAX_INSTRUMENTS_PER_PUSH:
            raise ValueError(f"at most {MAX_INSTRUMENTS_PER_PUSH} instruments per push")
        return self


class PricesAccepted(BaseModel):
    accepted: int
