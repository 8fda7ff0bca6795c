"""The account events' rules: which connection a socket streams, what an agent's batch
adds, what a snapshot says."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.core.errors import NotFound
from app.events._hub import AccountStreams
from app.events._log import EventLog, dumps
from app.events._server_events import with_order_changes
from app.events._state import Draft, Emitted, snapshot_of
from app.models import Agent, utcnow
from app.schemas.common import iso_utc
from app.services.agents import OLDEST_CONNECTION, connection_agent
from app.services.broker_connections import agent_is_online
from mt5gate_protocol.events import EventBatch

AGENTS = cast(Table, Agent.__table__)


@dataclass
class AccountEvents:
    """What the process owns for the account events: the log and the live sockets."""

    log: EventLog
    streams: AccountStreams
    settings: Settings

    async def emit(self, connection_id: uuid.UUID, kind: str, data: dict[str, Any]) -> Emitted:
        """The server's own event (`order`, `agent`), appended as it is."""
        (event,) = await self.log.append(connection_id, [Draft(kind, data, iso_utc(utcnow()))])
        return event


async def user_connection(
    db: AsyncEngine, *, user_id: uuid.UUID, connection_id: uuid.UUID | None
) -> tuple[uuid.UUID, Agent | None] | None:
    """The user's named connection (or oldest one) and its agent; None when the user has
    no such connection (another user's is not theirs)."""
    try:
        agent = await connection_agent(db, user_id=user_id, connection_id=connection_id)
    except NotFound:
        return None
    if agent is not None:
        return agent.connection_id, agent
    if connection_id is not None:
        return connection_id, None
    async with db.connect() as conn:  # the oldest connection, which has no agent
        oldest = await conn.scalar(OLDEST_CONNECTION, {"p_user_id": user_id})
    return (oldest, None) if oldest is not None else None


async def report_events(
    events: AccountEvents, db: AsyncEngine, *, agent: Agent, batch: EventBatch
) -> int:
    """Appends what an agent saw on its terminal to its own connection's log; returns how
    many events that added (repeats of what the server knew add none). A pending order
    that the broker removed moves the mt5gate order placed as it (`order` event)."""
    drafts = [
        Draft(event.kind, event.data.model_dump(mode="json"), iso_utc(event.at))
        for event in batch.events
    ]
    drafts = await with_order_changes(db, agent_id=agent.id, drafts=drafts)
    emitted = await events.log.append(agent.connection_id, drafts)
    return len(emitted)


def agent_view(agent: Agent | None, state: dict[str, Any], *, settings: Settings) -> dict[str, Any]:
    """The snapshot's `agent`: the status of the last `agent` event when there is one
    (what the stream said), else what the agent's heartbeats say now."""
    if agent is None:
        return {"status": "offline", "terminal_connected": None, "last_heartbeat_at": None}
    said = state.get("agent")
    if said is not None:
        status, terminal = said["status"], said["terminal_connected"]
    else:
        online = agent_is_online(
            agent, now=utcnow(), offline_after_seconds=settings.agent_offline_after_seconds
        )
        status, terminal = ("online" if online else "offline"), agent.terminal_connected
    heartbeat = agent.last_heartbeat_at
    return {
        "status": status,
        "terminal_connected": terminal,
        "last_heartbeat_at": iso_utc(heartbeat) if heartbeat is not None else None,
    }


def snapshot_json(state: dict[str, Any], agent: dict[str, Any]) -> str:
    """The snapshot's `data`; the account's parts are null while the agent is offline."""
    data = snapshot_of(state)
    if agent["status"] != "online":
        data.update(account=None, positions=None, pending_orders=None)
    data["agent"] = agent
    return dumps(data)
