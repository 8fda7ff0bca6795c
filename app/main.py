"""The app factory and its lifespan, which owns every long-lived resource."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

from fastapi import APIRouter, FastAPI

from app.api.body_limit import BodySizeLimit
from app.api.docs import DESCRIPTION, install_docs
from app.api.observability import RequestObservability
from app.api.route_templates import route_templates
from app.api.routes import (
    agent_events,
    agents,
    api_keys,
    auth,
    broker_connections,
    health,
    history,
    jobs,
    pending_orders,
    prices,
    symbols,
    trading,
    users,
)
from app.core.config import Settings
from app.core.errors import install_error_handlers
from app.core.migrate import upgrade_to_head_async
from app.resources import open_resources
from app.services.candles import CandleFlights
from app.web import install_dashboard
from app.ws import account_stream, agent_link
from app.ws.price_routes import PriceSocketRoutes

log = logging.getLogger("mt5gate.app")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the app; raises ConfigError when the settings are unsafe (see Settings)."""
    settings = (settings or Settings()).with_secrets()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.is_sqlite:
            await upgrade_to_head_async(settings.database_url)
        async with open_resources(settings) as resources, aclosing(CandleFlights()) as flights:
            app.state.resources = resources
            app.state.candle_flights = flights
            log.info("event=started env=%s", settings.mt5gate_env)
            yield
            log.info("event=stopping")

    app = FastAPI(
        title="mt5gate",
        version="0.1.0",
        summary="A REST and WebSocket trading gateway for MetaTrader 5 accounts.",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by install_docs, from local assets
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    install_error_handlers(app)
    api = APIRouter(prefix="/api/v1")
    api.include_router(auth.router)
    api.include_router(users.router)
    api.include_router(broker_connections.router)
    api.include_router(agents.router)
    api.include_router(agent_events.router)
    api.include_router(trading.router)
    api.include_router(api_keys.router)
    api.include_router(pending_orders.router)
    api.include_router(history.router)
    api.include_router(symbols.router)
    api.include_router(jobs.router)
    api.include_router(prices.router)
    app.include_router(api)
    app.include_router(health.router)
    app.add_api_websocket_route("/ws/account", account_stream.account_events, name="account_events")
    app.add_api_websocket_route("/ws/agents/{agent_id}", agent_link.agent_link, name="agent_link")
    install_docs(app)
    install_dashboard(app)  # `/` and `/dashboard/...`, after the API's routes
    app.state.route_templates = route_templates(app)
    app.add_middleware(BodySizeLimit)
    app.add_middleware(RequestObservability, metrics=settings.metrics_enabled)
    # The price sockets, matched ahead of every route above: see app/ws/price_routes.
    app.add_middleware(PriceSocketRoutes)
    return app
