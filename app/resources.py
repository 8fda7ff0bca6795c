"""Everything a process owns: created in the lifespan, closed there in reverse order.

The lifespan (`app.main`) opens these; here the engine, Redis, dispatch (its wake-ups and
its background rounds), the API keys' loops and the WebSocket manager are wired together,
so that nothing under `app.core` needs to know the layers above it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import create_engine, create_session_factory, single_statement_engine
from app.core.rate_limits import RateLimiter
from app.core.redis import create_redis
from app.core.tasks import cancel_and_wait, run_every
from app.dispatch import JobEvents, JobStore, recheck_waiters, sweep_jobs
from app.events import AccountEvents, AccountStreams, EventLog, agents_changed, orders_ended
from app.services.api_keys import (
    KEY_RECHECK_SECONDS,
    LAST_USED_FLUSH_SECONDS,
    KeySockets,
    KeyUsage,
)
from app.services.rate_limits import TradingLimit
from app.ws.manager import WebSocketManager

JOB_SWEEP_INTERVAL_SECONDS = 1.0
# How often each process compares the agents' heartbeats with what their streams said.
AGENT_WATCH_INTERVAL_SECONDS = 1.0


@dataclass
class Resources:
    settings: Settings
    # The engine that owns the pool; sessions (multi-statement transactions) run on it.
    engine: AsyncEngine
    # The same pool without transactions, for work that is one statement
    # (`single_statement_engine`): the job store, authentication, key lookups.
    single_statement_engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    redis: Redis
    limiter: RateLimiter
    trading_limit: TradingLimit
    jobs: JobStore
    ws: WebSocketManager
    key_usage: KeyUsage
    key_sockets: KeySockets
    account_events: AccountEvents


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    async with AsyncExitStack() as stack:
        engine = create_engine(
            settings.database_url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        stack.push_async_callback(engine.dispose)
        session_factory = create_session_factory(engine)
        db = single_statement_engine(engine)
        redis = create_redis(
            settings.redis_url,
            health_check_interval=settings.redis_health_check_interval_seconds,
            key_prefix=settings.redis_key_prefix,
        )
        stack.push_async_callback(redis.aclose)

        job_events = JobEvents(
            redis,
            enabled=settings.job_wakeups_enabled,
            keepalive=settings.redis_health_check_interval_seconds,
        )
        await job_events.start()
        stack.push_async_callback(job_events.stop)
        jobs = JobStore(
            db=db,
            events=job_events,
            poll_interval=settings.job_poll_interval_seconds,
            result_timeout=settings.job_result_timeout_seconds,
        )
        account_events = await open_account_events(redis, settings)
        stack.push_async_callback(account_events.streams.close)
        sweep = partial(sweep_jobs, jobs, partial(orders_ended, account_events.log, db))
        key_usage = KeyUsage(db)
        stack.push_async_callback(key_usage.flush)  # after the loop below has stopped
        key_sockets = KeySockets(redis, db, keepalive=settings.redis_health_check_interval_seconds)
        await key_sockets.start()
        stack.push_async_callback(key_sockets.stop)
        agent_watch = partial(
            agents_changed,
            account_events.log,
            db,
            offline_after=settings.agent_offline_after_seconds,
        )
        for name, interval, work in (
            ("job_sweep", JOB_SWEEP_INTERVAL_SECONDS, sweep),
            ("agent_watch", AGENT_WATCH_INTERVAL_SECONDS, agent_watch),
            ("waiter_recheck", jobs.poll_interval, partial(recheck_waiters, jobs)),
            ("key_usage_flush", LAST_USED_FLUSH_SECONDS, key_usage.flush),
            ("key_socket_recheck", KEY_RECHECK_SECONDS, key_sockets.recheck),
        ):
            task = asyncio.create_task(run_every(interval, work, name=name), name=name)
            stack.push_async_callback(cancel_and_wait, task)
        ws = WebSocketManager(redis, settings)
        await ws.start()
        stack.push_async_callback(ws.close)

        yield Resources(
            settings=settings,
            engine=engine,
            single_statement_engine=db,
            session_factory=session_factory,
            redis=redis,
            limiter=RateLimiter(settings.redis_url, redis),
            trading_limit=TradingLimit(settings.rate_limit_trading_per_second),
            jobs=jobs,
            ws=ws,
            key_usage=key_usage,
            key_sockets=key_sockets,
            account_events=account_events,
        )


async def open_account_events(redis: Redis, settings: Settings) -> AccountEvents:
    log = EventLog(
        redis,
        keep_count=settings.account_events_keep_count,
        keep_seconds=settings.account_events_keep_seconds,
    )
    streams = AccountStreams(redis, settings, log)
    await streams.start()
    return AccountEvents(log=log, streams=streams, settings=settings)
