"""Domain errors: one exception type per error, each with a stable code and status."""

from __future__ import annotations

import json
import logging
import math
import socket
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount

log = logging.getLogger("mt5gate.errors")


class DomainError(Exception):
    """An error the client is told of: `{"detail": code, "message": text, **extra}` with
    its `status_code`, and `headers` on the response (Retry-After, say).

    A subclass names its status and code in its class line
    (`class NotFound(DomainError, status_code=404, code="not_found")`), and its docstring
    is its default message: the sentence a client reads.
    """

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    message: ClassVar[str] = "The request cannot be served."

    def __init_subclass__(
        cls, *, status_code: int | None = None, code: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if status_code is not None:
            cls.status_code = status_code
        if code is not None:
            cls.code = code
            cls.message = " ".join((cls.__doc__ or cls.message).split())

    def __init__(
        self,
        message: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.text = message or self.message
        self.extra = extra
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(self.text)

    def body(self) -> dict[str, Any]:
        return {"detail": self.code, "message": self.text, **self.extra}


class InvalidTokenError(DomainError, status_code=401, code="invalid_token"):
    """The access token is missing or invalid."""


class InvalidCredentials(DomainError, status_code=401, code="invalid_credentials"):
    """Wrong email or password."""


class InvalidAgentToken(DomainError, status_code=401, code="invalid_agent_token"):
    """The agent token is invalid."""


class OnboardingIncomplete(DomainError, status_code=403, code="onboarding_incomplete"):
    """Complete onboarding before trading."""


class InsufficientScope(DomainError, status_code=403, code="insufficient_scope"):
    """This API key may not do that; use a key with the scope it needs, or log in."""


class NotPriceSource(DomainError, status_code=403, code="not_price_source"):
    """This agent may not push prices."""


class NotFound(DomainError, status_code=404, code="not_found"):
    """No such resource."""


class PositionNotFound(DomainError, status_code=404, code="position_not_found"):
    """No open position with that id."""


class PendingOrderNotFound(DomainError, status_code=404, code="pending_order_not_found"):
    """No pending order with that ticket."""


class SymbolNotFound(DomainError, status_code=404, code="symbol_not_found"):
    """The broker has no such symbol."""


class NoPrice(DomainError, status_code=404, code="no_price"):
    """The feed has no tick for that instrument."""


class InvalidRange(DomainError, status_code=422, code="invalid_range"):
    """`from` must be before `to`, at most 366 days apart."""


class EmailTaken(DomainError, status_code=409, code="email_taken"):
    """An account with that email exists."""


class BrokerConnectionRequired(DomainError, status_code=409, code="broker_connection_required"):
    """Add a broker connection before completing onboarding."""


class NoAgent(DomainError, status_code=409, code="no_agent"):
    """No agent is provisioned for this broker connection."""


class JobNotRunning(DomainError, status_code=409, code="job_not_running"):
    """The job is not running under this agent."""


class TooManyApiKeys(DomainError, status_code=409, code="too_many_api_keys"):
    """You have 50 live API keys; revoke one first."""


class ClientOrderIdConflict(DomainError, status_code=409, code="client_order_id_conflict"):
    """That client_order_id was used for a different order."""


class InvalidResult(DomainError, status_code=422, code="invalid_result"):
    """The job result has the wrong shape."""


class OrderRejected(DomainError, status_code=422, code="order_rejected"):
    """The broker rejected the order."""


# The agent answered, but the broker or its terminal refused; `error` carries its code.
class BrokerFailure(DomainError, status_code=422, code="broker_error"):
    """The broker refused the request."""


class RetryLater(DomainError):
    """A 429: the answer carries `Retry-After` (seconds)."""

    def __init__(self, *, retry_after: int, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(headers={"Retry-After": str(retry_after), **(headers or {})})


class TooManyAttempts(RetryLater, status_code=429, code="too_many_attempts"):
    """Too many failed logins; try again after Retry-After seconds."""


class RateLimited(RetryLater, status_code=429, code="rate_limited"):
    """Too many calls; try again after Retry-After seconds."""


# Logins fail closed while the failed-login limit cannot be checked.
class RateLimiterUnavailable(DomainError, status_code=503, code="rate_limiter_unavailable"):
    """Logins are paused: the attempt limit cannot be checked right now; try again."""


class AgentOffline(DomainError, status_code=503, code="agent_offline"):
    """The agent has not been seen recently."""


class FeedOffline(DomainError, status_code=503, code="feed_offline"):
    """No price-source agent is online to serve the platform's price feed."""


class AgentTimeout(DomainError, status_code=504, code="agent_timeout"):
    """The agent did not answer in time."""


class ConcurrentChange(DomainError, status_code=409, code="concurrent_change"):
    """Another request changed the same thing at the same moment; try again."""


class DatabaseUnavailable(DomainError, status_code=503, code="database_unavailable"):
    """The database cannot be reached right now; try again."""


class RedisUnavailable(DomainError, status_code=503, code="redis_unavailable"):
    """Redis cannot be reached right now (what the request needs lives there); try again."""


# serialization_failure, deadlock_detected: the database gave up one of two racing
# transactions; running it again is the cure (see app.core.db.in_transaction).
CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})


def is_concurrency_conflict(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in CONFLICT_SQLSTATES


# PostgreSQL's SQLSTATE classes of a server that is away, not of a query that is wrong:
# connection exceptions (08), operator intervention (57P: shutdown, database dropped),
# a database or table that no longer exists (3D000, 42P01), no connection slot (53300).
DATABASE_AWAY_SQLSTATES = ("08", "57P", "3D000", "42P01", "53300")


def database_is_away(exc: DBAPIError) -> bool:
    """A lost or refused connection (a restart, a network fault, a dropped database), not a
    bug in a query."""
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    return (
        exc.connection_invalidated
        or isinstance(exc, OperationalError | InterfaceError)
        or sqlstate.startswith(DATABASE_AWAY_SQLSTATES)
    )


class SafeJSONResponse(JSONResponse):
    """Renders any input a client sent back to it: NaN/Infinity (which Python's JSON parser
    accepts) and raw bytes as strings, lone surrogates as `\\u` escapes, where the default
    renderer raises and turns a 422 into a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            json_safe(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode("ascii")


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes | bytearray):  # a non-JSON body, echoed as the input
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def status_phrase(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return "HTTP error"


PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> str | None:
    """Every method the request's path has, asked of the routes themselves. Starlette's own
    405 names only the methods of the first route that matched the path, where several may
    share it (GET and POST); FastAPI's included routers keep their routes to themselves,
    so each top-level route is asked whether it would take the path with each method."""
    routes = [route for route in request.app.router.routes if not isinstance(route, Mount)]
    allowed = [
        method
        for method in PROBED_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed) or None


def install_error_handlers(app: FastAPI) -> None:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DomainError)
        headers = dict(exc.headers)
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)

    async def handle_validation(_request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's 422 shape (`detail` is the list of errors), rendered safely.
        assert isinstance(exc, RequestValidationError)
        errors = jsonable_encoder(json_safe(exc.errors()))
        return SafeJSONResponse({"detail": errors}, status_code=422)

    async def handle_http(request: Request, exc: Exception) -> Response:
        # Framework errors (unknown path, wrong method, unparsable body) get a code too.
        assert isinstance(exc, HTTPException)
        allow = allowed_methods(request) if exc.status_code == 405 else None
        if allow is not None:
            exc.headers = {**(exc.headers or {}), "Allow": allow}
        if exc.status_code in {204, 304}:
            return Response(status_code=exc.status_code, headers=exc.headers)
        if not isinstance(exc.detail, str):
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        phrase = status_phrase(exc.status_code)
        code = phrase.lower().replace(" ", "_").replace("-", "_").replace("'", "")
        message = f"{phrase}." if exc.detail == phrase else exc.detail
        return JSONResponse(
            {"detail": code, "message": message}, exc.status_code, headers=exc.headers
        )

    async def handle_database(request: Request, exc: Exception) -> JSONResponse:
        # The pool does not ping before each checkout; a connection that died since its
        # last use fails here once, and SQLAlchemy then replaces the whole pool. A refused
        # new connection is the driver's own OSError, which SQLAlchemy passes on as it is
        # (the only peers a request connects to are the database and Redis, whose client
        # raises its own errors).
        if isinstance(exc, DBAPIError) and is_concurrency_conflict(exc):
            # Retried where it can happen; one that still escapes is the client's to retry.
            log.warning("event=concurrent_change path=%s reason=%r", request.url.path, exc)
            return await handle(request, ConcurrentChange())
        if isinstance(exc, PoolTimeout | ConnectionError | TimeoutError | socket.gaierror) or (
            isinstance(exc, DBAPIError) and database_is_away(exc)
        ):
            log.warning("event=database_unavailable path=%s reason=%r", request.url.path, exc)
            return await handle(request, DatabaseUnavailable())
        log.error("event=database_error path=%s", request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal_error", "message": "A bug; logged."}, 500)

    async def handle_redis(request: Request, exc: Exception) -> JSONResponse:
        # redis-py's ConnectionError and TimeoutError are its own, not the builtins: a
        # Redis that is away reaches here, not the database handler. What must not be
        # lost with it (a job's result, a heartbeat) catches it where it is stored.
        log.warning("event=redis_unavailable path=%s reason=%r", request.url.path, exc)
        return await handle(request, RedisUnavailable())

    app.add_exception_handler(DomainError, handle)
    app.add_exception_handler(RedisError, handle_redis)
    app.add_exception_handler(DBAPIError, handle_database)
    app.add_exception_handler(PoolTimeout, handle_database)
    app.add_exception_handler(OSError, handle_database)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(HTTPException, handle_http)
