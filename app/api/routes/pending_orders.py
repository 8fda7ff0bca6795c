"""Pending orders at the broker: list, modify, cancel (placing one is `POST /orders`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Response

from app.api.deps import UserAccountDep, get_onboarded_user
from app.api.docs import cross_field_rules
from app.api.routes.trading import (
    AGENT_ERRORS,
    BROKER_ERROR,
    READ_TIMEOUT,
    Responses,
    accepted_if_pending,
    error,
)
from app.schemas.pending_orders import PendingOrderCancelled, PendingOrderUpdate
from app.schemas.positions import JobPending
from app.schemas.trading import PendingOrder
from app.services import pending_orders as service

router = APIRouter(
    tags=["pending orders"],
    dependencies=[Depends(get_onboarded_user)],
    responses={401: error("invalid_token"), 403: error("onboarding_incomplete")},
)
TicketPath = Annotated[int, Path(ge=0, lt=2**63, description="The pending order's MT5 ticket.")]
WRITE: Responses = {
    **AGENT_ERRORS,
    **BROKER_ERROR,
    202: {"model": JobPending, "description": "No answer within 10 s; it may still execute."},
    404: error(
        "pending_order_not_found` or `not_found",
        "no such pending order on the account, or a connection that is not yours.",
    ),
}


@router.get("/pending-orders", responses={**AGENT_ERRORS, **BROKER_ERROR, **READ_TIMEOUT})
async def list_pending_orders(account: UserAccountDep) -> list[PendingOrder]:
    """The account's pending orders, as its agent reports them (waits up to 5 s)."""
    return await service.list_pending_orders(account)


@router.patch(
    "/pending-orders/{ticket}",
    responses=WRITE,
    openapi_extra=cross_field_rules("`expiration.at` in the future, and only with `specified`"),
)
async def modify_pending_order(
    ticket: TicketPath,
    body: Annotated[PendingOrderUpdate, Body()],
    account: UserAccountDep,
    response: Response,
) -> PendingOrder | JobPending:
    """Changes a pending order's price, stop-limit price, sl, tp or expiration; a field
    left out stays, `null` removes sl or tp (waits up to 10 s)."""
    outcome = await service.modify_pending_order(account, ticket=ticket, update=body)
    return accepted_if_pending(outcome, response)


@router.delete("/pending-orders/{ticket}", responses=WRITE)
async def cancel_pending_order(
    ticket: TicketPath, account: UserAccountDep, response: Response
) -> PendingOrderCancelled | JobPending:
    """Deletes a pending order at the broker (waits up to 10 s)."""
    outcome = await service.cancel_pending_order(account, ticket=ticket)
    return accepted_if_pending(outcome, response)
