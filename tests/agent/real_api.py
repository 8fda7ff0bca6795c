"""The real API for the agent's tests: the app served in-process over real TCP (a port it
keeps across restarts), one onboarded user whose connection has this agent, and a thin
fault-injecting layer in front for what cannot be produced for real: a route answering
503, a server clock that differs from the agent's, a slow network. Everything else (the
job queue, long polls, result validation, price pushes) is the app itself."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import dispatch
from app.core.config import Settings
from app.main import create_app
from app.models import Job
from app.resources import Resources
from app.schemas.common import iso_utc
from app.server import GatewayServer, server_config
from app.services.agents import set_price_source
from tests.flows import Trader, onboard_trader
from tests.servers import bound_socket

KINDS = ("heartbeat", "credentials", "poll", "result", "prices", "events")


def kind_of(path: str) -> str | None:
    if path.endswith("/jobs/next"):
        return "poll"
    if path.endswith("/result"):
        return "result"
    for kind in ("heartbeat", "credentials", "prices", "events"):
        if path.endswith(f"/{kind}"):
            return kind
    return None


@dataclass
class Faults:
    # How many of the next calls of each kind answer 503 without reaching the app.
    fail: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    # Seconds added to every time the server reports (server_time, a job's created_at and
    # expires_at): a server whose clock runs ahead of (or behind) the agent's.
    clock_skew: float = 0.0
    # Seconds a job handed out by a long poll spends on the wire.
    delivery_delay: float = 0.0
    # Seconds the answer to an event post spends on the wire (the events already taken).
    events_delay: float = 0.0
    # Frames the server sends down the agent's link right after its welcome, as they are
    # (str: a text frame, bytes: a binary one): a server that misbehaves.
    link_noise: list[str | bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Exchange:
    """One agent call that reached the app: what the agent sent, what the app answered."""

    kind: str
    request_body: bytes
    status: int
    response_body: bytes


class FaultLayer:
    """ASGI middleware before the real app: injects Faults, and records what the agent
    sent (heartbeat bodies, accepted price and event batches) and how often it called."""

    def __init__(self, app: ASGIApp, harness: RealAgentApi) -> None:
        self.app = app
        self.harness = harness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"].startswith("/ws/agents/"):
            self.harness.links_opened += 1
            self.harness.changed()
            await self.app(scope, receive, self.noisy(send))
            return
        kind = kind_of(scope["path"]) if scope["type"] == "http" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        harness, faults = self.harness, self.harness.faults
        harness.calls[kind] += 1
        harness.changed()
        if faults.fail[kind] > 0:
            faults.fail[kind] -= 1
            body = b'{"detail":"internal_error","message":"injected"}'
            await send_response(send, 503, body)
            return
        request_body = bytearray()

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                request_body.extend(message.get("body", b""))
            return message

        status, headers, body = await call_app(self.app, scope, recording_receive)
        harness.exchanges.append(Exchange(kind, bytes(request_body), status, body))
        if kind == "heartbeat" and status == 200:
            harness.heartbeats.append(json.loads(request_body or b"{}"))
            body = shifted(body, ("server_time",), faults.clock_skew)
        elif kind == "poll" and status == 200:
            body = shifted(body, ("created_at", "expires_at"), faults.clock_skew)
            await asyncio.sleep(faults.delivery_delay)
        elif kind == "prices" and status == 202:
            harness.price_batches.append(json.loads(request_body))
        elif kind == "events" and status == 202:
            harness.event_batches.append(json.loads(request_body)["events"])
            await asyncio.sleep(faults.events_delay)
        await send_response(send, status, body, headers)
        harness.changed()

    def noisy(self, send: Send) -> Send:
        """The link's ``send``, with ``Faults.link_noise`` sent after the first frame."""
        noise = list(self.harness.faults.link_noise)

        async def send_with_noise(message: Message) -> None:
            await send(message)
            if message["type"] == "websocket.send" and noise:
                for frame in noise:
                    key = "text" if isinstance(frame, str) else "bytes"
                    await send({"type": "websocket.send", key: frame})
                noise.clear()

        return send_with_noise


