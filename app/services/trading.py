"""Positions and the account: each call one job for the caller's own agent.

Reads (positions, account) that get no answer within their budget are `504 agent_timeout`;
writes (closing, modifying a position) are `202 pending` instead, because they may still
execute. A refusal by the broker is `422 broker_error` with the broker's code, except a
missing position, which is `404 position_not_found`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import dispatch
from app.core.config import Settings
from app.core.errors import AgentTimeout, BrokerFailure, DomainError, PositionNotFound
from app.models import Agent, Job, utcnow
from app.schemas.positions import JobPending, PositionClosed, PositionUpdate
from app.schemas.trading import Account, Position
from app.services.agents import require_online_agent
from mt5gate_protocol.jobs import FINAL_STATUSES, JobStatus, JobType

UNKNOWN_OUTCOME = (
    "The agent took the request but never answered; the outcome is unknown. "
    "Check GET /positions before retrying."
)
NOT_TAKEN = "No agent took the request in time; nothing was done."


@dataclass(frozen=True)
class Trading:
    """What every trading service needs: the job store, short sessions and the settings."""

    jobs: dispatch.JobStore
    session_factory: async_sessionmaker[AsyncSession]
    settings: Settings


@dataclass(frozen=True)
class UserAccount:
    """One of a user's broker accounts, as a trading call reaches it: through the agent of
    the user's connection `connection_id` (None: the user's oldest one)."""

    trading: Trading
    user_id: uuid.UUID
    connection_id: uuid.UUID | None


async def online_agent(account: UserAccount) -> Agent:
    """The agent of the user's connection: no_agent, agent_offline or not_found otherwise."""
    trading = account.trading
    return await require_online_agent(
        trading.jobs.db,
        settings=trading.settings,
        user_id=account.user_id,
        connection_id=account.connection_id,
    )


async def create_user_job(
    account: UserAccount,
    *,
    job_type: JobType,
    input_data: dict[str, Any],
    ttl_seconds: float,
    job_id: uuid.UUID,
    client_order_id: str | None = None,
) -> tuple[Job, bool, uuid.UUID]:
    """Stores a job for the agent of the account, checked first (no_agent, agent_offline,
    not_found): `dispatch.create_job`'s (job, created), and the agent's id.

    The agent that last served the account is remembered: when its link is here, the job
    is stored onto it by a statement that checks what a read of the agent would (it still
    serves the account, it is online), and the read is left out. Anything else reads.
    """
    store, settings = account.trading.jobs, account.trading.settings
    key = (account.user_id, account.connection_id)

    async def create_for(
        agent_id: uuid.UUID, serving: dispatch.Serving | None = None
    ) -> tuple[Job, bool, uuid.UUID]:
        job, created = await dispatch.create_job(
            store,
            user_id=account.user_id,
            agent_id=agent_id,
            job_type=job_type,
            input_data=input_data,
            ttl_seconds=ttl_seconds,
            client_order_id=client_order_id,
            job_id=job_id,
            serving=serving,
        )
        return job, created, agent_id

    remembered = store.serving.get(key)
    if remembered is not None and remembered in store.links:
        seen_after = utcnow() - timedelta(seconds=settings.agent_offline_after_seconds)
        try:
            return await create_for(remembered, dispatch.Serving(key, seen_after))
        except dispatch.NotServing:
            store.serving.pop(key, None)
    agent = await online_agent(account)
    store.remember_serving(key, agent.id)
    return await create_for(agent.id)


async def run_on_user_agent(
    account: UserAccount,
    *,
    job_type: JobType,
    input_data: dict[str, Any],
    ttl_seconds: float,
    wait: float,
) -> Job:
    """Runs a job on the user's agent, after checking that the agent is online."""
    job_id = uuid.uuid4()
    with dispatch.watch_job(account.trading.jobs, job_id) as watch:
        job, _, _ = await create_user_job(
            account,
            job_type=job_type,
            input_data=input_data,
            ttl_seconds=ttl_seconds,
            job_id=job_id,
        )
        return await watch.result(job, timeout=wait)


