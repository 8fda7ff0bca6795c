from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, EmailStr, Field, StringConstraints

from app.schemas.common import STORABLE, OrmReadModel, UtcDatetime

Password = Annotated[str, StringConstraints(min_length=8, max_length=256), STORABLE]


class UserCreate(BaseModel):
    """The registration body: a new account's email and password."""

    email: Annotated[EmailStr, StringConstraints(max_length=320), STORABLE]
    password: Password


class LoginCredentials(BaseModel):
    email: Annotated[str, StringConstraints(min_length=1, max_length=320), STORABLE]
    password: Annotated[str, StringConstraints(min_length=1, max_length=256), STORABLE]


class UserRead(OrmReadModel):
    id: uuid.UUID
    email: str
    onboarding_completed: bool
    created_at: UtcDatetime


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")
    user: UserRead


class OnboardingComplete(BaseModel):
    accept_risk_disclosure: Literal[True]
