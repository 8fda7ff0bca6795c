"""Accounts: registration, login, lookup, onboarding."""

from __future__ import annotations

import unicodedata
import uuid

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import BrokerConnectionRequired, EmailTaken, InvalidCredentials
from app.core.security import hash_password, verify_password
from app.models import BrokerConnection, User


def normalize_email(email: str) -> str:
    # NFC first: registration's validator composes accents, a login must match that.
    return unicodedata.normalize("NFC", email.strip()).lower()


async def register_user(session: AsyncSession, *, email: str, password: str) -> User:
    email = normalize_email(email)
    if await session.scalar(select(exists().where(User.email == email))):
        raise EmailTaken()
    user = User(email=email, password_hash=hash_password(password))
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent registration won the race
        raise EmailTaken() from exc
    return user


async def authenticate_user(session: AsyncSession, *, email: str, password: str) -> User:
    user = await session.scalar(select(User).where(User.email == normalize_email(email)))
    if not verify_password(password, user.password_hash if user else None) or user is None:
        raise InvalidCredentials()
    return user


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)


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
