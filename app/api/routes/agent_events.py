"""`POST /agents/{agent_id}/events`: what an agent saw change on its terminal."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from app.api.deps import CurrentAgent, ResourcesDep
from app.core.errors import DomainError
from app.events import event_errors, report_events, strict_batch_errors
from app.schemas.common import ErrorBody
from mt5gate_protocol.events import EventBatch, EventsAccepted, InvalidEventsBody


class InvalidEvents(DomainError):
    status_code, code, message = 422, "invalid_events", "The batch was refused whole."


def check_strictly(body: bytes) -> None:
    """The batch read as its schema types it (`strict_batch_errors`). It follows FastAPI's
    own (lax) validation, which made the route's argument; this one only refuses."""
    errors = strict_batch_errors(json.loads(body))
    if errors is not None:
        raise refused([{**e, "loc": ("body", *e["loc"])} for e in errors])


def refused(errors: list[dict[str, Any]]) -> InvalidEvents:
    found = event_errors(errors)
    count = len(found)
    return InvalidEvents(
        f"{count} error{'s' if count != 1 else ''}; nothing of the batch was stored.",
        errors=found,
    )


class EventBatchRoute(APIRoute):
    """Answers a malformed batch with the contract's `invalid_events`, not FastAPI's list."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise refused(list(exc.errors())) from exc

        return handle


router = APIRouter(
    prefix="/agents/{agent_id}",
    tags=["agents"],
    route_class=EventBatchRoute,
    responses={401: {"model": ErrorBody, "description": "invalid_agent_token"}},
)


@router.post(
    "/events",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        422: {
            "model": InvalidEventsBody,
            "description": "`invalid_events`: an event does not have its kind's shape (or "
            "names a kind only the server emits); nothing of the batch was stored",
        },
    },
)
async def post_events(
    agent: CurrentAgent, resources: ResourcesDep, batch: EventBatch, request: Request
) -> EventsAccepted:
    """Appends the events to the account stream of the agent's own connection."""
    check_strictly(await request.body())
    accepted = await report_events(
        resources.account_events, resources.single_statement_engine, agent=agent, batch=batch
    )
    return EventsAccepted(accepted=accepted)
