"""The API's own documentation: Swagger UI at `/docs`, served with its assets from the
installed `fastapi-swagger` package (no CDN: it works offline), and an OpenAPI document
that tells the truth about the answers every operation can give.

FastAPI documents what a route declares. What the framework, our middleware and our error
handlers answer on their own is added here once, for every operation, so a new route is
documented like the others without repeating it: `400 bad_request` and `413 body_too_large`
wherever a body is read, FastAPI's list-shaped validation 422 next to a route's own 422
bodies (`order_rejected`, `broker_error`, ...), which it would otherwise replace, and
`503 database_unavailable` on every API route.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from app.api.body_limit import MAX_BODY_BYTES
from app.schemas.common import ErrorBody

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
# fastapi-swagger ships Swagger UI's dist files in this folder, under these names.
SWAGGER_ASSETS = ("fastapi_swagger", "resources")
SWAGGER_JS, SWAGGER_CSS, SWAGGER_FAVICON = (
    "swagger-ui-bundle.js",
    "swagger-ui.css",
    "favicon-32x32.png",
)

DESCRIPTION = """\
The contract, with everything below in full, is `docs/API.md` in the repository.

**Authentication.** Users send `Authorization: Bearer <access_token>` (from
`POST /api/v1/auth/register` or `/auth/login`); agents send their agent token on the
`/api/v1/agents/{agent_id}/...` routes. Trading routes need a completed onboarding.

**Errors.** Domain errors are `{"detail": "<snake_case_code>", "message": "<sentence>"}`
(plus fields where noted); request validation errors keep FastAPI's 422 shape, where
`detail` is a list of `{type, loc, msg, input}`. A body that cannot be read as UTF-8 JSON
is `400 bad_request`; a body over 1 MiB is `413 body_too_large`; a method a path does not
have is `405 method_not_allowed` with `Allow` listing the ones it has; a database that
went away is `503 database_unavailable`.

## Prices over WebSocket

Swagger UI cannot open a WebSocket; these two routes are described here.

### `WS /ws/prices/{instrument}?token=<access_token>`

The ticks of one instrument. The token is checked on connect. If Redis holds a last tick
for the instrument (`prices:{instrument}`), it is sent at once; then every tick published
on `prices:{instrument}`, by any API process:

    {"type": "tick",
     "data": {"instrument": "EURUSD", "bid": 1.0845, "ask": 1.0847, "ts": 1764018903120}}

(`ts` in epoch milliseconds). An instrument name must match `^[A-Za-z0-9._#-]{1,32}$`.

### `WS /ws/prices?token=<access_token>`

The same stream for many instruments on one socket. The client sends

    {"type": "subscribe", "instruments": ["EURUSD", "XAUUSD"]}
    {"type": "unsubscribe", "instruments": ["XAUUSD"]}

and gets the last tick of each newly subscribed instrument, then the answer
`{"type": "subscriptions", "instruments": [...]}` with the full set it now receives, then
`tick` messages as above. At most 100 instruments per socket. A malformed message is
answered with `{"type": "error", "detail": "<code>", "message": "..."}` and the socket
stays open; codes: `invalid_json`, `invalid_message`, `message_too_large`,
`unknown_message_type`, `invalid_instruments`, `invalid_instrument`,
`too_many_instruments`.

### Close codes (both routes)

| code | why |
|---|---|
| `4001` | missing, bad or expired token (also when it expires while the socket is open) |
| `1008` | an invalid instrument name in the path |
| `1013` | the client stopped reading (after `WS_STALL_TIMEOUT_SECONDS`, 10 by default) |
| `1012` | the server is restarting |

A client that falls behind gets the newest tick of each instrument; older unsent ticks
are dropped, and it never delays the other clients.

## Account events over WebSocket

### `WS /ws/account?token=<access_token or API key>[&broker_connection_id=<id>][&since=<event_id>]`

What happens on one broker account (the oldest connection by default). The first message
is a snapshot, `{"type": "snapshot", "seq": 0, "data": {"last_event_id", "account",
"positions", "pending_orders", "agent"}}`, then every event as `{"type": "event", "seq": N,
"event": {"id", "kind", "at", "data"}}`. With `since`, the events after that id are
replayed first instead of the snapshot (a `since` the log does not hold gets the
snapshot). `{"type": "ping"}` is answered `{"type": "pong"}`; any other message
`{"type": "error", "detail", "message"}`. Close codes: `4001` credentials (also when they
expire or the key is revoked), `4003` onboarding incomplete, `4004` not your connection,
`1008` too many sockets, `1013` a client that cannot keep up (resume with `since`).

## The agent link

### `WS /ws/agents/{agent_id}` (`Authorization: Bearer <agent_token>`, or `?token=`)