async def run_read_job(
    account: UserAccount,
    *,
    job_type: JobType,
    input_data: dict[str, Any],
    wait: float | None = None,
) -> tuple[Job, dict[str, Any]]:
    """A read on the user's agent (the read TTL; the read wait unless `wait` is given): the
    job and its `output_data` (see `read_output`)."""
    settings = account.trading.settings
    ttl, wait = settings.read_job_ttl_seconds, settings.read_wait_seconds if wait is None else wait
    job = await run_on_user_agent(
        account, job_type=job_type, input_data=input_data, ttl_seconds=ttl, wait=wait
    )
    return job, read_output(job)


async def run_write_job(
    account: UserAccount,
    *,
    job_type: JobType,
    input_data: dict[str, Any],
    not_found: type[DomainError] = PositionNotFound,
) -> tuple[Job, dict[str, Any] | JobPending]:
    """A write on the user's agent (the trade TTL and wait): the job, and its `output_data`
    or JobPending while it may still execute (see `write_output`)."""
    settings = account.trading.settings
    ttl, wait = settings.trade_job_ttl_seconds, settings.trade_wait_seconds
    job = await run_on_user_agent(
        account, job_type=job_type, input_data=input_data, ttl_seconds=ttl, wait=wait
    )
    return job, write_output(job, not_found=not_found)


def broker_failure(job: Job) -> BrokerFailure:
    error = dict(job.error or {"code": "agent_error", "message": ""})
    message = error.get("message") or BrokerFailure.message
    return BrokerFailure(message, error=error)


def is_refused_unexecuted(job: Job) -> bool:
    """The agent saw the job only after it expired, and did not run it."""
    return job.status == JobStatus.FAILED and (job.error or {}).get("code") == "expired"


def read_output(job: Job) -> dict[str, Any]:
    """A read's `output_data`; 504 when there is no answer, 422 when the broker refused."""
    if job.status == JobStatus.COMPLETED and job.output_data is not None:
        return job.output_data
    if job.status == JobStatus.FAILED and not is_refused_unexecuted(job):
        raise broker_failure(job)
    raise AgentTimeout()


def write_output(
    job: Job, *, not_found: type[DomainError] = PositionNotFound
) -> dict[str, Any] | JobPending:
    """A write's `output_data`, or JobPending while it may still execute. A failure whose
    code is `not_found`'s own is that error (404), any other refusal `broker_error`."""
    if job.status == JobStatus.COMPLETED and job.output_data is not None:
        return job.output_data
    if job.status not in FINAL_STATUSES:
        return JobPending(job_id=job.id)
    if is_refused_unexecuted(job):
        raise AgentTimeout(NOT_TAKEN)
    if job.status == JobStatus.FAILED:
        if (job.error or {}).get("code") == not_found.code:
            raise not_found()
        raise broker_failure(job)
    raise AgentTimeout(UNKNOWN_OUTCOME if job.status == JobStatus.LOST else NOT_TAKEN)


async def list_positions(account: UserAccount) -> list[Position]:
    _, output = await run_read_job(account, job_type=JobType.GET_POSITIONS, input_data={})
    return [Position.model_validate(p) for p in output["positions"]]


async def get_account(account: UserAccount) -> Account:
    _, output = await run_read_job(account, job_type=JobType.GET_ACCOUNT, input_data={})
    return Account.model_validate(output)


async def close_position(
    account: UserAccount, *, position_id: int, volume: float | None
) -> PositionClosed | JobPending:
    """Closes the position (or `volume` lots of it) on the caller's own account."""
    input_data: dict[str, Any] = {"ticket": position_id}
    if volume is not None:
        input_data["volume"] = volume
    _, output = await run_write_job(account, job_type=JobType.CLOSE_POSITION, input_data=input_data)
    if isinstance(output, JobPending):
        return output
    return PositionClosed.model_validate({"position_id": position_id, **output})


async def modify_position(
    account: UserAccount, *, position_id: int, update: PositionUpdate
) -> Position | JobPending:
    _, output = await run_write_job(
        account, job_type=JobType.MODIFY_POSITION, input_data=update.job_input(position_id)
    )
    if isinstance(output, JobPending):
        return output
    return Position.model_validate(output["position"])
