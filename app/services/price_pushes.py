"""Price pushes: a price-source agent's ticks, stored as each instrument's last tick and
published to every process's price streams."""

from __future__ import annotations

import json
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.errors import DomainError, NotPriceSource
from app.core.price_keys import channel_for
from app.models import Agent
from app.schemas.agents import TickIn

log = logging.getLogger("mt5gate.agents")


class PricesUnavailable(DomainError):
    status_code, code, message = 503, "prices_unavailable", "Ticks cannot be stored right now."


def tick_message(instrument: str, tick: TickIn, now_ms: int) -> bytes:
    return json.dumps(
        {
            "instrument": instrument,
            "bid": tick.bid,
            "ask": tick.ask,
            "ts": tick.ts if tick.ts is not None else now_ms,
        },
        separators=(",", ":"),
    ).encode()


async def push_prices(redis: Redis, *, agent: Agent, ticks: dict[str, TickIn]) -> int:
    """`SET prices:{instrument}` + `PUBLISH prices:{instrument}` for each tick, in one trip."""
    if not agent.is_price_source:
        raise NotPriceSource()
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for instrument, tick in ticks.items():
            message = tick_message(instrument, tick, now_ms)
            key = channel_for(redis, instrument)
            pipe.set(key, message)
            pipe.publish(key, message)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("event=prices_rejected reason=%r", exc)
            raise PricesUnavailable() from exc
    return len(ticks)
