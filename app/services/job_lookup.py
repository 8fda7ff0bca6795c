"""A caller's own job, as `GET /jobs/{job_id}` shows it (the `job_id` of a 202)."""

from __future__ import annotations

import uuid
from typing import cast

from sqlalchemy import Table, bindparam, select

from app.core.errors import NotFound
from app.dispatch import JobStore, job_from
from app.models import Job, utcnow
from app.schemas.quotes import JobView
from mt5gate_protocol.jobs import JobStatus, JobViewStatus

JOBS = cast(Table, Job.__table__)
# Scoped by owner in the statement itself: another user's job is simply not found.
SELECT_OWN_JOB = select(*JOBS.c).where(
    JOBS.c.id == bindparam("p_job_id"), JOBS.c.user_id == bindparam("p_user_id")
)


def view_status(job: Job) -> JobViewStatus:
    if job.status == JobStatus.LOST:
        return "unknown"
    if job.status == JobStatus.PENDING and job.expires_at <= utcnow():
        return "expired"  # the sweeper has not marked it yet; it can never be handed out
    return cast(JobViewStatus, job.status)


async def lookup_job(store: JobStore, *, user_id: uuid.UUID, job_id: uuid.UUID) -> JobView:
    async with store.db.connect() as conn:
        row = (
            await conn.execute(SELECT_OWN_JOB, {"p_job_id": job_id, "p_user_id": user_id})
        ).first()
    if row is None:
        raise NotFound("No such job.")
    job = job_from(row)
    return JobView(
        job_id=job.id,
        job_type=job.job_type,
        status=view_status(job),
        output_data=job.output_data,
        error=job.error,
        created_at=job.created_at,
        finished_at=job.completed_at,
    )