async def call_app(app: ASGIApp, scope: Scope, receive: Receive) -> tuple[int, list[Any], bytes]:
    status, headers, body = 500, [], bytearray()

    async def collect(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, collect)
    return status, headers, bytes(body)


async def send_response(
    send: Send, status: int, body: bytes, headers: list[Any] | None = None
) -> None:
    kept = [(k, v) for k, v in headers or [] if k.lower() != b"content-length"]
    if not any(k.lower() == b"content-type" for k, _ in kept):
        kept.append((b"content-type", b"application/json"))
    kept.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": kept})
    await send({"type": "http.response.body", "body": body})


def shifted(body: bytes, names: tuple[str, ...], seconds: float) -> bytes:
    if not seconds:
        return body
    data = json.loads(body)
    for name in names:
        moment = datetime.fromisoformat(data[name].replace("Z", "+00:00"))
        data[name] = iso_utc(moment + timedelta(seconds=seconds))
    return json.dumps(data).encode()


class RealAgentApi:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.faults = Faults()
        self.calls = dict.fromkeys(KINDS, 0)
        self.exchanges: list[Exchange] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.price_batches: list[dict[str, Any]] = []
        self.event_batches: list[list[dict[str, Any]]] = []
        self.links_opened = 0
        self.port = 0
        self.trader: Trader | None = None
        self._changed = asyncio.Event()
        self.app: FastAPI | None = None
        self._server: GatewayServer | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the server --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Serves the app (again, on the same port after a stop)."""
        app = create_app(self.settings)
        app.add_middleware(FaultLayer, harness=self)
        sock = bound_socket(self.port)
        self.port = sock.getsockname()[1]
        self._server = GatewayServer(
            server_config(app, self.settings, timeout_graceful_shutdown=2), app
        )
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.005)
        self.app = app

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.shut_down()
            await self._task
        self._server = self._task = None

    async def onboard(self, *, price_source: bool = True) -> Trader:
        async with httpx.AsyncClient(base_url=f"{self.url}/api/v1", timeout=30) as client:
            self.trader = await onboard_trader(client, with_heartbeat=False)
        await self.set_price_source(price_source)
        return self.trader

    @property
    def resources(self) -> Resources:
        assert self.app is not None, "the server is not running"
        resources: Resources = self.app.state.resources
        return resources

    async def set_price_source(self, enabled: bool) -> None:
        await set_price_source(
            self.resources.session_factory, agent_id=self.agent_uuid, enabled=enabled
        )

    # -- the agent's identity ----------------------------------------------------------------

    @property
    def agent_uuid(self) -> uuid.UUID:
        assert self.trader is not None
        return uuid.UUID(self.trader.agent.id)

    @property
    def agent_id(self) -> str:
        return str(self.agent_uuid)

    @property
    def token(self) -> str:
        assert self.trader is not None
        return self.trader.agent.token

    # -- jobs ----------------------------------------------------------------------------------

    @property
    def job_store(self) -> dispatch.JobStore:
        return self.resources.jobs

    async def add_job(
        self, job_type: str, input_data: dict[str, Any], *, expires_in: float = 30.0
    ) -> str:
        assert self.trader is not None
        job, _ = await dispatch.create_job(
            self.job_store,
            user_id=uuid.UUID(self.trader.user.id),
            agent_id=self.agent_uuid,
            job_type=job_type,
            input_data=input_data,
            ttl_seconds=expires_in,
        )
        return str(job.id)

    async def job(self, job_id: str) -> Job:
        found = await dispatch.get_job(self.job_store, uuid.UUID(job_id))
        assert found is not None
        return found

    async def wait_result(self, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The agent's answer as the server recorded it: {status, output_data | error}."""
        job = await dispatch.wait_for_job_result(
            self.job_store, job_id=uuid.UUID(job_id), timeout=timeout
        )
        if job.status == "completed":
            return {"status": job.status, "output_data": job.output_data}
        assert job.status == "failed", f"no answer for {job_id}: {job.status}"
        return {"status": job.status, "error": job.error}

    # -- waiting for the agent -----------------------------------------------------------------

    def changed(self) -> None:
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    @property
    def polls(self) -> int:
        return self.calls["poll"]

    @property
    def price_attempts(self) -> int:
        return self.calls["prices"]
