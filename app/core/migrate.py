"""Applies the Alembic migrations that ship inside the package, and checks a database's."""

from __future__ import annotations

import asyncio
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import create_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
VERSION_TABLE = "alembic_version"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


async def upgrade_to_head_async(database_url: str) -> None:
    # env.py runs its own event loop, so the upgrade goes to a worker thread.
    await asyncio.to_thread(upgrade_to_head, database_url)


@cache
def head_revision() -> str:
    """The schema version this build needs: the newest migration it ships."""
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None, "the package ships no migration"
    return head


def _current_revision(connection: Connection) -> str | None:
    # Read as Alembic's MigrationContext would, without the INFO lines it logs each time
    # it is set up (readyz asks on every probe).
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    revision = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return str(revision) if revision is not None else None


async def database_revision(engine: AsyncEngine) -> str | None:
    """The version the database's schema is at (alembic_version); None if never migrated."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current_revision)


def schema_problem(revision: str | None) -> str | None:
    """Why a database at `revision` cannot be served by this build, or None if it can."""
    needed = head_revision()
    if revision == needed:
        return None
    if revision is None:
        return f"the database has no schema yet (this build needs {needed})"
    return f"the database schema is at {revision}, this build needs {needed}"


async def serve_refusal(database_url: str) -> str | None:
    """The one line `serve` stops with when it cannot serve this database, or None."""
    engine = create_engine(database_url)
    try:
        revision = await database_revision(engine)
    except (DBAPIError, OSError) as exc:
        # The driver's own words (`database "x" does not exist`), never the URL itself.
        reason = str(exc.orig if isinstance(exc, DBAPIError) else exc).splitlines()[0]
        return (
            f"cannot open the database ({reason}); check DATABASE_URL and that the "
            "database exists, then run `mt5gate migrate`"
        )
    finally:
        await engine.dispose()
    problem = schema_problem(revision)
    return f"{problem}: run `mt5gate migrate`" if problem else None
