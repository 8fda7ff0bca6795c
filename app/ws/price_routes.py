"""The price sockets' routes, matched ahead of FastAPI's router: why they are not in
`app.routes`.

An open socket keeps alive every coroutine it was routed through. Through FastAPI's
exception middleware, exit stack and included routers that is a dozen frames and closures,
~7 KB per socket; none of it does anything for these two handlers, which authenticate the
socket and handle their own errors (app/ws/price_stream). So `PriceSocketRoutes`, a pure
ASGI middleware that app/main.py adds outermost, serves `/ws/prices` and
`/ws/prices/{instrument}` itself and passes anything else on to the app. They are in the
served docs by hand (app/api/docs), not by FastAPI.
"""

from __future__ import annotations

from starlette.routing import Match, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from app.ws.price_stream import instrument_prices, prices

ROUTES = [
    WebSocketRoute("/ws/prices/{instrument}", instrument_prices, name="instrument_prices"),
    WebSocketRoute("/ws/prices", prices, name="prices"),
]


class PriceSocketRoutes:
    """Serves the price sockets ahead of the app's router (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            for route in ROUTES:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await route.endpoint(WebSocket(scope, receive, send))
                    return
        await self.app(scope, receive, send)
