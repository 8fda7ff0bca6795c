"""The two stores every storage test runs on: SQLite + memory://, PostgreSQL + Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_HOST, PG_PORT = "127.0.0.1", 5432
# MT5GATE_TEST_REDIS_PORT points a run at a redis-server of its own, so that runs side by side
# on one machine share no pub/sub channel (channels are not per db).
REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("MT5GATE_TEST_REDIS_PORT", "6379"))
IN_CI = os.environ.get("CI", "").lower() == "true"
TABLES = ("api_keys", "jobs", "mt5_agents", "broker_connections", "users")


@dataclass(frozen=True)
class Store:
    name: str
    database_url: str
    redis_url: str
    # Before every key and channel of this run: runs sharing one Redis see nothing of
    # each other's (channels are not per db, and FLUSHDB would empty the neighbour's keys).
    redis_key_prefix: str = ""

    @property
    def is_postgres(self) -> bool:
        return self.name == "postgres"


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_services() -> None:
    missing = [
        f"{name} at {host}:{port}"
        for name, host, port in (
            ("PostgreSQL", PG_HOST, PG_PORT),
            ("Redis", REDIS_HOST, REDIS_PORT),
        )
        if not listening(host, port)
    ]
    if not missing:
        return
    reason = "nothing listens for " + ", ".join(missing)
    if IN_CI:
        pytest.fail(f"CI=true and the real-service tests cannot run: {reason}")
    pytest.skip(f"real-service tests skipped: {reason}")


async def cut_database_connections(store: Store) -> int:
    """Ends every server session of the store's own database (as a restart of PostgreSQL
    would, without touching the shared server); returns how many it ended."""
    import asyncpg

    name = store.database_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
    try:
        ended: int = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    finally:
        await conn.close()
    return ended


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_postgres_database() -> tuple[str, str]:
    name = f"mt5gate_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    return name, f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"


def drop_postgres_database(name: str) -> None:
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def migrated_store(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The store `name` (sqlite or postgres), migrated to head, for a fixture to yield from;
    a PostgreSQL database of its own, dropped after."""
    from app.core.migrate import upgrade_to_head

    if name == "sqlite":
        sqlite = sqlite_store(tmp_path_factory.mktemp("sqlite"))
        upgrade_to_head(sqlite.database_url)
        yield sqlite
        return
    require_services()
    database, url = create_postgres_database()
    try:
        upgrade_to_head(url)
        yield postgres_store(url)
    finally:
        drop_postgres_database(database)


def sqlite_store(directory: Path) -> Store:
    return Store("sqlite", f"sqlite+aiosqlite:///{directory / 'mt5gate.db'}", "memory://")


def postgres_store(database_url: str) -> Store:
    prefix = f"mt5gate-test-{uuid.uuid4().hex[:12]}:"
    return Store("postgres", database_url, f"redis://{REDIS_HOST}:{REDIS_PORT}/0", prefix)


async def reset_store(store: Store) -> None:
    """Empties every table and deletes the run's Redis keys before a test."""
    from sqlalchemy import text

    from app.core.db import create_engine
    from app.core.redis import create_redis

    engine = create_engine(store.database_url)
    try:
        async with engine.begin() as conn:
            if store.is_postgres:
                await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
            else:
                for table in TABLES:
                    await conn.execute(text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()
    if store.redis_url != "memory://":
        redis = create_redis(store.redis_url)
        try:
            keys = [key async for key in redis.scan_iter(match=f"{store.redis_key_prefix}*")]
            if keys:
                await redis.delete(*keys)
        finally:
            await redis.aclose()
