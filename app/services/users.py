"""Accounts: registration, login, lookup, onboarding."""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from typing import cast

from limits import RateLimitItemPerMinute
from sqlalchemy import Table, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.errors import (
    BrokerConnectionRequired,
    EmailTaken,
    InvalidCredentials,
    RateLimiterUnavailable,
    TooManyAttempts,
)
from app.core.rate_limits import LimiterUnavailable, RateLimiter, seconds_until
from app.core.security import hash_password, verify_password
from app.models import BrokerConnection, User, detached

log = logging.getLogger("mt5gate.users")

# The contract's limit: past 10 failures in 15 minutes, for an (account, address) pair and
# for an address across accounts.
LOGIN_FAILURES = RateLimitItemPerMinute(10, 15)

USERS = cast(Table, User.__table__)


def normalize_email(email: str) -> str:
    # NFC first: registration's validator composes accents, a login must match that.
    return unicodedata.normalize("NFC", email.strip()).lower()


async def register_user(session: AsyncSession, *, email: str, password: str) -> User:
    # Hashed before any query: no connection is held while argon2 works, and a taken email
    # answers no faster than a new one.
    password_hash = await hash_password(password)
    email = normalize_email(email)
    if await session.scalar(select(exists().where(User.email == email))):
        raise EmailTaken()
    user = User(email=email, password_hash=password_hash)
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent registration won the race
        raise EmailTaken() from exc
    return user


def login_limit_keys(email: str, client_address: str) -> list[tuple[str, ...]]:
    # The email is hashed: Redis keys are no place for an address book.
    account = hashlib.sha256(email.encode()).hexdigest()[:32]
    return [("login_account", account, client_address), ("login_address", client_address)]


async def refuse_if_limited(limiter: RateLimiter, keys: list[tuple[str, ...]]) -> None:
    windows = [await limiter.remaining(LOGIN_FAILURES, *key) for key in keys]
    full = [reset_at for remaining, reset_at in windows if remaining <= 0]
    if full:
        raise TooManyAttempts(retry_after=seconds_until(max(full)))


async def login(
    db: AsyncEngine, limiter: RateLimiter, *, email: str, password: str, client_address: str
) -> User:
    """The account, if the password is right and neither limit is reached.

    A limited pair or address answers 429 whatever the password, checked before argon2
    (no CPU spent on it) and again after it: attempts verified side by side must not get
    past the limit by racing the failures counted meanwhile. An unknown email is verified
    against a dummy hash and counted like a wrong password.
    """
    email = normalize_email(email)
    keys = login_limit_keys(email, client_address)
    try:
        await refuse_if_limited(limiter, keys)
        async with db.connect() as conn:  # released before argon2 starts
            row = (await conn.execute(select(*USERS.c).where(USERS.c.email == email))).first()
        user = detached(User, row._mapping) if row is not None else None
        if not await verify_password(password, user.password_hash if user else None):
            counted = [await limiter.hit(LOGIN_FAILURES, *key) for key in keys]
            if not all(counted):
                await refuse_if_limited(limiter, keys)
            raise InvalidCredentials()
        await refuse_if_limited(limiter, keys)
    except LimiterUnavailable as exc:
        # Fail closed: without the limit, a login would be an unlimited password oracle.
        log.warning("event=login_limiter_unavailable reason=%r", str(exc))
        raise RateLimiterUnavailable() from exc
    assert user is not None
    return user


async def complete_onboarding(session: AsyncSession, *, user: User) -> User:
    has_connection = await session.scalar(
        select(exists().where(BrokerConnection.user_id == user.id))
    )
    if not has_connection:
        raise BrokerConnectionRequired()
    user = await session.merge(user)
    user.onboarding_completed = True
    await session.flush()
    return user
