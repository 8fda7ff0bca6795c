"""Jobs: created for an agent, claimed exactly once, answered, and waited for.

A job's life: `pending` → `running` (claimed by its agent) → `completed` | `failed`.
Side exits: `expired` (still pending at `expires_at`: it will never be handed out) and
`lost` (claimed, but the agent never answered within `job_result_timeout_seconds`; for a
trade the outcome is unknown). A late answer to a `lost` job is still accepted, because
the truth beats the guess.

These functions open their own short sessions from the factory instead of taking the
request's: a job must be committed before its agent is woken, and a caller that waits for
a result must not hold a database connection while it waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.errors import InvalidResult, JobNotRunning
from app.core.job_events import JobEvents
from app.models import Job, utcnow
from app.schemas.agents import CompletedResult, FailedResult
from app.schemas.trading import OUTPUT_MODELS

log = logging.getLogger("mt5gate.jobs")

PENDING, RUNNING, COMPLETED, FAILED, EXPIRED, LOST = (
    "pending",
    "running",
    "completed",
    "failed",
    "expired",
    "lost",
)
FINAL_STATUSES = frozenset({COMPLETED, FAILED, EXPIRED, LOST})
ANSWERABLE_STATUSES = (RUNNING, LOST)
LOST_ERROR = {
    "code": "agent_lost",
    "message": "The agent took the job but never answered; the outcome is unknown. "
    "Check positions before retrying.",
}
EXPIRED_ERROR = {"code": "expired", "message": "No agent took the job before it expired."}


@dataclass(frozen=True)
class JobStore:
    """What the job functions need: the session factory, the wake-ups and the timings."""

    session_factory: async_sessionmaker[AsyncSession]
    events: JobEvents
    poll_interval: float = 0.5
    result_timeout: float = 60.0


async def create_job(
    store: JobStore,
    *,
    user_id: uuid.UUID,
    agent_id: uuid.UUID,
    job_type: str,
    input_data: dict[str, Any],
    ttl_seconds: float,
    client_order_id: str | None = None,
) -> tuple[Job, bool]:
    """Stores a pending job and wakes its agent. Returns (job, created).

    With a `client_order_id` already used by this user, nothing is created and the
    existing job is returned with `created=False` (the caller decides on conflicts).
    """
    now = utcnow()
    job = Job(
        id=uuid.uuid4(),
        user_id=user_id,
        agent_id=agent_id,
        job_type=job_type,
        input_data=input_data,
        status=PENDING,
        client_order_id=client_order_id,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
    )
    async with store.session_factory() as session:
        session.add(job)
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            if client_order_id is None:
                raise
            existing = await session.scalar(
                select(Job).where(Job.user_id == user_id, Job.client_order_id == client_order_id)
            )
            if existing is None:  # deleted in between; vanishingly rare
                raise
            return existing, False
    await store.events.job_created(str(agent_id))
    return job, True


async def get_job(store: JobStore, job_id: uuid.UUID) -> Job | None:
    async with store.session_factory() as session:
        return await session.get(Job, job_id)


async def claim_next_job(store: JobStore, *, agent_id: uuid.UUID) -> Job | None:
    """Atomically moves this agent's oldest live pending job to `running` and returns it.

    Jobs past `expires_at` are skipped here and marked `expired` by the sweeper.

    One statement: on PostgreSQL the candidate row is locked with SKIP LOCKED, so
    concurrent claims take different jobs; on SQLite writers are serialized and the
    `status = 'pending'` guard makes a second claim of the same row update nothing.
    """
    now = utcnow()
    candidate = (
        select(Job.id)
        .where(Job.agent_id == agent_id, Job.status == PENDING, Job.expires_at > now)
        .order_by(Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    claim = (
        update(Job)
        .where(Job.id == candidate, Job.status == PENDING)
        .values(status=RUNNING, claimed_at=now)
        .returning(Job)
        .execution_options(synchronize_session=False)
    )
    async with store.session_factory() as session:
        job = (await session.scalars(claim)).one_or_none()
        await session.commit()
    return job


async def release_job(store: JobStore, *, job_id: uuid.UUID, agent_id: uuid.UUID) -> None:
    """Puts a claimed job back to pending: its agent never received it."""
    async with store.session_factory() as session:
        await session.execute(
            update(Job)
            .where(Job.id == job_id, Job.agent_id == agent_id, Job.status == RUNNING)
            .values(status=PENDING, claimed_at=None)
        )
        await session.commit()
    await store.events.job_created(str(agent_id))


def validate_result(job_type: str, result: CompletedResult | FailedResult) -> dict[str, Any]:
    """The column values a result sets, after checking `output_data` against the job type."""
    if isinstance(result, FailedResult):
        return {"status": FAILED, "error": result.error.model_dump(exclude_none=True)}
    model: type[BaseModel] = OUTPUT_MODELS[job_type]
    try:
        output = model.model_validate(result.output_data)
    except ValidationError as exc:
        raise InvalidResult(
            f"output_data does not match the {job_type} shape",
            errors=exc.errors(include_url=False, include_context=False, include_input=False),
        ) from exc
    return {"status": COMPLETED, "output_data": output.model_dump(mode="json")}


async def complete_job(
    store: JobStore,
    *,
    agent_id: uuid.UUID,
    job_id: uuid.UUID,
    result: CompletedResult | FailedResult,
) -> Job:
    """Records the agent's answer to a job it holds, then wakes whoever waits for it."""
    async with store.session_factory() as session:
        job = await session.scalar(select(Job).where(Job.id == job_id, Job.agent_id == agent_id))
        if job is None or job.status not in ANSWERABLE_STATUSES:
            raise JobNotRunning()
        values = validate_result(job.job_type, result)
        finished = (
            await session.scalars(
                update(Job)
                .where(
                    Job.id == job_id, Job.agent_id == agent_id, Job.status.in_(ANSWERABLE_STATUSES)
                )
                .values(completed_at=utcnow(), **values)
                .returning(Job)
                .execution_options(synchronize_session=False, populate_existing=True)
            )
        ).one_or_none()
        await session.commit()
    if finished is None:  # another answer won the race
        raise JobNotRunning()
    await store.events.job_finished(str(job_id))
    return finished


