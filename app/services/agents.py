"""Agents: who they are, whether they are online, their long-poll and their price pushes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import Request

from app.core.config import Settings
from app.core.errors import (
    AgentOffline,
    DomainError,
    InvalidAgentToken,
    NoAgent,
    NotFound,
    NotPriceSource,
)
from app.core.security import agent_token_matches
from app.models import Agent, BrokerConnection, Job, detached, utcnow
from app.schemas.agents import TickIn
from app.services.broker_connections import agent_is_online
from app.services.jobs import JobStore, claim_next_job, release_job, wait_any
from app.ws.ticks import channel_for

log = logging.getLogger("mt5gate.agents")

# Heartbeats are written at most this often per agent: a busy agent's every call counts,
# but need not cost a write each.
HEARTBEAT_WRITE_INTERVAL_SECONDS = 1.0


class PricesUnavailable(DomainError):
    status_code, code, message = 503, "prices_unavailable", "Ticks cannot be stored right now."


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


# The price source seen last among those online (the same rule as agent_is_online).
ONLINE_PRICE_SOURCE = (
    select(*AGENTS.c)
    .where(
        AGENTS.c.is_price_source.is_(True),
        AGENTS.c.last_heartbeat_at >= bindparam("p_seen_after"),
        or_(AGENTS.c.terminal_connected.is_(None), AGENTS.c.terminal_connected.is_(True)),
    )
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


@contextlib.asynccontextmanager
async def client_disconnect(request: Request) -> AsyncIterator[asyncio.Event]:
    """An event set when the HTTP client goes away, watched by a task for the block."""
    gone = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return

    watcher = asyncio.create_task(watch())
    try:
        yield gone
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def next_job(
    jobs: JobStore,
    *,
    request: Request,
    agent: Agent,
    wait: float,
    settings: Settings,
) -> Job | None:
    """The long-poll: claims this agent's next job as soon as one exists, or None after `wait`.

    Claims nothing once the client has disconnected, and puts a claimed job back to
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
    async with client_disconnect(request) as gone:
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
                await wait_any(
                    created, gone, draining, revoked, timeout=min(until_refresh, remaining)
                )
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


def tick_message(instrument: str, tick: TickIn, now_ms: int) -> bytes:
    return json.dumps(
        {
            "instrument": instrument,
            "bid": tick.bid,
            "ask": tick.ask,
            "ts": tick.ts if tick.ts is not None else now_ms,
        },
        separators=(",", ":"),
    ).encode()


async def push_prices(redis: Redis, *, agent: Agent, ticks: dict[str, TickIn]) -> int:
    """`SET prices:{instrument}` + `PUBLISH prices:{instrument}` for each tick, in one trip."""
    if not agent.is_price_source:
        raise NotPriceSource()
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for instrument, tick in ticks.items():
            message = tick_message(instrument, tick, now_ms)
            key = channel_for(redis, instrument)
            pipe.set(key, message)
            pipe.publish(key, message)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("event=prices_rejected reason=%r", exc)
            raise PricesUnavailable() from exc
    return len(ticks)


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


async def set_price_source_command(settings: Settings, agent_id: str, enabled: bool) -> int:
    """`mt5gate set-price-source AGENT_ID [--off]`."""
    from app.core.db import create_engine, create_session_factory

    try:
        agent_uuid = uuid.UUID(agent_id)
    except ValueError:
        print(f"mt5gate: not an agent id: {agent_id!r}", file=sys.stderr)  # noqa: T201
        return 2
    engine = create_engine(settings.database_url)
    try:
        found = await set_price_source(
            create_session_factory(engine), agent_id=agent_uuid, enabled=enabled
        )
    finally:
        await engine.dispose()
    if not found:
        print(f"mt5gate: no agent {agent_uuid}", file=sys.stderr)  # noqa: T201
        return 1
    print(f"agent {agent_uuid} is {'now' if enabled else 'no longer'} a price source")  # noqa: T201
    return 0
