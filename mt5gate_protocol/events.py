"""Account events: what an agent reports (`POST /agents/{agent_id}/events`) and the kinds
the account stream carries (`WS /ws/account`).

Each kind's `data` has the contract's shape: `order`, `position`, `pending_order`,
`deal` and `account` are the trading vocabulary's models; `position_closed` and
`pending_order_removed` have their own. `order` and `agent` are the server's own kinds:
an agent's batch naming one is refused like a malformed one.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from mt5gate_protocol.trading import Account, Deal, DealReason, PendingOrder, Position
from mt5gate_protocol.types import Money, Price, Symbol, Ticket, UtcDatetime, Volume

MAX_EVENTS_PER_BATCH = 500

# What an agent may report; `order` and `agent` are the server's own.
AgentKind = Literal[
    "state",
    "position_opened",
    "position_changed",
    "position_closed",
    "pending_order_placed",
    "pending_order_changed",
    "pending_order_removed",
    "deal",
    "account",
]
KINDS = frozenset({*get_args(AgentKind), "order", "agent"})


class ClosedPositionEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    position_id: Ticket
    symbol: Symbol
    volume: Volume
    closed_price: Price
    pnl: Money
    reason: DealReason
    closed_at: UtcDatetime


class RemovedPendingOrder(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ticket: Ticket
    reason: Literal["cancelled", "triggered", "expired", "rejected"]


class AgentStatus(BaseModel):
    status: Literal["online", "offline"]
    terminal_connected: bool | None


class TerminalState(BaseModel):
    """Everything the agent sees on its terminal: sent after each start (and after it was
    offline), for the server to compare with what it knew."""

    model_config = ConfigDict(extra="ignore")

    account: Account
    positions: list[Position] = Field(max_length=10_000)
    pending_orders: list[PendingOrder] = Field(max_length=10_000)


class _Reported(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: UtcDatetime = Field(description="When the agent saw it (ISO-8601 UTC).")


class StateReport(_Reported):
    kind: Literal["state"]
    data: TerminalState


class PositionReport(_Reported):
    kind: Literal["position_opened", "position_changed"]
    data: Position


class PositionClosedReport(_Reported):
    kind: Literal["position_closed"]
    data: ClosedPositionEvent


class PendingOrderReport(_Reported):
    kind: Literal["pending_order_placed", "pending_order_changed"]
    data: PendingOrder


class PendingOrderRemovedReport(_Reported):
    kind: Literal["pending_order_removed"]
    data: RemovedPendingOrder


class DealReport(_Reported):
    kind: Literal["deal"]
    data: Deal


class AccountReport(_Reported):
    kind: Literal["account"]
    data: Account


ReportedEvent = Annotated[
    StateReport
    | PositionReport
    | PositionClosedReport
    | PendingOrderReport
    | PendingOrderRemovedReport
    | DealReport
    | AccountReport,
    Field(discriminator="kind"),
]


class EventBatch(BaseModel):
    """1 to 500 events, in the order the agent saw them."""

    model_config = ConfigDict(extra="forbid")

    events: list[ReportedEvent] = Field(min_length=1, max_length=MAX_EVENTS_PER_BATCH)


class EventsAccepted(BaseModel):
    accepted: int = Field(
        description="How many events the batch added to the stream (repeats of what the "
        "server already knew, such as a deal ticket it has, add none)."
    )


class EventError(BaseModel):
    index: int | None = Field(description="The event's place in `events`; null for the body.")
    loc: list[str | int] = Field(description="Where in that event (or body) the error is.")
    msg: str


class InvalidEventsBody(BaseModel):
    detail: Literal["invalid_events"]
    message: str
    errors: list[EventError]
