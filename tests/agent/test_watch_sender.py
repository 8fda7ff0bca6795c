"""The watcher's outbox against the real ``POST /agents/{agent_id}/events`` (the app over
real TCP; 503s injected where an outage cannot be produced for real): batches of at most
500, in order, retried until taken, a 422 logged and not retried forever, a 401 stopping
the agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from real_api import RealAgentApi

from mt5gate_agent.client import AgentApiError, AgentClient
from mt5gate_agent.runner import Backoff
from mt5gate_agent.watch import MAX_EVENTS_PER_POST, EventSender, event
from tests.log_events import LogEvents, watch_log

# The server side of the events stream (branch events-server): these run once it is merged.

START = 1_764_000_000.0
ACCOUNT = {
    "balance": 10_000.0,
    "equity": 10_000.0,
    "margin_used": 0.0,
    "margin_available": 10_000.0,
    "currency": "USD",
    "leverage": 100,
}


@dataclass
class Outbox:
    sender: EventSender
    task: asyncio.Task[None]
    refused: list[AgentApiError]


def make_sender(client: AgentClient, refused: list[AgentApiError]) -> EventSender:
    def on_refused_token(exc: BaseException) -> bool:
        if isinstance(exc, AgentApiError) and exc.status_code == 401:
            refused.append(exc)
            return True
        return False

    return EventSender(
        client, backoff=lambda: Backoff(0.01, 0.02), on_refused_token=on_refused_token
    )


@pytest.fixture
async def outbox(api: RealAgentApi) -> AsyncIterator[Outbox]:
    async with AgentClient(api.url, api.agent_id, api.token) as client:
        refused: list[AgentApiError] = []
        sender = make_sender(client, refused)
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        yield Outbox(sender, task, refused)
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def logs() -> AsyncIterator[LogEvents]:
    with watch_log("mt5gate_agent.watch") as watcher:
        yield watcher


def deal(ticket: int) -> dict[str, Any]:
    """A `deal` event as the agent reports one (a balance operation: the fewest fields)."""
    data = {"ticket": ticket, "type": "balance", "reason": "client", "volume": 0.0}
    return event("deal", data | {"time": "2025-11-24T16:00:00.000Z"}, START)


def deals(first: int, count: int) -> list[dict[str, Any]]:
    return [deal(ticket) for ticket in range(first, first + count)]


def taken(api: RealAgentApi) -> list[int]:
    """The deal tickets the server took, in the order it took them."""
    return [e["data"]["ticket"] for batch in api.event_batches for e in batch]


async def took(api: RealAgentApi, count: int) -> None:
    await api.wait_for(lambda: len(taken(api)) >= count)


async def test_events_go_in_order_in_batches_of_at_most_500(
    api: RealAgentApi, outbox: Outbox
) -> None:
    api.faults.fail["events"] = 1  # held back: all 1,200 queue
    outbox.sender.add(deals(1, 1200))
    await took(api, 1200)
    assert [len(batch) for batch in api.event_batches] == [MAX_EVENTS_PER_POST, 500, 200]
    assert taken(api) == list(range(1, 1201))


async def test_a_failed_post_is_retried_until_taken_and_nothing_is_lost(
    api: RealAgentApi, outbox: Outbox, logs: LogEvents
) -> None:
    api.faults.fail["events"] = 2
    outbox.sender.add(deals(1, 3))
    await api.wait_for(lambda: api.calls["events"] >= 2)
    outbox.sender.add(deals(4, 2))
    await took(api, 5)
    assert taken(api) == [1, 2, 3, 4, 5]
    assert logs.count("event=events_post_failed reason=internal_error status=503") == 2


async def test_while_the_api_is_down_throttled_figures_coalesce_to_the_newest(
    api: RealAgentApi, outbox: Outbox
) -> None:
    api.faults.fail["events"] = 1
    account = ACCOUNT
    outbox.sender.add([event("account", account | {"equity": 1.0}, START)])
    await api.wait_for(lambda: api.calls["events"] >= 1)
    outbox.sender.add([event("account", account | {"equity": 2.0}, START)])
    outbox.sender.add([event("account", account | {"equity": 3.0}, START)])
    await api.wait_for(lambda: bool(api.event_batches))
    # The first is being posted (nothing is written over it); the third over the second.
    assert [[e["data"]["equity"] for e in batch] for batch in api.event_batches] == [[1.0, 3.0]]


async def test_nothing_is_written_over_an_event_the_server_is_taking(
    api: RealAgentApi, outbox: Outbox
) -> None:
    api.faults.events_delay = 0.3  # the answer to the first post comes late
    outbox.sender.add([event("account", ACCOUNT | {"equity": 1.0}, START)])
    await api.wait_for(lambda: api.calls["events"] >= 1)
    outbox.sender.add([event("account", ACCOUNT | {"equity": 2.0}, START)])
    await api.wait_for(lambda: len(api.event_batches) == 2)
    assert [[e["data"]["equity"] for e in batch] for batch in api.event_batches] == [[1.0], [2.0]]


async def test_a_refused_event_is_logged_and_dropped_and_the_rest_sent_once_more(
    api: RealAgentApi, outbox: Outbox, logs: LogEvents
) -> None:
    malformed = event("deal", {"ticket": 2}, START)  # no type, reason or time
    outbox.sender.add([deal(1), malformed, deal(3)])
    await took(api, 2)
    assert taken(api) == [1, 3]
    assert logs.count("event=events_refused kind=deal index=1") >= 1
    outbox.sender.add(deals(4, 1))
    await took(api, 3)
    assert api.calls["events"] == 3  # refused, sent again without it, then the next


async def test_a_batch_refused_whole_is_dropped_not_retried_forever(
    api: RealAgentApi, outbox: Outbox, logs: LogEvents
) -> None:
    outbox.sender.add([event("deal", {"ticket": n}, START) for n in (1, 2)])
    await logs.wait_for("event=events_batch_dropped count=2")
    outbox.sender.add(deals(3, 1))
    await took(api, 1)
    assert taken(api) == [3]
    assert api.calls["events"] == 2


async def test_a_refused_token_stops_the_sender(api: RealAgentApi) -> None:
    async with AgentClient(api.url, api.agent_id, "not-the-token") as client:
        refused: list[AgentApiError] = []
        sender = make_sender(client, refused)
        sender.add(deals(1, 1))
        await asyncio.wait_for(sender.run(asyncio.Event()), 10)
    assert [e.detail for e in refused] == ["invalid_agent_token"]


async def test_after_an_outage_a_fresh_state_is_wanted(
    api: RealAgentApi, outbox: Outbox, logs: LogEvents
) -> None:
    outbox.sender.add(deals(1, 1))
    await took(api, 1)
    assert not outbox.sender.state_wanted  # no outage, no state
    outbox.sender.resync_after = 0.0
    api.faults.fail["events"] = 1
    outbox.sender.add(deals(2, 1))
    await logs.wait_for("event=events_resync")
    assert outbox.sender.state_wanted
    assert taken(api) == [1, 2]


async def test_stopping_drains_the_outbox_once(api: RealAgentApi, logs: LogEvents) -> None:
    async with AgentClient(api.url, api.agent_id, api.token) as client:
        sender = make_sender(client, [])
        sender.add(deals(1, 3))
        await sender.drain(5.0)
        assert taken(api) == [1, 2, 3]
        assert not sender.outbox
        api.faults.fail["events"] = 1
        sender.add(deals(4, 1))
        await sender.drain(5.0)  # one try only: left for the next start's state
    assert logs.count("event=events_not_drained count=1") == 1


def test_an_overflowing_outbox_keeps_its_deals_and_wants_a_state() -> None:
    sender = make_sender(AgentClient("http://127.0.0.1:9", "agent", "token"), [])
    sender.max_outbox = 10
    sender.add(deals(1, 2))
    sender.add([event("position_opened", {"position_id": n}, START) for n in range(10)])
    assert sender.state_wanted
    assert [e["kind"] for e in sender.outbox] == ["deal", "deal"]
