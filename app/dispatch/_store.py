"""The job store: each step of the hot path (create, claim, answer, read) is one statement,
guarded so that it is safe on its own, run on the single-statement engine (no BEGIN/COMMIT
round trips). These functions take their own connections instead of the request's
session: a job must be committed before its agent is woken, and a caller that waits for a
result must not hold a database connection while it waits.

A job for an agent whose link this process holds (`JobStore.links`) skips the claim: it
is inserted already claimed by that link and handed to it in memory (`insert_onto_link`),
so its round trip is two statements (insert, finish) instead of four. When the agent
was remembered for the account (`JobStore.serving`), that insert also checks what the
read of the account's agent would have (`Serving`), and the read is left out.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError
from sqlalchemy import Row, Update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.errors import InvalidResult, JobNotRunning
from app.dispatch._statements import (
    ANSWERABLE_STATUSES,
    CLAIM_BATCH,
    CLAIM_NEXT,
    FINISH,
    INSERT_JOB,
    INSERT_ONTO_LINK,
    INSERT_ONTO_LINK_OF_NAMED,
    INSERT_ONTO_LINK_OF_OLDEST,
    RELEASE,
    SELECT_ANSWERABLE,
    SELECT_BY_CLIENT_ORDER_ID,
    SELECT_JOB,
)
from app.dispatch._wakeups import JobEvents
from app.models import Job, detached, utcnow
from mt5gate_protocol.jobs import (
    ORDER_JOB_TYPES,
    OUTPUT_MODELS,
    CompletedResult,
    FailedResult,
    JobStatus,
    JobType,
)

MAX_HANDED_OUT_REMEMBERED = 10_000
MAX_SERVING_REMEMBERED = 10_000

AccountKey = tuple[uuid.UUID, uuid.UUID | None]
"""A user's broker account as a call names it: (user id, connection id or None for the
user's oldest connection)."""


@dataclass(frozen=True)
class Serving:
    """What a job stored onto a link must still hold of its agent when the agent was taken
    from `JobStore.serving` instead of read: it serves `account` and was seen since
    `seen_after` (online, by `agent_is_online`'s rule)."""

    account: AccountKey
    seen_after: datetime


class NotServing(LookupError):
    """The agent remembered for an account no longer serves it, or is offline, or its link
    here is closing: nothing was stored; the caller reads the account's agent instead."""


class HeldLink(Protocol):
    """An agent link held by this process (app/services/agent_link.AgentLink)."""

    def take(
        self, values: dict[str, Any], serving: Serving | None = None
    ) -> asyncio.Task[Job | None] | None:
        """Inserts the job (column values) claimed by this link and pushes it; None when
        the link is closing. The task's job is None when the link was no longer the
        agent's, or the agent no longer what `serving` says (nothing was stored)."""
        ...


@dataclass(frozen=True)
class JobStore:
    """What the job functions need: wake-ups, timings, and `db`, the single-statement engine
    (autocommit: each statement is its own transaction; see `single_statement_engine`)."""

    db: AsyncEngine
    events: JobEvents
    poll_interval: float = 0.5
    result_timeout: float = 60.0
    # Jobs this process handed out and not yet saw answered: job id -> (agent id, job type).
    # An answer that arrives here needs no read to know what shape to check it against.
    handed_out: dict[uuid.UUID, tuple[uuid.UUID, str]] = field(default_factory=dict)
    # The agent links this process holds, by agent id: a new job goes straight to its link.
    links: dict[uuid.UUID, HeldLink] = field(default_factory=dict)
    # The agent each account was last found to be served by, for the jobs whose agent holds
    # a link here: such a job is stored onto the link checked by its `Serving` instead of
    # after a read of the account's agent.
    serving: dict[AccountKey, uuid.UUID] = field(default_factory=dict)

    def remember_handed_out(self, job: Job) -> None:
        if len(self.handed_out) >= MAX_HANDED_OUT_REMEMBERED:  # forget the oldest
            del self.handed_out[next(iter(self.handed_out))]
        if job.agent_id is not None:
            self.handed_out[job.id] = (job.agent_id, job.job_type)

    def remember_serving(self, account: AccountKey, agent_id: uuid.UUID) -> None:
        if account not in self.serving and len(self.serving) >= MAX_SERVING_REMEMBERED:
            del self.serving[next(iter(self.serving))]
        self.serving[account] = agent_id


