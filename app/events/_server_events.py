"""The server's own events: an order's status changes, and the agent's status.

Both are decided once across processes by the log itself: `order` and `agent` events that
repeat what the connection's state already says (the same order in the same status, the
same agent status) are dropped inside the append's transaction (see `_state`), so any
process may offer one, as often as it likes, and exactly one event results per change.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

from redis.exceptions import RedisError
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.events._log import EventLog
from app.events._state import Draft
from app.models import Agent, Job, detached, utcnow
from app.schemas.common import iso_utc
from app.services.agents import heartbeat
from app.services.broker_connections import agent_is_online
from app.services.orders import order_from_job
from mt5gate_protocol.agent import Heartbeat, ServerTime
from mt5gate_protocol.jobs import ORDER_JOB_TYPES, JobStatus, JobType

log = logging.getLogger("mt5gate.events")

JOBS = cast(Table, Job.__table__)
AGENTS = cast(Table, Agent.__table__)
ORDER_JOBS_WITH_CONNECTION = (
    select(*JOBS.c, AGENTS.c.connection_id.label("connection_id"))
    .select_from(JOBS.join(AGENTS, AGENTS.c.id == JOBS.c.agent_id))
    .where(JOBS.c.id.in_(bindparam("p_job_ids", expanding=True)))
    .where(JOBS.c.job_type.in_(sorted(ORDER_JOB_TYPES)))
)
# The placed order of this agent under this ticket, and its move to what the broker did.
PLACED_ORDER_OF_TICKET = select(*JOBS.c).where(
    JOBS.c.agent_id == bindparam("p_agent_id"),
    JOBS.c.job_type == JobType.PLACE_PENDING_ORDER,
    JOBS.c.ticket == bindparam("p_ticket"),
    JOBS.c.status == JobStatus.COMPLETED,
)
SET_LATER_STATUS = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("p_job_id"))
    .values(order_status=bindparam("p_status"))
)
AGENT_STATUSES = select(
    AGENTS.c.connection_id,
    AGENTS.c.last_heartbeat_at,
    AGENTS.c.terminal_connected,
    AGENTS.c.link_closed_at,
)
# What a broker's removal of a pending order makes of the mt5gate order placed as it.
STATUS_OF_REMOVAL = {"triggered": "filled", "expired": "expired", "cancelled": "cancelled"}


def order_draft(job: Job) -> Draft:
    data = order_from_job(job).model_dump(mode="json")
    return Draft("order", data, iso_utc(utcnow()))


async def order_changed(log_: EventLog, *, connection_id: uuid.UUID, job: Job) -> None:
    """The `order` event of an order job whose status may have changed (its result was
    stored, it expired, it was lost); nothing for other jobs, nor for a status the
    stream already said."""
    if job.job_type not in ORDER_JOB_TYPES:
        return
    try:
        await log_.append(connection_id, [order_draft(job)])
    except RedisError as exc:
        # The result is stored (GET /orders/{id} has it); only its event is missed while
        # Redis is away: the agent must not be told its result failed.
        log.warning(
            "event=account_event_lost kind=order job_id=%s reason=%s", job.id, type(exc).__name__
        )


async def orders_ended(log_: EventLog, db: AsyncEngine, job_ids: Iterable[uuid.UUID]) -> None:
    """The `order` events of jobs the sweeper ended (expired, or lost: `unknown`)."""
    ids = list(job_ids)
    if not ids:
        return
    async with db.connect() as conn:
        rows = (await conn.execute(ORDER_JOBS_WITH_CONNECTION, {"p_job_ids": ids})).all()
    for row in rows:
        values = dict(row._mapping)
        connection_id = values.pop("connection_id")
        await log_.append(connection_id, [order_draft(detached(Job, values))])


async def with_order_changes(
    db: AsyncEngine, *, agent_id: uuid.UUID, drafts: list[Draft]
) -> list[Draft]:
    """The drafts, with the `order` event of each mt5gate order that a reported
    `pending_order_removed` ends (triggered: filled; expired; cancelled) right after it,
    its new status written on the order first. A triggered `stop_limit` is left as it is:
    it goes on as a limit order (see the contract)."""
    found: list[Draft] = []
    for draft in drafts:
        found.append(draft)
        if draft.kind != "pending_order_removed":
            continue
        status = STATUS_OF_REMOVAL.get(draft.data["reason"])
        if status is None:
            continue
        keys = {"p_agent_id": agent_id, "p_ticket": draft.data["ticket"]}
        async with db.connect() as conn:
            row = (await conn.execute(PLACED_ORDER_OF_TICKET, keys)).first()
            if row is None:
                continue
            job = detached(Job, row._mapping)
            if status == "filled" and job.input_data.get("type") == "stop_limit":
                continue
            await conn.execute(SET_LATER_STATUS, {"p_job_id": job.id, "p_status": status})
        job.order_status = status
        found.append(order_draft(job))
    return found


def agent_status(
    last_heartbeat_at: datetime | None,
    terminal_connected: bool | None,
    *,
    now: datetime,
    offline_after: float,
    link_closed_at: datetime | None = None,
) -> dict[str, Any]:
    """The data of the `agent` event that says this status."""
    agent = Agent(
        last_heartbeat_at=last_heartbeat_at,
        terminal_connected=terminal_connected,
        link_closed_at=link_closed_at,
    )
    online = agent_is_online(agent, now=now, offline_after_seconds=offline_after)
    return {"status": "online" if online else "offline", "terminal_connected": terminal_connected}


def is_news(said: dict[str, Any] | None, status: dict[str, Any]) -> bool:
    """Whether the stream should say `status`: it said something else before. An agent never
    said online is not said offline either (a connection that never had a live agent stays
    quiet)."""
    if said is None:
        return status["status"] == "online"
    return said != status


async def agent_seen(
    log_: EventLog, agent: Agent, *, terminal_connected: bool | None, offline_after: float
) -> None:
    """After an explicit heartbeat: the `agent` event at once if its status changed (a
    read of what the stream last said first, so that a heartbeat costs no transaction)."""
    now = utcnow()
    status = agent_status(
        agent.last_heartbeat_at,
        terminal_connected,
        now=now,
        offline_after=offline_after,
        link_closed_at=agent.link_closed_at,
    )
    if is_news(await log_.agent_status_of(agent.connection_id), status):
        await log_.append(agent.connection_id, [Draft("agent", status, iso_utc(now))])


async def heartbeat_seen(
    log_: EventLog, db: AsyncEngine, agent: Agent, body: Heartbeat, *, offline_after: float
) -> ServerTime:
    """An explicit heartbeat: recorded, its `agent` event if the status changed, and the
    answer, which carries the newest deal ticket the log holds for the agent's connection."""
    now = await heartbeat(
        db, agent, version=body.version, terminal_connected=body.terminal_connected
    )
    terminal_connected = body.terminal_connected
    if terminal_connected is None:  # as it last said
        terminal_connected = agent.terminal_connected
    return await heartbeat_answer(
        log_, agent, now, terminal_connected=terminal_connected, offline_after=offline_after
    )


