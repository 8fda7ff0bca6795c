"""The feed's last tick of an instrument, read straight from Redis (`prices:{instrument}`)."""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.errors import NoPrice
from app.schemas.quotes import TickRead
from app.services.price_pushes import PricesUnavailable
from app.ws.ticks import MalformedTick, channel_for, parse_tick

log = logging.getLogger("mt5gate.quotes")
REDIS_TIMEOUT_SECONDS = 1.0


async def last_tick(redis: Redis, instrument: str) -> TickRead:
    """404 `no_price` when the feed never sent one (or the key holds no valid tick)."""
    key = channel_for(redis, instrument)
    try:
        async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
            raw = await redis.get(key)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("event=prices_unavailable op=get reason=%r", exc)
        raise PricesUnavailable("The price feed cannot be read right now.") from exc
    if raw is None:
        raise NoPrice()
    try:
        tick = parse_tick(raw, instrument=instrument)
    except MalformedTick as exc:
        log.warning("event=tick_malformed key=%s reason=%s", key, exc)
        raise NoPrice() from exc
    return TickRead(instrument=tick.instrument, bid=tick.bid, ask=tick.ask, ts=tick.ts)
