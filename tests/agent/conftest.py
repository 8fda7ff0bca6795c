"""Fixtures for the agent's tests: the fake ``MetaTrader5`` module, a simulated broker on a
manual clock, and the real API (in-process, real TCP) with this agent provisioned."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

# The fake MetaTrader5 module lives in tests/fakes, importable as ``MetaTrader5``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_support import ManualClock  # noqa: E402
from real_api import RealAgentApi  # noqa: E402

from app.core.migrate import upgrade_to_head  # noqa: E402
from mt5gate_agent.backends.sim import SimBackend  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.stores import Store, reset_store, sqlite_store  # noqa: E402


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


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The agent's tests talk to the API over HTTP, whatever stores it: SQLite only."""
    sqlite = sqlite_store(tmp_path_factory.mktemp("agent-sqlite"))
    upgrade_to_head(sqlite.database_url)
    return sqlite


@pytest.fixture
async def api(store: Store) -> AsyncIterator[RealAgentApi]:
    """The real API with one onboarded user whose connection has the agent under test (a
    price source)."""
    await reset_store(store)
    real = RealAgentApi(make_settings(store))
    await real.start()
    await real.onboard()
    yield real
    await real.stop()
