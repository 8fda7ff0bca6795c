"""The statements of the job lifecycle, built once (building a statement costs more than
running a cached one). Bound values are named p_* so that none is mistaken for a column."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import ColumnElement, Table, bindparam, func, insert, select, update
from sqlalchemy.sql.dml import ReturningInsert

from app.models import Agent, Job
from app.services.agents import AGENT_ONLINE, OLDEST_CONNECTION
from mt5gate_protocol.jobs import FINAL_STATUSES, JobStatus

ANSWERABLE_STATUSES = (JobStatus.RUNNING, JobStatus.LOST)
LOST_ERROR = {
    "code": "agent_lost",
    "message": "The agent took the job but never answered; the outcome is unknown. "
    "Check positions before retrying.",
}
EXPIRED_ERROR = {"code": "expired", "message": "No agent took the job before it expired."}

JOBS = cast(Table, Job.__table__)
AGENTS = cast(Table, Agent.__table__)
INSERT_JOB = insert(JOBS)
SELECT_JOB = select(*JOBS.c).where(JOBS.c.id == bindparam("p_job_id"))
SELECT_BY_CLIENT_ORDER_ID = select(*JOBS.c).where(
    JOBS.c.user_id == bindparam("p_user_id"),
    JOBS.c.client_order_id == bindparam("p_client_order_id"),
)
# The claimant's token must still be its agent's. A rotation or a delete changes the agent's
# row, and a claim holds a share lock on it (FOR SHARE, PostgreSQL): whichever comes first,
# the other waits, and a claim that waited re-reads the row, finds another token (or none)
# and claims nothing. SQLite's single writer orders them the same way.
CURRENT_AGENT = (
    select(AGENTS.c.id)
    .where(
        AGENTS.c.id == bindparam("p_agent_id"),
        AGENTS.c.token_hash == bindparam("p_token_hash"),
    )
    .with_for_update(read=True)
    .scalar_subquery()
)


# PostgreSQL locks the candidate row with SKIP LOCKED, so concurrent claims take different
# jobs; SQLite serializes writers, and `status = 'pending'` makes a second claim of the
# same row update nothing.
OLDEST_PENDING = (
    select(JOBS.c.id)
    .where(
        JOBS.c.agent_id == CURRENT_AGENT,
        JOBS.c.status == JobStatus.PENDING,
        JOBS.c.expires_at > bindparam("p_now"),
    )
    .order_by(JOBS.c.created_at, JOBS.c.id)
    .with_for_update(skip_locked=True)
)
CLAIM_NEXT = (
    update(JOBS)
    .where(
        JOBS.c.id == OLDEST_PENDING.limit(1).scalar_subquery(), JOBS.c.status == JobStatus.PENDING
    )
    .values(status=JobStatus.RUNNING, claimed_at=bindparam("p_now"))
    .returning(*JOBS.c)
)
# An agent link's claim: up to a batch at once. The candidates are picked (and locked) once,
# in a materialized CTE: as `id IN (subquery)` PostgreSQL may join the subquery and run it
# again on a concurrent update's recheck, where SKIP LOCKED then finds nothing (measured:
# a job left pending under 20 concurrent claims).
LINK_CLAIM_BATCH = 32
_PICKED = (
    OLDEST_PENDING.limit(LINK_CLAIM_BATCH)
    .cte("picked")
    .prefix_with("MATERIALIZED", dialect="postgresql")
)
CLAIM_BATCH = (
    update(JOBS)
    .where(JOBS.c.id.in_(select(_PICKED.c.id)), JOBS.c.status == JobStatus.PENDING)
    .values(status=JobStatus.RUNNING, claimed_at=bindparam("p_now"))
    .returning(*JOBS.c)
)
# A job created for an agent whose link this process holds: inserted already claimed by
# that link, if the agent's row still names the link and its token (under the same share
# lock as CURRENT_AGENT, so a rotation committed first makes it insert nothing).
LINK_STILL_HELD = (
    AGENTS.c.id == bindparam("p_agent_id"),
    AGENTS.c.token_hash == bindparam("p_token_hash"),
    AGENTS.c.link_id == bindparam("p_link_id"),
)


def insert_onto_link_where(*conditions: ColumnElement[bool]) -> ReturningInsert[tuple[Any]]:
    return (
        insert(JOBS)
        .from_select(
            [column.name for column in JOBS.c],
            select(*(bindparam(column.key, type_=column.type) for column in JOBS.c))
            .where(*LINK_STILL_HELD, *conditions)
            .with_for_update(read=True),
        )
        .returning(JOBS.c.id)
    )


INSERT_ONTO_LINK = insert_onto_link_where()
# The same for an agent taken from the account cache (`JobStore.serving`) instead of read:
# inserted only if the agent still serves the user's connection (the named one, or their
# oldest) and is online, the checks the read would have made.
INSERT_ONTO_LINK_OF_OLDEST = insert_onto_link_where(
    AGENTS.c.user_id == bindparam("p_user_id"),
    AGENTS.c.connection_id == OLDEST_CONNECTION.scalar_subquery(),
    AGENT_ONLINE,
)
INSERT_ONTO_LINK_OF_NAMED = insert_onto_link_where(
    AGENTS.c.user_id == bindparam("p_user_id"),
    AGENTS.c.connection_id == bindparam("p_connection_id"),
    AGENT_ONLINE,
)
RELEASE = (
    update(JOBS)
    .where(
        JOBS.c.id == bindparam("p_job_id"),
        JOBS.c.agent_id == bindparam("p_agent_id"),
        JOBS.c.status == JobStatus.RUNNING,
    )
    .values(status=JobStatus.PENDING, claimed_at=None)
)
SELECT_ANSWERABLE = select(JOBS.c.job_type, JOBS.c.status).where(
    JOBS.c.id == bindparam("p_job_id"), JOBS.c.agent_id == bindparam("p_agent_id")
)
FINISH = (
    update(JOBS)
    .where(
        JOBS.c.id == bindparam("p_job_id"),
        JOBS.c.agent_id == bindparam("p_agent_id"),
        JOBS.c.status.in_(ANSWERABLE_STATUSES),
    )
    .values(
        status=bindparam("p_status"),
        output_data=bindparam("p_output_data"),
        error=bindparam("p_error"),
        completed_at=bindparam("p_now"),
        ticket=bindparam("p_ticket"),
    )
    # Not the output: it is what was just written (a history answer is hundreds of KB, not
    # worth sending back and decoding again).
    .returning(*(column for column in JOBS.c if column.key != "output_data"))
)
EXPIRE_DUE = (
    update(JOBS)
    .where(JOBS.c.status == JobStatus.PENDING, JOBS.c.expires_at <= bindparam("p_now"))
    .values(status=JobStatus.EXPIRED, completed_at=bindparam("p_now"), error=EXPIRED_ERROR)
    .returning(JOBS.c.id)
)
LOSE_UNANSWERED = (
    update(JOBS)
    .where(JOBS.c.status == JobStatus.RUNNING, JOBS.c.claimed_at <= bindparam("p_claimed_before"))
    .values(status=JobStatus.LOST, completed_at=bindparam("p_now"), error=LOST_ERROR)
    .returning(JOBS.c.id)
)


# The fallback poll: what the waiting long-polls and callers of this process wait for.
PENDING_PER_AGENT = (
    select(JOBS.c.agent_id, func.count())
    .where(
        JOBS.c.agent_id.in_(bindparam("p_agent_ids", expanding=True)),
        JOBS.c.status == JobStatus.PENDING,
        JOBS.c.expires_at > bindparam("p_now"),
    )
    .group_by(JOBS.c.agent_id)
)
FINISHED_AMONG = select(JOBS.c.id).where(
    JOBS.c.id.in_(bindparam("p_job_ids", expanding=True)), JOBS.c.status.in_(FINAL_STATUSES)
)
