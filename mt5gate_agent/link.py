"""The agent's end of the link: one WebSocket to ``WS /ws/agents/{agent_id}`` that carries
what the HTTP agent routes carry (see ``mt5gate_protocol.link`` and docs/API.md, Agents).

:class:`AgentLink` owns one open socket: it reads every frame the server sends (jobs,
acknowledgements, errors) and hands each to the agent; it sends ``claimed``, results,
heartbeats and event batches. A heartbeat or an event batch sent over the link waits for
its answer like the HTTP call it replaces; a result does not (the agent keeps it until
``result_accepted``). Frames the agent cannot read are logged and skipped: a bad frame
never ends the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from mt5gate_agent.client import (
    AgentApiError,
    EventsRefused,
    HeartbeatReply,
    api_root,
    parse_job,
    parse_time,
)
from mt5gate_protocol.jobs import CompletedResult, FailedResult, JobEnvelope

log = logging.getLogger("mt5gate_agent")

CLOSE_INVALID_TOKEN = 4001
CLOSE_LINK_REPLACED = 4009
# An HTTP status on the upgrade that means "this server has no link (or it is off)".
REFUSED_STATUSES = frozenset({403, 404})
# A frame bigger than this is the server misbehaving (a job's input is small).
MAX_FRAME_BYTES = 4 * 1024 * 1024


class LinkRefused(Exception):
    """The server answered the upgrade with HTTP 403/404: no link there (disabled, or an
    older server). The agent uses the HTTP routes and tries the link again later."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"handshake refused (HTTP {status_code})")
        self.status_code = status_code


class LinkDown(AgentApiError):
    """The link closed (or did not answer in time) before the reply came; the caller may
    send again over HTTP. An :class:`AgentApiError` (503) so that the code retrying HTTP
    failures retries this one too."""

    def __init__(self, reason: str) -> None:
        super().__init__(503, "link_down", reason)


def link_url(api_url: str, agent_id: str) -> str:
    """``http://host:8000[/api/v1]`` → ``ws://host:8000/ws/agents/{agent_id}`` (https → wss)."""
    root = api_root(api_url)[: -len("/api/v1")]
    parts = urlsplit(root)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = f"{parts.path.rstrip('/')}/ws/agents/{quote(str(agent_id), safe='')}"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def result_body(result: CompletedResult | FailedResult) -> dict[str, Any]:
    """A result as ``POST jobs/{id}/result`` takes it (the same body on the link)."""
    return result.model_dump(mode="json", exclude_none=True)


