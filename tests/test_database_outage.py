"""A database connection lost under the pool: one clean 503, never a 500, then service.

The pool does not ping connections before use (a round trip per checkout), so a
connection that died since its last use fails the request that draws it. That request
must answer `503 database_unavailable`, and the pool must replace its connections so
that the requests after it succeed. PostgreSQL only: the test ends the server sessions of
its own database, never restarting the shared server.
"""

from __future__ import annotations

import httpx
import pytest

from tests.flows import Trader
from tests.stores import Store, cut_database_connections

pytestmark = pytest.mark.parametrize("store", ["postgres"], indirect=True)

ROUNDS = 6


def outcome(response: httpx.Response) -> str:
    if response.status_code == 503:
        return str(response.json()["detail"])
    return str(response.status_code)


async def test_lost_database_connections_cost_at_most_a_503_then_recover(
    store: Store, client: httpx.AsyncClient, trader: Trader
) -> None:
    agent = trader.agent
    heartbeat = f"/agents/{agent.id}/heartbeat"
    # Both kinds of database access hold pooled connections: sessions (GET /me) and the
    # single-statement engine of the job queue and agent routes (heartbeat).
    assert (await client.get("/me", headers=trader.headers)).status_code == 200
    assert (await client.post(heartbeat, json={}, headers=agent.headers)).status_code == 200

    assert await cut_database_connections(store) >= 1

    seen = []
    for _ in range(ROUNDS):
        seen.append(outcome(await client.get("/me", headers=trader.headers)))
        seen.append(outcome(await client.post(heartbeat, json={}, headers=agent.headers)))
    assert set(seen) <= {"200", "database_unavailable"}, seen
    assert seen[-4:] == ["200"] * 4, seen
