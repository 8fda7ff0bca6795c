"""Live prices over WebSocket: `WS /ws/prices/{instrument}` and `WS /ws/prices`.

Both take an access token or API key as `?token=` or an `Authorization: Bearer` header; a
missing, bad or expired one (or one that expires or is revoked while the socket is open)
closes the socket with 4001. Each socket gets the last-known tick
of an instrument at once, then every tick published on `prices:{instrument}`:
`{"type": "tick", "data": {"instrument", "bid", "ask", "ts"}}`.

On `/ws/prices` the client sends `{"type": "subscribe"|"unsubscribe", "instruments": [...]}`;
each one handled is acknowledged with `{"type": "subscriptions", "instruments": [all now]}`
(after the last ticks of the new ones), and a malformed one gets
`{"type": "error", "detail": code, "message": sentence}` with the socket left open.

Close codes: 4001 token, 1008 invalid instrument in the path, 1013 a client that stopped
reading for `ws_stall_timeout_seconds`, 1012 server shutdown (uvicorn). Every close is
logged, `event=ws_closed` with its code and who closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from starlette.types import Message
from starlette.websockets import WebSocket

from app.core.errors import InvalidTokenError
from app.resources import Resources
from app.services.principals import Principal, authenticate
from app.ws.manager import (
    CLOSE_STALLED,
    PriceSocket,
    TooManyInstruments,
    WebSocketManager,
)
from app.ws.protocol import FRAME_WRITER
from app.ws.ticks import is_instrument

log = logging.getLogger("mt5gate.ws")


CLOSE_INVALID_TOKEN = 4001
CLOSE_POLICY_VIOLATION = 1008
MAX_CLIENT_MESSAGE_CHARS = 16_384
# How long a stalled client's connection is kept once its close frame is queued, for it to
# read up to it (as long as uvicorn waits for a close handshake).
STALLED_CLOSE_LINGER_SECONDS = 10.0


def resources_of(websocket: WebSocket) -> Resources:
    """The process's resources, which the lifespan put on the app's state."""
    resources: Resources = websocket.app.state.resources
    return resources


class CommandError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def instrument_prices(websocket: WebSocket) -> None:
    """Ticks of one instrument."""
    resources = resources_of(websocket)
    instrument: str = websocket.path_params["instrument"]
    principal = await accept_authenticated(websocket, resources)
    if principal is None:
        return
    if not is_instrument(instrument):
        sent = await close_quietly(websocket, CLOSE_POLICY_VIOLATION, "invalid_instrument", 1.0)
        log_closed(websocket, CLOSE_POLICY_VIOLATION, "invalid_instrument", frame_sent=sent)
        return
    await stream_prices(
        websocket, resources, principal=principal, instruments=[instrument], commands=False
    )


async def prices(websocket: WebSocket) -> None:
    """Ticks of the instruments the client subscribes to."""
    resources = resources_of(websocket)
    principal = await accept_authenticated(websocket, resources)
    if principal is None:
        return
    await stream_prices(websocket, resources, principal=principal, instruments=[], commands=True)


def socket_token(websocket: WebSocket) -> str | None:
    """`?token=`, else the `Authorization: Bearer` header (programs that can set one)."""
    token = websocket.query_params.get("token")
    if token:
        return token
    scheme, _, credentials = websocket.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


async def accept_authenticated(websocket: WebSocket, resources: Resources) -> Principal | None:
    """Accepts the socket; returns whom it acts for, or closes it (4001) and returns None.

    The close needs an accepted socket: closing during the handshake would be an HTTP 403,
    and the client would never see the code.
    """
    try:
        principal = await authenticate(socket_token(websocket), resources)
    except InvalidTokenError:
        await websocket.accept()
        sent = await close_quietly(websocket, CLOSE_INVALID_TOKEN, "invalid_token", 1.0)
        log_closed(websocket, CLOSE_INVALID_TOKEN, "invalid_token", frame_sent=sent)
        return None
    await websocket.accept()
    return principal


async def stream_prices(
    websocket: WebSocket,
    resources: Resources,
    *,
    principal: Principal,
    instruments: list[str],
    commands: bool,
) -> None:
    """Runs one registered socket until its client leaves, its token expires or it stalls.

    The handler reads from the client (and handles its commands) until it leaves; ticks
    are written to the socket by the manager as they are broadcast. The token's expiry
    is a deadline on the reading, which the stall watchdog moves to now to close a
    client that stopped reading.
    """
    manager = resources.ws
    loop = asyncio.get_running_loop()
    opened_at = loop.time()
    sock = manager.connect(websocket)
    close: tuple[int, str] | None = None
    peer_code = 1005  # no status

    def revoke() -> None:  # its API key was revoked: end the handler now, then close 4001
        if sock.close_code is None and sock.deadline is not None and not sock.deadline.expired():
            sock.close_code = CLOSE_INVALID_TOKEN
            sock.deadline.reschedule(loop.time())

    ends, forget_key = watch_credentials(resources, principal, revoke)
    try:
        async with asyncio.timeout_at(ends) as deadline:
            sock.deadline = deadline
            if instruments:
                await manager.subscribe(sock, instruments)
            if commands:
                peer_code = await read_commands(websocket, manager, sock)
            else:
                peer_code = await read_until_disconnect(websocket)
    except TimeoutError:
        if not deadline.expired():
            raise
        close = deadline_close(sock.close_code, stalled=(CLOSE_STALLED, "stalled"))
    finally:
        forget_key()
        manager.disconnect(sock)
    await end_socket(websocket, resources, close, peer_code=peer_code, opened_at=opened_at)


async def end_socket(
    websocket: WebSocket,
    resources: Resources,
    close: tuple[int, str] | None,
    *,
    peer_code: int,
    opened_at: float,
) -> None:
    """Closes a socket whose handler ended with the server's `close` (code, reason), or
    logs the close its client made (`close` None)."""
    if close is None:
        log_closed(websocket, peer_code, opened_at=opened_at)
        return
    code, reason = close
    stall_timeout = resources.settings.ws_stall_timeout_seconds
    close_stalled = websocket.scope.get("extensions", {}).get(FRAME_WRITER, {}).get("close")
    if code == CLOSE_STALLED and close_stalled is not None:
        sent = close_stalled(code, reason, STALLED_CLOSE_LINGER_SECONDS)
    else:
        # A stalled client may never read the close frame: give up after the same limit.
        sent = await close_quietly(websocket, code, reason, stall_timeout)
    log_closed(websocket, code, reason, frame_sent=sent, opened_at=opened_at)


def watch_credentials(
    resources: Resources, principal: Principal, revoke: Callable[[], None]
) -> tuple[float | None, Callable[[], None]]:
    """When a socket's credentials stop working, as a loop time for `asyncio.timeout_at`
    (None: a key without expiry), and the registration of `revoke` for its API key's
    revocation (a function that undoes it)."""
    ends = None
    if principal.expires_at is not None:
        left = (principal.expires_at - datetime.now(UTC)).total_seconds()
        ends = asyncio.get_running_loop().time() + left
    key = principal.api_key
    if key is None:
        return ends, lambda: None
    return ends, resources.key_sockets.register(key.id, revoke)


def deadline_close(close_code: int | None, *, stalled: tuple[int, str]) -> tuple[int, str]:
    """The close of a socket whose handler's deadline passed: the server's own decision
    (`stalled`: the socket could not keep up; a revoked key), else its token expired."""
    if close_code == stalled[0]:
        return stalled
    if close_code == CLOSE_INVALID_TOKEN:
        return (CLOSE_INVALID_TOKEN, "key_revoked")
    return (CLOSE_INVALID_TOKEN, "token_expired")


async def read_until_disconnect(websocket: WebSocket) -> int:
    """The per-instrument socket has nothing to say; it is read only to notice it leave.
    Returns the close code."""
    while (message := await websocket.receive())["type"] != "websocket.disconnect":
        pass
    return close_code_of(message)


async def read_commands(websocket: WebSocket, manager: WebSocketManager, sock: PriceSocket) -> int:
    """Handles the client's commands until it leaves; returns the close code."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return close_code_of(message)
        try:
            kind, instruments = parse_command(message.get("text"))
            if kind == "subscribe":
                await manager.subscribe(sock, instruments)
            else:
                manager.unsubscribe(sock, instruments)
        except CommandError as exc:
            sock.send_control(error_frame(exc.code, exc.message))
            continue
        except TooManyInstruments:
            sock.send_control(
                error_frame(
                    "too_many_instruments",
                    f"At most {manager.max_instruments} instruments per socket.",
                )
            )
            continue
        sock.send_control(
            json.dumps({"type": "subscriptions", "instruments": sorted(sock.instruments)})
        )


