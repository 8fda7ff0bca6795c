"""The database engine and session factory; one pair per app, owned by the lifespan."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.core import json_codec
from app.core.errors import is_concurrency_conflict

log = logging.getLogger("mt5gate.db")

SQLITE_BUSY_TIMEOUT_MS = 10_000
TRANSACTION_ATTEMPTS = 3
T = TypeVar("T")
# Set on the single-statement engine of a SQLite database: no BEGIN IMMEDIATE around it.
SINGLE_STATEMENTS = "mt5gate_single_statements"


def create_engine(
    database_url: str, *, pool_size: int = 40, max_overflow: int = 20, **kwargs: Any
) -> AsyncEngine:
    """The engine of `database_url`, its pool `pool_size` connections kept open and up to
    `max_overflow` more for a burst (`DATABASE_POOL_SIZE`, `DATABASE_MAX_OVERFLOW`)."""
    # The JSON columns through the Rust codec: a history answer stored is ~300 KB.
    kwargs.setdefault("json_serializer", json_codec.dumps)
    kwargs.setdefault("json_deserializer", json_codec.loads)
    url = make_url(database_url)
    sqlite_file = url.database if url.database not in (None, "", ":memory:") else None
    if url.get_backend_name() != "sqlite" or sqlite_file is not None:
        # (An in-memory SQLite is one connection: SQLAlchemy's StaticPool, no sizes.)
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow)
    if url.get_backend_name() == "sqlite":
        if sqlite_file is not None:
            Path(sqlite_file).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
        )
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
        event.listen(engine.sync_engine, "begin", _begin_immediate)
        return engine
    # No pre-ping: it is a round trip on every checkout (a quarter of a short query's CPU
    # here). A connection found dead instead fails its one request with 503
    # database_unavailable, and SQLAlchemy then recycles every connection of the pool.
    return create_async_engine(url, **kwargs)


def single_statement_engine(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, for work that is one atomic statement: no BEGIN/COMMIT around it.

    The hot paths of the job queue (create, claim, answer, read) are each a single
    statement whose guard makes it safe on its own; wrapping it in a transaction only
    added two round trips. Multi-statement work keeps using sessions.
    """
    if engine.dialect.name == "sqlite":
        # The driver already runs without implicit transactions; skip our BEGIN IMMEDIATE.
        return engine.execution_options(**{SINGLE_STATEMENTS: True})
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; the busy timeout makes concurrent writers
    # wait for each other instead of failing with "database is locked".
    # The driver's own implicit BEGIN is turned off: `_begin_immediate` takes over.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_immediate(connection: Any) -> None:
    if connection.get_execution_options().get(SINGLE_STATEMENTS):
        return  # each statement is its own transaction (a write one takes the lock first)
    # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY
    # when another writer committed in between (the busy timeout does not apply); taking
    # the write lock up front makes concurrent writers queue on the busy timeout instead.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def in_transaction(
    factory: async_sessionmaker[AsyncSession], work: Callable[[AsyncSession], Awaitable[T]]
) -> T:
    """Runs `work` in a transaction of its own and commits it; a deadlock or serialization
    failure (the database aborted one of two racing transactions) runs it again, up to
    TRANSACTION_ATTEMPTS times, after a short random pause so the two do not meet again."""
    for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
        try:
            async with factory() as session, session.begin():
                return await work(session)
        except DBAPIError as exc:
            if attempt == TRANSACTION_ATTEMPTS or not is_concurrency_conflict(exc):
                raise
            log.info("event=transaction_retried attempt=%d reason=%r", attempt, exc.orig)
        await asyncio.sleep(random.uniform(0, 0.02 * attempt))
    raise AssertionError("unreachable")