class AgentLink:
    """One open link. ``on_job`` gets every job pushed (already parsed); ``on_result`` gets
    ``(job_id, accepted, reason)`` for each answer to a result (``accepted`` False: the server
    refused it for good, ``job_not_running`` or ``invalid_result``)."""

    def __init__(
        self,
        ws: ClientConnection,
        *,
        timeout: float,
        on_job: Callable[[JobEnvelope], Awaitable[None]],
        on_result: Callable[[str, bool, str], None],
    ) -> None:
        self.ws = ws
        self.timeout = timeout
        self.on_job = on_job
        self.on_result = on_result
        self.welcome: HeartbeatReply | None = None
        self.ping_interval: float | None = None
        self._heartbeats: deque[tuple[float, asyncio.Future[HeartbeatReply]]] = deque()
        self._events: dict[int, asyncio.Future[int]] = {}
        self._next_ref = 0
        self._closed = False
        self.close_code: int | None = None
        self.close_reason = ""

    # -- opening -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        api_url: str,
        agent_id: str,
        token: str,
        *,
        timeout: float,
        on_job: Callable[[JobEnvelope], Awaitable[None]],
        on_result: Callable[[str, bool, str], None],
    ) -> AgentLink:
        """Connects and waits for ``welcome``. Raises :class:`LinkRefused` (HTTP 403/404),
        :class:`AgentApiError` 401 (closed 4001 before the welcome), :class:`LinkDown`
        (closed otherwise, or no welcome in time), ``OSError``/``WebSocketException`` for
        network trouble."""
        sent = time.time()
        try:
            ws = await connect(
                link_url(api_url, agent_id),
                additional_headers={"Authorization": f"Bearer {token}"},
                user_agent_header="mt5gate-agent",
                # Frames are small JSON objects: compressing them costs more than it saves.
                compression=None,
                open_timeout=timeout,
                max_size=MAX_FRAME_BYTES,
                # Small frames go out at once (the library sets TCP_NODELAY too).
                write_limit=2**16,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in REFUSED_STATUSES:
                raise LinkRefused(status) from None
            if status == 401:
                raise AgentApiError(401, "invalid_agent_token", "link handshake") from None
            raise AgentApiError(status, f"http_{status}", "link handshake") from None
        link = cls(ws, timeout=timeout, on_job=on_job, on_result=on_result)
        try:
            async with asyncio.timeout(timeout):
                raw = await ws.recv()
        except TimeoutError:
            await ws.close()
            raise LinkDown("no welcome") from None
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            if code == CLOSE_INVALID_TOKEN:
                raise AgentApiError(401, "invalid_agent_token", "link closed 4001") from None
            raise LinkDown(f"closed {code} before the welcome") from None
        received = time.time()
        message = _decode(raw)
        server_time = parse_time(message.get("server_time")) if message else None
        if message is None or message.get("type") != "welcome" or server_time is None:
            await ws.close(1002, "welcome expected")
            raise LinkDown("the first frame was not a welcome")
        if server_time.tzinfo is None:
            server_time = server_time.replace(tzinfo=UTC)
        last_deal = message.get("last_deal_ticket")
        link.welcome = HeartbeatReply(
            server_time=server_time,
            clock_offset=server_time.timestamp() - (sent + received) / 2,
            last_deal_ticket=last_deal if type(last_deal) is int else None,
        )
        interval = message.get("ping_interval")
        if isinstance(interval, int | float) and interval > 0:
            link.ping_interval = float(interval)
        return link

    # -- reading -------------------------------------------------------------------------

    async def run(self) -> None:
        """Reads frames until the link closes (then ``close_code`` says how); never raises
        for a frame's content."""
        try:
            async for raw in self.ws:
                message = _decode(raw)
                if message is None:
                    log.warning("event=link_bad_frame reason=not_a_json_object")
                    continue
                try:
                    await self._dispatch(message)
                except Exception:
                    # One frame's handling must not end the link.
                    log.exception("event=link_frame_crashed type=%s", _short(message.get("type")))
        except ConnectionClosed:
            pass
        except (OSError, WebSocketException) as exc:
            log.info("event=link_read_failed reason=%s", type(exc).__name__)
        finally:
            self._finish()

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "job":
            body = message.get("job")
            try:
                if not isinstance(body, dict):
                    raise TypeError
                job = parse_job(body)
            except (ValidationError, TypeError):
                log.warning("event=link_bad_frame type=job reason=malformed_job")
                return
            await self.on_job(job)
        elif kind == "result_accepted":
            job_id = message.get("job_id")
            if isinstance(job_id, str):
                self.on_result(job_id, True, str(message.get("status", "")))
        elif kind == "heartbeat_accepted":
            self._heartbeat_answered(message)
        elif kind == "events_accepted":
            future = self._events.pop(message.get("ref"), None)  # type: ignore[arg-type]
            accepted = message.get("accepted")
            if future is not None and not future.done():
                future.set_result(accepted if type(accepted) is int else 0)
        elif kind == "error":
            self._error(message)
        elif kind in ("pong", "welcome"):
            pass
        else:
            log.warning("event=link_bad_frame reason=unknown_type type=%s", _short(kind))

    def _heartbeat_answered(self, message: dict[str, Any]) -> None:
        if not self._heartbeats:
            return
        sent, future = self._heartbeats.popleft()
        server_time = parse_time(message.get("server_time"))
        if future.done():
            return
        if server_time is None:
            future.set_exception(AgentApiError(200, "bad_response", "heartbeat without time"))
            return
        received = time.time()
        last_deal = message.get("last_deal_ticket")
        future.set_result(
            HeartbeatReply(
                server_time=server_time,
                clock_offset=server_time.timestamp() - (sent + received) / 2,
                last_deal_ticket=last_deal if type(last_deal) is int else None,
            )
        )

    def _error(self, message: dict[str, Any]) -> None:
        detail = message.get("detail")
        text = str(message.get("message") or "")
        ref, job_id = message.get("ref"), message.get("job_id")
        if type(ref) is int and ref in self._events:
            future = self._events.pop(ref)
            if future.done():
                return
            if detail == "invalid_events":
                errors = message.get("errors")
                future.set_exception(
                    EventsRefused(
                        text,
                        [e for e in errors if isinstance(e, dict)]
                        if isinstance(errors, list)
                        else [],
                    )
                )
            else:
                future.set_exception(AgentApiError(503, _short(detail), text))
            return
        if isinstance(job_id, str) and detail in ("job_not_running", "invalid_result"):
            self.on_result(job_id, False, str(detail))
            return
        log.warning("event=link_error detail=%s message=%s", _short(detail), json.dumps(text[:200]))

    def _finish(self) -> None:
        self._closed = True
        if self.ws.close_code is not None:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
        else:
            self.close_code = 1006
        down = LinkDown(f"closed {self.close_code}")
        while self._heartbeats:
            _, future = self._heartbeats.popleft()
            if not future.done():
                future.set_exception(down)
        for waiting in self._events.values():
            if not waiting.done():
                waiting.set_exception(down)
        self._events.clear()

    # -- sending -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return not self._closed

    async def _send(self, message: dict[str, Any]) -> None:
        if self._closed:
            raise LinkDown("closed")
        try:
            await self.ws.send(json.dumps(message, separators=(",", ":")))
        except (ConnectionClosed, OSError) as exc:
            raise LinkDown(type(exc).__name__) from None

    async def send_claimed(self, job_id: uuid.UUID | str) -> None:
        await self._send({"type": "claimed", "job_id": str(job_id)})

    async def send_result(
        self, job_id: uuid.UUID | str, result: CompletedResult | FailedResult
    ) -> None:
        await self._send({"type": "result", "job_id": str(job_id), "result": result_body(result)})

    async def heartbeat(self, *, version: str, terminal_connected: bool) -> HeartbeatReply:
        future: asyncio.Future[HeartbeatReply] = asyncio.get_running_loop().create_future()
        self._heartbeats.append((time.time(), future))
        beat = {"version": version, "terminal_connected": terminal_connected}
        await self._send({"type": "heartbeat", "heartbeat": beat})
        return await self._answer(future)

    async def post_events(self, events: list[dict[str, Any]]) -> None:
        """Like ``POST /events``: :class:`EventsRefused` when the batch is refused."""
        ref = self._next_ref
        self._next_ref += 1
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._events[ref] = future
        try:
            await self._send({"type": "events", "ref": ref, "batch": {"events": events}})
            await self._answer(future)
        finally:
            self._events.pop(ref, None)

    async def _answer(self, future: asyncio.Future[Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            raise LinkDown("no answer in time") from None

    async def close(self) -> None:
        with contextlib.suppress(OSError, WebSocketException):
            await self.ws.close()


def _decode(raw: str | bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return message if isinstance(message, dict) else None


def _short(value: Any) -> str:
    """A value from the server, safe to log as one token."""
    text = str(value)[:40]
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in text) or "none"
