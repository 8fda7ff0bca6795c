"""The routes an agent calls, authenticated by its own token for its own id only."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response, status

from app import dispatch
from app.api.client_disconnect import client_disconnect
from app.api.deps import (
    CurrentAgent,
    JobStoreDep,
    RedisDep,
    ResourcesDep,
    SessionFactoryDep,
    SettingsDep,
)
from app.api.docs import cross_field_rules
from app.api.json_bodies import RustJsonRoute
from app.core.errors import InvalidAgentToken
from app.core.security import decrypt_secret
from app.events import heartbeat_seen, order_changed
from app.models import BrokerConnection
from app.schemas.agents import (
    Credentials,
    Heartbeat,
    JobEnvelope,
    JobResult,
    JobResultAccepted,
    PricePush,
    PricesAccepted,
    ServerTime,
)
from app.schemas.common import ErrorBody
from app.services import price_pushes

router = APIRouter(
    prefix="/agents/{agent_id}",
    tags=["agents"],
    route_class=RustJsonRoute,  # results and price pushes: the large bodies
    responses={401: {"model": ErrorBody, "description": "invalid_agent_token"}},
)


@router.post("/heartbeat")
async def heartbeat(
    agent: CurrentAgent, resources: ResourcesDep, body: Heartbeat | None = None
) -> ServerTime:
    return await heartbeat_seen(
        resources.account_events.log,
        resources.single_statement_engine,
        agent,
        body or Heartbeat(),
        offline_after=resources.settings.agent_offline_after_seconds,
    )


@router.get("/credentials")
async def credentials(
    agent: CurrentAgent, factory: SessionFactoryDep, settings: SettingsDep
) -> Credentials:
    """The MT5 login of the agent's broker connection, decrypted for the agent only."""
    async with factory() as session:
        connection = await session.get(BrokerConnection, agent.connection_id)
    if connection is None:  # deleted since the token was checked: the token died with it
        raise InvalidAgentToken()
    return Credentials(
        server=connection.server,
        login=connection.login,
        password=decrypt_secret(settings.fernet, connection.password_encrypted),
    )


@router.get(
    "/jobs/next",
    responses={204: {"description": "No job arrived within `wait` seconds."}},
    response_model=JobEnvelope,
)
async def next_job(
    request: Request,
    agent: CurrentAgent,
    job_store: JobStoreDep,
    settings: SettingsDep,
    wait: Annotated[float, Query(ge=0, le=30, description="Seconds to wait for a job.")] = 25,
) -> JobEnvelope | Response:
    """Long-poll: claims this agent's oldest pending job as soon as one exists."""
    async with client_disconnect(request) as gone:
        job = await dispatch.next_job(
            job_store, agent=agent, gone=gone, wait=wait, settings=settings
        )
    if job is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return JobEnvelope.model_validate(job, from_attributes=True)


@router.post(
    "/jobs/{job_id}/result",
    responses={
        409: {"model": ErrorBody, "description": "job_not_running"},
        422: {
            "model": ErrorBody,
            "description": "`invalid_result`: `output_data` has the wrong shape for the job "
            "type (the job stays running)",
        },
    },
)
async def post_result(
    job_id: uuid.UUID,
    agent: CurrentAgent,
    job_store: JobStoreDep,
    resources: ResourcesDep,
    result: Annotated[JobResult, Body()],
) -> JobResultAccepted:
    job = await dispatch.complete_job(job_store, agent_id=agent.id, job_id=job_id, result=result)
    await order_changed(resources.account_events.log, connection_id=agent.connection_id, job=job)
    return JobResultAccepted(job_id=job.id, status=job.status)


@router.post(
    "/prices",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        403: {"model": ErrorBody, "description": "not_price_source"},
        503: {
            "model": ErrorBody,
            "description": "`prices_unavailable`: Redis cannot store the ticks now; push again",
        },
    },
    openapi_extra=cross_field_rules("a tick's `ask` is not below its `bid`"),
)
async def push_prices(agent: CurrentAgent, redis: RedisDep, ticks: PricePush) -> PricesAccepted:
    """Price sources only: stores each tick as `prices:{instrument}` and publishes it."""
    accepted = await price_pushes.push_prices(redis, agent=agent, ticks=ticks.root)
    return PricesAccepted(accepted=accepted)
