"""Jobs: created for an agent, claimed exactly once, answered, and waited for.

A job's life: `pending` → `running` (claimed by its agent) → `completed` | `failed`.
Side exits: `expired` (still pending at `expires_at`: it will never be handed out) and
`lost` (claimed, but the agent never answered within `job_result_timeout_seconds`; for a
trade the outcome is unknown). A late answer to a `lost` job is still accepted, because
the truth beats the guess.

Each step of the hot path (create, claim, answer, read) is one statement, guarded so that
it is safe on its own, run on the single-statement engine (no BEGIN/COMMIT round trips)
with statements built once. These functions take their own connections instead of the
request's session: a job must be committed before its agent is woken, and a caller that
waits for a result must not hold a database connection while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from pydantic import BaseModel, ValidationError
from sqlalchemy import Row, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.errors import InvalidResult, JobNotRunning
from app.core.job_events import CREATED_CHANNEL, FINISHED_CHANNEL, JobEvents, Wakeup
from app.core.metrics import JOB_ROUND_TRIP_SECONDS
from app.models import Agent, Job, detached, utcnow
from app.schemas.agents import CompletedResult, FailedResult
from app.schemas.trading import ORDER_JOB_TYPES, OUTPUT_MODELS

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
MAX_HANDED_OUT_REMEMBERED = 10_000


@dataclass(frozen=True)
class JobStore:
    """What the job functions need: the single-statement engine, wake-ups and timings."""

    db: AsyncEngine
    events: JobEvents
    poll_interval: float = 0.5
    result_timeout: float = 60.0
    # Jobs this process handed out and not yet saw answered: job id -> (agent id, job type).
    # An answer that arrives here needs no read to know what shape to check it against.
    handed_out: dict[uuid.UUID, tuple[uuid.UUID, str]] = field(default_factory=dict)

    def remember_handed_out(self, job: Job) -> None:
        if len(self.handed_out) >= MAX_HANDED_OUT_REMEMBERED:  # forget the oldest
            del self.handed_out[next(iter(self.handed_out))]
        if job.agent_id is not None:
            self.handed_out[job.id] = (job.agent_id, job.job_type)


JOBS = cast(Table, Job.__table__)
AGENTS = cast(Table, Agent.__table__)
# The statements of the hot path, built once (building a statement costs more than
# running a cached one). Bound values are named p_* so that none is mistaken for a column.
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
CLAIM_NEXT = (
    update(JOBS)
    .where(
        JOBS.c.id
        == select(JOBS.c.id)
        .where(
            JOBS.c.agent_id == CURRENT_AGENT,
            JOBS.c.status == PENDING,
            JOBS.c.expires_at > bindparam("p_now"),
        )
        .order_by(JOBS.c.created_at, JOBS.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery(),
        JOBS.c.status == PENDING,
    )
    .values(status=RUNNING, claimed_at=bindparam("p_now"))
    .returning(*JOBS.c)
)
RELEASE = (
    update(JOBS)
    .where(
        JOBS.c.id == bindparam("p_job_id"),
        JOBS.c.agent_id == bindparam("p_agent_id"),
        JOBS.c.status == RUNNING,
    )
    .values(status=PENDING, claimed_at=None)
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
    .where(JOBS.c.status == PENDING, JOBS.c.expires_at <= bindparam("p_now"))
    .values(status=EXPIRED, completed_at=bindparam("p_now"), error=EXPIRED_ERROR)
    .returning(JOBS.c.id)
)
LOSE_UNANSWERED = (
    update(JOBS)
    .where(JOBS.c.status == RUNNING, JOBS.c.claimed_at <= bindparam("p_claimed_before"))
    .values(status=LOST, completed_at=bindparam("p_now"), error=LOST_ERROR)
    .returning(JOBS.c.id)
)


# The fallback poll: what the waiting long-polls and callers of this process wait for.
PENDING_PER_AGENT = (
    select(JOBS.c.agent_id, func.count())
    .where(
        JOBS.c.agent_id.in_(bindparam("p_agent_ids", expanding=True)),
        JOBS.c.status == PENDING,
        JOBS.c.expires_at > bindparam("p_now"),
    )
    .group_by(JOBS.c.agent_id)
)
FINISHED_AMONG = select(JOBS.c.id).where(
    JOBS.c.id.in_(bindparam("p_job_ids", expanding=True)), JOBS.c.status.in_(FINAL_STATUSES)
)
RECHECK_BATCH = 500  # ids per query: bounded statements, however many waiters


def job_from(row: Row[Any] | Mapping[str, Any]) -> Job:
    return detached(Job, row._mapping if isinstance(row, Row) else row)


async def create_job(
    store: JobStore,
    *,
    user_id: uuid.UUID,
    agent_id: uuid.UUID,
    job_type: str,
    input_data: dict[str, Any],
    ttl_seconds: float,
    client_order_id: str | None = None,
    job_id: uuid.UUID | None = None,
) -> tuple[Job, bool]:
    """Stores a pending job and wakes its agent. Returns (job, created).

    With a `client_order_id` already used by this user, nothing is created and the
    existing job is returned with `created=False` (the caller decides on conflicts).
    Pass `job_id` to watch for the job's result before it exists (`watch_job`).
    """
    now = utcnow()
    values: dict[str, Any] = {
        "id": job_id or uuid.uuid4(),
        "user_id": user_id,
        "agent_id": agent_id,
        "job_type": job_type,
        "input_data": input_data,
        "status": PENDING,
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
    async with store.db.connect() as conn:
        try:
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
    keys = {"p_agent_id": agent_id, "p_token_hash": token_hash, "p_now": utcnow()}
    async with store.db.connect() as conn:
        row = (await conn.execute(CLAIM_NEXT, keys)).first()
    if row is None:
        return None
    job = job_from(row)
    store.remember_handed_out(job)
    return job


async def release_job(store: JobStore, *, job_id: uuid.UUID, agent_id: uuid.UUID) -> None:
    """Puts a claimed job back to pending: its agent never received it."""
    async with store.db.connect() as conn:
        await conn.execute(RELEASE, {"p_job_id": job_id, "p_agent_id": agent_id})
    await store.events.job_created(str(agent_id))


def validate_result(job_type: str, result: CompletedResult | FailedResult) -> dict[str, Any]:
    """The column values a result sets, after checking `output_data` against the job type."""
    if isinstance(result, FailedResult):
        return {
            "p_status": FAILED,
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
        "p_status": COMPLETED,
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


class JobWatch:
    """Watches one job for its final state; opened before the job is created (`watch_job`),
    it needs no read to start from, since no wake-up can fall in between."""

    def __init__(self, store: JobStore, job_id: uuid.UUID, finished: Wakeup) -> None:
        self.store = store
        self.job_id = job_id
        self.finished = finished
        self.started = time.perf_counter()

    async def result(self, job: Job, *, timeout: float) -> Job:
        """`wait_for_result`, timed: the job's round trip as its waiter sees it, by type and
        outcome (the status it ends the wait in: `pending` when the wait ran out)."""
        job = await self.wait_for_result(job, timeout=timeout)
        elapsed = time.perf_counter() - self.started
        JOB_ROUND_TRIP_SECONDS.labels(job.job_type, job.status).observe(elapsed)
        return job

    async def wait_for_result(self, job: Job, *, timeout: float) -> Job:
        """Waits from the state `job` (read or created while watching) until the job is
        final or `timeout` passes; returns the job as it then is.

        Woken at once by the job's `finished` event, which carries the job when it finished
        in this process; re-reads the row on a wake-up from elsewhere, or from the fallback
        poll (`recheck_waiters`), so a lost wake-up costs at most one poll interval. A
        graceful shutdown ends the wait early: the caller answers with what it has
        (pending) instead of being cut off.
        """
        store = self.store
        deadline = time.monotonic() + timeout
        while True:
            if job.status in FINAL_STATUSES:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0 or store.events.draining.is_set():
                return job
            await wait_any(self.finished, store.events.draining, timeout=remaining)
            delivered = self.finished.payload
            if isinstance(delivered, Job) and delivered.status in FINAL_STATUSES:
                return delivered
            self.finished.clear()  # before the read: a wake-up during it is kept
            found = await get_job(store, self.job_id)
            if found is None:
                raise LookupError(self.job_id)
            job = found


@contextlib.contextmanager
def watch_job(store: JobStore, job_id: uuid.UUID) -> Iterator[JobWatch]:
    with store.events.watch_finished(str(job_id)) as finished:
        yield JobWatch(store, job_id, finished)


async def run_job(
    store: JobStore,
    *,
    user_id: uuid.UUID,
    agent_id: uuid.UUID,
    job_type: str,
    input_data: dict[str, Any],
    ttl_seconds: float,
    timeout: float,
) -> Job:
    """Creates a job and waits up to `timeout` for its result; returns the job as it then is."""
    job_id = uuid.uuid4()
    with watch_job(store, job_id) as watch:
        job, _ = await create_job(
            store,
            user_id=user_id,
            agent_id=agent_id,
            job_type=job_type,
            input_data=input_data,
            ttl_seconds=ttl_seconds,
            job_id=job_id,
        )
        return await watch.result(job, timeout=timeout)


async def wait_for_job_result(store: JobStore, *, job_id: uuid.UUID, timeout: float) -> Job:
    """Waits for a job that already exists (read once after the watch is set up)."""
    with watch_job(store, job_id) as watch:
        job = await get_job(store, job_id)
        if job is None:
            raise LookupError(job_id)
        return await watch.result(job, timeout=timeout)


async def wait_any(*events: asyncio.Event, timeout: float) -> None:
    """Returns when any of the events is set, or after `timeout` seconds."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def sweep_jobs(
    store: JobStore,
    on_ended: Callable[[list[uuid.UUID]], Awaitable[object]] | None = None,
) -> int:
    """Ends jobs nobody will finish: past-due pending ones expire, unanswered claims are lost.

    Wakes their waiters, tells `on_ended` (the account events) which ended, and returns
    how many it ended.
    """
    now = utcnow()
    async with store.db.connect() as conn:
        ended = list((await conn.scalars(EXPIRE_DUE, {"p_now": now})).all())
        lost_before = now - timedelta(seconds=store.result_timeout)
        lost = await conn.scalars(LOSE_UNANSWERED, {"p_now": now, "p_claimed_before": lost_before})
        ended += lost.all()
    for job_id in ended:
        await store.events.job_finished(str(job_id))
    if ended and on_ended is not None:
        await on_ended(ended)
    if ended:
        log.info("event=jobs_swept ended=%d", len(ended))
    return len(ended)