async def wait_for_job_result(store: JobStore, *, job_id: uuid.UUID, timeout: float) -> Job:
    """Waits until the job is final or `timeout` passes; returns the job as it then is.

    Woken at once by the job's `finished` event; re-reads the row every poll interval
    anyway, so a lost wake-up costs at most one interval. A graceful shutdown ends the
    wait early: the caller answers with what it has (pending) instead of being cut off.
    """
    deadline = time.monotonic() + timeout
    with store.events.watch_finished(str(job_id)) as finished:
        while True:
            finished.clear()
            job = await get_job(store, job_id)
            if job is None:
                raise LookupError(job_id)
            if job.status in FINAL_STATUSES:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0 or store.events.draining.is_set():
                return job
            await wait_any(
                finished, store.events.draining, timeout=min(store.poll_interval, remaining)
            )


async def wait_any(*events: asyncio.Event, timeout: float) -> None:
    """Returns when any of the events is set, or after `timeout` seconds."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def sweep_jobs(store: JobStore) -> int:
    """Ends jobs nobody will finish: past-due pending ones expire, unanswered claims are lost.

    Wakes their waiters and returns how many it ended.
    """
    now = utcnow()
    lost_before = now - timedelta(seconds=store.result_timeout)
    async with store.session_factory() as session:
        expired = await session.scalars(
            update(Job)
            .where(Job.status == PENDING, Job.expires_at <= now)
            .values(status=EXPIRED, completed_at=now, error=EXPIRED_ERROR)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        ended = list(expired)
        lost = await session.scalars(
            update(Job)
            .where(Job.status == RUNNING, Job.claimed_at <= lost_before)
            .values(status=LOST, completed_at=now, error=LOST_ERROR)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        ended += list(lost)
        await session.commit()
    for job_id in ended:
        await store.events.job_finished(str(job_id))
    return len(ended)


async def run_job_sweeper(store: JobStore, *, interval: float = 1.0) -> None:
    """The lifespan's background task: sweeps every `interval` seconds until cancelled."""
    while True:
        try:
            ended = await sweep_jobs(store)
            if ended:
                log.info("event=jobs_swept ended=%d", ended)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database may be briefly away; try again next round
            log.warning("event=job_sweep_failed reason=%r", exc)
        await asyncio.sleep(interval)
