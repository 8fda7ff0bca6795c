"""`POST /agents/{agent_id}/events`: what an agent saw change on its terminal."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from app.api.deps import CurrentAgent, ResourcesDep
from app.core.errors import DomainError
from app.events import report_events
from app.schemas.common import ErrorBody
from app.schemas.events import KINDS, EventBatch, EventsAccepted, InvalidEventsBody


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


class EventBatchRoute(APIRoute):
    """Answers a malformed batch with the contract's `invalid_events`, not FastAPI's list."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                errors = event_errors(list(exc.errors()))
                count = len(errors)
                raise InvalidEvents(
                    f"{count} error{'s' if count != 1 else ''}; nothing of the batch was stored.",
                    errors=errors,
                ) from exc

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
    agent: CurrentAgent, resources: ResourcesDep, batch: EventBatch
) -> EventsAccepted:
    """Appends the events to the account stream of the agent's own connection."""
    accepted = await report_events(resources.account_events, agent=agent, batch=batch)
    return EventsAccepted(accepted=accepted)
