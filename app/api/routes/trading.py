"""The trading routes: orders, positions, account and candles, for onboarded users only.

Each call is a job for the caller's own agent (see app/services); these routes parse,
pick the status code and return. The onboarding gate is the router's dependency, so no
route here can be reached without it.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Depends, Path, Query, Response, status
from fastapi.routing import APIRoute
from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from app.api.deps import (
    CandleFlightsDep,
    CandleQueryDep,
    OnboardedUser,
    RedisDep,
    TradingDep,
    UserAccountDep,
    get_onboarded_user,
)
from app.api.docs import cross_field_rules
from app.schemas.common import ErrorBody
from app.schemas.orders import OrderCreate, OrderRead, OrderRejectedBody
from app.schemas.positions import BrokerErrorBody, JobPending, PositionClosed, PositionUpdate
from app.schemas.trading import Account, Candle, Position
from app.services import orders as order_service
from app.services import trading as trading_service
from app.services.candles import CANDLES, get_candles

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


PositionId = Annotated[int, Path(ge=0, lt=2**63, description="The MT5 position ticket.")]

ORDER_STATUS_CODES = {
    "filled": status.HTTP_201_CREATED,
    "placed": status.HTTP_201_CREATED,
    "cancelled": status.HTTP_200_OK,
    "pending": status.HTTP_202_ACCEPTED,
    "expired": status.HTTP_200_OK,
    "unknown": status.HTTP_200_OK,
}
Outcome = TypeVar("Outcome")


def accepted_if_pending(outcome: Outcome, response: Response) -> Outcome:
    """A write's answer: 202 while it may still execute (`JobPending`), else as it is."""
    if isinstance(outcome, JobPending):
        response.status_code = status.HTTP_202_ACCEPTED
    return outcome


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
async def list_positions(account: UserAccountDep) -> list[Position]:
    """The open positions of the account, as its agent reports them (waits up to 5 s)."""
    return await trading_service.list_positions(account)


VolumeQuery = Annotated[
    float | None,
    Query(gt=0, le=100, allow_inf_nan=False, description="Lots to close; all when omitted."),
]


@router.delete(
    "/positions/{position_id}",
    responses={**AGENT_ERRORS, **BROKER_ERROR, **WRITE_PENDING},
)
async def close_position(
    position_id: PositionId, account: UserAccountDep, response: Response, volume: VolumeQuery = None
) -> PositionClosed | JobPending:
    """Closes the position, or `volume` lots of it (waits up to 10 s)."""
    outcome = await trading_service.close_position(account, position_id=position_id, volume=volume)
    return accepted_if_pending(outcome, response)


@router.patch(
    "/positions/{position_id}",
    responses={**AGENT_ERRORS, **BROKER_ERROR, **WRITE_PENDING},
)
async def modify_position(
    position_id: PositionId,
    body: Annotated[PositionUpdate, Body()],
    account: UserAccountDep,
    response: Response,
) -> Position | JobPending:
    """Sets the position's stop-loss and/or take-profit; `null` removes one, a field left
    out stays as it is (waits up to 10 s)."""
    outcome = await trading_service.modify_position(account, position_id=position_id, update=body)
    return accepted_if_pending(outcome, response)


@router.get("/account", responses={**AGENT_ERRORS, **BROKER_ERROR, **READ_TIMEOUT})
async def get_account(account: UserAccountDep) -> Account:
    """Balance, equity and margin of the account (waits up to 5 s)."""
    return await trading_service.get_account(account)


class CacheHeaderRoute(APIRoute):
    """A route whose every response carries `X-Cache`, errors included (the contract): an
    answer that the route did not mark (an error, a 401, a validation 422) is a miss.

    The app's exception handlers render an error inside the route that raised it (FastAPI
    wraps each route in them), so the header is added as any response starts; what has no
    handler (a bug) goes on to the server's 500 as everywhere else.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_cache_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("X-Cache", "miss")
            await send(message)

        await super().handle(scope, receive, send_with_cache_header)


candles_router = APIRouter(route_class=CacheHeaderRoute)
CACHE_HEADER = {"X-Cache": {"description": "`hit` or `miss`", "schema": {"type": "string"}}}


def candles_response(bars: list[Candle], *, hit: bool) -> Response:
    """The bars as they were validated (not a second time), with `X-Cache`."""
    headers = {"X-Cache": "hit" if hit else "miss"}
    return Response(CANDLES.dump_json(bars), media_type="application/json", headers=headers)


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
    query: CandleQueryDep, trading: TradingDep, redis: RedisDep, flights: CandleFlightsDep
) -> Response:
    """The last `count` bars, oldest first, from the platform's feed (default) or, with
    `source=account`, from your own broker. Served from the Redis cache (30 s; the feed's
    `candles:{instrument}:{timeframe}` is shared by all users, an account's
    `candles:{connection_id}:{instrument}:{timeframe}` is that connection's) when it holds
    at least `count` bars, else fetched by one job (concurrent misses share it; waits up to
    10 s). Every answer, errors included, carries `X-Cache: hit|miss`; with Redis down
    every call is a miss."""
    bars, hit = await get_candles(trading, redis, flights, query=query)
    return candles_response(bars, hit=hit)


router.include_router(candles_router)
