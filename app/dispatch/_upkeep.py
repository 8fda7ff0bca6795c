"""The dispatch's background rounds, run by the lifespan: the sweeper (ends jobs nobody will
finish) and the fallback poll (wakes waiters whose wake-up was lost)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from app.core.tasks import batched
from app.dispatch._statements import EXPIRE_DUE, FINISHED_AMONG, LOSE_UNANSWERED, PENDING_PER_AGENT
from app.dispatch._store import JobStore
from app.dispatch._wakeups import CREATED_CHANNEL, FINISHED_CHANNEL
from app.models import utcnow

log = logging.getLogger("mt5gate.jobs")

RECHECK_BATCH = 500  # ids per query: bounded statements, however many waiters


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
        for batch in batched(agent_ids, RECHECK_BATCH):
            pending = await conn.execute(
                PENDING_PER_AGENT, {"p_agent_ids": batch, "p_now": utcnow()}
            )
            for agent_id, count in pending:
                events.wake_local(CREATED_CHANNEL, str(agent_id), times=count)
        for batch in batched(job_ids, RECHECK_BATCH):
            for job_id in await conn.scalars(FINISHED_AMONG, {"p_job_ids": batch}):
                events.wake_local(FINISHED_CHANNEL, str(job_id))
