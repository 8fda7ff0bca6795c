"""A fake agent that a trading test drives over the real agent routes, and what it answers."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update

from app.core.config import Settings
from app.models import Agent, Job, utcnow
from tests.conftest import make_settings
from tests.flows import AgentHandle, Trader
from tests.servers import RunningApi, run_api
from tests.stores import Store

ORDER = {"symbol": "EURUSD", "side": "buy", "volume": 0.1}
FILL = {
    "ticket": 50123,
    "fill_price": 1.08321,
    "volume": 0.1,
    "filled_at": "2026-11-24T21:15:03.120Z",
}
POSITION = {
    "position_id": 50123,
    "symbol": "EURUSD",
    "side": "buy",
    "volume": 0.1,
    "open_price": 1.08321,
    "current_price": 1.08411,
    "sl": 1.07,
    "tp": None,
    "profit": 9.0,
    "swap": -0.12,
    "opened_at": "2026-11-24T21:15:03.120Z",
}
ACCOUNT = {
    "balance": 10000.0,
    "equity": 10009.0,
    "margin_used": 108.32,
    "margin_available": 9900.68,
    "currency": "USD",
    "leverage": 100,
}
CLOSED = {
    "closed_price": 1.08411,
    "volume": 0.1,
    "pnl": 9.0,
    "closed_at": "2026-11-24T22:00:00.000Z",
}


NOW = "2026-11-24T21:15:03.120Z"
PENDING_ORDER = {
    "ticket": 7001,
    "symbol": "EURUSD",
    "side": "buy",
    "type": "limit",
    "volume": 0.1,
    "price": 1.05,
    "placed_at": NOW,
}
DEAL = {
    "ticket": 9001,
    "order_ticket": 7001,
    "position_id": 7001,
    "type": "buy",
    "symbol": "EURUSD",
    "side": "buy",
    "entry": "in",
    "volume": 0.1,
    "price": 1.05,
    "reason": "mt5gate",
    "time": NOW,
}
HISTORY = {
    "ticket": 7001,
    "position_id": 7001,
    "symbol": "EURUSD",
    "side": "buy",
    "type": "limit",
    "volume_initial": 0.1,
    "volume_filled": 0.1,
    "price": 1.05,
    "state": "filled",
    "reason": "mt5gate",
    "placed_at": NOW,
    "done_at": NOW,
}
SYMBOL = {
    "name": "EURUSD",
    "description": "Euro vs US Dollar",
    "digits": 5,
    "point": 0.00001,
    "contract_size": 100000,
    "currency_base": "EUR",
    "currency_profit": "USD",
    "volume_min": 0.01,
    "volume_max": 100,
    "volume_step": 0.01,
    "stops_level": 0,
    "freeze_level": 0,
    "trade_mode": "full",
    "execution_mode": "market",
    "filling_modes": ["fok", "ioc"],
    "expiration_modes": ["gtc", "day", "specified"],
    "order_modes": ["market", "limit", "stop", "stop_limit", "sl", "tp"],
}


def candles(n: int, start: int = 1_700_000_000, step: int = 3600) -> list[dict[str, Any]]:
    return [
        {
            "time": start + i * step,
            "open": 1.08 + i * 1e-5,
            "high": 1.09 + i * 1e-5,
            "low": 1.07 + i * 1e-5,
            "close": 1.085 + i * 1e-5,
            "volume": 100.0 + i,
        }
        for i in range(n)
    ]


def completed(output: dict[str, Any]) -> dict[str, Any]:
    return {"status": "completed", "output_data": output}


def failed(code: str, message: str = "", retcode: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if retcode is not None:
        error["retcode"] = retcode
    return {"status": "failed", "error": error}


Responder = Callable[[dict[str, Any]], dict[str, Any]]


def instant(job: dict[str, Any]) -> dict[str, Any]:
    """What a healthy broker answers to each job type."""
    job_type, data = job["job_type"], job["input_data"]
    if job_type == "trade":
        return completed({**FILL, "volume": data["volume"]})
    if job_type == "get_positions":
        return completed({"positions": [POSITION]})
    if job_type == "close_position":
        return completed(CLOSED)
    if job_type == "modify_position":
        return completed(
            {"position": {**POSITION, **{k: data[k] for k in ("sl", "tp") if k in data}}}
        )
    if job_type == "get_account":
        return completed(ACCOUNT)
    if job_type == "get_candles":
        return completed({"candles": candles(data["count"])})
    if job_type == "place_pending_order":
        return completed({"ticket": PENDING_ORDER["ticket"], "placed_at": NOW})
    if job_type == "get_pending_orders":
        return completed({"pending_orders": [PENDING_ORDER]})
    if job_type == "modify_pending_order":
        changed = {k: v for k, v in data.items() if k != "ticket"}
        return completed({"pending_order": {**PENDING_ORDER, **changed}})
    if job_type == "cancel_pending_order":
        return completed({"ticket": data["ticket"], "cancelled_at": NOW})
    if job_type == "get_history":
        return completed({"deals": [DEAL]} if data["kind"] == "deals" else {"orders": [HISTORY]})
    if job_type == "get_symbols":
        return completed({"symbols": [SYMBOL]})
    raise AssertionError(job_type)


@dataclass
class FakeAgent:
    client: httpx.AsyncClient
    handle: AgentHandle
    taken: list[dict[str, Any]] = field(default_factory=list)

    async def take(self, wait: float = 10) -> dict[str, Any]:
        """The next job, as soon as one exists."""
        response = await self.client.get(
            self.handle.path("jobs/next"), params={"wait": wait}, headers=self.handle.headers
        )
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        self.taken.append(job)
        return job

    async def expect_no_job(self) -> None:
        response = await self.client.get(
            self.handle.path("jobs/next"), params={"wait": 0}, headers=self.handle.headers
        )
        assert response.status_code == 204, response.text

    async def answer(self, job: dict[str, Any], result: dict[str, Any]) -> None:
        response = await self.client.post(
            self.handle.path(f"jobs/{job['id']}/result"), json=result, headers=self.handle.headers
        )
        assert response.status_code == 200, response.text

    async def serve(self, respond: Responder = instant) -> dict[str, Any]:
        """Takes the next job and answers it; returns the job."""
        job = await self.take()
        await self.answer(job, respond(job))
        return job

    @contextlib.asynccontextmanager
    async def running(self, respond: Responder = instant) -> AsyncIterator[FakeAgent]:
        """Serves every job at once in the background, until the block ends."""

        async def loop() -> None:
            while True:
                await self.serve(respond)

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def fake_agent(client: httpx.AsyncClient, trader: Trader) -> FakeAgent:
    return FakeAgent(client, trader.agent)


async def job_count(api: RunningApi, job_type: str | None = None) -> int:
    query = select(func.count()).select_from(Job)
    if job_type is not None:
        query = query.where(Job.job_type == job_type)
    async with api.resources.session_factory() as session:
        return int(await session.scalar(query) or 0)


async def age_heartbeat(api: RunningApi, trader: Trader, *, minutes: float) -> None:
    """Makes the agent's last heartbeat `minutes` old, straight in the database."""
    async with api.resources.session_factory() as session:
        await session.execute(
            update(Agent)
            .where(Agent.id == uuid.UUID(trader.agent.id))
            .values(last_heartbeat_at=utcnow() - timedelta(minutes=minutes))
        )
        await session.commit()


@dataclass
class SecondApi:
    api: RunningApi
    client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def second_api(store: Store, **overrides: object) -> AsyncIterator[SecondApi]:
    """Another app on the same store with other settings (e.g. short wait budgets).

    Its users and agents are the first app's (same database and secrets); drive its fake
    agent through its own client, since memory:// wake-ups do not cross apps.
    """
    settings: Settings = make_settings(store, **overrides)
    async with run_api(settings) as running:
        async with httpx.AsyncClient(base_url=f"{running.base_url}/api/v1", timeout=30) as http:
            yield SecondApi(running, http)


SHORT_BUDGETS = {"trade_wait_seconds": 0.3, "read_wait_seconds": 0.3, "candles_wait_seconds": 0.3}
