"""Jobs as the agent protocol sees them: their types and statuses, the envelope an agent
claims, the result it answers, and each job type's input and output.

The one place where job type and job status strings are written out: everything else, on
the server and in the agent, names them through `JobType` and `JobStatus`.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from mt5gate_protocol.trading import (
    Account,
    AgentRecord,
    Candle,
    ClosedPosition,
    Deal,
    Expiration,
    HistoryOrder,
    PendingOrder,
    PendingType,
    Position,
    Side,
    SymbolInfo,
)
from mt5gate_protocol.types import (
    JSON_INTEGER,
    STORABLE,
    Price,
    Symbol,
    Ticket,
    UtcDatetime,
    Volume,
)


class JobType(StrEnum):
    TRADE = "trade"
    GET_POSITIONS = "get_positions"
    CLOSE_POSITION = "close_position"
    MODIFY_POSITION = "modify_position"
    GET_ACCOUNT = "get_account"
    GET_CANDLES = "get_candles"
    PLACE_PENDING_ORDER = "place_pending_order"
    GET_PENDING_ORDERS = "get_pending_orders"
    MODIFY_PENDING_ORDER = "modify_pending_order"
    CANCEL_PENDING_ORDER = "cancel_pending_order"
    GET_HISTORY = "get_history"
    GET_SYMBOLS = "get_symbols"


class JobStatus(StrEnum):
    """`pending` → `running` (claimed by its agent) → `completed` | `failed`; side exits
    `expired` (never claimed in time) and `lost` (claimed, never answered in time)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    LOST = "lost"


# A job as `GET /jobs/{id}` shows it: a `lost` one is `unknown` there, as its outcome is.
JobViewStatus = Literal["pending", "running", "completed", "failed", "expired", "unknown"]


FINAL_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.LOST}
)
# The job types that are an order (`order_id` is their job id; their result's `ticket` is
# the order's broker ticket).
ORDER_JOB_TYPES = frozenset({JobType.TRADE, JobType.PLACE_PENDING_ORDER})


class JobEnvelope(BaseModel):
    """A claimed job, as `GET /agents/{agent_id}/jobs/next` hands it to its agent."""

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
    status: Literal[JobStatus.COMPLETED]
    output_data: dict[str, Any]


class FailedResult(BaseModel):
    status: Literal[JobStatus.FAILED]
    error: JobError


JobResult = Annotated[CompletedResult | FailedResult, Field(discriminator="status")]


class JobResultAccepted(BaseModel):
    job_id: uuid.UUID
    status: str


# What a job's `input_data` holds, for the job types that have a model of it.
class PlacePendingOrderInput(AgentRecord):
    symbol: Symbol
    side: Side
    volume: Volume
    type: PendingType
    price: Price
    stop_limit_price: Price | None = None
    expiration: Expiration = Field(default_factory=Expiration)
    sl: Price | None = None
    tp: Price | None = None
    client_order_id: str | None = None


class CancelPendingOrderInput(AgentRecord):
    ticket: Ticket


class GetHistoryInput(AgentRecord):
    kind: Literal["deals", "orders"]
    from_: UtcDatetime = Field(alias="from")
    to: UtcDatetime
    limit: int = Field(ge=1, le=1000)
    before: Ticket | None = None
    symbol: Symbol | None = None
    position_id: Ticket | None = None


class GetSymbolsInput(AgentRecord):
    symbol: Symbol | None = None
    group: Annotated[str, StringConstraints(max_length=256)] | None = None
    all: bool = False


# What an agent's `output_data` must look like, per job type.
class TradeOutput(AgentRecord):
    ticket: Ticket
    fill_price: Price
    volume: Volume
    filled_at: UtcDatetime


class PositionsOutput(AgentRecord):
    positions: list[Position]


class ModifyPositionOutput(AgentRecord):
    position: Position


class CandlesOutput(AgentRecord):
    candles: list[Candle]


class PlacedPendingOrder(AgentRecord):
    ticket: Ticket
    placed_at: UtcDatetime


class PendingOrdersOutput(AgentRecord):
    pending_orders: list[PendingOrder]


class ModifyPendingOrderOutput(AgentRecord):
    pending_order: PendingOrder


class CancelledPendingOrder(AgentRecord):
    ticket: Ticket
    cancelled_at: UtcDatetime


class HistoryOutput(AgentRecord):
    """`deals` for `kind: deals`, `orders` for `kind: orders`."""

    deals: list[Deal] | None = None
    orders: list[HistoryOrder] | None = None


class SymbolsOutput(AgentRecord):
    symbols: list[SymbolInfo]


# Keyed by the job type (a `JobType` is its string, so a job row's `job_type` finds it too).
OUTPUT_MODELS: dict[str, type[BaseModel]] = {
    JobType.TRADE: TradeOutput,
    JobType.GET_POSITIONS: PositionsOutput,
    JobType.CLOSE_POSITION: ClosedPosition,
    JobType.MODIFY_POSITION: ModifyPositionOutput,
    JobType.GET_ACCOUNT: Account,
    JobType.GET_CANDLES: CandlesOutput,
    JobType.PLACE_PENDING_ORDER: PlacedPendingOrder,
    JobType.GET_PENDING_ORDERS: PendingOrdersOutput,
    JobType.MODIFY_PENDING_ORDER: ModifyPendingOrderOutput,
    JobType.CANCEL_PENDING_ORDER: CancelledPendingOrder,
    JobType.GET_HISTORY: HistoryOutput,
    JobType.GET_SYMBOLS: SymbolsOutput,
}
