"""The price stream's pieces without a server: the outbox's conflation, a backed-up
socket's sender, tick validation and the lean protocol's receive queue and writable flag."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ws.manager import Outbox, Outgoing, PriceSocket
from app.ws.protocol import ReceiveQueue, WritableFlag
from app.ws.ticks import MalformedTick, Tick, parse_tick, tick_json


def drain(outbox: Outbox) -> list[dict[str, object]]:
    messages = []
    while (message := outbox.pop()) is not None:
        messages.append(message)
    return messages


def test_outbox_is_a_fifo_while_it_has_room() -> None:
    outbox = Outbox(maxsize=8)
    for n in range(8):
        outbox.put("A" if n % 2 else "B", {"n": n})
    assert [m["n"] for m in drain(outbox)] == list(range(8))
    assert outbox.dropped == 0


def test_a_full_outbox_keeps_the_newest_tick_of_each_instrument_and_every_control_message() -> None:
    outbox = Outbox(maxsize=8)
    outbox.put(None, {"n": "ack"})
    for n in range(8):
        outbox.put("A" if n % 2 else "B", {"n": n})
    assert [m["n"] for m in drain(outbox)] == ["ack", 6, 7]
    assert outbox.dropped == 6


@given(
    st.integers(min_value=8, max_value=32),
    st.lists(st.one_of(st.sampled_from(["A", "B", "C", "D"]), st.just("pop")), max_size=300),
)
def test_outbox_is_bounded_ordered_and_never_drops_the_newest_tick(
    maxsize: int, steps: list[str]
) -> None:
    outbox = Outbox(maxsize)
    newest: dict[str, int] = {}  # per instrument, the newest tick put and not yet popped
    delivered: dict[str, list[int]] = {}

    def deliver(message: dict[str, object]) -> None:
        instrument, seq = str(message["i"]), int(str(message["seq"]))
        delivered.setdefault(instrument, []).append(seq)
        if newest.get(instrument) == seq:
            del newest[instrument]

    for seq, step in enumerate(steps):
        if step == "pop":
            if (message := outbox.pop()) is not None:
                deliver(message)
            continue
        outbox.put(step, {"i": step, "seq": seq})
        newest[step] = seq
        assert len(outbox) <= maxsize
    for message in drain(outbox):
        deliver(message)
    assert newest == {}  # every instrument's newest tick was delivered
    for seqs in delivered.values():
        assert seqs == sorted(seqs)


def test_a_valid_tick_round_trips_into_the_contract_message() -> None:
    raw = json.dumps({"instrument": "EURUSD", "bid": 1.1, "ask": 1.2, "ts": 5, "extra": 1})
    tick = parse_tick(raw.encode(), instrument="EURUSD")
    assert tick == Tick("EURUSD", 1.1, 1.2, 5)
    assert json.loads(tick_json(tick)) == {
        "type": "tick",
        "data": {"instrument": "EURUSD", "bid": 1.1, "ask": 1.2, "ts": 5},
    }


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        b"{",
        b"[]",
        b'{"instrument": "GBPUSD", "bid": 1, "ask": 1, "ts": 1}',
        b'{"instrument": "EURUSD", "bid": true, "ask": 1, "ts": 1}',
        b'{"instrument": "EURUSD", "bid": 0, "ask": 1, "ts": 1}',
        b'{"instrument": "EURUSD", "bid": 1, "ask": Infinity, "ts": 1}',
        b'{"instrument": "EURUSD", "bid": 1, "ask": 1, "ts": -1}',
        b'{"instrument": "EURUSD", "bid": 1, "ask": 1, "ts": 1.5}',
        b'{"instrument": "EURUSD", "bid": 1, "ask": 1, "ts": 9007199254740993}',
        b'{"instrument": "EURUSD", "bid": 1, "ask": 1}',
        b" " * 5000,
    ],
)
def test_malformed_ticks_are_rejected(raw: bytes) -> None:
    with pytest.raises(MalformedTick):
        parse_tick(raw, instrument="EURUSD")


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_parse_tick_raises_only_malformed_tick(raw: bytes | str) -> None:
    try:
        parse_tick(raw, instrument="EURUSD")
    except MalformedTick:
        pass


async def test_receive_queue_is_a_fifo_that_wakes_a_waiting_get() -> None:
    queue = ReceiveQueue()
    queue.put_nowait(1)
    assert await queue.get() == 1
    assert queue.empty()
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(2)
    queue.put_nowait(3)
    assert await waiting == 2
    assert await queue.get() == 3


def test_a_set_writable_flag_is_waited_for_without_suspending() -> None:
    # The price stream's writes step the send coroutine by hand and rely on this.
    wait = WritableFlag().wait()
    with pytest.raises(StopIteration):
        wait.send(None)


async def test_a_cleared_writable_flag_blocks_until_set() -> None:
    flag = WritableFlag()
    flag.clear()
    waiting = asyncio.create_task(flag.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    flag.set()
    assert await waiting is True


class GatedWebSocket:
    """A WebSocket under a server without our frame writer, whose `send` waits on a gate
    (a client not reading)."""

    def __init__(self) -> None:
        self.scope: dict[str, object] = {}
        self.gate = asyncio.Event()
        self.sent: list[str] = []

    async def send(self, message: dict[str, str]) -> None:
        await self.gate.wait()
        self.sent.append(message["text"])


async def test_a_backed_up_socket_drains_through_send_conflated_then_its_sender_ends() -> None:
    websocket = GatedWebSocket()
    sock = PriceSocket(websocket, queue_size=2)  # type: ignore[arg-type]
    for text in ("e1", "e2", "e3"):
        sock.offer("EURUSD", Outgoing.of(text))
    sock.offer("GBPUSD", Outgoing.of("g1"))
    sender = sock.sender
    assert sender is not None
    assert sock.blocked
    websocket.gate.set()
    await asyncio.wait_for(sender, 2)
    assert websocket.sent == ["e3", "g1"]  # the newest tick of each instrument, in order
    assert sock.sender is None
    assert not sock.blocked
    sock.offer("EURUSD", Outgoing.of("e4"))  # a new backlog gets a new sender
    assert sock.sender is not None
    await asyncio.wait_for(sock.sender, 2)
    assert websocket.sent[-1] == "e4"


async def test_a_stopped_socket_abandons_its_send_and_writes_nothing_more() -> None:
    websocket = GatedWebSocket()
    sock = PriceSocket(websocket, queue_size=4)  # type: ignore[arg-type]
    sock.offer("EURUSD", Outgoing.of("e1"))
    sender = sock.sender
    assert sender is not None
    sock.stop()
    with pytest.raises(asyncio.CancelledError):
        await sender
    websocket.gate.set()
    sock.offer("EURUSD", Outgoing.of("e2"))
    assert sock.sender is None
    assert websocket.sent == []
