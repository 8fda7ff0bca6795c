"""The agent with its simulated broker, run in the test's own loop against a real API, so a
test can move the simulated market (`sim.set_quote`) and its clock between HTTP calls."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mt5gate_agent.backends.sim import SimBackend
from mt5gate_agent.config import AgentConfig
from mt5gate_agent.runner import run_agent
from tests.flows import Trader
from tests.servers import RunningApi


class SimClock:
    """The simulated broker's clock: real time when the test starts, then moved only by
    the test (`advance`), so that the market stays where the test put it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class SimAgent:
    sim: SimBackend
    clock: SimClock


@contextlib.asynccontextmanager
async def sim_agent(api: RunningApi, trader: Trader, *, seed: int = 11) -> AsyncIterator[SimAgent]:
    """Runs `trader`'s agent on a SimBackend until the block ends."""
    clock = SimClock()
    sim = SimBackend(seed=seed, clock=clock)
    config = AgentConfig(
        api_url=api.base_url,
        agent_id=trader.agent.id,
        token=trader.agent.token,
        backend="sim",
        poll_wait=5,
        heartbeat_interval=60.0,
        backoff_initial=0.01,
        backoff_max=0.05,
        result_retry_seconds=5.0,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(config, stop, backend=sim))
    try:
        yield SimAgent(sim, clock)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
