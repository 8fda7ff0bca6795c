"""Positions: closing and modifying them, and the answers those writes give."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from app.schemas.common import UtcDatetime
from app.schemas.orders import OrderPrice


class PositionUpdate(BaseModel):
    """New stop-loss and/or take-profit. A field left out stays as it is; `null` removes it.
    An empty body changes nothing and is refused: 422 with the error type `nothing_to_change`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    sl: OrderPrice | None = None
    tp: OrderPrice | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> PositionUpdate:
        if not self.model_fields_set:
            raise PydanticCustomError(
                "nothing_to_change", "Give sl, tp or both (null removes one)."
            )
        return self

    def job_input(self, ticket: int) -> dict[str, object]:
        """`{ticket, sl?, tp?}`: the agent keeps a level whose key is absent."""
        return {"ticket": ticket, **{name: getattr(self, name) for name in self.model_fields_set}}


class PositionClosed(BaseModel):
    position_id: int
    closed_price: float
    volume: float = Field(description="The lots closed.")
    pnl: float
    closed_at: UtcDatetime


class JobPending(BaseModel):
    """The agent did not answer within the wait budget; the request may still execute.
    `GET /positions` shows the outcome."""

    job_id: uuid.UUID
    status: Literal["pending"] = "pending"


class BrokerErrorDetail(BaseModel):
    code: str
    message: str
    retcode: int | None = None


class BrokerErrorBody(BaseModel):
    detail: Literal["broker_error"]
    message: str
    error: BrokerErrorDetail
