"""Pending orders: what a client sends to change or cancel one, and what it gets back."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from app.schemas.common import UtcDatetime
from app.schemas.orders import ExpirationIn, OrderPrice, expiration_input


class PendingOrderUpdate(BaseModel):
    """New levels for a pending order. A field left out stays as it is; `null` removes
    `sl` or `tp`. An empty body changes nothing and is refused: 422 with the error type
    `nothing_to_change`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    # Only sl and tp may be null (removed): the schema says so too.
    price: OrderPrice | SkipJsonSchema[None] = None
    stop_limit_price: OrderPrice | SkipJsonSchema[None] = None
    sl: OrderPrice | None = None
    tp: OrderPrice | None = None
    expiration: ExpirationIn | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _changes_something(self) -> PendingOrderUpdate:
        if not self.model_fields_set:
            raise PydanticCustomError(
                "nothing_to_change", "Give price, stop_limit_price, sl, tp or expiration."
            )
        for name in ("price", "stop_limit_price", "expiration"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be removed (only sl and tp can)")
        return self

    def job_input(self, ticket: int) -> dict[str, object]:
        """`{ticket, ...}` with only the fields given: the agent keeps an absent one."""
        changes: dict[str, object] = {"ticket": ticket}
        for name in self.model_fields_set:
            value = getattr(self, name)
            changes[name] = expiration_input(value) if name == "expiration" else value
        return changes


class PendingOrderCancelled(BaseModel):
    ticket: int
    cancelled_at: UtcDatetime = Field(description="When the broker deleted it.")
