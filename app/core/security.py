"""Passwords, access tokens, agent tokens and secrets at rest."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet

_password_hasher = PasswordHasher()
# Verifying against this keeps unknown-email logins as slow as wrong-password ones.
_DUMMY_HASH = _password_hasher.hash("not-a-real-password")


# argon2 costs ~100 ms per hash or verify, by design, so it never runs on the event loop,
# where it would stall every request, long-poll and socket of the process for that long.
# It runs in one worker thread (argon2-cffi releases the GIL): each verification already
# spreads its 4 lanes over threads of its own, so more workers would not log anyone in
# sooner, only leave the event loop a smaller share of the cores during a burst of logins.
_argon2_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="argon2")


def _hash_password(password: str) -> str:
    return _password_hasher.hash(password)


def _verify_password(password: str, password_hash: str | None) -> bool:
    try:
        return _password_hasher.verify(password_hash or _DUMMY_HASH, password) and bool(
            password_hash
        )
    except (VerificationError, InvalidHashError):
        return False


async def hash_password(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(
        _argon2_worker, _hash_password, password
    )


async def verify_password(password: str, password_hash: str | None) -> bool:
    """Also for an unknown account (`None`): as slow as a wrong password, so equally quiet."""
    return await asyncio.get_running_loop().run_in_executor(
        _argon2_worker, _verify_password, password, password_hash
    )


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_in: int


@dataclass(frozen=True)
class TokenClaims:
    user_id: uuid.UUID
    expires_at: datetime


class InvalidToken(Exception):
    """The token is missing, malformed, badly signed, of another algorithm or expired."""


def create_access_token(
    user_id: uuid.UUID, *, secret: str, algorithm: str, ttl_seconds: int
) -> AccessToken:
    now = datetime.now(UTC)
    claims = {"sub": str(user_id), "iat": now, "exp": now + timedelta(seconds=ttl_seconds)}
    return AccessToken(jwt.encode(claims, secret, algorithm=algorithm), ttl_seconds)


def decode_access_token(token: str, *, secret: str, algorithm: str) -> TokenClaims:
    """Verifies signature, algorithm (one allowed, never `none`), `exp` and `sub`."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[algorithm],
            options={"require": ["exp", "sub"], "verify_signature": True},
        )
        return TokenClaims(
            user_id=uuid.UUID(str(claims["sub"])),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, OverflowError, OSError) as exc:
        # OverflowError/OSError: an `exp` beyond what a datetime can hold.
        raise InvalidToken(str(exc)) from exc


AGENT_TOKEN_PREFIX = "mt5a_"


def new_agent_token() -> str:
    # The prefix makes a leaked token recognizable to secret scanners, and keeps a token
    # from ever starting with "-", which command lines would take for an option.
    return AGENT_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_agent_token(token: str) -> str:
    # The token is 256 random bits, so a fast hash is enough; no salt or KDF needed.
    return hashlib.sha256(token.encode()).hexdigest()


API_KEY_PREFIX = "mt5g_"
# What a key's `prefix` shows of it: enough to tell keys apart, far too little to guess.
API_KEY_SHOWN_CHARS = 12


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    # 256 random bits, like an agent token: a fast hash is enough.
    return hash_agent_token(key)


def agent_token_matches(token: str, token_hash: str) -> bool:
    return hmac.compare_digest(hash_agent_token(token), token_hash)


def encrypt_secret(fernet: Fernet, value: str) -> bytes:
    return fernet.encrypt(value.encode())


def decrypt_secret(fernet: Fernet, value: bytes) -> str:
    return fernet.decrypt(value).decode()
