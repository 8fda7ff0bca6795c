"""Serves the dashboard: `/` (the page), `/dashboard/...` (its modules, styles and the
vendored chart library) and `/dashboard/config.json` (what the page may offer here).

Every response carries the contract's security headers. The page and our own modules are
revalidated on each load (`no-cache` with an ETag: their names carry no version, so a
new release must never be shadowed by a cached one); the vendored library's name carries
its version, so it is cached for good.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Scope

STATIC_DIR = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
REVALIDATE = "no-cache"
FOREVER = "public, max-age=31536000, immutable"
# Module scripts are refused unless served as JavaScript; `mimetypes` of Python 3.11 does
# not know `.mjs`, and a system's mime.types may say anything.
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}
# The routes that came after the first release: the page offers what they serve only
# where this server has them, and so never calls a route that is not there.
OPTIONAL_ROUTES = {
    "pending_orders": "/api/v1/pending-orders",
    "history": "/api/v1/history/deals",
    "symbols": "/api/v1/symbols",
    "jobs": "/api/v1/jobs/{job_id}",
    "api_keys": "/api/v1/api-keys",
}
ACCOUNT_STREAM_PATH = "/ws/account"
PROBE_TIMEOUT_SECONDS = 2.0


class DashboardFiles(StaticFiles):
    def file_response(self, full_path: Any, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(full_path, *args, **kwargs)
        path = Path(str(full_path))
        media_type = MEDIA_TYPES.get(path.suffix)
        if media_type is not None:
            response.headers["Content-Type"] = media_type
        response.headers["Cache-Control"] = FOREVER if path.parent.name == "vendor" else REVALIDATE
        response.headers.update(SECURITY_HEADERS)
        return response


def install_dashboard(app: FastAPI) -> None:
    """Adds the dashboard's routes; after the API's, so that they never shadow one."""
    files = DashboardFiles(directory=STATIC_DIR)
    router = APIRouter(include_in_schema=False)

    @router.api_route("/", methods=["GET", "HEAD"])
    async def dashboard_page(request: Request) -> Response:
        return await files.get_response("index.html", request.scope)

    @router.get("/dashboard/config.json")
    async def dashboard_config(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "demo_login": getattr(request.app.state, "dashboard_demo_login", None),
                "features": await features_of(request.app),
            },
            headers={"Cache-Control": "no-store", **SECURITY_HEADERS},
        )

    app.include_router(router)
    app.mount("/dashboard", files, name="dashboard")


def enable_demo_sign_in(app: FastAPI, *, email: str, password: str) -> None:
    """`mt5gate demo`: the page offers a one-click sign-in as the demo user, whose login is
    public (the demo prints it)."""
    app.state.dashboard_demo_login = {"email": email, "password": password}


async def features_of(app: FastAPI) -> dict[str, bool]:
    cached: dict[str, bool] | None = getattr(app.state, "dashboard_features", None)
    if cached is None:
        # The OpenAPI paths carry the full templates, prefixes included, however FastAPI
        # keeps included routers (recent releases resolve their prefixes when routing).
        paths = app.openapi()["paths"]
        cached = {name: path in paths for name, path in OPTIONAL_ROUTES.items()}
        cached["account_stream"] = await serves_websocket(app, ACCOUNT_STREAM_PATH)
        app.state.dashboard_features = cached
    return cached


async def serves_websocket(app: FastAPI, path: str) -> bool:
    """Whether a handshake on `path` reaches a handler, however the app routes it (a
    router or an ASGI middleware ahead of it): one handshake without credentials, in
    process. Starlette turns away a path it has no route for by closing before accepting,
    with code 1000; a handler refuses a socket without credentials with its own code."""
    sent: list[Message] = []
    handshakes = 0

    async def receive() -> Message:
        nonlocal handshakes
        handshakes += 1
        if handshakes == 1:
            return {"type": "websocket.connect"}
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "scheme": "ws",
        "http_version": "1.1",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "subprotocols": [],
        "state": {},
    }
    with contextlib.suppress(Exception):
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await app(scope, receive, send)
    if not sent:
        return False
    first = sent[0]
    if first["type"] == "websocket.accept":
        return True
    return first["type"] == "websocket.close" and first.get("code", 1000) != 1000
