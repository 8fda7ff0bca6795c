"""One pure ASGI middleware for every HTTP request: its id, its metrics, its rate-limit
headers. Price sockets never reach it (they are routed ahead of it, app/ws/price_stream)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.route_templates import route_template
from app.core.logging import request_id
from app.core.metrics import REQUEST_SECONDS, REQUESTS

REQUEST_ID_HEADER = "x-request-id"
# A client's own id is kept when it is a plain token (a proxy's, a tracing system's);
# anything else is replaced, since it ends up in log lines.
ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
UNMATCHED = "unmatched"


def incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if ACCEPTED_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestObservability:
    def __init__(self, app: ASGIApp, *, metrics: bool = True) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_request_id(scope)
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before it answers

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append("X-Request-ID", rid)
                state: MutableMapping[str, Any] = scope.get("state") or {}
                counted = state.get("rate_limit")  # app/services/rate_limits.CountedCall
                if counted is not None:
                    for name, value in (await counted.headers()).items():
                        headers.append(name, value)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            request_id.reset(token)
            if self.metrics:
                route = route_template(scope) or UNMATCHED
                REQUESTS.labels(scope["method"], route, str(status)).inc()
                REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
