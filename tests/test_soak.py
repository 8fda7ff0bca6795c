"""The soak's short run, in the suite: about a minute of price sockets coming and going, a
quiet spell longer than the Redis client's 15 s health check, a Redis restart and a
`serve` restart, on PostgreSQL and a redis-server of the test's own (see bench/soak.py).

It catches what only shows once a process has lived a while: a stream that stops after
a quiet spell, a subscription lost with Redis, an order left pending, a 5xx, memory that
grows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import REDIS_SERVER
from bench.soak import run_soak, short_schedule
from tests.stores import IN_CI, require_services

pytestmark = pytest.mark.timeout(240)


async def test_a_minute_of_sockets_quiet_spells_and_restarts_misses_no_target(
    tmp_path: Path,
) -> None:
    require_services()
    if not Path(REDIS_SERVER).exists():
        if IN_CI:
            pytest.fail("CI=true and redis-server is not installed: the soak restarts its own")
        pytest.skip("redis-server is not installed")
    report = await run_soak(short_schedule(), tmp_path)
    assert report.misses() == [], report.render()