def parse_command(text: str | None) -> tuple[str, list[str]]:
    """`(kind, instruments)` of a client message; raises CommandError with the error code."""
    if text is None:
        raise CommandError("invalid_message", "Messages are JSON text frames.")
    if len(text) > MAX_CLIENT_MESSAGE_CHARS:
        raise CommandError("message_too_large", "The message is too large.")
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise CommandError("invalid_json", "The message is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise CommandError("invalid_message", "The message must be a JSON object.")
    kind = body.get("type")
    if kind not in ("subscribe", "unsubscribe"):
        raise CommandError("unknown_message_type", "type must be subscribe or unsubscribe.")
    instruments = body.get("instruments")
    if not isinstance(instruments, list) or not instruments:
        raise CommandError("invalid_instruments", "instruments must be a non-empty list.")
    for instrument in instruments:
        if not is_instrument(instrument):
            raise CommandError(
                "invalid_instrument",
                f"Not an instrument name: {str(instrument)[:40]!r}.",
            )
    return kind, instruments


def error_frame(code: str, message: str) -> str:
    return json.dumps({"type": "error", "detail": code, "message": message})


async def close_quietly(websocket: WebSocket, code: int, reason: str, timeout: float) -> bool:
    """Closes the socket if it still can be, within `timeout` (a stuck client never reads);
    returns whether the close frame was written."""
    try:
        async with asyncio.timeout(timeout):
            await websocket.close(code, reason)
    except Exception as exc:  # already closed, client gone or stuck: nothing left to do
        log.debug("event=ws_close_failed code=%d error=%r", code, exc)
        return False
    return True


def close_code_of(disconnect: Message) -> int:
    code = disconnect.get("code", 1005)
    return code if isinstance(code, int) else 1005


# Codes that the server sends, when a disconnect carries one: uvicorn's shutdown (1012).
SERVER_CLOSE_CODES = {1012}


def log_closed(
    websocket: WebSocket,
    code: int,
    reason: str = "",
    *,
    frame_sent: bool | None = None,
    opened_at: float | None = None,
) -> None:
    """One line per closed socket: `frame_sent` None for a close the peer started."""
    by_server = frame_sent is not None or code in SERVER_CLOSE_CODES
    seconds = asyncio.get_running_loop().time() - opened_at if opened_at is not None else 0.0
    log.info(
        "event=ws_closed path=%r code=%d reason=%s by=%s%s seconds=%.1f",
        websocket.scope.get("path", "")[:80],
        code,
        reason or "-",
        "server" if by_server else "client",
        "" if frame_sent is None else f" close_frame={'sent' if frame_sent else 'unsent'}",
        seconds,
    )