async def heartbeat_answer(
    log_: EventLog,
    agent: Agent,
    now: datetime,
    *,
    terminal_connected: bool | None,
    offline_after: float,
) -> ServerTime:
    """What follows a heartbeat recorded at `now`: its `agent` event if the status changed,
    and the answer with the newest deal ticket the log holds for the connection."""
    try:
        await agent_seen(
            log_, agent, terminal_connected=terminal_connected, offline_after=offline_after
        )
        last_deal = await log_.last_deal_ticket(agent.connection_id)
    except RedisError as exc:
        # The heartbeat is recorded; the log is what is away. No ticket: the agent reports
        # from the newest deal it saw, and a deal already recorded is ignored.
        log.warning("event=account_events_unavailable on=heartbeat reason=%s", type(exc).__name__)
        last_deal = None
    return ServerTime(server_time=now, last_deal_ticket=last_deal)


async def agents_changed(log_: EventLog, db: AsyncEngine, *, offline_after: float) -> int:
    """One round of the agent watch: an `agent` event for every connection whose agent's
    status (online, offline after `offline_after` seconds without a heartbeat, terminal
    lost) differs from what its stream last said. Returns how many events it added.

    Every process runs it; the log keeps one event per change."""
    said = await log_.agent_statuses()
    async with db.connect() as conn:
        rows = (await conn.execute(AGENT_STATUSES)).all()
    now = utcnow()
    added = 0
    for row in rows:
        status = agent_status(
            row.last_heartbeat_at,
            row.terminal_connected,
            now=now,
            offline_after=offline_after,
            link_closed_at=row.link_closed_at,
        )
        if is_news(said.get(str(row.connection_id)), status):
            draft = Draft("agent", status, iso_utc(now))
            added += len(await log_.append(row.connection_id, [draft]))
    return added
