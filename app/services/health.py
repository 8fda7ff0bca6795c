"""Readiness (database, schema, Redis) and the gauges read when /metrics is scraped."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import func, or_, select

from app.core.metrics import AGENTS_ONLINE, TICKS_DROPPED, WEBSOCKETS_OPEN
from app.core.migrate import database_revision, schema_problem
from app.models import Agent, utcnow
from app.resources import Resources

log = logging.getLogger("mt5gate.health")

CHECK_TIMEOUT_SECONDS = 2.0
OK = "ok"


async def readiness(resources: Resources) -> dict[str, str]:
    """Each check `ok` or a short reason (never a connection string)."""
    checks = {"database": OK, "schema": OK, "redis": OK}
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            revision = await database_revision(resources.engine)
        checks["schema"] = schema_problem(revision) or OK
    except Exception as exc:  # whatever it is, the database does not answer
        checks["database"] = "unreachable" if isinstance(exc, TimeoutError | OSError) else "error"
        checks["schema"] = "unknown"
        log.warning("event=readiness_database_failed reason=%r", type(exc).__name__)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await resources.redis.ping()
    except Exception as exc:
        checks["redis"] = "unreachable"
        log.warning("event=readiness_redis_failed reason=%r", type(exc).__name__)
    return checks


async def refresh_gauges(resources: Resources) -> None:
    stats = resources.ws.stats()
    WEBSOCKETS_OPEN.labels("prices").set(stats["sockets"])
    TICKS_DROPPED.set(stats["dropped_ticks"])
    since = utcnow() - timedelta(seconds=resources.settings.agent_offline_after_seconds)
    async with resources.single_statement_engine.connect() as conn:
        online = await conn.scalar(
            select(func.count())
            .select_from(Agent)
            .where(
                Agent.last_heartbeat_at >= since,
                or_(Agent.terminal_connected.is_(None), Agent.terminal_connected.is_(True)),
            )
        )
    AGENTS_ONLINE.set(online or 0)
