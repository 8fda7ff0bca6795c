"""Domain errors: one exception type per error, each with a stable code and status."""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class DomainError(Exception):
    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    message: ClassVar[str] = "The request cannot be served."

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        self.text = message or self.message
        self.extra = extra
        super().__init__(self.text)

    def body(self) -> dict[str, Any]:
        return {"detail": self.code, "message": self.text, **self.extra}


class InvalidTokenError(DomainError):
    status_code, code, message = 401, "invalid_token", "The access token is missing or invalid."


class InvalidCredentials(DomainError):
    status_code, code, message = 401, "invalid_credentials", "Wrong email or password."


class InvalidAgentToken(DomainError):
    status_code, code, message = 401, "invalid_agent_token", "The agent token is invalid."


class OnboardingIncomplete(DomainError):
    status_code, code, message = (
        403,
        "onboarding_incomplete",
        "Complete onboarding before trading.",
    )


class NotPriceSource(DomainError):
    status_code, code, message = 403, "not_price_source", "This agent may not push prices."


class NotFound(DomainError):
    status_code, code, message = 404, "not_found", "No such resource."


class PositionNotFound(DomainError):
    status_code, code, message = 404, "position_not_found", "No open position with that id."


class EmailTaken(DomainError):
    status_code, code, message = 409, "email_taken", "An account with that email exists."


class BrokerConnectionRequired(DomainError):
    status_code, code, message = (
        409,
        "broker_connection_required",
        "Add a broker connection before completing onboarding.",
    )


class NoAgent(DomainError):
    status_code, code, message = (
        409,
        "no_agent",
        "No agent is provisioned for this broker connection.",
    )


class JobNotRunning(DomainError):
    status_code, code, message = (
        409,
        "job_not_running",
        "The job is not running under this agent.",
    )


class ClientOrderIdConflict(DomainError):
    status_code, code, message = (
        409,
        "client_order_id_conflict",
        "That client_order_id was used for a different order.",
    )


class InvalidResult(DomainError):
    status_code, code, message = 422, "invalid_result", "The job result has the wrong shape."


class OrderRejected(DomainError):
    status_code, code, message = 422, "order_rejected", "The broker rejected the order."


class AgentOffline(DomainError):
    status_code, code, message = 503, "agent_offline", "The agent has not been seen recently."


class AgentTimeout(DomainError):
    status_code, code, message = 504, "agent_timeout", "The agent did not answer in time."


def install_error_handlers(app: FastAPI) -> None:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DomainError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)

    app.add_exception_handler(DomainError, handle)
