from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from app.schemas.common import STORABLE, Schema, UtcDatetime


class BrokerConnectionCreate(BaseModel):
    server: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128), STORABLE
    ]
    login: int = Field(gt=0, lt=2**63, description="The MT5 account number.")
    password: Annotated[str, StringConstraints(min_length=1, max_length=256), STORABLE] = Field(
        description="Encrypted at rest; never returned."
    )
    label: (
        Annotated[str, StringConstraints(strip_whitespace=True, max_length=128), STORABLE] | None
    ) = None


class AgentSummary(BaseModel):
    id: uuid.UUID
    status: Literal["online", "offline"]
    last_heartbeat_at: UtcDatetime | None


class BrokerConnectionRead(Schema):
    id: uuid.UUID
    server: str
    login: int
    label: str | None
    created_at: UtcDatetime
    agent: AgentSummary | None


class AgentProvisioned(BaseModel):
    agent_id: uuid.UUID
    agent_token: str = Field(description="Shown once; only its hash is stored.")
