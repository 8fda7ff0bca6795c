from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Response, status

from app.api.deps import CurrentUser, JobStoreDep, SessionDep, SessionFactoryDep, SettingsDep
from app.core.config import Settings
from app.models import BrokerConnection
from app.schemas.broker_connections import (
    AgentProvisioned,
    BrokerConnectionCreate,
    BrokerConnectionRead,
)
from app.schemas.common import ErrorBody
from app.services import broker_connections as service

router = APIRouter(
    prefix="/broker-connections",
    tags=["broker connections"],
    responses={401: {"model": ErrorBody}},
)
Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "not_found"}}
# Racing changes of one connection are ordered by a lock and retried; this is what is left.
CHANGE_ERRORS: Responses = {
    **NOT_FOUND,
    409: {
        "model": ErrorBody,
        "description": "`concurrent_change`: the database gave up on a race with another "
        "change of this connection after three tries; try again.",
    },
}


def to_read(connection: BrokerConnection, settings: Settings) -> BrokerConnectionRead:
    return BrokerConnectionRead(
        id=connection.id,
        server=connection.server,
        login=connection.login,
        label=connection.label,
        created_at=connection.created_at,
        agent=service.agent_summary(
            connection.agent, offline_after_seconds=settings.agent_offline_after_seconds
        ),
    )


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_connection(
    body: BrokerConnectionCreate, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> BrokerConnectionRead:
    """Stores an MT5 account; the password is encrypted at rest and never returned."""
    connection = await service.create_connection(
        session,
        fernet=settings.fernet,
        user_id=user.id,
        server=body.server,
        login=body.login,
        password=body.password,
        label=body.label,
    )
    return to_read(connection, settings)


@router.get("")
async def list_connections(
    user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> list[BrokerConnectionRead]:
    connections = await service.list_connections(session, user_id=user.id)
    return [to_read(c, settings) for c in connections]


@router.delete("/{connection_id}", status_code=status.HTTP_204_NO_CONTENT, responses=CHANGE_ERRORS)
async def delete_connection(
    connection_id: uuid.UUID, user: CurrentUser, factory: SessionFactoryDep, jobs: JobStoreDep
) -> Response:
    """Deletes the connection; its agent's token stops working at once, and the agent's
    open long-polls end (204)."""
    await service.delete_connection(
        factory, jobs.events, user_id=user.id, connection_id=connection_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{connection_id}/agent", status_code=status.HTTP_201_CREATED, responses=CHANGE_ERRORS)
async def provision_agent(
    connection_id: uuid.UUID, user: CurrentUser, factory: SessionFactoryDep, jobs: JobStoreDep
) -> AgentProvisioned:
    """Provisions the connection's agent, or rotates its token: the old one stops working
    at once, and its open long-polls end (204)."""
    agent, token = await service.issue_agent_token(
        factory, jobs.events, user_id=user.id, connection_id=connection_id
    )
    return AgentProvisioned(agent_id=agent.id, agent_token=token)
