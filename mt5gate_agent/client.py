"""The agent's side of the API: the ``/api/v1/agents/{agent_id}/...`` routes, over httpx."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx


class AgentApiError(Exception):
    """The API answered with a status the agent did not expect (``detail`` is its code)."""

    def __init__(self, status_code: int, detail: str, message: str = "") -> None:
        super().__init__(f"HTTP {status_code} {detail}" + (f": {message}" if message else ""))
        self.status_code = status_code
        self.detail = detail
        self.message = message


@dataclass(frozen=True, slots=True)
class Credentials:
    server: str
    login: int
    password: str

    def __repr__(self) -> str:
        return f"Credentials(server={self.server!r}, login={self.login!r}, password='***')"


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    job_type: str
    input_data: dict[str, Any]
    created_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    server_time: datetime
    # The server's clock minus ours, estimated at the middle of the round trip.
    clock_offset: float


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

    async def heartbeat(self, *, version: str, terminal_connected: bool) -> Heartbeat:
        sent = time.time()
        response = await self._http.post(
            "/heartbeat", json={"version": version, "terminal_connected": terminal_connected}
        )
        received = time.time()
        body = _json(response)
        server_time = parse_time(body.get("server_time"))
        if server_time is None:
            raise AgentApiError(response.status_code, "bad_response", "heartbeat without time")
        offset = server_time.timestamp() - (sent + received) / 2
        return Heartbeat(server_time=server_time, clock_offset=offset)

    async def credentials(self) -> Credentials:
        response = await self._http.get("/credentials")
        body = _json(response)
        try:
            return Credentials(str(body["server"]), int(body["login"]), str(body["password"]))
        except (KeyError, TypeError, ValueError):
            raise AgentApiError(200, "bad_response", "malformed credentials") from None

    async def next_job(self, wait: int) -> Job | None:
        """Claims the next job, waiting up to ``wait`` seconds; None when there is none."""
        response = await self._http.get(
            "/jobs/next", params={"wait": wait}, timeout=self._timeout + wait
        )
        if response.status_code == 204:
            return None
        body = _json(response)
        try:
            input_data = body.get("input_data") or {}
            if not isinstance(input_data, dict):
                raise TypeError("input_data is not an object")
            return Job(
                id=str(body["id"]),
                job_type=str(body["job_type"]),
                input_data=input_data,
                created_at=parse_time(body.get("created_at")),
                expires_at=parse_time(body.get("expires_at")),
            )
        except (KeyError, TypeError):
            raise AgentApiError(200, "bad_response", "malformed job") from None

    async def post_result(self, job_id: str, result: dict[str, Any]) -> None:
        response = await self._http.post(f"/jobs/{quote(job_id, safe='')}/result", json=result)
        _json(response)

    async def push_prices(self, ticks: dict[str, dict[str, Any]]) -> None:
        response = await self._http.post("/prices", json=ticks)
        _json(response)


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
