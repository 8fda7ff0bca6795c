"""The trading routes: orders, positions, account and candles, for onboarded users only.

Each call is a job for the caller's own agent (see app/services); these routes parse,
pick the status code and return. The onboarding gate is the router's dependency, so no
route here can be reached without it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from app.api.deps import OnboardedUser, RedisDep, ResourcesDep, get_onboarded_user
from app.api.docs import cross_field_rules
from app.core.errors import OrderRejected
from app.schemas.common import ErrorBody
from app.schemas.orders import OrderCreate, OrderRead, OrderRejectedBody
from app.schemas.positions import BrokerErrorBody, JobPending, PositionClosed, PositionUpdate
from app.schemas.trading import SYMBOL_PATTERN, Account, Candle, Position, Timeframe
from app.services import orders as order_service
from app.services import trading as trading_service
from app.services.candles import CANDLES, CandleFlights, CandleSource, get_candles
from app.services.orders import Trading

Responses = dict[int | str, dict[str, Any]]


def error(code: str, description: str = "") -> dict[str, Any]:
    return {
        "model": ErrorBody,
        "description": f"`{code}`" + (f": {description}" if description else ""),
    }


AGENT_ERRORS: Responses = {
    404: error("not_found", "`broker_connection_id` is not one of yours."),
    409: error("no_agent", "no agent is provisioned for the connection."),
    503: error("agent_offline", "the agent's last heartbeat is too old, or there was none."),
}
BROKER_ERROR: Responses = {
    422: {
        "model": BrokerErrorBody,
        "description": "`broker_error`: the broker or the terminal refused; `error.code` says "
        "why (`invalid_symbol`, `market_closed`, ...).",
    }
}
READ_TIMEOUT: Responses = {504: error("agent_timeout", "no answer within the wait budget.")}
WRITE_PENDING: Responses = {
    202: {
        "model": JobPending,
        "description": "No answer within 10 s; it may still execute (`GET /positions` tells).",
    },
    404: error(
        "position_not_found` or `not_found",
        "no such open position on the account, or a connection that is not yours.",
    ),
}

router = APIRouter(
    tags=["trading"],
    dependencies=[Depends(get_onboarded_user)],
    responses={
        401: error("invalid_token"),
        403: error("onboarding_incomplete", "or `insufficient_scope` for a read-only API key."),
        429: error("rate_limited", "past RATE_LIMIT_TRADING_PER_SECOND; see Retry-After."),
    },
)


async def get_trading(resources: ResourcesDep) -> Trading:
    return Trading(
        jobs=resources.jobs,
        session_factory=resources.session_factory,
        settings=resources.settings,
    )


async def get_candle_flights(request: Request) -> CandleFlights:
    flights: CandleFlights = request.app.state.candle_flights
    return flights


TradingDep = Annotated[Trading, Depends(get_trading)]
CandleFlightsDep = Annotated[CandleFlights, Depends(get_candle_flights)]
ConnectionQuery = Annotated[
    uuid.UUID | None,
    Query(description="The broker connection to use; your oldest one when omitted."),
]
PositionId = Annotated[int, Path(ge=0, lt=2**63, description="The MT5 position ticket.")]

ORDER_STATUS_CODES = {
    "filled": status.HTTP_201_CREATED,
    "placed": status.HTTP_201_CREATED,
    "cancelled": status.HTTP_200_OK,
    "pending": status.HTTP_202_ACCEPTED,
    "expired": status.HTTP_200_OK,
    "unknown": status.HTTP_200_OK,
}


@router.post(
    "/orders",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=cross_field_rules(
        "`price` required for `limit`, `stop` and `stop_limit`, forbidden for `market`",
        "`stop_limit_price` only (and always) with `stop_limit`",
        "`expiration` forbidden for `market`; `expiration.at` in the future, and only with "
        "`specified`",
    ),
    responses={
        201: {
            "description": "Filled (market): `fill_price`, `ticket` and `filled_at` are set; "
            "or placed (pending types): `ticket` and `placed_at` are set."
        },
        202: {
            "model": OrderRead,
            "description": "No result within 10 s: `status: pending`; it may still execute. "
            "`GET /orders/{order_id}` tells what became of it.",
        },
        200: {
            "model": OrderRead,
            "description": "A repeat (same `client_order_id`) of an order that ended without "
            "a fill or a rejection: `status` is `expired`, `unknown` or `cancelled`.",
        },
        409: error(
            "no_agent` or `client_order_id_conflict",
            "no agent for the connection, or the `client_order_id` names another order.",
        ),
        422: {
            "model": OrderRejectedBody,
            "description": "`order_rejected`: the broker said no (`order.error`).",
        },
        404: AGENT_ERRORS[404],
        503: AGENT_ERRORS[503],
    },
)
async def place_order(
    body: OrderCreate, user: OnboardedUser, trading: TradingDep, response: Response
) -> OrderRead:
    """Places a market order (or a `limit`, `stop` or `stop_limit` pending order) on your
    account and waits up to 10 s for its outcome.

    With a `client_order_id` the call is idempotent: a repeat returns the same order
    (waiting for it like the first call) and never sends a second one to the broker.
    """
    order = await order_service.place_order(trading, user_id=user.id, order=body)
    if order.status == "rejected":
        assert order.error is not None
        raise OrderRejected(
            f"The broker rejected the order: {order.error.message or order.error.code}",
            order=order.model_dump(mode="json"),
        )
    response.status_code = ORDER_STATUS_CODES[order.status]
    return order


@router.get("/orders", responses={404: error("not_found", "`before` is not one of your orders.")})
async def list_orders(
    user: OnboardedUser,
    trading: TradingDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        uuid.UUID | None,
        Query(description="An order id: lists the orders placed before it (the next page)."),
    ] = None,
) -> list[OrderRead]:
    """Your orders, newest first, on every connection."""
    return await order_service.list_orders(
        trading.session_factory, user_id=user.id, limit=limit, before=before
    )


@router.get("/orders/{order_id}", responses={404: error("not_found")})
async def get_order(order_id: uuid.UUID, user: OnboardedUser, trading: TradingDep) -> OrderRead:
    """One of your orders, in whatever state it is now."""
    return await order_service.get_order(
        trading.session_factory, user_id=user.id, order_id=order_id
    )


@router.get("/positions", responses={**AGENT_ERRORS, **BROKER_ERROR, **READ_TIMEOUT})
async def list_positions(
    user: OnboardedUser, trading: TradingDep, broker_connection_id: ConnectionQuery = None
) -> list[Position]:
    """The open positions of the account, as its agent reports them (waits up to 5 s)."""
    return await trading_service.list_positions(
        trading, user_id=user.id, connection_id=broker_connection_id
    )


@router.delete(
    "/positions/{position_id}",
    responses={**AGENT_ERRORS, **BROKER_ERROR, **WRITE_PENDING},
)
async def close_position(
    position_id: PositionId,
    user: OnboardedUser,
    trading: TradingDep,
    response: Response,
    volume: Annotated[
        float | None,
        Query(gt=0, le=100, allow_inf_nan=False, description="Lots to close; all when omitted."),
    ] = None,
    broker_connection_id: ConnectionQuery = None,
) -> PositionClosed | JobPending:
    """Closes the position, or `volume` lots of it (waits up to 10 s)."""
    outcome = await trading_service.close_position(
        trading,
        user_id=user.id,
        connection_id=broker_connection_id,
        position_id=position_id,
        volume=volume,
    )
    if isinstance(outcome, JobPending):
        response.status_code = status.HTTP_202_ACCEPTED
    return outcome


@router.patch(
    "/positions/{position_id}",
    responses={**AGENT_ERRORS, **BROKER_ERROR, **WRITE_PENDING},
)
async def modify_position(
    position_id: PositionId,
    body: Annotated[PositionUpdate, Body()],
    user: OnboardedUser,
    trading: TradingDep,
    response: Response,
    broker_connection_id: ConnectionQuery = None,
) -> Position | JobPending:
    """Sets the position's stop-loss and/or take-profit; `null` removes one, a field left
    out stays as it is (waits up to 10 s)."""
    outcome = await trading_service.modify_position(
        trading,
        user_id=user.id,
        connection_id=broker_connection_id,
        position_id=position_id,
        update=body,
    )
    if isinstance(outcome, JobPending):
        response.status_code = status.HTTP_202_ACCEPTED
    return outcome


@router.get("/account", responses={**AGENT_ERRORS, **BROKER_ERROR, **READ_TIMEOUT})
async def get_account(
    user: OnboardedUser, trading: TradingDep, broker_connection_id: ConnectionQuery = None
) -> Account:
    """Balance, equity and margin of the account (waits up to 5 s)."""
    return await trading_service.get_account(
        trading, user_id=user.id, connection_id=broker_connection_id
    )


class CacheHeaderRoute(APIRoute):
    """A route whose every response carries `X-Cache`, errors included (the contract): an
    answer that the route did not mark (an error, a 401, a validation 422) is a miss.

    Exceptions are rendered here, by the app's own handlers, so that the header can be
    added; what has no handler (a bug) goes on to the server's 500 as everywhere else.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_with_cache_header(request: Request) -> Response:
            try:
                response = await handle(request)
            except Exception as exc:
                handler = next(
                    (
                        request.app.exception_handlers[kind]
                        for kind in type(exc).__mro__
                        if kind in request.app.exception_handlers
                    ),
                    None,
                )
                if handler is None:
                    raise
                response = await handler(request, exc)
            response.headers.setdefault("X-Cache", "miss")
            return response

        return handle_with_cache_header