async def recheck_waiters(store: JobStore) -> None:
    """The fallback for lost wake-ups: finds, in one query per batch, which agents waiting
    here have pending jobs and which awaited jobs are final, and wakes their waiters as the
    lost messages would have. Its cost does not grow with the number of waiters."""
    events = store.events
    agent_ids = [uuid.UUID(key) for key in events.watched(CREATED_CHANNEL)]
    job_ids = [uuid.UUID(key) for key in events.watched(FINISHED_CHANNEL)]
    if not agent_ids and not job_ids:
        return
    async with store.db.connect() as conn:
        for batch in batched(agent_ids):
            pending = await conn.execute(
                PENDING_PER_AGENT, {"p_agent_ids": batch, "p_now": utcnow()}
            )
            for agent_id, count in pending:
                events.wake_local(CREATED_CHANNEL, str(agent_id), times=count)
        for batch in batched(job_ids):
            for job_id in await conn.scalars(FINISHED_AMONG, {"p_job_ids": batch}):
                events.wake_local(FINISHED_CHANNEL, str(job_id))


def batched(ids: list[uuid.UUID]) -> Iterator[list[uuid.UUID]]:
    for start in range(0, len(ids), RECHECK_BATCH):
        yield ids[start : start + RECHECK_BATCH]


async def run_every(interval: float, work: Callable[[], Awaitable[object]], *, name: str) -> None:
    """A lifespan background task: `work` every `interval` seconds until cancelled. A round
    that fails (the database briefly away) is logged, and the next one tried."""
    while True:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("event=%s_failed reason=%r", name, exc)
        await asyncio.sleep(interval)
