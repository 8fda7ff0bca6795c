"""Pending orders at the broker: listed, modified and cancelled, each by one job.

A pending order placed through mt5gate is an order (`POST /orders`, see orders.py); the
broker's list knows it by ticket, and the order's row keeps that ticket (`jobs.ticket`), so
a listed pending order carries its `order_id`, and a cancellation or a modification made
here is written onto the order it belongs to.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, bindparam, update

from app.core.errors import PendingOrderNotFound
from app.models import Job
from app.schemas.pending_orders import PendingOrderCancelled, PendingOrderUpdate
from app.schemas.positions import JobPending
from app.schemas.trading import CancelPendingOrderInput, PendingOrder
from app.services.orders import order_ids_by_ticket
from app.services.trading import Trading, UserAccount, run_read_job, run_write_job
from mt5gate_protocol.jobs import JobType

JOBS = cast(Table, Job.__table__)
ORDER_OF_TICKET = update(JOBS).where(
    JOBS.c.agent_id == bindparam("p_agent_id"),
    JOBS.c.job_type == JobType.PLACE_PENDING_ORDER,
    JOBS.c.ticket == bindparam("p_ticket"),
)
# The fields of a pending order that a modification can change, as the order shows them.
CHANGEABLE = ("price", "stop_limit_price", "sl", "tp", "expiration")


async def list_pending_orders(account: UserAccount) -> list[PendingOrder]:
    job, output = await run_read_job(account, job_type=JobType.GET_PENDING_ORDERS, input_data={})
    orders = [PendingOrder.model_validate(o) for o in output["pending_orders"]]
    order_ids = await order_ids_by_ticket(
        account.trading, agent_id=job.agent_id, tickets=[o.ticket for o in orders]
    )
    for order in orders:
        order.order_id = order_ids.get(order.ticket)
    return orders


async def modify_pending_order(
    account: UserAccount, *, ticket: int, update: PendingOrderUpdate
) -> PendingOrder | JobPending:
    job, output = await run_write_job(
        account,
        job_type=JobType.MODIFY_PENDING_ORDER,
        input_data=update.job_input(ticket),
        not_found=PendingOrderNotFound,
    )
    if isinstance(output, JobPending):
        return output
    order = PendingOrder.model_validate(output["pending_order"])
    changes = order.model_dump(mode="json", include=set(CHANGEABLE))
    await record_on_order(account.trading, job, ticket=ticket, order_changes=changes)
    order_ids = await order_ids_by_ticket(account.trading, agent_id=job.agent_id, tickets=[ticket])
    order.order_id = order_ids.get(ticket)
    return order


async def cancel_pending_order(
    account: UserAccount, *, ticket: int
) -> PendingOrderCancelled | JobPending:
    job, output = await run_write_job(
        account,
        job_type=JobType.CANCEL_PENDING_ORDER,
        input_data=CancelPendingOrderInput(ticket=ticket).model_dump(),
        not_found=PendingOrderNotFound,
    )
    if isinstance(output, JobPending):
        return output
    await record_on_order(account.trading, job, ticket=ticket, order_status="cancelled")
    return PendingOrderCancelled.model_validate(output)


async def record_on_order(trading: Trading, job: Job, *, ticket: int, **values: Any) -> None:
    """Writes what a job did to a pending order (`order_status`, `order_changes`) onto that
    order, if mt5gate placed it."""
    async with trading.jobs.db.connect() as conn:
        await conn.execute(
            ORDER_OF_TICKET.values(**values), {"p_agent_id": job.agent_id, "p_ticket": ticket}
        )