The agent's jobs pushed as they exist, `{"type": "job", "job"}` (claimed as pushed; the
agent answers `{"type": "claimed", "job_id"}` at once), and back up the same socket
`result`, `heartbeat`, `events` and `ping`, each answered (`result_accepted`,
`heartbeat_accepted`, `events_accepted`, `pong`) or refused with `{"type": "error",
"detail", "message"}` (the link stays open). The first message is `welcome`. Close codes:
`4001` a bad token (also when it is rotated or its connection deleted), `4009` a newer link
for the agent opened, `1001` shutting down. While the link is open the agent is online;
when it closes, offline at once. See docs/API.md for every message.
"""

ERROR_BODY_REF = {"$ref": "#/components/schemas/ErrorBody"}
VALIDATION_ERROR_REF = {"$ref": "#/components/schemas/HTTPValidationError"}
# FastAPI's own definitions of its 422 body, for a document where no route made it add them.
VALIDATION_ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "ValidationError": {
        "title": "ValidationError",
        "type": "object",
        "properties": {
            "loc": {
                "title": "Location",
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            },
            "msg": {"title": "Message", "type": "string"},
            "type": {"title": "Error Type", "type": "string"},
            "input": {"title": "Input"},
            "ctx": {"title": "Context", "type": "object"},
        },
        "required": ["loc", "msg", "type"],
    },
    "HTTPValidationError": {
        "title": "HTTPValidationError",
        "type": "object",
        "properties": {
            "detail": {
                "title": "Detail",
                "type": "array",
                "items": {"$ref": "#/components/schemas/ValidationError"},
            }
        },
    },
}
BODY_ERRORS: dict[str, dict[str, Any]] = {
    "400": {
        "description": "`bad_request`: the body could not be read (e.g. it is not UTF-8).",
        "content": {"application/json": {"schema": ERROR_BODY_REF}},
    },
    "413": {
        "description": f"`body_too_large`: the body is over {MAX_BODY_BYTES} bytes.",
        "content": {"application/json": {"schema": ERROR_BODY_REF}},
    },
}
VALIDATION_FAILED = "Validation Error: `detail` is FastAPI's list of errors"
DATABASE_UNAVAILABLE = "`database_unavailable`: the database connection was lost; try again."
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


CROSS_FIELD_RULES = "x-cross-field-rules"


def cross_field_rules(*rules: str) -> dict[str, Any]:
    """A route's `openapi_extra` naming the rules between its inputs that JSON Schema cannot
    express (so input the schema allows may still be a 422); shown by Swagger UI, and the
    schemathesis run in the suite takes a 422 for valid input as an answer there only."""
    return {CROSS_FIELD_RULES: list(rules)}


def install_docs(app: FastAPI) -> None:
    """Serves `/docs` from local assets and completes the OpenAPI document.

    The app must be created with `docs_url=None, redoc_url=None` (ReDoc is not served:
    its bundle would be a second copy of a UI to keep up to date)."""
    app.mount(ASSETS_URL, StaticFiles(packages=[SWAGGER_ASSETS]), name="docs_assets")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{ASSETS_URL}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{ASSETS_URL}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{ASSETS_URL}/{SWAGGER_FAVICON}",
            # No badge from the online validator: the page loads nothing from elsewhere.
            swagger_ui_parameters={"validatorUrl": None},
        )

    app.add_api_route(DOCS_URL, swagger_ui, methods=["GET"], include_in_schema=False)

    generate = app.openapi
    completed: list[dict[str, Any]] = []  # the document last completed (FastAPI caches it)

    def openapi() -> dict[str, Any]:
        schema = generate()
        if not completed or completed[0] is not schema:
            document_framework_errors(schema)
            completed[:] = [schema]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_framework_errors(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorBody", ErrorBody.model_json_schema())
    for path, operation in operations(schema):
        answers: dict[str, Any] = operation.setdefault("responses", {})
        if "requestBody" in operation:
            for status, answer in BODY_ERRORS.items():
                answers.setdefault(status, answer)
        if "requestBody" in operation or operation.get("parameters"):
            also_allow(answers, "422", VALIDATION_ERROR_REF, VALIDATION_FAILED)
        if path.startswith("/api/"):  # every API route reads the database
            also_allow(answers, "503", ERROR_BODY_REF, DATABASE_UNAVAILABLE)
    if any("422" in operation["responses"] for _, operation in operations(schema)):
        for name, definition in VALIDATION_ERROR_SCHEMAS.items():
            components.setdefault(name, definition)


def also_allow(answers: dict[str, Any], status: str, body: dict[str, Any], text: str) -> None:
    """Adds a body shape (and its description) to a status, next to what a route declared
    for it: a route's own 422 replaces FastAPI's list in the document, not on the wire."""
    answer = answers.setdefault(status, {"description": text})
    if text not in answer["description"]:
        answer["description"] = f"{answer['description'].rstrip('.')}; or {text}"
    media = answer.setdefault("content", {}).setdefault("application/json", {})
    declared = media.get("schema")
    if declared is None:
        media["schema"] = body
    elif declared != body and body not in declared.get("anyOf", []):
        media["schema"] = {"anyOf": [body, declared]}


def operations(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path, operation)
        for path, item in schema.get("paths", {}).items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]
