"""The shipped agent's share of a round trip, beside the instant agent's trip.

For each transport (the link, HTTP long-polls): one API served in this process on SQLite,
``mt5gate agent --backend sim --transport T`` in its own process (the watcher on, as users
run it) and the instant agent (one worker, the same transport) in another, timed job by
job in alternation so that both see the same machine. The shipped agent's log gives, per
job, ``ms`` (the backend's execution) and ``agent_ms`` (from the job read off the wire to
its result sent; over HTTP that includes the result's request).

    python -m bench.agent_share [--rounds N]
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from app.core.config import Settings
from app.models import Agent
from bench.agent_latency import agent_process
from bench.common import (
    ServedApi,
    bench_settings,
    onboard,
    print_table,
    run_as_served,
    serve_in_loop,
)
from bench.dispatch import round_trip
from bench.instant_agent import InstantAgent

WARM_UP = 20


async def agent_of(api: ServedApi) -> tuple[str, str, Callable[[], Awaitable[float]]]:
    """A new onboarded user's agent id and token, and a timed round trip to that agent."""
    who = await onboard(api.base_url)
    async with api.resources.session_factory() as session:
        agent = await session.get(Agent, uuid.UUID(who.agent_id))
        assert agent is not None
        user_id = agent.user_id
    return who.agent_id, who.agent_token, partial(round_trip, api, user_id, agent.id)


async def measure(settings: Settings, transport: str, rounds: int) -> list[str]:
    async with serve_in_loop(settings) as api:
        shipped_id, shipped_token, shipped = await agent_of(api)
        instant_id, instant_token, instant = await agent_of(api)
        with tempfile.TemporaryDirectory() as directory:
            log_path = Path(directory) / "agent.log"
            shipped_agent = agent_process(
                api.base_url,
                shipped_id,
                shipped_token,
                "--transport",
                transport,
                log_path=log_path,
            )
            link = transport == "link"
            async with shipped_agent:
                with InstantAgent(api.base_url, instant_id, instant_token, workers=1, link=link):
                    shipped_trips, instant_trips = [], []
                    for index in range(WARM_UP + rounds):
                        took_shipped, took_instant = await shipped(), await instant()
                        if index >= WARM_UP:
                            shipped_trips.append(took_shipped)
                            instant_trips.append(took_instant)
            text = log_path.read_text()
    agent_ms = [float(v) for v in re.findall(r"agent_ms=([\d.]+)", text)][WARM_UP:]
    exec_ms = [float(v) for v in re.findall(r" ms=([\d.]+)", text)][WARM_UP:]
    shipped_p50 = statistics.median(shipped_trips) * 1000
    instant_p50 = statistics.median(instant_trips) * 1000
    return [
        transport,
        f"{instant_p50:.2f}",
        f"{shipped_p50:.2f}",
        f"{shipped_p50 - instant_p50:+.2f}",
        f"{statistics.median(agent_ms):.1f}",
        f"{statistics.median(exec_ms):.1f}",
    ]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    rounds = int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else 300
    rows = []
    for transport in ("link", "http"):
        with bench_settings("sqlite") as settings:
            rows.append(run_as_served(measure(settings, transport, rounds)))
    print("\nSequential round trips (p50 ms), SQLite, shipped agent vs instant agent x1")
    print_table(
        ["transport", "instant", "shipped", "shipped - instant", "agent_ms", "exec ms"], rows
    )


if __name__ == "__main__":
    main()
