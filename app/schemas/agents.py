"""What agents send and receive: the agent protocol (`mt5gate_protocol`), re-exported for
the routes."""

from __future__ import annotations

from mt5gate_protocol.agent import (
    Credentials,
    Heartbeat,
    PricePush,
    PricesAccepted,
    ServerTime,
    TickIn,
)
from mt5gate_protocol.jobs import (
    CompletedResult,
    FailedResult,
    JobEnvelope,
    JobError,
    JobResult,
    JobResultAccepted,
)

__all__ = [
    "CompletedResult",
    "Credentials",
    "FailedResult",
    "Heartbeat",
    "JobEnvelope",
    "JobError",
    "JobResult",
    "JobResultAccepted",
    "PricePush",
    "PricesAccepted",
    "ServerTime",
    "TickIn",
]
