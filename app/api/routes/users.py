from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import CurrentUser, SessionDep
from app.schemas.common import ErrorBody
from app.schemas.users import OnboardingComplete, UserRead
from app.services import users

router = APIRouter(tags=["users"], responses={401: {"model": ErrorBody}})


@router.get("/me")
async def read_me(user: CurrentUser) -> UserRead:
    return UserRead.model_validate(user)


@router.post(
    "/onboarding/complete",
    responses={409: {"model": ErrorBody, "description": "broker_connection_required"}},
)
async def complete_onboarding(
    _body: OnboardingComplete, user: CurrentUser, session: SessionDep
) -> UserRead:
    """Accepts the risk disclosure; needs at least one broker connection."""
    return UserRead.model_validate(await users.complete_onboarding(session, user=user))
