"""The agent's long-poll (`GET /agents/{agent_id}/jobs/next`): claims its next job as soon
as one exists, and hands it over only to a client still there with a token still current."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.core.tasks import wait_any
from app.dispatch._store import JobStore, claim_next_job, release_job
from app.models import Agent, Job
from app.services.agents import heartbeat

log = logging.getLogger("mt5gate.agents")

AGENTS = cast(Table, Agent.__table__)


async def next_job(
    jobs: JobStore,
    *,
    agent: Agent,
    gone: asyncio.Event,
    wait: float,
    settings: Settings,
) -> Job | None:
    """The long-poll: claims this agent's next job as soon as one exists, or None after `wait`.

    Claims nothing once `gone` is set (the client disconnected), and puts a claimed job back to
    pending if the client left before it could be handed over. A token rotated or deleted
    (`agent_revoked`, from any process) ends the poll with no job: the claim itself checks
    the token, and a job claimed just before the rotation goes back to the new token. The
    agent counts as online for the whole poll (its heartbeat is refreshed while it waits).
    A graceful shutdown ends the poll with no job, so the agent reconnects to a process
    that stays.
    """
    deadline = time.monotonic() + wait
    refresh_every = min(10.0, settings.agent_offline_after_seconds / 3)
    next_refresh = time.monotonic() + refresh_every
    agent_key = str(agent.id)
    events = jobs.events
    with events.watch_created(agent_key) as created, events.watch_revoked(agent_key) as revoked:
        draining = events.draining
        while not gone.is_set() and not draining.is_set():
            announced = created.is_set()
            created.clear()
            if revoked.is_set() and not await token_still_current(jobs.db, agent, revoked):
                return None
            job = await claim_next_job(jobs, agent_id=agent.id, token_hash=agent.token_hash)
            if job is None and announced and not await token_still_current(jobs.db, agent):
                return None  # a job is there, but not for this token (a lost revocation)
            if job is not None:
                if gone.is_set():
                    await release_job(jobs, job_id=job.id, agent_id=agent.id)
                    log.info("event=job_released job_id=%s reason=client_gone", job.id)
                    return None
                if revoked.is_set() and not await token_still_current(
                    jobs.db, agent, revoked
                ):  # rotated after the claim, before the hand-over: the new token's
                    await release_job(jobs, job_id=job.id, agent_id=agent.id)
                    log.info("event=job_released job_id=%s reason=token_revoked", job.id)
                    return None
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if time.monotonic() >= next_refresh:
                await heartbeat(jobs.db, agent, version=None, terminal_connected=None)
                next_refresh = time.monotonic() + refresh_every
            # No timed re-claim: the process's fallback poll wakes this poll if its
            # agent has a pending job that no message announced.
            until_refresh = max(0.0, next_refresh - time.monotonic())
            # What tests await as "the poll is waiting" (a job created now needs a wake-up).
            log.debug("event=job_poll_waiting agent_id=%s", agent.id)
            await wait_any(created, gone, draining, revoked, timeout=min(until_refresh, remaining))
    return None


SELECT_TOKEN_HASH = select(AGENTS.c.token_hash).where(AGENTS.c.id == bindparam("p_agent_id"))


async def token_still_current(
    db: AsyncEngine, agent: Agent, revoked: asyncio.Event | None = None
) -> bool:
    """Whether the token `agent` was authenticated with is still its own (not rotated, not
    deleted with its connection); clears `revoked` first, so a later revocation is kept."""
    if revoked is not None:
        revoked.clear()
    async with db.connect() as conn:
        current = await conn.scalar(SELECT_TOKEN_HASH, {"p_agent_id": agent.id})
    if current == agent.token_hash:
        return True
    log.info("event=long_poll_ended agent_id=%s reason=token_revoked", agent.id)
    return False
