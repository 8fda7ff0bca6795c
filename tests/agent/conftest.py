"""Fixtures for the agent's tests: the fake ``MetaTrader5`` module, a simulated broker on a
manual clock, and a fake agent API served by uvicorn on a real socket."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

# The fake MetaTrader5 module lives in tests/fakes, importable as ``MetaTrader5``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_support import ApiServer, ManualClock  # noqa: E402
from fake_agent_api import FakeAgentApi  # noqa: E402

from mt5gate_agent.backends.sim import SimBackend  # noqa: E402


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> SimBackend:
    return SimBackend(seed=7, clock=clock)


@pytest.fixture
def fake_mt5() -> Iterator[Any]:
    import MetaTrader5

    MetaTrader5.reset()
    yield MetaTrader5
    MetaTrader5.reset()


@pytest.fixture
async def api_server() -> AsyncIterator[ApiServer]:
    server = ApiServer(FakeAgentApi())
    server.start()
    yield server
    await server.stop()


@pytest.fixture
def api(api_server: ApiServer) -> FakeAgentApi:
    return api_server.api
