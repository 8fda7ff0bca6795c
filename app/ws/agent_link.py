"""`WS /ws/agents/{agent_id}`: the agent link, one socket carrying what the HTTP agent routes
carry (the messages are `mt5gate_protocol.link`; the rules are app/services/agent_link).

The token: an `Authorization: Bearer` header (preferred), else `?token=`. With
`AGENT_LINK_ENABLED` false the handshake is refused (HTTP 403): the agent long-polls.
Close codes: 4001 a bad token (also later: rotated, or the connection deleted, on any
process), 4009 a newer link for the same agent opened, 1001 the server is shutting down,
1011 an internal error. Each link has a reader (this handler's task) and a pusher (the
agent's jobs); whichever ends first ends the other.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.websockets import WebSocket

from app.core.errors import InvalidAgentToken
from app.services.agent_link import FINISH_TIMEOUT_SECONDS, AgentLink, LinkRefused
from app.services.agents import authenticate_agent
from app.ws.price_stream import close_code_of, close_quietly, log_closed, resources_of
from mt5gate_protocol.link import CLOSE_INTERNAL, CLOSE_INVALID_TOKEN, REASON_INVALID_TOKEN

log = logging.getLogger("mt5gate.agent_link")

CLOSE_POLICY_VIOLATION = 1008


def link_token(websocket: WebSocket) -> str | None:
    """The `Authorization: Bearer` header, else `?token=`."""
    scheme, _, credentials = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return websocket.query_params.get("token") or None


async def agent_link(websocket: WebSocket) -> None:
    resources = resources_of(websocket)
    settings = resources.settings
    if not settings.agent_link_enabled:
        await websocket.close(CLOSE_POLICY_VIOLATION)  # before accepting: an HTTP 403
        log.info("event=agent_link_refused reason=disabled")
        return
    db = resources.single_statement_engine
    try:
        agent = await authenticate_agent(
            db, agent_id=websocket.path_params["agent_id"], token=link_token(websocket)
        )
    except InvalidAgentToken:
        await refuse(websocket)
        return
    await websocket.accept()
    opened_at = asyncio.get_running_loop().time()
    lock = asyncio.Lock()
    stall_timeout = settings.ws_stall_timeout_seconds

    async def send(text: str) -> None:
        async with lock, asyncio.timeout(stall_timeout):
            await websocket.send_text(text)

    link = AgentLink(
        jobs=resources.jobs,
        account_events=resources.account_events,
        db=db,
        settings=settings,
        agent=agent,
        send=send,
    )
    close: tuple[int, str] | None = None
    peer_code = 1005
    try:
        await link.open()
        pusher = asyncio.create_task(link.push_jobs(), name=f"agent-link-push-{agent.id}")
        reader = asyncio.create_task(read_agent(websocket, link), name="agent-link-read")
        try:
            await asyncio.wait({pusher, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await stop(pusher, reader)
        if reader.done() and not reader.cancelled() and reader.exception() is None:
            peer_code = reader.result()
        elif pusher.done() and not pusher.cancelled() and pusher.exception() is None:
            close = pusher.result()
        else:
            failed = pusher if pusher.done() and not pusher.cancelled() else reader
            error = failed.exception()
            log.warning("event=agent_link_failed agent_id=%s error=%r", agent.id, error)
            close = (CLOSE_INTERNAL, "internal")
    except LinkRefused:
        close = (CLOSE_INVALID_TOKEN, REASON_INVALID_TOKEN)
    except Exception as exc:  # the database or the socket failed while opening
        log.warning("event=agent_link_failed agent_id=%s error=%r", agent.id, exc)
        close = (CLOSE_INTERNAL, "internal")
    finally:
        try:
            async with asyncio.timeout(FINISH_TIMEOUT_SECONDS):
                await link.finish()
        except Exception as exc:  # the sweeper still ends what was left running
            log.warning("event=agent_link_finish_failed agent_id=%s error=%r", agent.id, exc)
    if close is None:
        log_closed(websocket, peer_code, opened_at=opened_at)
        log.info("event=agent_link_closed agent_id=%s by=agent code=%d", agent.id, peer_code)
        return
    code, reason = close
    sent = await close_quietly(websocket, code, reason, stall_timeout)
    log_closed(websocket, code, reason, frame_sent=sent, opened_at=opened_at)
    log.info("event=agent_link_closed agent_id=%s by=server code=%d", agent.id, code)


async def stop(*tasks: asyncio.Task[object]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def refuse(websocket: WebSocket) -> None:
    """4001: the close needs an accepted socket (a refused handshake would be a 403)."""
    await websocket.accept()
    sent = await close_quietly(websocket, CLOSE_INVALID_TOKEN, REASON_INVALID_TOKEN, 1.0)
    log_closed(websocket, CLOSE_INVALID_TOKEN, REASON_INVALID_TOKEN, frame_sent=sent)


async def read_agent(websocket: WebSocket, link: AgentLink) -> int:
    """The link's reader: each message handled in turn, until the agent leaves; returns
    the close code."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return close_code_of(message)
        text = message.get("text")
        await link.handle(text if isinstance(text, str) else None)
