"""Agents: who they are (authentication, the agent of a connection), whether they are
online (heartbeats), and which is the platform's price source. No HTTP here: the routes
pass what a request carries."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.errors import AgentOffline, InvalidAgentToken, NoAgent, NotFound
from app.core.security import agent_token_matches
from app.models import Agent, BrokerConnection, detached, utcnow
from app.services.broker_connections import agent_is_online

log = logging.getLogger("mt5gate.agents")

# Heartbeats are written at most this often per agent: a busy agent's every call counts,
# but need not cost a write each.
HEARTBEAT_WRITE_INTERVAL_SECONDS = 1.0


AGENTS = cast(Table, Agent.__table__)
SELECT_AGENT = select(*AGENTS.c).where(AGENTS.c.id == bindparam("p_agent_id"))
TOUCH_AGENT = (
    update(AGENTS)
    .where(AGENTS.c.id == bindparam("p_agent_id"))
    .values(last_heartbeat_at=bindparam("p_now"))
)


async def authenticate_agent(db: AsyncEngine, *, agent_id: str, token: str | None) -> Agent:
    """The agent whose id is in the path, if the token is its own; counts as a heartbeat.

    Runs on every agent request: one read, and a heartbeat write at most once a second.
    """
    try:
        agent_uuid = uuid.UUID(agent_id)
    except ValueError as exc:
        raise InvalidAgentToken() from exc
    async with db.connect() as conn:
        row = (await conn.execute(SELECT_AGENT, {"p_agent_id": agent_uuid})).first()
        if row is None or not token or not agent_token_matches(token, row.token_hash):
            raise InvalidAgentToken()
        agent = detached(Agent, row._mapping)
        now = utcnow()
        if heartbeat_due(agent, now):
            await conn.execute(TOUCH_AGENT, {"p_agent_id": agent_uuid, "p_now": now})
            agent.last_heartbeat_at = now
    return agent


def heartbeat_due(agent: Agent, now: datetime) -> bool:
    last = agent.last_heartbeat_at
    return last is None or (now - last).total_seconds() >= HEARTBEAT_WRITE_INTERVAL_SECONDS


async def heartbeat(
    db: AsyncEngine,
    agent: Agent,
    *,
    version: str | None,
    terminal_connected: bool | None,
) -> datetime:
    """An explicit heartbeat: always written, with what the agent reports about itself."""
    now = utcnow()
    values: dict[str, object] = {"last_heartbeat_at": now}
    if version is not None:
        values["version"] = version
    if terminal_connected is not None:
        values["terminal_connected"] = terminal_connected
    async with db.connect() as conn:
        await conn.execute(update(AGENTS).where(AGENTS.c.id == agent.id).values(**values))
    agent.last_heartbeat_at = now
    return now


CONNECTIONS = cast(Table, BrokerConnection.__table__)
# The user's oldest connection: the one a call that names none acts on.
OLDEST_CONNECTION = (
    select(CONNECTIONS.c.id)
    .where(CONNECTIONS.c.user_id == bindparam("p_user_id"))
    .order_by(CONNECTIONS.c.created_at, CONNECTIONS.c.id)
    .limit(1)
)
# The agent of the user's oldest connection, or of the named one: a row with no agent
# columns means the connection has no agent; no row means no such connection of theirs.
AGENT_OF_OLDEST_CONNECTION = (
    select(CONNECTIONS.c.id.label("connection_found"), *AGENTS.c)
    .select_from(CONNECTIONS.outerjoin(AGENTS, AGENTS.c.connection_id == CONNECTIONS.c.id))
    .where(CONNECTIONS.c.user_id == bindparam("p_user_id"))
    .order_by(CONNECTIONS.c.created_at, CONNECTIONS.c.id)
    .limit(1)
)
AGENT_OF_NAMED_CONNECTION = AGENT_OF_OLDEST_CONNECTION.where(
    CONNECTIONS.c.id == bindparam("p_connection_id")
)


async def connection_agent(
    db: AsyncEngine, *, user_id: uuid.UUID, connection_id: uuid.UUID | None
) -> Agent | None:
    """The agent of the user's named connection (or oldest one), None when it has none;
    NotFound when the user has no such connection (another user's is not theirs)."""
    async with db.connect() as conn:
        if connection_id is None:
            found = await conn.execute(AGENT_OF_OLDEST_CONNECTION, {"p_user_id": user_id})
        else:
            found = await conn.execute(
                AGENT_OF_NAMED_CONNECTION,
                {"p_user_id": user_id, "p_connection_id": connection_id},
            )
        row = found.first()
    if row is None:
        raise NotFound("No such broker connection.")
    if row.id is None:
        return None
    return detached(Agent, {column.key: row._mapping[column.key] for column in AGENTS.c})


async def require_online_agent(
    db: AsyncEngine, *, settings: Settings, user_id: uuid.UUID, connection_id: uuid.UUID | None
) -> Agent:
    """The agent that serves this user's connection, checked before any job is created."""
    agent = await connection_agent(db, user_id=user_id, connection_id=connection_id)
    return require_online(agent, settings=settings)


def require_online(agent: Agent | None, *, settings: Settings) -> Agent:
    """The agent, if there is one and it is online: no_agent / agent_offline otherwise."""
    if agent is None:
        raise NoAgent()
    online = agent_is_online(
        agent, now=utcnow(), offline_after_seconds=settings.agent_offline_after_seconds
    )
    if not online:
        raise AgentOffline()
    return agent


# An agent is online when seen since `p_seen_after`, not reporting its terminal disconnected,
# and its link not closed since it was last seen: `agent_is_online`'s rule, in SQL.
AGENT_ONLINE = and_(
    AGENTS.c.last_heartbeat_at >= bindparam("p_seen_after"),
    or_(AGENTS.c.terminal_connected.is_(None), AGENTS.c.terminal_connected.is_(True)),
    or_(AGENTS.c.link_closed_at.is_(None), AGENTS.c.link_closed_at < AGENTS.c.last_heartbeat_at),
)

# The price source seen last among those online.
ONLINE_PRICE_SOURCE = (
    select(*AGENTS.c)
    .where(AGENTS.c.is_price_source.is_(True), AGENT_ONLINE)
    .order_by(AGENTS.c.last_heartbeat_at.desc(), AGENTS.c.id)
    .limit(1)
)
IS_PRICE_SOURCE = select(AGENTS.c.is_price_source).where(AGENTS.c.id == bindparam("p_agent_id"))


async def online_price_source(db: AsyncEngine, *, settings: Settings) -> Agent | None:
    """An online agent marked as a price source (the platform's feed), None when none is."""
    seen_after = utcnow() - timedelta(seconds=settings.agent_offline_after_seconds)
    async with db.connect() as conn:
        row = (await conn.execute(ONLINE_PRICE_SOURCE, {"p_seen_after": seen_after})).first()
    return detached(Agent, row._mapping) if row is not None else None


async def is_price_source(db: AsyncEngine, agent_id: uuid.UUID | None) -> bool:
    """Whether that agent is (still) marked as a price source."""
    if agent_id is None:
        return False
    async with db.connect() as conn:
        marked = await conn.scalar(IS_PRICE_SOURCE, {"p_agent_id": agent_id})
    return bool(marked)


async def set_price_source(
    session_factory: async_sessionmaker[AsyncSession], *, agent_id: uuid.UUID, enabled: bool
) -> bool:
    """Marks an agent as (not) a price source; False when there is no such agent."""
    async with session_factory() as session:
        result = await session.execute(
            update(Agent).where(Agent.id == agent_id).values(is_price_source=enabled)
        )
        await session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]