candles_router = APIRouter(route_class=CacheHeaderRoute)


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


CandleSourceDep = Annotated[CandleSource, Depends(get_candle_source)]
CACHE_HEADER = {"X-Cache": {"description": "`hit` or `miss`", "schema": {"type": "string"}}}


@candles_router.get(
    "/candles/{instrument}",
    response_model=list[Candle],
    responses={
        200: {"headers": CACHE_HEADER},
        **AGENT_ERRORS,
        **BROKER_ERROR,
        503: error(
            "feed_offline` or `agent_offline",
            "no price source is online (`source=feed`), or your agent's last heartbeat is "
            "too old (`source=account`).",
        ),
        504: error("agent_timeout", "no answer within 10 s."),
    },
    openapi_extra=cross_field_rules("`broker_connection_id` needs `source=account`"),
)
async def candles(
    instrument: Annotated[str, Path(pattern=SYMBOL_PATTERN, examples=["EURUSD"])],
    user: OnboardedUser,
    trading: TradingDep,
    redis: RedisDep,
    flights: CandleFlightsDep,
    source: CandleSourceDep,
    timeframe: Timeframe = "H1",
    count: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> Response:
    """The last `count` bars, oldest first, from the platform's feed (default) or, with
    `source=account`, from your own broker. Served from the Redis cache (30 s; the feed's
    `candles:{instrument}:{timeframe}` is shared by all users, an account's
    `candles:{connection_id}:{instrument}:{timeframe}` is that connection's) when it holds
    at least `count` bars, else fetched by one job (concurrent misses share it; waits up to
    10 s). Every answer, errors included, carries `X-Cache: hit|miss`; with Redis down
    every call is a miss."""
    bars, hit = await get_candles(
        trading,
        redis,
        flights,
        user_id=user.id,
        source=source,
        instrument=instrument,
        timeframe=timeframe,
        count=count,
    )
    return Response(
        CANDLES.dump_json(bars),
        media_type="application/json",
        headers={"X-Cache": "hit" if hit else "miss"},
    )


router.include_router(candles_router)
