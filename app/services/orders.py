"""Orders: a `trade` job (market) or a `place_pending_order` job (limit, stop, stop-limit)
for the user's agent, and the order read off that job.

An order is its job: `order_id` is the job id and the order's status is derived from the
job's each time it is read, so the two can never drift apart. What mt5gate learns of a
placed order later (cancelled through the API, a modification) is kept on the same row
(`order_status`, `order_changes`) and read with it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.errors import ClientOrderIdConflict, NotFound, OrderRejected
from app.dispatch import (
    EXPIRED_ERROR,
    find_by_client_order_id,
    wait_for_job_result,
    watch_job,
)
from app.models import Job, utcnow
from app.schemas.orders import OrderCreate, OrderError, OrderRead, OrderStatus
from app.schemas.trading import Expiration
from app.services.agents import connection_agent
from app.services.trading import Trading, UserAccount, create_user_job
from mt5gate_protocol.jobs import FINAL_STATUSES, ORDER_JOB_TYPES, JobStatus, JobType

# What a placed order can become at the broker (written to `jobs.order_status`).
LATER_STATUSES: frozenset[OrderStatus] = frozenset({"filled", "cancelled", "expired"})
JOBS = cast(Table, Job.__table__)
# The orders an agent placed, by their broker tickets (a fill's ticket is its position's,
# which MT5 numbers after the order that opened it).
ORDERS_BY_TICKET = select(JOBS.c.ticket, JOBS.c.id).where(
    JOBS.c.agent_id == bindparam("p_agent_id"),
    JOBS.c.job_type.in_(ORDER_JOB_TYPES),
    JOBS.c.ticket.in_(bindparam("p_tickets", expanding=True)),
)


def order_status(job: Job, *, now: datetime) -> OrderStatus:
    if job.status == JobStatus.COMPLETED:
        if job.job_type == JobType.TRADE:
            return "filled"
        # A placed order's later status, when mt5gate learned one (see the module docstring).
        later = job.order_status
        return cast(OrderStatus, later) if later in LATER_STATUSES else "placed"
    if job.status == JobStatus.FAILED:
        # An agent that finds the job past its expiry refuses it unexecuted.
        code = (job.error or {}).get("code")
        return "expired" if code == "expired" else "rejected"
    if job.status == JobStatus.EXPIRED:
        return "expired"
    if job.status == JobStatus.LOST:
        return "unknown"
    # pending or running; a pending job past its expiry can no longer be handed out.
    if job.status == JobStatus.PENDING and job.expires_at <= now:
        return "expired"
    return "pending"


def order_from_job(job: Job, *, now: datetime | None = None) -> OrderRead:
    status = order_status(job, now=now or utcnow())
    # The request, with what a modification through mt5gate changed since.
    request: dict[str, Any] = {**job.input_data, **(job.order_changes or {})}
    output: dict[str, Any] = (job.output_data or {}) if job.status == JobStatus.COMPLETED else {}
    error: dict[str, Any] | None = None
    if status in ("rejected", "expired", "unknown"):
        error = job.error or (EXPIRED_ERROR if status == "expired" else None)
    pending = job.job_type == JobType.PLACE_PENDING_ORDER
    filled = status == "filled"
    return OrderRead(
        order_id=job.id,
        client_order_id=job.client_order_id,
        status=status,
        type=request["type"] if pending else "market",
        symbol=request["symbol"],
        side=request["side"],
        volume=output.get("volume", request["volume"]),
        price=request.get("price"),
        stop_limit_price=request.get("stop_limit_price"),
        expiration=Expiration.model_validate(request["expiration"]) if pending else None,
        sl=request.get("sl"),
        tp=request.get("tp"),
        fill_price=output.get("fill_price"),
        ticket=output.get("ticket"),
        position_id=output.get("ticket") if filled else None,
        error=OrderError.model_validate(error) if error else None,
        created_at=job.created_at,
        placed_at=output.get("placed_at"),
        filled_at=output.get("filled_at"),
    )


def same_order(job: Job, order: OrderCreate, *, agent_id: uuid.UUID | None) -> bool:
    """Whether a repeat names the same order: same fields, and the same connection's agent
    when the repeat names a connection (`agent_id` is then that connection's agent)."""
    if job.job_type != order.job_type() or job.input_data != order.job_input():
        return False
    return order.broker_connection_id is None or agent_id == job.agent_id


async def submit_order(
    trading: Trading, *, user_id: uuid.UUID, order: OrderCreate, job_id: uuid.UUID
) -> Job:
    """The order's job: the existing one for a repeated `client_order_id`, else a new one
    with id `job_id`.

    Checks the agent (no_agent, agent_offline) before creating anything; a repeat of an
    existing order is answered even while the agent is offline.
    """
    db = trading.jobs.db
    if order.client_order_id is not None:
        existing = await find_by_client_order_id(
            trading.jobs, user_id=user_id, client_order_id=order.client_order_id
        )
        if existing is not None:
            agent_id: uuid.UUID | None = None
            if order.broker_connection_id is not None:  # must still be the caller's
                named = await connection_agent(
                    db, user_id=user_id, connection_id=order.broker_connection_id
                )
                agent_id = named.id if named is not None else None
            if not same_order(existing, order, agent_id=agent_id):
                raise ClientOrderIdConflict()
            return existing
    job, created, agent_id = await create_user_job(
        UserAccount(trading, user_id, order.broker_connection_id),
        job_type=order.job_type(),
        input_data=order.job_input(),
        ttl_seconds=trading.settings.trade_job_ttl_seconds,
        client_order_id=order.client_order_id,
        job_id=job_id,
    )
    # Lost a race with a concurrent repeat: the unique index kept one job, which is ours.
    if not created and not same_order(job, order, agent_id=agent_id):
        raise ClientOrderIdConflict()
    return job


async def place_order(trading: Trading, *, user_id: uuid.UUID, order: OrderCreate) -> OrderRead:
    """Submits the order and waits up to the trade budget for its outcome; an order the
    broker rejected is `OrderRejected` (422), with the order beside the error."""
    budget = trading.settings.trade_wait_seconds
    job_id = uuid.uuid4()
    with watch_job(trading.jobs, job_id) as watch:  # watching before the job exists
        job = await submit_order(trading, user_id=user_id, order=order, job_id=job_id)
        if job.status in FINAL_STATUSES:
            pass
        elif job.id == job_id:
            job = await watch.result(job, timeout=budget)
        else:  # a repeat of an earlier order that is still in progress
            job = await wait_for_job_result(trading.jobs, job_id=job.id, timeout=budget)
    placed = order_from_job(job)
    if placed.error is not None and placed.status == "rejected":
        raise OrderRejected(
            f"The broker rejected the order: {placed.error.message or placed.error.code}",
            order=placed.model_dump(mode="json"),
        )
    return placed


async def get_order(
    session_factory: async_sessionmaker[AsyncSession], *, user_id: uuid.UUID, order_id: uuid.UUID
) -> OrderRead:
    async with session_factory() as session:
        job = await session.scalar(
            select(Job).where(
                Job.id == order_id, Job.user_id == user_id, Job.job_type.in_(ORDER_JOB_TYPES)
            )
        )
    if job is None:
        raise NotFound("No such order.")
    return order_from_job(job)


async def list_orders(
    session_factory: async_sessionmaker[AsyncSession],
    *,
    user_id: uuid.UUID,
    limit: int,
    before: uuid.UUID | None,
) -> list[OrderRead]:
    """The user's orders, newest first; `before` (an order id) starts after that order."""
    query = select(Job).where(Job.user_id == user_id, Job.job_type.in_(ORDER_JOB_TYPES))
    async with session_factory() as session:
        if before is not None:
            cursor = await session.scalar(
                select(Job).where(
                    Job.id == before, Job.user_id == user_id, Job.job_type.in_(ORDER_JOB_TYPES)
                )
            )
            if cursor is None:
                raise NotFound("No such order (the `before` cursor).")
            query = query.where(
                or_(
                    Job.created_at < cursor.created_at,
                    and_(Job.created_at == cursor.created_at, Job.id < cursor.id),
                )
            )
        jobs = await session.scalars(
            query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        )
        found = list(jobs)
    now = utcnow()
    return [order_from_job(job, now=now) for job in found]


async def order_ids_by_ticket(
    trading: Trading, *, agent_id: uuid.UUID | None, tickets: list[int]
) -> dict[int, uuid.UUID]:
    """The `order_id` of each ticket that an order placed through mt5gate holds."""
    if not tickets or agent_id is None:
        return {}
    async with trading.jobs.db.connect() as conn:
        rows = await conn.execute(ORDERS_BY_TICKET, {"p_agent_id": agent_id, "p_tickets": tickets})
        return {row.ticket: row.id for row in rows}
