"""A caller's own jobs: follow the `job_id` of a `202` to its end."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends

from app.api.deps import OnboardedUser, TradingDep, get_onboarded_user
from app.api.routes.trading import error
from app.schemas.quotes import JobView
from app.services import job_lookup

router = APIRouter(
    tags=["jobs"],
    dependencies=[Depends(get_onboarded_user)],
    responses={401: error("invalid_token"), 403: error("onboarding_incomplete")},
)


@router.get("/jobs/{job_id}", responses={404: error("not_found", "not one of your jobs.")})
async def get_job(job_id: uuid.UUID, user: OnboardedUser, trading: TradingDep) -> JobView:
    """One of your jobs (the `job_id` of a `202`), in whatever state it is now."""
    return await job_lookup.lookup_job(trading.jobs, user_id=user.id, job_id=job_id)
