"""Symbols and their specifications, from the broker through the connection's agent."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from app.api.deps import RedisDep, UserAccountDep, get_onboarded_user
from app.api.routes.trading import AGENT_ERRORS, BROKER_ERROR, error
from app.schemas.trading import SYMBOL_PATTERN, SymbolInfo
from app.services import symbols as service

router = APIRouter(
    tags=["symbols"],
    dependencies=[Depends(get_onboarded_user)],
    responses={401: error("invalid_token"), 403: error("onboarding_incomplete")},
)
SymbolPath = Annotated[str, Path(pattern=SYMBOL_PATTERN, examples=["EURUSD"])]
SYMBOL_ERRORS = {**AGENT_ERRORS, **BROKER_ERROR, 504: error("agent_timeout", "no answer in 10 s.")}


AllSymbolsQuery = Annotated[
    bool,
    Query(alias="all", description="Every symbol the broker offers, not only Market Watch's."),
]
GroupQuery = Annotated[
    str | None, Query(max_length=256, description="MT5's group filter, e.g. `*USD*,!XAU*`.")
]


@router.get("/symbols", responses=SYMBOL_ERRORS)
async def list_symbols(
    account: UserAccountDep,
    redis: RedisDep,
    all_symbols: AllSymbolsQuery = False,
    group: GroupQuery = None,
) -> list[SymbolInfo]:
    """The symbols in the terminal's Market Watch (cached per connection for 5 min)."""
    return await service.list_symbols(account, redis, all_symbols=all_symbols, group=group)


@router.get(
    "/symbols/{symbol}",
    responses={
        **SYMBOL_ERRORS,
        404: error("symbol_not_found` or `not_found", "no such symbol at the broker."),
    },
)
async def get_symbol(symbol: SymbolPath, account: UserAccountDep, redis: RedisDep) -> SymbolInfo:
    """One symbol's specification (cached per connection for 5 min)."""
    return await service.get_symbol(account, redis, name=symbol)
