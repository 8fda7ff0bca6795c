"""Who a request or a socket acts for: the user behind an access token or an API key.

One check for the HTTP routes (app/api/deps) and the price sockets (app/ws), so that the
two can never disagree on what a valid credential is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, select

from app.core.errors import InvalidTokenError
from app.core.security import API_KEY_PREFIX, InvalidToken, decode_access_token
from app.models import User, detached
from app.resources import Resources
from app.services.api_keys import ApiKeyGrant, authenticate_api_key

USERS = cast(Table, User.__table__)
SELECT_USER = select(*USERS.c).where(USERS.c.id == bindparam("p_user_id"))


@dataclass(frozen=True)
class Principal:
    """Who a request or socket acts for: the user, through an access token or an API key."""

    user: User
    # When the credential stops working (None: a key without expiry).
    expires_at: datetime | None
    api_key: ApiKeyGrant | None = None


async def authenticate(token: str | None, resources: Resources) -> Principal:
    """The user behind a token or key; its own short connection, so waiting routes hold none."""
    if not token:
        raise InvalidTokenError()
    if token.startswith(API_KEY_PREFIX):
        found = await authenticate_api_key(
            resources.single_statement_engine, token, resources.key_usage
        )
        if found is None:
            raise InvalidTokenError()
        user, grant = found
        return Principal(user, grant.expires_at, grant)
    settings = resources.settings
    try:
        claims = decode_access_token(
            token, secret=settings.jwt_secret, algorithm=settings.jwt_algorithm
        )
    except InvalidToken as exc:
        raise InvalidTokenError() from exc
    async with resources.single_statement_engine.connect() as conn:
        row = (await conn.execute(SELECT_USER, {"p_user_id": claims.user_id})).first()
    if row is None:
        raise InvalidTokenError()
    return Principal(detached(User, row._mapping), claims.expires_at)
