"""The broker's history: deals and finished orders, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BeforeValidator

from app.api.deps import UserAccountDep, get_onboarded_user
from app.api.docs import cross_field_rules
from app.api.routes.trading import AGENT_ERRORS, BROKER_ERROR, Responses, error
from app.core import json_codec
from app.schemas.common import ErrorBody
from app.schemas.trading import SYMBOL_PATTERN, Deal, HistoryOrder
from app.services import history as service
from app.services.history import HistoryQuery

router = APIRouter(
    prefix="/history",
    tags=["history"],
    dependencies=[Depends(get_onboarded_user)],
    responses={
        401: error("invalid_token"),
        403: error("onboarding_incomplete"),
        **AGENT_ERRORS,
        **BROKER_ERROR,
        504: error("agent_timeout", "no answer within 10 s."),
    },
)


def iso_time(value: object) -> object:
    """An ISO-8601 time only, as the schema says: pydantic alone would also read `0.5` as
    seconds since the epoch."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("an ISO-8601 time, such as 2026-11-24T21:15:03Z") from None
    return value


IsoTime = Annotated[datetime, BeforeValidator(iso_time)]


async def history_query(
    start: Annotated[
        IsoTime | None,
        Query(alias="from", description="ISO-8601 UTC, inclusive; default `to` − 7 days."),
    ] = None,
    end: Annotated[
        IsoTime | None, Query(alias="to", description="ISO-8601 UTC, exclusive; default now.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        int | None, Query(ge=0, lt=2**63, description="A ticket: the records older than it.")
    ] = None,
    symbol: Annotated[str | None, Query(pattern=SYMBOL_PATTERN)] = None,
    position_id: Annotated[int | None, Query(ge=0, lt=2**63)] = None,
) -> HistoryQuery:
    return HistoryQuery(start, end, limit, before, symbol, position_id)


HistoryQueryDep = Annotated[HistoryQuery, Depends(history_query)]


def json_response(records: list[dict[str, Any]]) -> Response:
    """The records as they were stored: validated and normalised when the agent answered,
    so not validated again on their way out (`response_model` documents them)."""
    return Response(json_codec.dumps_bytes(records), media_type="application/json")


RANGE_ERROR: Responses = {
    422: {
        "model": ErrorBody,  # `broker_error`'s body is one too, with its `error` beside
        "description": "`invalid_range` (`to` not after `from`, or over 366 days apart), "
        "`broker_error`, or FastAPI's validation errors.",
    }
}
RANGE_RULES = cross_field_rules("`to` after `from`, at most 366 days apart (`invalid_range`)")


@router.get("/deals", response_model=list[Deal], responses=RANGE_ERROR, openapi_extra=RANGE_RULES)
async def list_deals(account: UserAccountDep, query: HistoryQueryDep) -> Response:
    """The account's deals in `[from, to)`, newest first (waits up to 10 s)."""
    deals = await service.list_deals(account, query=query)
    return json_response(deals)


@router.get(
    "/orders", response_model=list[HistoryOrder], responses=RANGE_ERROR, openapi_extra=RANGE_RULES
)
async def list_history_orders(account: UserAccountDep, query: HistoryQueryDep) -> Response:
    """The account's finished orders in `[from, to)`, newest first (waits up to 10 s)."""
    orders = await service.list_history_orders(account, query=query)
    return json_response(orders)
