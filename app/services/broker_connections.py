"""Broker connections and the provisioning of their agents, always scoped to one owner."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import in_transaction
from app.core.errors import NotFound
from app.core.security import encrypt_secret, hash_agent_token, new_agent_token
from app.models import Agent, BrokerConnection, utcnow
from app.schemas.broker_connections import AgentSummary

if TYPE_CHECKING:  # the events are dispatch's, which needs this module first
    from app.dispatch import JobEvents


async def create_connection(
    session: AsyncSession,
    *,
    fernet: Fernet,
    user_id: uuid.UUID,
    server: str,
    login: int,
    password: str,
    label: str | None,
) -> BrokerConnection:
    connection = BrokerConnection(
        user_id=user_id,
        server=server,
        login=login,
        password_encrypted=encrypt_secret(fernet, password),
        label=label,
        agent=None,
    )
    session.add(connection)
    await session.flush()
    return connection


async def list_connections(session: AsyncSession, *, user_id: uuid.UUID) -> list[BrokerConnection]:
    rows = await session.scalars(
        select(BrokerConnection)
        .where(BrokerConnection.user_id == user_id)
        .order_by(BrokerConnection.created_at, BrokerConnection.id)
    )
    return list(rows)


async def get_connection(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    connection_id: uuid.UUID | None = None,
    for_update: bool = False,
) -> BrokerConnection:
    """The user's connection with that id, or their oldest one; another user's is NotFound."""
    query = select(BrokerConnection).where(BrokerConnection.user_id == user_id)
    if connection_id is not None:
        query = query.where(BrokerConnection.id == connection_id)
    query = query.order_by(BrokerConnection.created_at, BrokerConnection.id).limit(1)
    if for_update:  # PostgreSQL row lock; SQLite's writers are serialized anyway
        query = query.with_for_update()
    connection = await session.scalar(query)
    if connection is None:
        raise NotFound("No such broker connection.")
    return connection


# Lock order, everywhere a connection or its agent changes: the connection's row first
# (FOR UPDATE), then the agent's. A delete that took the agent's row first (the ORM deletes
# the child before the parent) deadlocked with a rotation that took the connection's.


async def delete_connection(
    factory: async_sessionmaker[AsyncSession],
    events: JobEvents,
    *,
    user_id: uuid.UUID,
    connection_id: uuid.UUID,
) -> None:
    """Deletes the connection and its agent, committed; then the agent's open long-polls end
    on every process (its token died with it)."""

    async def delete(session: AsyncSession) -> uuid.UUID | None:
        connection = await get_connection(
            session, user_id=user_id, connection_id=connection_id, for_update=True
        )
        agent_id = connection.agent.id if connection.agent is not None else None
        await session.delete(connection)  # cascades to the agent
        await session.flush()
        return agent_id

    agent_id = await in_transaction(factory, delete)
    if agent_id is not None:
        await events.agent_revoked(str(agent_id))


async def issue_agent_token(
    factory: async_sessionmaker[AsyncSession],
    events: JobEvents,
    *,
    user_id: uuid.UUID,
    connection_id: uuid.UUID,
) -> tuple[Agent, str]:
    """Provisions the connection's agent or rotates its token, committed; then the old
    token's open long-polls end on every process. Returns the new token once."""

    async def provision(session: AsyncSession) -> tuple[Agent, str]:
        return await provision_agent(session, user_id=user_id, connection_id=connection_id)

    agent, token = await in_transaction(factory, provision)
    await events.agent_revoked(str(agent.id))
    return agent, token


async def provision_agent(
    session: AsyncSession, *, user_id: uuid.UUID, connection_id: uuid.UUID
) -> tuple[Agent, str]:
    """Creates the connection's agent, or rotates its token, in the caller's transaction.
    Returns the token once."""
    # Locked: two concurrent first provisionings would both insert an agent (a 500).
    connection = await get_connection(
        session, user_id=user_id, connection_id=connection_id, for_update=True
    )
    token = new_agent_token()
    if connection.agent is None:
        connection.agent = Agent(
            user_id=user_id, connection_id=connection.id, token_hash=hash_agent_token(token)
        )
    else:
        connection.agent.token_hash = hash_agent_token(token)
    await session.flush()
    return connection.agent, token


def agent_is_online(agent: Agent, *, now: datetime, offline_after_seconds: float) -> bool:
    """Seen within `offline_after_seconds`, and not reporting its terminal disconnected
    (which an agent also says when it stops), and its agent link not closed since it was
    last seen (a link that closes makes its agent offline at once)."""
    last = agent.last_heartbeat_at
    if last is None or agent.terminal_connected is False:
        return False
    if agent.link_closed_at is not None and agent.link_closed_at >= last:
        return False
    return (now - last).total_seconds() <= offline_after_seconds


def agent_summary(agent: Agent | None, *, offline_after_seconds: float) -> AgentSummary | None:
    if agent is None:
        return None
    online = agent_is_online(agent, now=utcnow(), offline_after_seconds=offline_after_seconds)
    return AgentSummary(
        id=agent.id,
        status="online" if online else "offline",
        last_heartbeat_at=agent.last_heartbeat_at,
    )
