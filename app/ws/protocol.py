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
and pass through two coroutines. `...["close"]` closes a socket whose client stopped
reading: ASGI's close would wait for room in its full buffer, for ever.

And it logs the one close uvicorn makes silently: a peer that did not answer a ping.

It relies on uvicorn's private internals, which any release may change: what
`lean_protocol_problems` checks (tests/test_uvicorn_coupling.py asserts it finds nothing
on the uvicorn installed, and pyproject.toml bounds uvicorn to the versions tested). When
something is missing, `websocket_protocol` falls back to uvicorn's own protocol, with one
log line: sockets then cost more memory and ticks go through `send`, nothing else changes.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import logging
import textwrap
from typing import TYPE_CHECKING, Any

from websockets.frames import Frame, Opcode
from websockets.http11 import Request

if TYPE_CHECKING:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
else:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:  # a uvicorn without it: websocket_protocol() falls back

        class WebSocketsSansIOProtocol(asyncio.Protocol):
            missing = True


log = logging.getLogger("mt5gate.ws")

FRAME_WRITER = "mt5gate.frame_writer"
# uvicorn's own choice of protocol, when ours cannot be used.
STOCK_PROTOCOL = "websockets-sansio"


def text_frame_bytes(text: str) -> bytes:
    """The bytes of a server's (unmasked, unfragmented) text frame."""
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
            self.scope["extensions"][FRAME_WRITER] = {
                "write": self.write_frame,
                "close": self.close_stalled,
            }

    def write_frame(self, frame: bytes) -> bool:
        """Writes a frame from `text_frame_bytes` if the connection can take it now."""
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

    def close_stalled(self, code: int, reason: str, linger: float) -> bool:
        """Writes a close frame behind whatever the transport still holds, without waiting
        for room, then closes: a client that reads again gets its ticks, then the close.
        One that has not read up to it `linger` seconds later is cut off. False when no
        close frame can be written any more (the connection is closing or gone)."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.transport.is_closing()
        ):
            return False
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()  # once the buffer is flushed
        self.loop.call_later(linger, self.transport.abort)
        return True

    def start_keepalive(self) -> None:
        # Called once the handshake response is written: the last use of `response`.
        del self.response
        super().start_keepalive()

    def keepalive_timeout(self) -> None:
        if not (self.close_sent or self.transport.is_closing()):
            host, port = self.client or ("?", 0)
            log.info("event=ws_ping_timeout client=%s:%s close_code=1011", host, port)
        super().keepalive_timeout()


# -- what LeanWebSocketProtocol relies on in uvicorn's class ------------------------------

# The methods of the objects we replace that uvicorn may call.
QUEUE_METHODS = {"put_nowait", "get", "empty"}
WRITABLE_METHODS = {"set", "clear", "wait", "is_set"}
# Connection state that write_frame and close_stalled use, set by uvicorn's __init__.
STATE_READ_BY_WRITE_FRAME = {
    "transport",
    "handshake_complete",
    "close_sent",
    "disconnected",
    "queue",
    "writable",
    "conn",  # websockets' ServerProtocol (send_close, data_to_send: its public API)
    "loop",
    "client",
}


def lean_protocol_problems(base: type = WebSocketsSansIOProtocol) -> list[str]:
    """What LeanWebSocketProtocol relies on and does not find in `base` (uvicorn's class),
    read from its source: an empty list when it can be used."""
    if getattr(base, "missing", False):
        return ["uvicorn has no websockets_sansio_impl.WebSocketsSansIOProtocol"]
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(base)))
    except (OSError, TypeError, SyntaxError) as exc:
        return [f"the source of {base.__qualname__} cannot be read ({exc})"]
    classdef = tree.body[0]
    assert isinstance(classdef, ast.ClassDef)
    methods = {
        node.name: node
        for node in classdef.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    problems = [
        f"no method {name}"
        for name in ("__init__", "handle_connect", "start_keepalive", "keepalive_timeout", "send")
        if name not in methods
    ]
    if problems:
        return problems

    stored_in_init = {
        use.attr for use in _self_attributes(methods["__init__"]) if isinstance(use.ctx, ast.Store)
    }
    problems += [
        f"__init__ no longer sets self.{name}"
        for name in sorted(STATE_READ_BY_WRITE_FRAME - stored_in_init)
    ]
    for name, allowed in (("queue", QUEUE_METHODS), ("writable", WRITABLE_METHODS)):
        used = _methods_called_on(classdef, name)
        if used is None:
            problems.append(f"self.{name} is used other than by calling its methods")
        elif used - allowed:
            problems.append(f"self.{name} is used for {sorted(used - allowed)}")
    # `request` is dropped once handle_connect stored it; nothing may read it.
    if any(
        use.attr == "request" and isinstance(use.ctx, ast.Load)
        for use in _self_attributes(classdef)
    ):
        problems.append("self.request is read")
    # `response` is dropped in start_keepalive, which must come after its last use.
    for name, method in methods.items():
        calls = _calls_of(method, "start_keepalive")
        reads = [
            use.lineno
            for use in _self_attributes(method)
            if use.attr == "response" and isinstance(use.ctx, ast.Load)
        ]
        if name not in ("handle_connect", "send") and reads:
            problems.append(f"self.response is read in {name}")
        if name != "send" and calls:
            problems.append(f"start_keepalive is called from {name}")
        if name == "send" and (len(calls) != 1 or any(line > calls[0] for line in reads)):
            problems.append("self.response is read after start_keepalive")
    # handle_connect's scope must carry an "extensions" dict for the frame writer.
    if not any(
        isinstance(node, ast.Dict)
        and any(isinstance(key, ast.Constant) and key.value == "extensions" for key in node.keys)
        for node in ast.walk(methods["handle_connect"])
    ):
        problems.append('handle_connect builds no scope with "extensions"')
    return problems


def _self_attributes(node: ast.AST) -> list[ast.Attribute]:
    return [
        use
        for use in ast.walk(node)
        if isinstance(use, ast.Attribute)
        and isinstance(use.value, ast.Name)
        and use.value.id == "self"
    ]


def _methods_called_on(classdef: ast.ClassDef, name: str) -> set[str] | None:
    """The methods called on `self.<name>`; None if it is used any other way (passed on,
    indexed...) except being assigned."""
    parents = {
        child: parent for parent in ast.walk(classdef) for child in ast.iter_child_nodes(parent)
    }
    called: set[str] = set()
    for use in _self_attributes(classdef):
        if use.attr != name or isinstance(use.ctx, ast.Store):
            continue
        parent = parents.get(use)
        if isinstance(parent, ast.Attribute) and isinstance(parents.get(parent), ast.Call):
            called.add(parent.attr)
        else:
            return None
    return called


def _calls_of(node: ast.AST, method: str) -> list[int]:
    """Lines where `self.<method>()` is called."""
    return [
        call.lineno
        for call in ast.walk(node)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == method
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "self"
    ]


@functools.cache
def websocket_protocol(base: type = WebSocketsSansIOProtocol) -> type[asyncio.Protocol] | str:
    """Our protocol if uvicorn's class still is what it was written against; else uvicorn's
    own (checked, and a fallback logged, once per process)."""
    problems = lean_protocol_problems(base)
    if not problems:
        return LeanWebSocketProtocol
    fallback = "auto" if getattr(base, "missing", False) else STOCK_PROTOCOL
    log.warning(
        "event=ws_lean_protocol_disabled fallback=%s reason=%r", fallback, "; ".join(problems)
    )
    return fallback
