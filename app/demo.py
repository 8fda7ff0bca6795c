"""`mt5gate demo`: the API, a simulated price-source agent and an onboarded demo user.

Everything runs in one process on the configured stores (by default the embedded ones:
SQLite under ./var/ and the in-process Redis stand-in). Ctrl-C stops the agent, then the
API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import sys
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, select

from app.core.config import Settings
from app.core.security import create_access_token
from app.main import create_app
from app.models import ApiKey, BrokerConnection, User
from app.resources import Resources
from app.server import GatewayServer, server_config
from app.services import api_keys, broker_connections, users
from app.services.agents import set_price_source
from app.web import enable_demo_sign_in
from mt5gate_agent.config import DEFAULT_PRICE_SYMBOLS, AgentConfig
from mt5gate_agent.runner import TokenRefused, run_agent

log = logging.getLogger("mt5gate.demo")

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password"
DEMO_KEY_NAME = "mt5gate demo"
AGENT_STOP_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class DemoAccount:
    user_id: uuid.UUID
    agent_id: uuid.UUID
    agent_token: str
    api_key: str


async def prepare_demo_account(resources: Resources) -> DemoAccount:
    """The demo user, onboarded, with a connection whose agent is a price source.

    Idempotent across runs; the agent's token is rotated each time, since only its hash
    is stored.
    """
    async with resources.session_factory() as session:
        user = await session.scalar(select(User).where(User.email == DEMO_EMAIL))
        if user is None:
            user = await users.register_user(session, email=DEMO_EMAIL, password=DEMO_PASSWORD)
        connection = await session.scalar(
            select(BrokerConnection).where(BrokerConnection.user_id == user.id).limit(1)
        )
        if connection is None:
            connection = await broker_connections.create_connection(
                session,
                fernet=resources.settings.fernet,
                user_id=user.id,
                server="mt5gate-sim",
                login=1000001,
                password="sim",
                label="Simulator",
            )
        agent, token = await broker_connections.provision_agent(
            session, user_id=user.id, connection_id=connection.id
        )
        await users.complete_onboarding(session, user=user)
        # A new key each run (only hashes are kept), replacing the last run's.
        await session.execute(
            delete(ApiKey).where(ApiKey.user_id == user.id, ApiKey.name == DEMO_KEY_NAME)
        )
        _, api_key = await api_keys.create_api_key(
            session, user_id=user.id, name=DEMO_KEY_NAME, scopes=["read", "trade"], expires_at=None
        )
        await session.commit()
    await set_price_source(resources.session_factory, agent_id=agent.id, enabled=True)
    return DemoAccount(user.id, agent.id, token, api_key)


def banner(base_url: str, access_token: str, api_key: str) -> str:
    api = f"{base_url}/api/v1"
    ws = base_url.replace("http://", "ws://", 1)
    auth = '-H "Authorization: Bearer $TOKEN"'
    order = shlex.quote('{"symbol": "EURUSD", "side": "buy", "volume": 0.1}')
    return f"""
mt5gate demo is running: API + simulated broker agent + demo user.

  Dashboard    {base_url}/
  API docs     {base_url}/docs
  Demo login   {DEMO_EMAIL} / {DEMO_PASSWORD}

Copy, paste, trade:

  export TOKEN={access_token}
  curl -s -X POST {api}/orders {auth} -H 'Content-Type: application/json' -d {order}
  curl -s {api}/positions {auth}
  {sys.executable} -m websockets "{ws}/ws/prices/EURUSD?token=$TOKEN"

A demo API key (read + trade) for programs, usable wherever $TOKEN is:

  export MT5GATE_API_KEY={api_key}
  curl -s {api}/account -H "Authorization: Bearer $MT5GATE_API_KEY"

Ctrl-C stops it.
"""


async def run(settings: Settings, host: str, port: int) -> int:
    app = create_app(settings)
    enable_demo_sign_in(app, email=DEMO_EMAIL, password=DEMO_PASSWORD)
    # Four price pushes a second in the access log would drown everything else.
    config = server_config(app, settings, host=host, port=port, access_log=False)
    server = GatewayServer(config, app)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving
            print(f"mt5gate demo: could not serve on {host}:{port}", file=sys.stderr)
            return 1
        await asyncio.sleep(0.02)

    resources: Resources = app.state.resources
    account = await prepare_demo_account(resources)
    base_url = f"http://{host}:{port}"
    stop = asyncio.Event()
    agent = asyncio.create_task(
        run_agent(
            AgentConfig(
                api_url=base_url,
                agent_id=str(account.agent_id),
                token=account.agent_token,
                backend="sim",
                price_symbols=DEFAULT_PRICE_SYMBOLS,
            ),
            stop,
        ),
        name="demo-agent",
    )
    token = create_access_token(
        account.user_id,
        secret=settings.jwt_secret,
        algorithm=settings.jwt_algorithm,
        ttl_seconds=max(settings.access_token_ttl_seconds, 24 * 3600),
    )
    print(banner(base_url, token.token, account.api_key), flush=True)

    # uvicorn owns SIGINT/SIGTERM; once it starts shutting down, the agent stops too.
    while not server.should_exit and not serving.done():
        await asyncio.sleep(0.1)
    stop.set()
    # TokenRefused: the demo user rotated the agent's token; the agent stopped then.
    with contextlib.suppress(TimeoutError, TokenRefused):
        await asyncio.wait_for(agent, AGENT_STOP_TIMEOUT_SECONDS)
    await serving
    log.info("event=demo_stopped")
    return 0


def run_demo(settings: Settings, host: str, port: int) -> int:
    settings = settings.with_secrets()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return asyncio.run(run(settings, host, port))
