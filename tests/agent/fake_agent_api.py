"""A fake of the API's agent routes (API.md, "Agents"), enough to drive the agent in tests:
a job queue with long polling, results, prices, heartbeats, and failure injection."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

AGENT_ID = "agent-1"
TOKEN = "agent-token-1"


def iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class FakeAgentApi:
    def __init__(self) -> None:
        self.credentials = {"server": "Demo-Server", "login": 12345678, "password": "secret"}
        # The server's clock runs this many seconds ahead of the agent's.
        self.skew = 0.0
        self.price_source = True
        # Failure injection: how many of the next calls of each kind answer 503.
        self.fail = {"credentials": 0, "poll": 0, "result": 0, "prices": 0, "heartbeat": 0}
        self.pending: list[dict[str, Any]] = []
        self.running: dict[str, dict[str, Any]] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.heartbeats: list[dict[str, Any]] = []
        self.price_batches: list[dict[str, Any]] = []
        self.price_attempts = 0
        self.polls = 0
        # Set while the server shuts down: pending long polls answer 204 at once.
        self.closing = False
        self.failures_served = 0
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self.app = Starlette(
            routes=[
                Route("/api/v1/agents/{agent_id}/heartbeat", self.heartbeat, methods=["POST"]),
                Route("/api/v1/agents/{agent_id}/credentials", self.get_credentials),
                Route("/api/v1/agents/{agent_id}/jobs/next", self.next_job),
                Route(
                    "/api/v1/agents/{agent_id}/jobs/{job_id}/result",
                    self.post_result,
                    methods=["POST"],
                ),
                Route("/api/v1/agents/{agent_id}/prices", self.prices, methods=["POST"]),
            ]
        )

    # -- what tests call -------------------------------------------------------------------

    def server_now(self) -> float:
        return time.time() + self.skew

    async def add_job(
        self, job_type: str, input_data: dict[str, Any], *, expires_in: float = 30.0
    ) -> str:
        job_id = f"job-{next(self._ids)}"
        now = self.server_now()
        self.pending.append(
            {
                "id": job_id,
                "job_type": job_type,
                "input_data": input_data,
                "created_at": iso(now),
                "expires_at": iso(now + expires_in),
            }
        )
        await self._notify()
        return job_id

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def wait_result(self, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
        await self.wait_for(lambda: job_id in self.results, timeout)
        return self.results[job_id]

    async def release_polls(self) -> None:
        """Lets pending long polls answer now (server shutdown)."""
        self.closing = True
        await self._notify()

    # -- routes ----------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _refuse(self, request: Request, kind: str | None = None) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {TOKEN}" or (
            request.path_params["agent_id"] != AGENT_ID
        ):
            return JSONResponse({"detail": "invalid_agent_token"}, status_code=401)
        if kind is not None and self.fail[kind] > 0:
            self.fail[kind] -= 1
            self.failures_served += 1
            return JSONResponse({"detail": "internal_error"}, status_code=503)
        return None

    async def heartbeat(self, request: Request) -> Response:
        if refused := self._refuse(request, "heartbeat"):
            return refused
        self.heartbeats.append(await request.json())
        await self._notify()
        return JSONResponse({"server_time": iso(self.server_now())})

    async def get_credentials(self, request: Request) -> Response:
        if refused := self._refuse(request, "credentials"):
            return refused
        return JSONResponse(self.credentials)

    async def next_job(self, request: Request) -> Response:
        self.polls += 1
        await self._notify()
        if refused := self._refuse(request, "poll"):
            return refused
        wait = float(request.query_params.get("wait", 25))
        try:
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: bool(self.pending) or self.closing), wait
                )
        except TimeoutError:
            return Response(status_code=204)
        if not self.pending:
            return Response(status_code=204)
        job = self.pending.pop(0)
        self.running[job["id"]] = job
        return JSONResponse(job)

    async def post_result(self, request: Request) -> Response:
        if refused := self._refuse(request, "result"):
            return refused
        job_id = request.path_params["job_id"]
        if job_id not in self.running:
            return JSONResponse({"detail": "job_not_running"}, status_code=409)
        del self.running[job_id]
        self.results[job_id] = await request.json()
        await self._notify()
        return JSONResponse({"ok": True})

    async def prices(self, request: Request) -> Response:
        self.price_attempts += 1
        if refused := self._refuse(request, "prices"):
            await self._notify()
            return refused
        if not self.price_source:
            await self._notify()
            return JSONResponse(
                {"detail": "not_price_source", "message": "not a price source"}, status_code=403
            )
        body = await request.json()
        self.price_batches.append(body)
        await self._notify()
        return JSONResponse({"accepted": len(body)}, status_code=202)
