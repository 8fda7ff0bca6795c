from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints, field_validator

from app.schemas.common import STORABLE, OrmReadModel, UtcDatetime

Scope = Literal["read", "trade"]
SCOPE_SETS = ({"read"}, {"read", "trade"})


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64), STORABLE
    ]
    scopes: list[Scope]
    expires_at: AwareDatetime | None = None

    @field_validator("scopes")
    @classmethod
    def _one_of_the_two_sets(cls, scopes: list[Scope]) -> list[Scope]:
        if len(set(scopes)) != len(scopes) or set(scopes) not in SCOPE_SETS:
            raise ValueError('must be ["read"] or ["read", "trade"]')
        return sorted(scopes)

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, expires_at: datetime | None) -> datetime | None:
        if expires_at is None:
            return None
        try:
            expires_at = expires_at.astimezone(UTC)
        except OverflowError:  # 9999-12-31T23:00-05:00 is past what a datetime holds in UTC
            raise ValueError("must be a representable time") from None
        if expires_at <= datetime.now(UTC):
            raise ValueError("must be in the future")
        return expires_at


class ApiKeyRead(OrmReadModel):
    id: uuid.UUID
    name: str
    scopes: list[Scope]
    prefix: str
    created_at: UtcDatetime
    expires_at: UtcDatetime | None
    last_used_at: UtcDatetime | None


class ApiKeyCreated(BaseModel):
    id: uuid.UUID
    name: str
    scopes: list[Scope]
    prefix: str
    key: str
    created_at: UtcDatetime
    expires_at: UtcDatetime | None