def job_from(row: Row[Any] | Mapping[str, Any]) -> Job:
    return detached(Job, row._mapping if isinstance(row, Row) else row)


async def create_job(
    store: JobStore,
    *,
    user_id: uuid.UUID,
    agent_id: uuid.UUID,
    job_type: JobType,
    input_data: dict[str, Any],
    ttl_seconds: float,
    client_order_id: str | None = None,
    job_id: uuid.UUID | None = None,
    serving: Serving | None = None,
) -> tuple[Job, bool]:
    """Stores a pending job and wakes its agent. Returns (job, created).

    With a `client_order_id` already used by this user, nothing is created and the
    existing job is returned with `created=False` (the caller decides on conflicts).
    Pass `job_id` to watch for the job's result before it exists (`watch_job`).
    With `serving`, the job is stored only onto the agent's link here and only if the agent
    is still what `serving` says: `NotServing` otherwise, with nothing stored.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "id": job_id or uuid.uuid4(),
        "user_id": user_id,
        "agent_id": agent_id,
        "job_type": str(job_type),
        "input_data": input_data,
        "status": JobStatus.PENDING.value,
        "output_data": None,
        "error": None,
        "client_order_id": client_order_id,
        "created_at": now,
        "claimed_at": None,
        "completed_at": None,
        "expires_at": now + timedelta(seconds=ttl_seconds),
        "ticket": None,
        "order_status": None,
        "order_changes": None,
    }
    link = store.links.get(agent_id)
    taken = link.take(values, serving) if link is not None else None
    try:
        # Shielded: a caller that leaves does not cut short a job its link already has.
        if taken is not None and (job := await asyncio.shield(taken)) is not None:
            return job, True
        if serving is not None:
            raise NotServing(agent_id)
        async with store.db.connect() as conn:
            await conn.execute(INSERT_JOB, values)
    except IntegrityError:
        if client_order_id is None:
            raise
        existing = await find_by_client_order_id(
            store, user_id=user_id, client_order_id=client_order_id
        )
        if existing is None:  # deleted in between; vanishingly rare
            raise
        return existing, False
    await store.events.job_created(str(agent_id))
    return job_from(values), True


async def insert_onto_link(
    store: JobStore,
    values: dict[str, Any],
    *,
    link_id: uuid.UUID,
    token_hash: str,
    serving: Serving | None = None,
) -> Job | None:
    """Stores the job (`create_job`'s column values) as claimed, by the link `link_id`,
    if the agent's row still names that link and `token_hash` (and holds what `serving`
    says); None if not (nothing is stored). The link pushes it: no wake-up, no claim."""
    claimed = {**values, "status": JobStatus.RUNNING.value, "claimed_at": values["created_at"]}
    keys = {"p_agent_id": values["agent_id"], "p_token_hash": token_hash, "p_link_id": link_id}
    statement = INSERT_ONTO_LINK
    if serving is not None:
        user_id, connection_id = serving.account
        keys |= {"p_user_id": user_id, "p_seen_after": serving.seen_after}
        if connection_id is None:
            statement = INSERT_ONTO_LINK_OF_OLDEST
        else:
            statement = INSERT_ONTO_LINK_OF_NAMED
            keys["p_connection_id"] = connection_id
    async with store.db.connect() as conn:
        row = (await conn.execute(statement, {**claimed, **keys})).first()
    if row is None:
        return None
    job = job_from(claimed)
    store.remember_handed_out(job)
    return job


async def get_job(store: JobStore, job_id: uuid.UUID) -> Job | None:
    async with store.db.connect() as conn:
        row = (await conn.execute(SELECT_JOB, {"p_job_id": job_id})).first()
    return job_from(row) if row is not None else None


async def find_by_client_order_id(
    store: JobStore, *, user_id: uuid.UUID, client_order_id: str
) -> Job | None:
    async with store.db.connect() as conn:
        row = (
            await conn.execute(
                SELECT_BY_CLIENT_ORDER_ID,
                {"p_user_id": user_id, "p_client_order_id": client_order_id},
            )
        ).first()
    return job_from(row) if row is not None else None


async def claim_next_job(store: JobStore, *, agent_id: uuid.UUID, token_hash: str) -> Job | None:
    """Atomically moves this agent's oldest live pending job to `running` and returns it,
    if `token_hash` (the claimant's) is still the agent's: a replaced token claims nothing.

    Jobs past `expires_at` are skipped here and marked `expired` by the sweeper.
    """
    claimed = await _claim(store, CLAIM_NEXT, agent_id=agent_id, token_hash=token_hash)
    return claimed[0] if claimed else None


async def claim_jobs(store: JobStore, *, agent_id: uuid.UUID, token_hash: str) -> list[Job]:
    """`claim_next_job` for up to `LINK_CLAIM_BATCH` jobs at once, oldest first (an agent
    link's: one statement for a burst, and for a single job no second claim that finds
    nothing). Fewer than the batch means none was left pending when the claim ran."""
    return await _claim(store, CLAIM_BATCH, agent_id=agent_id, token_hash=token_hash)


async def _claim(
    store: JobStore, statement: Update, *, agent_id: uuid.UUID, token_hash: str
) -> list[Job]:
    keys = {"p_agent_id": agent_id, "p_token_hash": token_hash, "p_now": utcnow()}
    async with store.db.connect() as conn:
        rows = (await conn.execute(statement, keys)).all()
    jobs = sorted((job_from(row) for row in rows), key=lambda job: (job.created_at, job.id))
    for job in jobs:
        store.remember_handed_out(job)
    return jobs


async def release_job(store: JobStore, *, job_id: uuid.UUID, agent_id: uuid.UUID) -> None:
    """Puts a claimed job back to pending: its agent never received it."""
    async with store.db.connect() as conn:
        await conn.execute(RELEASE, {"p_job_id": job_id, "p_agent_id": agent_id})
    await store.events.job_created(str(agent_id))


def validate_result(job_type: str, result: CompletedResult | FailedResult) -> dict[str, Any]:
    """The column values a result sets, after checking `output_data` against the job type."""
    if isinstance(result, FailedResult):
        return {
            "p_status": JobStatus.FAILED.value,
            "p_output_data": None,
            "p_error": result.error.model_dump(exclude_none=True),
            "p_ticket": None,
        }
    model: type[BaseModel] = OUTPUT_MODELS[job_type]
    try:
        output = model.model_validate(result.output_data)
    except ValidationError as exc:
        raise InvalidResult(
            f"output_data does not match the {job_type} shape",
            errors=exc.errors(include_url=False, include_context=False, include_input=False),
        ) from exc
    ticket = getattr(output, "ticket", None) if job_type in ORDER_JOB_TYPES else None
    return {
        "p_status": JobStatus.COMPLETED.value,
        "p_output_data": output.model_dump(mode="json"),
        "p_error": None,
        "p_ticket": ticket,
    }


async def complete_job(
    store: JobStore,
    *,
    agent_id: uuid.UUID,
    job_id: uuid.UUID,
    result: CompletedResult | FailedResult,
) -> Job:
    """Records the agent's answer to a job it holds, then wakes whoever waits for it."""
    keys = {"p_job_id": job_id, "p_agent_id": agent_id}
    handed_out = store.handed_out.get(job_id)
    async with store.db.connect() as conn:
        if handed_out is not None and handed_out[0] == agent_id:
            job_type = handed_out[1]
        else:  # handed out by another process (or forgotten): read what it is
            held = (await conn.execute(SELECT_ANSWERABLE, keys)).first()
            if held is None or held.status not in ANSWERABLE_STATUSES:
                raise JobNotRunning()
            job_type = held.job_type
        values = validate_result(job_type, result)
        # Guarded: only a job this agent holds, and of two racing answers only one.
        row = (await conn.execute(FINISH, {**keys, **values, "p_now": utcnow()})).first()
    if row is None:  # not running under this agent, or another answer won the race
        raise JobNotRunning()
    store.handed_out.pop(job_id, None)
    finished = job_from({**row._mapping, "output_data": values["p_output_data"]})
    await store.events.job_finished(str(job_id), finished)
    return finished
