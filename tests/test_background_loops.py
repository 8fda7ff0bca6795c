"""Background loops are watched: one that fails is logged and started again (STYLE.md,
habit 10), here with faults provoked for real rather than by patching our code."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.config import Settings
from app.core.redis import create_redis
from app.core.supervisor import supervise
from app.services.api_keys import KeySockets
from app.ws.manager import CLOSE_STALLED, WebSocketManager
from tests.conftest import make_settings
from tests.stores import Store
from tests.tcp_proxy import silenceable_proxy
from tests.ws_clients import new_instrument, publish, tick

ONLY_REAL_REDIS = pytest.mark.parametrize("store", ["postgres"], indirect=True)


class RecordingWebSocket:
    """What the manager uses of a WebSocket under a server without our frame writer."""

    def __init__(self) -> None:
        self.scope: dict[str, object] = {}
        self.sent: asyncio.Queue[str] = asyncio.Queue()

    async def send(self, message: dict[str, str]) -> None:
        await self.sent.put(message["text"])


def failures_of(caplog: pytest.LogCaptureFixture, task: str) -> int:
    return sum(
        1
        for record in caplog.records
        if record.getMessage().startswith(f"event=task_failed task={task} ")
    )


async def test_a_loop_that_fails_is_logged_and_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    third_run = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs >= 3:
            third_run.set()
            await asyncio.Event().wait()
        raise ValueError(f"fault {runs}")

    with caplog.at_level(logging.ERROR, logger="mt5gate.tasks"):
        task = asyncio.create_task(supervise("flaky", flaky))
        await asyncio.wait_for(third_run.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert failures_of(caplog, "flaky") == 2
    assert all(r.exc_info is not None for r in caplog.records)  # with the traceback


@pytest.fixture
async def stock_redis(store: Store) -> AsyncIterator[Redis]:
    """redis-py's client as it comes (pub/sub on the pool, with a 1 s health check), to a
    Redis whose replies take 50 ms: a reply never arrives before its reader waits for it."""
    async with silenceable_proxy(store.redis_url, latency=0.05) as (_, url):
        redis = Redis(connection_pool=BlockingConnectionPool.from_url(url, health_check_interval=1))
        yield redis
        await redis.aclose(close_connection_pool=True)


@ONLY_REAL_REDIS
async def test_the_subscription_reconciler_survives_an_unexpected_error(
    store: Store, stock_redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The fault is redis-py's own: on stock pub/sub connections, a SUBSCRIBE after a quiet
    spell reads the health check's reply in the reconciler while the listener reads, and
    asyncio raises RuntimeError there (app/core/redis.py keeps our connections out of it)."""
    settings: Settings = make_settings(store, redis_health_check_interval_seconds=60)
    manager = WebSocketManager(stock_redis, settings)
    await manager.start()
    try:
        await manager.wait_until(lambda: manager.stats()["redis_connected"] == 1, 10)
        await asyncio.sleep(2)  # longer than the stock client's health-check interval
        websocket = RecordingWebSocket()
        sock = manager.connect(websocket)  # type: ignore[arg-type]
        instrument = new_instrument()
        with caplog.at_level(logging.ERROR, logger="mt5gate.tasks"):
            await manager.subscribe(sock, [instrument])
            await manager.wait_until(lambda: manager.is_live(instrument), 10)
        assert failures_of(caplog, "ws-redis-reconciler") >= 1
        async with asyncio.timeout(10):
            await publish(stock_redis, tick(instrument, ts=7))  # through the proxy, too
            assert json.loads(await websocket.sent.get())["data"]["ts"] == 7
    finally:
        await manager.close()


async def test_the_stall_watchdog_survives_an_unexpected_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis = create_redis("memory://")
    settings = Settings(_env_file=None, ws_stall_timeout_seconds=0.2)  # type: ignore[call-arg]
    manager = WebSocketManager(redis, settings)
    await manager.start()
    loop = asyncio.get_running_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="mt5gate.tasks"):
            # A stalled socket whose handler's deadline was left already: moving it
            # raises RuntimeError in the watchdog.
            broken = manager.connect(RecordingWebSocket())  # type: ignore[arg-type]
            async with asyncio.timeout(None) as left:
                pass
            broken.deadline = left
            broken.sending_since = loop.time() - 60
            await manager.wait_until(lambda: broken.close_code == CLOSE_STALLED, 5)
            # The watchdog failed on that socket; it still closes the next stalled one.
            stalled = manager.connect(RecordingWebSocket())  # type: ignore[arg-type]
            stalled.sending_since = loop.time() - 60
            await manager.wait_until(lambda: stalled.close_code == CLOSE_STALLED, 5)
        assert failures_of(caplog, "ws-stall-watchdog") == 1
    finally:
        await manager.close()
        await redis.aclose()


async def test_a_manager_closed_as_it_starts_stops_all_its_tasks_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cancellation can be lost (Python 3.11's wait_for drops one that arrives as what it
    waits for completes, and fakeredis connects through wait_for): close cancels again."""
    redis = create_redis("memory://")
    manager = WebSocketManager(redis, Settings(_env_file=None))  # type: ignore[call-arg]
    try:
        with caplog.at_level(logging.WARNING, logger="mt5gate.ws"):
            for _ in range(5):  # as `serve` does on a busy port: start, then stop at once
                await manager.start()
                await asyncio.sleep(0)
                await manager.close()
        assert not [r for r in caplog.records if "ws_shutdown_incomplete" in r.getMessage()]
    finally:
        await redis.aclose()


async def test_the_key_revocation_listener_stops_at_once_when_closed_as_it_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same lost cancellation as above, for the API-key revocation listener."""
    redis = create_redis("memory://")
    engine = create_async_engine("sqlite+aiosqlite://")
    sockets = KeySockets(redis, engine)
    try:
        with caplog.at_level(logging.WARNING, logger="mt5gate.api_keys"):
            for _ in range(5):
                await sockets.start()
                await asyncio.sleep(0)
                # Awaited from outside: a stop that swallowed cancellations would also
                # swallow a timeout's.
                stop = asyncio.create_task(sockets.stop())
                done, _ = await asyncio.wait([stop], timeout=1)
                assert done, "the listener did not stop within 1 s"
        assert not [r for r in caplog.records if "listener_not_stopped" in r.getMessage()]
    finally:
        await engine.dispose()
        await redis.aclose()
