"""API keys: long-lived credentials for programs, shown once and stored as a hash.

A key is looked up on every request (one statement, like an access token's user), so a
revoked key fails at once on every process. Open WebSockets are told through Redis
(`mt5gate:api_keys:revoked`, payload the key id) and closed with 4001; a lost message is
made up for by a recheck of the keys behind this process's open sockets every
`KEY_RECHECK_SECONDS`. `last_used_at` is noted in memory and written in one batch every
`LAST_USED_FLUSH_SECONDS`, not once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import Table, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.errors import NotFound, TooManyApiKeys
from app.core.metrics import REDIS_RECONNECTS
from app.core.redis import DEFAULT_HEALTH_CHECK_INTERVAL_SECONDS, pubsub_messages, redis_key
from app.core.security import API_KEY_SHOWN_CHARS, hash_api_key, new_api_key
from app.core.supervisor import stop_tasks, supervise
from app.models import ApiKey, User, detached, utcnow

log = logging.getLogger("mt5gate.api_keys")

MAX_LIVE_KEYS = 50
REVOKED_CHANNEL = "mt5gate:api_keys:revoked"
LAST_USED_FLUSH_SECONDS = 10.0
KEY_RECHECK_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 2.0
STOP_TIMEOUT_SECONDS = 5.0

KEYS = cast(Table, ApiKey.__table__)
USERS = cast(Table, User.__table__)
SELECT_KEY_AND_USER = (
    select(
        KEYS.c.id.label("key_id"),
        KEYS.c.scopes.label("key_scopes"),
        KEYS.c.expires_at.label("key_expires_at"),
        *USERS.c,
    )
    .join(USERS, USERS.c.id == KEYS.c.user_id)
    .where(KEYS.c.key_hash == bindparam("p_hash"))
)
LIVE_KEY_IDS = select(KEYS.c.id).where(
    KEYS.c.id.in_(bindparam("p_ids", expanding=True)),
    or_(KEYS.c.expires_at.is_(None), KEYS.c.expires_at > bindparam("p_now")),
)
NOTE_LAST_USED = (
    update(KEYS)
    .where(
        KEYS.c.id == bindparam("p_id"),
        or_(KEYS.c.last_used_at.is_(None), KEYS.c.last_used_at < bindparam("p_at")),
    )
    .values(last_used_at=bindparam("p_at"))
)


@dataclass(frozen=True)
class ApiKeyGrant:
    """What a request authenticated by a key may do."""

    id: uuid.UUID
    scopes: frozenset[str]
    expires_at: datetime | None

    @property
    def may_trade(self) -> bool:
        return "trade" in self.scopes


def is_live(key: ApiKey, now: datetime) -> bool:
    return key.expires_at is None or key.expires_at > now


async def create_api_key(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    name: str,
    scopes: Sequence[str],
    expires_at: datetime | None,
) -> tuple[ApiKey, str]:
    """The new key's row and the key itself (shown once: only its hash is kept)."""
    # The user's row, locked: two creations at once cannot both be the 50th (PostgreSQL;
    # SQLite's sessions take the write lock up front anyway).
    await session.execute(select(User.id).where(User.id == user_id).with_for_update())
    now = utcnow()
    live = await session.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.user_id == user_id, or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))
    )
    if (live or 0) >= MAX_LIVE_KEYS:
        raise TooManyApiKeys()
    key = new_api_key()
    row = ApiKey(
        user_id=user_id,
        name=name,
        scopes=" ".join(sorted(scopes)),
        prefix=key[:API_KEY_SHOWN_CHARS],
        key_hash=hash_api_key(key),
        created_at=now,
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    return row, key


async def list_api_keys(session: AsyncSession, *, user_id: uuid.UUID) -> list[ApiKey]:
    rows = await session.scalars(
        select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at, ApiKey.id)
    )
    return list(rows)


async def revoke_api_key(
    session_factory: async_sessionmaker[AsyncSession],
    sockets: KeySockets,
    *,
    user_id: uuid.UUID,
    key_id: uuid.UUID,
) -> None:
    """Deletes the key (another user's is NotFound), then closes its sockets everywhere."""
    async with session_factory.begin() as session:
        deleted = await session.execute(
            delete(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id)
        )
    if not getattr(deleted, "rowcount", 0):
        raise NotFound()
    await sockets.revoked(key_id)  # after the commit: a socket reopened now is refused


