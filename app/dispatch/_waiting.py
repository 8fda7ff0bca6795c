"""Waiting for a job's result: watched before the job exists, woken by its `finished`
event, re-read after a wake-up from elsewhere or the fallback poll."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

from app.core.metrics import JOB_ROUND_TRIP_SECONDS
from app.core.tasks import wait_any
from app.dispatch._store import JobStore, create_job, get_job
from app.dispatch._wakeups import Wakeup
from app.models import Job
from mt5gate_protocol.jobs import FINAL_STATUSES, JobType


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


async def create_job_and_wait(
    store: JobStore,
    *,
    user_id: uuid.UUID,
    agent_id: uuid.UUID,
    job_type: JobType,
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
