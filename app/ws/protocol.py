"""uvicorn's sans-I/O WebSocket protocol, with less state per open connection.

A price socket keeps its connection's protocol object for as long as it is open, so at
10,000 sockets every kilobyte here is 10 MB. This subclass of uvicorn's
`WebSocketsSansIOProtocol` changes nothing on the wire; it holds:

- the ASGI receive queue as a list and at most one waiter (an `asyncio.Queue` is three
  deques and an Event: ~3 KB, for a queue that holds one or two messages);
- the transport's "writable" flag likewise (an `asyncio.Event` carries a deque: 0.8 KB);
- no handshake request and response once the handshake is over (~3 KB of headers; the
  ASGI scope keeps its own copy of the request's).

It also offers the app a way past ASGI for the one message it sends thousands of times:
`scope["extensions"][FRAME_WRITER]["write"]` writes a frame built once for every socket (server
frames are not masked, so they are the same bytes on every connection), and says False
when the connection cannot take it now (closing, or its transport's buffer is full), for
the app to fall back on `send`. Through `send`, each socket would build the frame again,
and pass through two coroutines.

It relies on the attributes of uvicorn's class (`queue`, `writable`, `request`,
`response`); the price stream tests run on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request

FRAME_WRITER = "mt5gate.frame_writer"


def text_frame(text: str) -> bytes:
    """A server's (unmasked, unfragmented) text frame."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


class ReceiveQueue:
    """What uvicorn's protocol uses of `asyncio.Queue`: put_nowait, get, empty."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiters: list[asyncio.Future[None]] = []

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                break

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        return self._items.pop(0)


class WritableFlag:
    """What uvicorn's protocol uses of `asyncio.Event`: set, clear, wait."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = ReceiveQueue()  # type: ignore[assignment]
        self.writable = WritableFlag()  # type: ignore[assignment]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        del self.request  # read only by handle_connect; the scope has the headers
        if hasattr(self, "scope"):  # the handshake was valid: the app will run
            # An ASGI extension's value is a dict.
            self.scope["extensions"][FRAME_WRITER] = {"write": self.write_frame}

    def write_frame(self, frame: bytes) -> bool:
        """Writes a frame from `text_frame` if the connection can take it now."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(frame)
        return True

    def start_keepalive(self) -> None:
        # Called once the handshake response is written: the last use of `response`.
        del self.response
        super().start_keepalive()
