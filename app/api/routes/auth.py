from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import ClientAddress, DbDep, LimiterDep, SessionDep, SettingsDep
from app.core.config import Settings
from app.core.security import create_access_token
from app.models import User
from app.schemas.common import ErrorBody
from app.schemas.users import LoginCredentials, TokenResponse, UserCreate, UserRead
from app.services import users

router = APIRouter(prefix="/auth", tags=["auth"])


def token_response(user: User, settings: Settings) -> TokenResponse:
    token = create_access_token(
        user.id,
        secret=settings.jwt_secret,
        algorithm=settings.jwt_algorithm,
        ttl_seconds=settings.access_token_ttl_seconds,
    )
    return TokenResponse(
        access_token=token.token, expires_in=token.expires_in, user=UserRead.model_validate(user)
    )


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorBody, "description": "email_taken"}},
)
async def register(body: UserCreate, session: SessionDep, settings: SettingsDep) -> TokenResponse:
    user = await users.register_user(session, email=body.email, password=body.password)
    return token_response(user, settings)


@router.post(
    "/login",
    responses={
        401: {"model": ErrorBody, "description": "invalid_credentials"},
        429: {"model": ErrorBody, "description": "too_many_attempts (with Retry-After)"},
        503: {"model": ErrorBody, "description": "rate_limiter_unavailable"},
    },
)
async def login(
    body: LoginCredentials,
    db: DbDep,
    limiter: LimiterDep,
    client_address: ClientAddress,
    settings: SettingsDep,
) -> TokenResponse:
    user = await users.login(
        db, limiter, email=body.email, password=body.password, client_address=client_address
    )
    return token_response(user, settings)
