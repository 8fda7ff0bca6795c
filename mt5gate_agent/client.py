"""The agent's side of the API: the ``/api/v1/agents/{agent_id}/...`` routes, over httpx.

What it sends and reads are the protocol's models (``mt5gate_protocol``), the same ones the
server's routes declare.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from mt5gate_protocol.agent import Credentials, Heartbeat, PricesAccepted, ServerTime
from mt5gate_protocol.jobs import (
    CompletedResult,
    FailedResult,
    JobEnvelope,
    JobResultAccepted,
    JobType,
)

__all__ = ["AgentApiError", "AgentClient", "Credentials", "HeartbeatReply", "JobEnvelope"]


class AgentApiError(Exception):
    """The API answered with a status the agent did not expect (``detail`` is its code)."""

    def __init__(self, status_code: int, detail: str, message: str = "") -> None:
        super().__init__(f"HTTP {status_code} {detail}" + (f": {message}" if message else ""))
        self.status_code = status_code
        self.detail = detail
        self.message = message


class EventsRefused(AgentApiError):
    """422 ``invalid_events``: the server refused an event batch whole; ``errors`` are its
    ``[{index, loc, msg}]``."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(422, "invalid_events", message)
        self.errors = errors


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    server_time: datetime
    # The server's clock minus ours, estimated at the middle of the round trip.
    clock_offset: float
    # The newest deal the server has for this connection (None: none, or an older server).
    last_deal_ticket: int | None = None


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 time from the API (``...Z`` included), or None when absent or malformed."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        # The contract's times are UTC; a naive one is read as UTC, not as local time.
        moment = moment.replace(tzinfo=UTC)
    return moment


def api_root(url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` and ``http://host:8000/api/v1`` → the
    ``/api/v1`` base."""
    url = url.rstrip("/")
    if url.endswith("/api/v1"):
        return url
    return url + "/api/v1"


class AgentClient:
    """One agent's authenticated HTTP session with the API."""

    def __init__(
        self,
        api_url: str,
        agent_id: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.agent_id = str(agent_id)
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=f"{api_root(api_url)}/agents/{quote(self.agent_id, safe='')}",
            headers={"Authorization": f"Bearer {token}", "User-Agent": "mt5gate-agent"},
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def heartbeat(self, *, version: str, terminal_connected: bool) -> HeartbeatReply:
        sent = time.time()
        beat = Heartbeat(version=version, terminal_connected=terminal_connected)
        response = await self._http.post("/heartbeat", json=beat.model_dump(mode="json"))
        received = time.time()
        body = _json(response)
        try:
            server_time = ServerTime.model_validate(body).server_time
        except ValidationError:
            raise AgentApiError(
                response.status_code, "bad_response", "heartbeat without time"
            ) from None
        if server_time.tzinfo is None:
            # The contract's times are UTC; a naive one is read as UTC, not as local time.
            server_time = server_time.replace(tzinfo=UTC)
        offset = server_time.timestamp() - (sent + received) / 2
        last_deal = body.get("last_deal_ticket")
        return HeartbeatReply(
            server_time=server_time,
            clock_offset=offset,
            last_deal_ticket=last_deal if type(last_deal) is int else None,
        )

    async def credentials(self) -> Credentials:
        response = await self._http.get("/credentials")
        try:
            return Credentials.model_validate(_json(response))
        except ValidationError:
            raise AgentApiError(200, "bad_response", "malformed credentials") from None

    async def next_job(self, wait: int) -> JobEnvelope | None:
        """Claims the next job, waiting up to ``wait`` seconds; None when there is none."""
        response = await self._http.get(
            "/jobs/next", params={"wait": wait}, timeout=self._timeout + wait
        )
        if response.status_code == 204:
            return None
        try:
            return parse_job(_json(response))
        except ValidationError:
            raise AgentApiError(200, "bad_response", "malformed job") from None

    async def post_result(
        self, job_id: uuid.UUID | str, result: CompletedResult | FailedResult
    ) -> JobResultAccepted:
        response = await self._http.post(
            f"/jobs/{quote(str(job_id), safe='')}/result",
            json=result.model_dump(mode="json", exclude_none=True),
        )
        return JobResultAccepted.model_validate(_json(response))

    async def post_events(self, events: list[dict[str, Any]]) -> None:
        """``POST /events`` (1–500 events); :class:`EventsRefused` on 422 invalid_events."""
        response = await self._http.post("/events", json={"events": events})
        if response.status_code == 422:
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("detail") == "invalid_events":
                errors = body.get("errors")
                raise EventsRefused(
                    str(body.get("message") or ""),
                    [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else [],
                )
        _json(response)

    async def push_prices(self, ticks: dict[str, dict[str, Any]]) -> PricesAccepted:
        """Sends the ticks as read from the terminal (a `PricePush` body); the server checks
        each one, so one odd quote is its 422, not a crash here."""
        response = await self._http.post("/prices", json=ticks)
        return PricesAccepted.model_validate(_json(response))


def parse_job(body: dict[str, Any]) -> JobEnvelope:
    """The claimed job in ``body``; raises ``ValidationError`` when it is malformed.

    A job type this agent does not know (a newer server) is handed on as it is, so that the
    backend refuses it (``unsupported_job_type``) and the server learns at once.
    """
    try:
        return JobEnvelope.model_validate(body)
    except ValidationError as exc:
        job_type = body.get("job_type")
        if not isinstance(job_type, str) or any(
            error["loc"] != ("job_type",) for error in exc.errors()
        ):
            raise
        known = JobEnvelope.model_validate({**body, "job_type": JobType.GET_ACCOUNT})
        return known.model_copy(update={"job_type": job_type})


def _json(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a 2xx answer (``{}`` if empty); :class:`AgentApiError` otherwise."""
    if not response.is_success:
        detail, message = f"http_{response.status_code}", ""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            if isinstance(body.get("detail"), str):
                detail = body["detail"]
            message = str(body.get("message") or "")
        raise AgentApiError(response.status_code, detail, message)
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        raise AgentApiError(response.status_code, "bad_response", "body is not JSON") from None
    return body if isinstance(body, dict) else {}
