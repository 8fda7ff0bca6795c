"""Dependencies as typed aliases: resources, the request's unit of work, who is calling.

Every dependency is `async def`, even the trivial ones: FastAPI runs a plain `def`
dependency in the thread pool, a thread hop per dependency per request.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import Depends, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection, Request

from app.api.route_templates import route_template
from app.core.config import Settings
from app.core.errors import InsufficientScope, OnboardingIncomplete
from app.core.rate_limits import RateLimiter
from app.dispatch import JobStore
from app.models import Agent, User
from app.resources import Resources
from app.schemas.trading import SYMBOL_PATTERN, Timeframe
from app.services.agents import authenticate_agent
from app.services.api_keys import ApiKeyGrant
from app.services.candles import CandleFlights, CandleQuery, CandleSource
from app.services.principals import Principal, authenticate
from app.services.rate_limits import limit_trading_call
from app.services.trading import Trading, UserAccount


def resources_of(connection: HTTPConnection) -> Resources:
    """The process's resources, from a request or a WebSocket."""
    resources: Resources = connection.app.state.resources
    return resources


async def get_resources(connection: HTTPConnection) -> Resources:
    return resources_of(connection)


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_settings(resources: ResourcesDep) -> Settings:
    return resources.settings


async def get_session_factory(resources: ResourcesDep) -> async_sessionmaker[AsyncSession]:
    return resources.session_factory


async def get_redis(resources: ResourcesDep) -> Redis:
    return resources.redis


async def get_limiter(resources: ResourcesDep) -> RateLimiter:
    return resources.limiter


async def get_client_address(connection: HTTPConnection) -> str:
    # uvicorn has already replaced it with X-Forwarded-For's when the peer is a trusted
    # proxy (FORWARDED_ALLOW_IPS), and only then.
    return connection.client.host if connection.client else "unknown"


SettingsDep = Annotated[Settings, Depends(get_settings)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]
ClientAddress = Annotated[str, Depends(get_client_address)]
SessionFactoryDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_session_factory)]
RedisDep = Annotated[Redis, Depends(get_redis)]


async def get_db(resources: ResourcesDep) -> AsyncEngine:
    return resources.single_statement_engine


DbDep = Annotated[AsyncEngine, Depends(get_db)]


async def get_session(factory: SessionFactoryDep) -> AsyncIterator[AsyncSession]:
    """The request's unit of work: commits when the route returns, rolls back on error."""
    async with factory() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()


# scope="function": the commit lands before the response is sent.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]

bearer = HTTPBearer(
    auto_error=False, description="An access token from /auth/login, or an API key (mt5g_...)."
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


# Paths no API key may use whatever its scopes (creating keys, onboarding, and the broker
# connections but for reading them: provisioning hands out an agent token).
KEYLESS_PATHS = ("/api/v1/api-keys", "/api/v1/onboarding/")
KEY_READ_ONLY_PATHS = ("/api/v1/broker-connections",)
READ_METHODS = {"GET", "HEAD"}


def check_key_scope(grant: ApiKeyGrant, method: str, route_path: str) -> None:
    """One rule for every route, by method and path template, rather than a declaration on
    each route: a route added later is closed to read keys without anyone remembering it."""
    if route_path.startswith(KEYLESS_PATHS):
        raise InsufficientScope()
    if method in READ_METHODS:
        return
    if route_path.startswith(KEY_READ_ONLY_PATHS) or not grant.may_trade:
        raise InsufficientScope()


async def get_principal(
    credentials: BearerDep, resources: ResourcesDep, request: Request
) -> Principal:
    principal = await authenticate(credentials.credentials if credentials else None, resources)
    if principal.api_key is not None:
        route_path = route_template(request.scope) or request.url.path
        check_key_scope(principal.api_key, request.method, route_path)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def get_current_user(principal: CurrentPrincipal) -> User:
    return principal.user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def limit_user_calls(user: CurrentUser, resources: ResourcesDep, request: Request) -> None:
    """The per-user limit of the onboarding-gated routes, across all the user's tokens and
    keys; its state goes to the response's X-RateLimit-* headers (app/api/observability)."""
    if not resources.settings.rate_limit_enabled:
        return
    request.state.rate_limit = await limit_trading_call(
        resources.limiter, resources.trading_limit, user.id
    )


async def get_onboarded_user(
    user: CurrentUser, _limited: Annotated[None, Depends(limit_user_calls)]
) -> User:
    if not user.onboarding_completed:
        raise OnboardingIncomplete()
    return user


OnboardedUser = Annotated[User, Depends(get_onboarded_user)]


async def get_job_store(resources: ResourcesDep) -> JobStore:
    return resources.jobs


JobStoreDep = Annotated[JobStore, Depends(get_job_store)]


async def get_current_agent(
    agent_id: str, credentials: BearerDep, resources: ResourcesDep
) -> Agent:
    """The agent named in the path, if the bearer token is its own (counts as a heartbeat)."""
    return await authenticate_agent(
        resources.single_statement_engine,
        agent_id=agent_id,
        token=credentials.credentials if credentials else None,
    )


CurrentAgent = Annotated[Agent, Depends(get_current_agent)]


async def get_trading(resources: ResourcesDep) -> Trading:
    return Trading(
        jobs=resources.jobs, session_factory=resources.session_factory, settings=resources.settings
    )


TradingDep = Annotated[Trading, Depends(get_trading)]
ConnectionQuery = Annotated[
    uuid.UUID | None,
    Query(description="The broker connection to use; your oldest one when omitted."),
]


async def get_user_account(
    user: OnboardedUser, trading: TradingDep, broker_connection_id: ConnectionQuery = None
) -> UserAccount:
    """The account a trading call acts on: the `broker_connection_id` query parameter's."""
    return UserAccount(trading, user.id, broker_connection_id)


UserAccountDep = Annotated[UserAccount, Depends(get_user_account)]


async def get_candle_flights(connection: HTTPConnection) -> CandleFlights:
    flights: CandleFlights = connection.app.state.candle_flights
    return flights


CandleFlightsDep = Annotated[CandleFlights, Depends(get_candle_flights)]


async def get_candle_source(
    source: Annotated[
        Literal["feed", "account"],
        Query(
            description="`feed`: the platform's price feed, cached for everyone. `account`: "
            "your own broker through your connection's agent, cached for that connection."
        ),
    ] = "feed",
    broker_connection_id: Annotated[
        uuid.UUID | None,
        Query(description="With `source=account` only: the connection; your oldest one."),
    ] = None,
) -> CandleSource:
    if source == "feed" and broker_connection_id is not None:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "broker_connection_id"),
                    "msg": "broker_connection_id needs source=account: the feed is the "
                    "platform's, not a connection's",
                    "input": str(broker_connection_id),
                }
            ]
        )
    return CandleSource(source, broker_connection_id)


async def get_candle_query(
    instrument: Annotated[str, Path(pattern=SYMBOL_PATTERN, examples=["EURUSD"])],
    user: OnboardedUser,
    source: Annotated[CandleSource, Depends(get_candle_source)],
    timeframe: Timeframe = "H1",
    count: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> CandleQuery:
    return CandleQuery(user.id, source, instrument, timeframe, count)


CandleQueryDep = Annotated[CandleQuery, Depends(get_candle_query)]
