"""`POST /agents/{agent_id}/events`: what an agent saw change on its terminal."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError

from app.api.deps import CurrentAgent, ResourcesDep
from app.core.errors import DomainError
from app.events import report_events
from app.schemas.common import ErrorBody
from mt5gate_protocol.events import KINDS, EventBatch, EventsAccepted, InvalidEventsBody


class InvalidEvents(DomainError):
    status_code, code, message = 422, "invalid_events", "The batch was refused whole."


def event_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI's errors of the body as `{index, loc, msg}`: which event, where in it."""
    found = []
    for error in errors:
        loc = list(error.get("loc", ()))
        if loc[:1] == ["body"]:
            loc = loc[1:]
        index = None
        if len(loc) >= 2 and loc[0] == "events" and isinstance(loc[1], int):
            index, loc = loc[1], loc[2:]
            if loc and loc[0] in KINDS:  # the union's tag: the event names its kind itself
                loc = loc[1:]
            elif not loc and str(error.get("type", "")).startswith("union_tag"):
                loc = ["kind"]  # missing, or a kind an agent may not report
        found.append({"index": index, "loc": loc, "msg": str(error.get("msg", ""))})
    return found


def integral_floats_as_ints(value: Any) -> Any:
    """JSON Schema's `integer` takes `5.0`; pydantic's strict int does not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [integral_floats_as_ints(item) for item in value]
    if isinstance(value, dict):
        return {key: integral_floats_as_ints(item) for key, item in value.items()}
    return value


def check_strictly(body: bytes) -> None:
    """The batch read as its schema types it: a number is a JSON number (`false` or `"1"`
    is not), a time an ISO-8601 string. It follows FastAPI's own (lax) validation, which
    made the route's argument; this one only refuses."""
    normalized = json.dumps(integral_floats_as_ints(json.loads(body))).encode()
    try:
        EventBatch.model_validate_json(normalized, strict=True)
    except ValidationError as exc:
        raise refused([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


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