async def authenticate_api_key(
    db: AsyncEngine, key: str, usage: KeyUsage
) -> tuple[User, ApiKeyGrant] | None:
    """The user and grant of a live key, or None (unknown, revoked or expired)."""
    async with db.connect() as conn:
        row = (await conn.execute(SELECT_KEY_AND_USER, {"p_hash": hash_api_key(key)})).first()
    if row is None:
        return None
    values = dict(row._mapping)
    grant = ApiKeyGrant(
        id=values.pop("key_id"),
        scopes=frozenset(values.pop("key_scopes").split()),
        expires_at=values.pop("key_expires_at"),
    )
    if grant.expires_at is not None and grant.expires_at <= utcnow():
        return None
    usage.note(grant.id)
    return detached(User, values), grant


class KeyUsage:
    """`last_used_at` of the keys used since the last flush, written in one batch."""

    def __init__(self, db: AsyncEngine) -> None:
        self.db = db
        self._used: dict[uuid.UUID, datetime] = {}

    def note(self, key_id: uuid.UUID) -> None:
        self._used[key_id] = utcnow()

    async def flush(self) -> None:
        if not self._used:
            return
        used, self._used = self._used, {}
        async with self.db.connect() as conn:
            await conn.execute(
                NOTE_LAST_USED, [{"p_id": key_id, "p_at": at} for key_id, at in used.items()]
            )


CloseSocket = Callable[[], None]


class KeySockets:
    """This process's WebSockets opened with an API key, closed when their key goes."""

    def __init__(
        self,
        redis: Redis,
        db: AsyncEngine,
        *,
        keepalive: float = DEFAULT_HEALTH_CHECK_INTERVAL_SECONDS,
    ) -> None:
        self.redis = redis
        self.db = db
        # A subscription silent this long is checked (see app/core/redis.py).
        self._keepalive = keepalive
        self._channel = redis_key(redis, REVOKED_CHANNEL)
        self._closers: dict[uuid.UUID, set[CloseSocket]] = defaultdict(set)
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        name = "api-key-revocations"
        self._listener = asyncio.create_task(supervise(name, self._listen), name=name)

    async def stop(self) -> None:
        if self._listener is not None:
            if await stop_tasks([self._listener], timeout=STOP_TIMEOUT_SECONDS):
                log.warning("event=key_revocations_listener_not_stopped")
            self._listener = None

    def register(self, key_id: uuid.UUID, close: CloseSocket) -> Callable[[], None]:
        """Registers an open socket's close; returns what unregisters it."""
        self._closers[key_id].add(close)

        def forget() -> None:
            closers = self._closers.get(key_id)
            if closers is not None:
                closers.discard(close)
                if not closers:
                    del self._closers[key_id]

        return forget

    async def revoked(self, key_id: uuid.UUID) -> None:
        self._close(key_id)
        try:
            await self.redis.publish(self._channel, str(key_id))
        except (RedisError, OSError) as exc:  # the recheck closes them within seconds
            log.warning("event=key_revocation_publish_failed reason=%r", exc)

    async def recheck(self) -> None:
        """Closes the sockets of keys that are gone or expired (a message may be lost)."""
        if not self._closers:
            return
        ids = list(self._closers)
        async with self.db.connect() as conn:
            live = set(
                (await conn.execute(LIVE_KEY_IDS, {"p_ids": ids, "p_now": utcnow()})).scalars()
            )
        for key_id in ids:
            if key_id not in live:
                self._close(key_id)

    def _close(self, key_id: uuid.UUID) -> None:
        for close in list(self._closers.get(key_id, ())):
            close()

    async def _listen(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                backoff = 0.05
                async for message in pubsub_messages(pubsub, keepalive=self._keepalive):
                    data = message.get("data")
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        self._close(uuid.UUID(data.decode() if isinstance(data, bytes) else data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect; the recheck covers the gap
                REDIS_RECONNECTS.labels("api_keys").inc()
                log.warning("event=key_revocations_lost reason=%r retry_in=%.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
