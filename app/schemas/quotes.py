"""Quotes and job lookups: what `GET /prices/{instrument}` and `GET /jobs/{job_id}` answer."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, Field

from app.schemas.common import UtcDatetime
from mt5gate_protocol.jobs import JobViewStatus


class TickRead(BaseModel):
    instrument: str
    bid: float
    ask: float
    ts: int = Field(description="Epoch milliseconds.")


class JobView(BaseModel):
    job_id: uuid.UUID
    job_type: str
    status: JobViewStatus = Field(
        description="`unknown`: the agent took it and never answered in time; the outcome "
        "is unknown (a late answer still moves it to `completed` or `failed`)."
    )
    output_data: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: UtcDatetime
    finished_at: UtcDatetime | None
