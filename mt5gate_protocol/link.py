"""The agent link: one WebSocket (`WS /ws/agents/{agent_id}`) carrying what the HTTP agent
routes carry, both ways, as JSON objects tagged by `type`.

The job, result, heartbeat and event shapes are the HTTP routes' bodies (`JobEnvelope`,
`JobResult`, `Heartbeat`, `EventBatch`), so an agent builds them once for either path.
A message is read by its `type` first (`AGENT_MESSAGES` / `SERVER_MESSAGES`), then by the
model of that type: a reader can then tell "unknown type" from "wrong shape".
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from mt5gate_protocol.agent import Heartbeat, ServerTime
from mt5gate_protocol.events import EventBatch, EventError
from mt5gate_protocol.jobs import JobEnvelope, JobResult

# Close codes (WebSocket close frames) the server sends on the link.
CLOSE_INVALID_TOKEN = 4001  # bad token; also later: token rotated, connection deleted
CLOSE_LINK_REPLACED = 4009  # a newer link for the same agent id opened (on any process)
CLOSE_GOING_AWAY = 1001  # the server is shutting down
CLOSE_INTERNAL = 1011

REASON_INVALID_TOKEN = "invalid_agent_token"
REASON_LINK_REPLACED = "link_replaced"

# An `events` message's `ref`: the agent's own counter, echoed back.
Ref = Annotated[int, Field(ge=0, lt=2**53, strict=True)]

ErrorCode = Literal[
    "invalid_message",  # not JSON, not an object, unknown `type`, or the wrong shape
    "invalid_result",  # as the HTTP result route's 422: output_data wrong for the job type
    "job_not_running",  # a result for a job not claimed by (or no longer running for) it
    "invalid_events",  # as the HTTP events route's 422, with its `errors`
    "events_unavailable",  # Redis is away: send the batch again later
]


# Server -> agent.
class Welcome(ServerTime):
    """The first message on an accepted link (the link counts as a heartbeat)."""

    type: Literal["welcome"] = "welcome"
    ping_interval: float = Field(
        description="Seconds between the server's WebSocket pings on this link."
    )


class JobPush(BaseModel):
    """A job, claimed for this agent as it is pushed (the same claim as `jobs/next`)."""

    type: Literal["job"] = "job"
    job: JobEnvelope


class ResultAccepted(BaseModel):
    """The HTTP result route's 200 body; sent again for a repeat of an answered result."""

    type: Literal["result_accepted"] = "result_accepted"
    job_id: uuid.UUID
    status: str


class EventsAccepted(BaseModel):
    type: Literal["events_accepted"] = "events_accepted"
    ref: Ref
    accepted: int


class HeartbeatAccepted(ServerTime):
    type: Literal["heartbeat_accepted"] = "heartbeat_accepted"


class Pong(BaseModel):
    type: Literal["pong"] = "pong"


class LinkError(BaseModel):
    """A malformed or refused message; the link stays open."""

    type: Literal["error"] = "error"
    detail: ErrorCode
    message: str = ""
    ref: Ref | None = None
    job_id: uuid.UUID | None = None
    errors: list[EventError] | None = None


# Agent -> server.
class Claimed(BaseModel):
    """Sent the moment a pushed job arrives, before executing it."""

    type: Literal["claimed"] = "claimed"
    job_id: uuid.UUID


class ResultMessage(BaseModel):
    """Kept by the agent until `result_accepted` (or an `error` naming the job) arrives."""

    type: Literal["result"] = "result"
    job_id: uuid.UUID
    result: JobResult


class HeartbeatMessage(BaseModel):
    type: Literal["heartbeat"] = "heartbeat"
    heartbeat: Heartbeat = Field(default_factory=Heartbeat)


class EventsMessage(BaseModel):
    type: Literal["events"] = "events"
    ref: Ref
    batch: EventBatch


class Ping(BaseModel):
    type: Literal["ping"] = "ping"


AgentMessage = Annotated[
    Claimed | ResultMessage | HeartbeatMessage | EventsMessage | Ping,
    Field(discriminator="type"),
]
ServerMessage = Annotated[
    Welcome | JobPush | ResultAccepted | EventsAccepted | HeartbeatAccepted | Pong | LinkError,
    Field(discriminator="type"),
]

AGENT_MESSAGES: dict[str, type[BaseModel]] = {
    "claimed": Claimed,
    "result": ResultMessage,
    "heartbeat": HeartbeatMessage,
    "events": EventsMessage,
    "ping": Ping,
}
SERVER_MESSAGES: dict[str, type[BaseModel]] = {
    "welcome": Welcome,
    "job": JobPush,
    "result_accepted": ResultAccepted,
    "events_accepted": EventsAccepted,
    "heartbeat_accepted": HeartbeatAccepted,
    "pong": Pong,
    "error": LinkError,
}

agent_message_adapter: TypeAdapter[Any] = TypeAdapter(AgentMessage)
server_message_adapter: TypeAdapter[Any] = TypeAdapter(ServerMessage)
