"""A redis-server of the test's own on a free port, to stop and restart at will.

Fault tests use this one; the machine's shared Redis is never restarted by a test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.common import REDIS_SERVER
from bench.common import RedisServer as PrivateRedis
from tests.stores import IN_CI


@contextmanager
def private_redis(directory: Path) -> Iterator[PrivateRedis]:
    if not Path(REDIS_SERVER).exists():
        if IN_CI:
            pytest.fail(
                "CI=true and redis-server is not installed: the Redis fault tests cannot run"
            )
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
