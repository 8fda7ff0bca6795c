"""The work one job round trip makes the server do, counted rather than timed.

On a shared machine two runs minutes apart differ by several times (see the README's
dispatch figures), so a regression in the code is looked for in what does not depend on
the load: SQL statements, Redis commands and Python function calls per round trip in the
API process (which is also the caller's, as in `bench.dispatch`), for sequential round
trips through the instant agent. Run it on two commits and compare.

    python -m bench.dispatch_work [--n 200] [--store postgres|sqlite] [--link]

`--link`: the instant agent holds the agent link (jobs pushed) instead of long-polling.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import uuid
from typing import Any

from redis.asyncio.client import Redis
from sqlalchemy import event
from sqlalchemy.engine import Engine

from app.core.config import Settings
from app.models import Agent
from bench.common import (
    bench_settings,
    onboard,
    run_as_served,
    serve_in_loop,
    services_listening,
)
from bench.dispatch import CONCURRENCY, round_trip
from bench.instant_agent import InstantAgent

WARM_UP = 20


class Counts:
    """SQL statements (by their first words) and Redis commands seen while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.by_kind: collections.Counter[str] = collections.Counter()

    def install(self) -> None:
        event.listen(Engine, "before_cursor_execute", self._statement)
        original = Redis.execute_command

        async def counted(redis: Redis, *args: Any, **options: Any) -> Any:
            if self.on:
                self.by_kind[f"redis {args[0]}"] += 1
            return await original(redis, *args, **options)

        Redis.execute_command = counted  # type: ignore[method-assign, assignment]

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.on:
            self.by_kind[" ".join(statement.split())[:72]] += 1


async def measure(settings: Settings, n: int, counts: Counts, link: bool = False) -> float:
    """Python function calls per round trip; `counts` filled in meanwhile."""
    async with serve_in_loop(settings) as api:
        who = await onboard(api.base_url)
        agent_id = uuid.UUID(who.agent_id)
        async with api.resources.session_factory() as session:
            agent = await session.get(Agent, agent_id)
            assert agent is not None
            user_id = agent.user_id
        with InstantAgent(
            api.base_url, who.agent_id, who.agent_token, workers=CONCURRENCY, link=link
        ):
            for _ in range(WARM_UP):
                await round_trip(api, user_id, agent_id)
            profile = cProfile.Profile()
            counts.on = True
            profile.enable()
            for _ in range(n):
                await round_trip(api, user_id, agent_id)
            profile.disable()
            counts.on = False
    return pstats.Stats(profile).total_calls / n  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch_work")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--store", choices=("postgres", "sqlite"), default=None)
    parser.add_argument("--link", action="store_true", help="the agent over the agent link")
    args = parser.parse_args(argv)
    store = args.store or ("postgres" if services_listening() else "sqlite")
    counts = Counts()
    counts.install()
    with bench_settings(store, job_wakeups_enabled=True) as settings:
        calls = run_as_served(measure(settings, args.n, counts, args.link))
    agent = "the agent link" if args.link else "HTTP long-polls"
    print(f"\n{store}: {args.n} sequential round trips over {agent}, per round trip in the API")
    print("process")
    print(f"{calls:10.0f}  Python function calls")
    print(f"{sum(counts.by_kind.values()) / args.n:10.2f}  SQL statements + Redis commands:")
    for kind, seen in counts.by_kind.most_common():
        print(f"{seen / args.n:10.2f}  {kind}")


if __name__ == "__main__":
    main()
