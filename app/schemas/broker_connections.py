from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from app.schemas.common import JSON_INTEGER, STORABLE, OrmReadModel, UtcDatetime

# The largest integer that every JSON client (JavaScript's numbers, schema validators that
# compare in floating point) holds exactly; MT5 logins are far below it.
MAX_LOGIN = 2**53 - 1


class BrokerConnectionCreate(BaseModel):
    server: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128), STORABLE
    ]
    login: Annotated[int, Field(gt=0, le=MAX_LOGIN), JSON_INTEGER] = Field(
        description="The MT5 account number, from 1 to 2^53 - 1 (9007199254740991)."
    )
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


class BrokerConnectionRead(OrmReadModel):
    id: uuid.UUID
    server: str
    login: int
    label: str | None
    created_at: UtcDatetime
    agent: AgentSummary | None


class AgentProvisioned(BaseModel):
    agent_id: uuid.UUID
    agent_token: str = Field(description="Shown once; only its hash is stored.")
