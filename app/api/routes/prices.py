"""The feed's last tick, from Redis: a valid token is needed, onboarding is not (like
`/ws/prices`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.api.deps import CurrentUser, RedisDep
from app.api.routes.trading import error
from app.schemas.quotes import TickRead
from app.schemas.trading import SYMBOL_PATTERN
from app.services import quotes

router = APIRouter(tags=["prices"], responses={401: error("invalid_token")})


@router.get(
    "/prices/{instrument}",
    responses={
        404: error("no_price", "the feed has no tick for it."),
        503: error("prices_unavailable", "Redis cannot be read."),
    },
)
async def last_price(
    instrument: Annotated[str, Path(pattern=SYMBOL_PATTERN, examples=["EURUSD"])],
    user: CurrentUser,
    redis: RedisDep,
) -> TickRead:
    """The feed's last tick of `instrument` (what `/ws/prices` sends first); no job."""
    return await quotes.last_tick(redis, instrument)
