"""API keys for programs: create (shown once), list, revoke. Onboarded users, not keys."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.api.deps import OnboardedUser, ResourcesDep, SessionDep
from app.models import ApiKey
from app.schemas.api_keys import ApiKeyCreate, ApiKeyCreated, ApiKeyRead
from app.schemas.common import ErrorBody
from app.services import api_keys as service

router = APIRouter(
    prefix="/api-keys",
    tags=["api keys"],
    responses={
        401: {"model": ErrorBody, "description": "invalid_token"},
        403: {"model": ErrorBody, "description": "onboarding_incomplete, insufficient_scope"},
        429: {"model": ErrorBody, "description": "rate_limited (see Retry-After)"},
    },
)


def to_read(key: ApiKey) -> ApiKeyRead:
    return ApiKeyRead.model_validate(
        {**{c: getattr(key, c) for c in ApiKeyRead.model_fields}, "scopes": key.scopes.split()}
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorBody, "description": "too_many_api_keys (50 live)"}},
)
async def create_api_key(
    body: ApiKeyCreate, user: OnboardedUser, session: SessionDep
) -> ApiKeyCreated:
    """Creates a key; `key` is in this answer only (the server keeps its hash)."""
    row, key = await service.create_api_key(
        session, user_id=user.id, name=body.name, scopes=body.scopes, expires_at=body.expires_at
    )
    return ApiKeyCreated(**to_read(row).model_dump(exclude={"last_used_at"}), key=key)


@router.get("")
async def list_api_keys(user: OnboardedUser, session: SessionDep) -> list[ApiKeyRead]:
    return [to_read(key) for key in await service.list_api_keys(session, user_id=user.id)]


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": ErrorBody, "description": "not_found"}},
)
async def revoke_api_key(
    key_id: uuid.UUID, user: OnboardedUser, resources: ResourcesDep
) -> Response:
    """The key stops working at once, on every process; its open sockets close with 4001."""
    await service.revoke_api_key(
        resources.session_factory, resources.key_sockets, user_id=user.id, key_id=key_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
