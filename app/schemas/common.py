"""Types shared by the schema family."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# The field types the agent protocol defines, re-exported for the REST schemas.
from mt5gate_protocol.types import (  # noqa: F401
    IN_UTC_RANGE,
    JSON_INTEGER,
    STORABLE,
    Text,
    UtcDatetime,
    iso_utc,
    only_json_numbers,
    reject_unstorable_text,
)


class OrmReadModel(BaseModel):
    """A response model read straight off an ORM object's attributes (`model_validate(row)`)."""

    model_config = ConfigDict(from_attributes=True)


class ErrorBody(BaseModel):
    detail: str
    message: str
