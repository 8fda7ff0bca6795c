"""Everything a process owns: created in the lifespan, closed there in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import create_engine, create_session_factory, single_statement_engine
from app.core.job_events import JobEvents
from app.core.rate_limits import RateLimiter
from app.core.redis import create_redis
from app.services.jobs import JobStore, recheck_waiters, run_every, sweep_jobs
from app.ws.manager import WebSocketManager

JOB_SWEEP_INTERVAL_SECONDS = 1.0


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    # The same pool without transactions, for work that is one statement (single_statement_engine).
    db: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    redis: Redis
    limiter: RateLimiter
    jobs: JobStore
    ws: WebSocketManager


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    async with AsyncExitStack() as stack:
        engine = create_engine(settings.database_url)
        stack.push_async_callback(engine.dispose)
        session_factory = create_session_factory(engine)
        db = single_statement_engine(engine)
        redis = create_redis(settings.redis_url)
        stack.push_async_callback(redis.aclose)

        job_events = JobEvents(redis, enabled=settings.job_wakeups_enabled)
        await job_events.start()
        stack.push_async_callback(job_events.stop)
        jobs = JobStore(
            db=db,
            events=job_events,
            poll_interval=settings.job_poll_interval_seconds,
            result_timeout=settings.job_result_timeout_seconds,
        )
        for name, interval, work in (
            ("job_sweep", JOB_SWEEP_INTERVAL_SECONDS, partial(sweep_jobs, jobs)),
            ("waiter_recheck", jobs.poll_interval, partial(recheck_waiters, jobs)),
        ):
            task = asyncio.create_task(run_every(interval, work, name=name), name=name)
            stack.push_async_callback(cancel_and_wait, task)
        ws = WebSocketManager(redis, settings)
        await ws.start()
        stack.push_async_callback(ws.close)

        yield Resources(
            settings=settings,
            engine=engine,
            db=db,
            session_factory=session_factory,
            redis=redis,
            limiter=RateLimiter(settings.redis_url, redis),
            jobs=jobs,
            ws=ws,
        )


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
