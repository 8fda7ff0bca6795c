"""`WS /ws/account`: what happens on one broker account, as a snapshot then sequenced events.

Query: `token` (or an `Authorization: Bearer` header), `broker_connection_id` (default:
the user's oldest connection), `since` (an event id: replay what came after it).

Close codes: 4001 bad or expired credentials (also later, when the token expires or its
API key is revoked), 4003 not onboarded, 4004 not one of the user's connections (or a
malformed id), 1008 more than `ws_max_account_sockets_per_user` open sockets (or a
malformed `since`), 1013 a client that cannot keep up (it resumes with `since`).
The client may send `{"type": "ping"}` (answered `{"type": "pong"}`); anything else gets
`{"type": "error", "detail", "message"}` and the socket stays open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

from redis.exceptions import RedisError
from starlette.websockets import WebSocket

from app.events import (
    AccountEvents,
    AccountSocket,
    agent_view,
    snapshot_json,
    user_connection,
)
from app.events._hub import CLOSE_TRY_AGAIN_LATER
from app.models import Agent
from app.ws.price_stream import (
    CLOSE_INVALID_TOKEN,
    CLOSE_POLICY_VIOLATION,
    MAX_CLIENT_MESSAGE_CHARS,
    accept_authenticated,
    close_code_of,
    close_quietly,
    deadline_close,
    end_socket,
    error_frame,
    log_closed,
    resources_of,
    watch_credentials,
)

log = logging.getLogger("mt5gate.ws")

CLOSE_NOT_ONBOARDED = 4003
CLOSE_NOT_YOUR_CONNECTION = 4004
CLOSE_UNAVAILABLE = 1011
PONG = json.dumps({"type": "pong"})
MAX_EVENT_ID = 2**63 - 1


async def account_events(websocket: WebSocket) -> None:
    resources = resources_of(websocket)
    principal = await accept_authenticated(websocket, resources)
    if principal is None:
        return

    async def refuse(code: int, reason: str) -> None:
        sent = await close_quietly(websocket, code, reason, 1.0)
        log_closed(websocket, code, reason, frame_sent=sent)

    user = principal.user
    if not user.onboarding_completed:
        await refuse(CLOSE_NOT_ONBOARDED, "onboarding_incomplete")
        return
    params = websocket.query_params
    try:
        named = params.get("broker_connection_id")
        connection_id = uuid.UUID(named) if named else None
    except ValueError:
        await refuse(CLOSE_NOT_YOUR_CONNECTION, "not_found")
        return
    since: int | None = None
    if (raw_since := params.get("since")) is not None:
        if not raw_since.isdigit() or int(raw_since) > MAX_EVENT_ID:
            await refuse(CLOSE_POLICY_VIOLATION, "invalid_since")
            return
        since = int(raw_since)
    found = await user_connection(
        resources.single_statement_engine, user_id=user.id, connection_id=connection_id
    )
    if found is None:
        await refuse(CLOSE_NOT_YOUR_CONNECTION, "not_found")
        return
    connection, agent = found
    events: AccountEvents = resources.account_events
    streams = events.streams
    sock = streams.connect(websocket, connection_id=connection, user_id=user.id)
    if sock is None:
        await refuse(CLOSE_POLICY_VIOLATION, "too_many_sockets")
        return

    opened_at = asyncio.get_running_loop().time()
    close: tuple[int, str] | None = None
    peer_code = 1005

    def revoke() -> None:  # its API key was revoked: end the handler, then close 4001
        sock.close_now(CLOSE_INVALID_TOKEN)

    ends, forget_key = watch_credentials(resources, principal, revoke)
    try:
        async with asyncio.timeout_at(ends) as deadline:
            sock.deadline = deadline
            await start_stream(events, sock, since=since, agent=agent)
            peer_code = await read_client(websocket, sock)
    except TimeoutError:
        if not deadline.expired():
            raise
        close = deadline_close(sock.close_code, stalled=(CLOSE_TRY_AGAIN_LATER, "too_slow"))
    except (RedisError, OSError) as exc:
        log.warning("event=account_stream_unavailable error=%r", exc)
        close = (CLOSE_UNAVAILABLE, "events_unavailable")
    finally:
        forget_key()
        streams.disconnect(sock)
    await end_socket(websocket, resources, close, peer_code=peer_code, opened_at=opened_at)


async def start_stream(
    events: AccountEvents,
    sock: AccountSocket,
    *,
    since: int | None,
    agent: Agent | None,
) -> None:
    """The socket's first messages: the replay after `since` when the log holds it, else
    the snapshot; then it goes live (live events were held from its registration on)."""
    streams = events.streams
    await streams.wait_live()
    replay = await events.log.replay(sock.connection_id, since) if since is not None else None
    if replay is not None:
        sock.last_id = since
        await streams.send_replay(sock, replay.events)
        sock.last_id = replay.last_event_id
    else:
        state = await events.log.state(sock.connection_id)
        view = agent_view(agent, state, settings=events.settings)
        sock.send_snapshot(snapshot_json(state, view), state["last_event_id"])
    streams.go_live(sock)


async def read_client(websocket: WebSocket, sock: AccountSocket) -> int:
    """Answers the client's pings until it leaves; returns the close code."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return close_code_of(message)
        text = message.get("text")
        if text is None:
            sock.send_control(error_frame("invalid_message", "Messages are JSON text frames."))
            continue
        if len(text) > MAX_CLIENT_MESSAGE_CHARS:
            sock.send_control(error_frame("message_too_large", "The message is too large."))
            continue
        try:
            body = json.loads(text)
        except ValueError:
            sock.send_control(error_frame("invalid_json", "The message is not valid JSON."))
            continue
        if not isinstance(body, dict) or body.get("type") != "ping":
            sock.send_control(
                error_frame("unknown_message_type", 'The only message is {"type": "ping"}.')
            )
            continue
        sock.send_control(PONG)
