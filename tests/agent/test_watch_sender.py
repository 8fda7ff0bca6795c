"""The watcher's outbox over real HTTP: batches of at most 500, in order, retried until
taken, a 422 logged and not retried forever, a 401 stopping the agent.

The receiver is a small real HTTP server standing in for ``POST /agents/{id}/events``
until the API serves it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mt5gate_agent.client import AgentClient
from mt5gate_agent.runner import Backoff
from mt5gate_agent.watch import MAX_EVENTS_PER_POST, EventSender, event
from tests.log_events import LogEvents, watch_log
from tests.servers import bound_socket


@dataclass
class Receiver:
    """What it took, and the answers it gives next (status, body), then 202s."""

    taken: list[list[dict[str, Any]]] = field(default_factory=list)
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    calls: int = 0
    url: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for_events(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while sum(len(batch) for batch in self.taken) < count:
                self.changed.clear()
                await self.changed.wait()

    async def wait_for_calls(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.calls < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    app = FastAPI()

    @app.post("/api/v1/agents/{agent_id}/events")
    async def take(agent_id: str, request: Request) -> JSONResponse:
        state.calls += 1
        state.changed.set()
        body = await request.json()
        if state.answers:
            status, answer = state.answers.pop(0)
            return JSONResponse(answer, status_code=status)
        state.taken.append(body["events"])
        return JSONResponse({"accepted": len(body["events"])}, status_code=202)

    sock = bound_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.005)
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield state
    server.should_exit = True
    await task


@dataclass
class Outbox:
    sender: EventSender
    stop: asyncio.Event
    task: asyncio.Task[None]
    refused: list[BaseException]


@pytest.fixture
async def outbox(receiver: Receiver) -> AsyncIterator[Outbox]:
    client = AgentClient(receiver.url, "agent-1", "token")
    refused: list[BaseException] = []

    def on_refused_token(exc: BaseException) -> bool:
        if getattr(exc, "status_code", None) == 401:
            refused.append(exc)
            return True
        return False

    sender = EventSender(
        client, backoff=lambda: Backoff(0.01, 0.02), on_refused_token=on_refused_token
    )
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    yield Outbox(sender, stop, task, refused)
    stop.set()
    sender.add([])  # wakes nothing: the stop is seen at the next wait
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await client.aclose()


@pytest.fixture
async def logs() -> AsyncIterator[LogEvents]:
    with watch_log("mt5gate_agent.watch") as watcher:
        yield watcher


def deals(first: int, count: int) -> list[dict[str, Any]]:
    return [event("deal", {"ticket": ticket}, 0.0) for ticket in range(first, first + count)]


def tickets(batches: list[list[dict[str, Any]]]) -> list[int]:
    return [e["data"]["ticket"] for batch in batches for e in batch]


async def test_events_go_in_order_in_batches_of_at_most_500(
    receiver: Receiver, outbox: Outbox
) -> None:
    receiver.answers = [(503, {"detail": "internal_error"})]  # held back: all 1,200 queue
    outbox.sender.add(deals(1, 1200))
    await receiver.wait_for_events(1200)
    assert [len(batch) for batch in receiver.taken] == [MAX_EVENTS_PER_POST, 500, 200]
    assert tickets(receiver.taken) == list(range(1, 1201))


async def test_a_failed_post_is_retried_until_taken_and_nothing_is_lost(
    receiver: Receiver, outbox: Outbox, logs: LogEvents
) -> None:
    receiver.answers = [(503, {"detail": "internal_error"}), (429, {"detail": "rate_limited"})]
    outbox.sender.add(deals(1, 3))
    await receiver.wait_for_calls(2)
    outbox.sender.add(deals(4, 2))
    await receiver.wait_for_events(5)
    assert tickets(receiver.taken) == [1, 2, 3, 4, 5]
    assert logs.count("event=events_post_failed") == 2


async def test_while_the_api_is_down_throttled_figures_coalesce_to_the_newest(
    receiver: Receiver, outbox: Outbox
) -> None:
    receiver.answers = [(503, {"detail": "internal_error"})] * 3
    outbox.sender.add([event("account", {"equity": 1.0}, 0.0)])
    await receiver.wait_for_calls(1)
    seven = {"position_id": 7, "volume": 0.1, "sl": None, "profit": 1.0}
    eight = {"position_id": 8, "volume": 0.1, "sl": None, "profit": 1.0}
    outbox.sender.add(
        [
            event("account", {"equity": 2.0}, 0.0),
            event("position_changed", seven, 0.0),
            event("position_changed", eight, 0.0),
        ]
    )
    outbox.sender.add(
        [
            event("position_changed", seven | {"profit": 2.0}, 0.0),
            event("account", {"equity": 3.0}, 0.0),
        ]
    )
    outbox.sender.add([event("position_changed", seven | {"sl": 1.0, "profit": 3.0}, 0.0)])
    await receiver.wait_for_events(5)
    taken = [e for batch in receiver.taken for e in batch]
    assert [
        (e["kind"], e["data"].get("equity") or (e["data"]["position_id"], e["data"]["profit"]))
        for e in taken
    ] == [
        ("account", 1.0),  # being posted: nothing is written over it
        ("account", 3.0),  # the newest account, where the first queued one was
        ("position_changed", (7, 2.0)),  # a profit move, written over by the newer one
        ("position_changed", (8, 1.0)),
        ("position_changed", (7, 3.0)),  # an sl change is not a profit move: queued anew
    ]


async def test_a_refused_event_is_logged_and_dropped_and_the_rest_sent_once_more(
    receiver: Receiver, outbox: Outbox, logs: LogEvents
) -> None:
    receiver.answers = [
        (
            422,
            {
                "detail": "invalid_events",
                "message": "event 1 is malformed",
                "errors": [{"index": 1, "loc": ["events", 1, "data", "ticket"], "msg": "bad"}],
            },
        )
    ]
    outbox.sender.add(deals(1, 3))
    await receiver.wait_for_events(2)
    assert tickets(receiver.taken) == [1, 3]
    assert logs.count("event=events_refused kind=deal index=1 loc=events.1.data.ticket") == 1
    outbox.sender.add(deals(4, 1))
    await receiver.wait_for_events(3)
    assert receiver.calls == 3


async def test_a_batch_refused_twice_is_dropped_not_retried_forever(
    receiver: Receiver, outbox: Outbox, logs: LogEvents
) -> None:
    refusal = {
        "detail": "invalid_events",
        "message": "malformed",
        "errors": [{"index": 0, "loc": ["events", 0], "msg": "bad"}],
    }
    receiver.answers = [(422, refusal), (422, refusal)]
    outbox.sender.add(deals(1, 2))
    await logs.wait_for("event=events_batch_dropped count=1")
    outbox.sender.add(deals(3, 1))
    await receiver.wait_for_events(1)
    assert tickets(receiver.taken) == [3]


async def test_a_refused_token_stops_the_sender(receiver: Receiver, outbox: Outbox) -> None:
    receiver.answers = [(401, {"detail": "invalid_agent_token"})]
    outbox.sender.add(deals(1, 1))
    await asyncio.wait_for(outbox.task, 10)
    assert [getattr(e, "detail", None) for e in outbox.refused] == ["invalid_agent_token"]


async def test_an_overflowing_outbox_keeps_its_deals_and_asks_for_a_state(
    receiver: Receiver, outbox: Outbox
) -> None:
    receiver.answers = [(503, {"detail": "internal_error"})] * 1000
    outbox.sender.max_outbox = 10
    outbox.sender.add(deals(1, 2))
    outbox.sender.add([event("position_opened", {"position_id": n}, 0.0) for n in range(10)])
    assert outbox.sender.state_wanted
    assert [e["kind"] for e in outbox.sender.outbox] == ["deal", "deal"]


async def test_after_an_outage_a_fresh_state_is_wanted(
    receiver: Receiver, outbox: Outbox, logs: LogEvents
) -> None:
    outbox.sender.add(deals(1, 1))
    await receiver.wait_for_events(1)
    assert not outbox.sender.state_wanted  # no outage, no state
    outbox.sender.resync_after = 0.0
    receiver.answers = [(503, {"detail": "internal_error"})]
    outbox.sender.add(deals(2, 1))
    await logs.wait_for("event=events_resync")
    assert outbox.sender.state_wanted
    assert tickets(receiver.taken) == [1, 2]


async def test_stopping_drains_the_outbox_once_within_its_timeout(
    receiver: Receiver, logs: LogEvents
) -> None:
    async with AgentClient(receiver.url, "agent-1", "token") as client:
        sender = EventSender(
            client, backoff=lambda: Backoff(0.01, 0.02), on_refused_token=lambda _: False
        )
        sender.add(deals(1, 3))
        await sender.drain(5.0)
        assert tickets(receiver.taken) == [1, 2, 3]
        assert not sender.outbox
        receiver.answers = [(503, {"detail": "internal_error"})]
        sender.add(deals(4, 1))
        await sender.drain(5.0)  # one try only: left for the next start's state
        assert logs.count("event=events_not_drained count=1") == 1
