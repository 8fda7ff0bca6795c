"""The per-user limit of the onboarding-gated routes (the trading API)."""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass

from limits import RateLimitItemPerSecond

from app.core.errors import RateLimited
from app.core.rate_limits import LimiterUnavailable, RateLimiter, seconds_until

log = logging.getLogger("mt5gate.rate_limits")


@dataclass(frozen=True)
class RateLimitState:
    """What the X-RateLimit-* headers of a limited response say."""

    limit: int
    remaining: int
    reset_at: float  # epoch seconds

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }


class TradingLimit:
    """The limiter's item for the configured rate, and whether Redis was last reachable."""

    def __init__(self, per_second: int) -> None:
        self.item = RateLimitItemPerSecond(per_second, 1)
        self.failing = False


async def limit_trading_call(
    limiter: RateLimiter, limit: TradingLimit, user_id: uuid.UUID
) -> RateLimitState | None:
    """Counts one call of the user's; raises RateLimited past the limit. None when the
    limiter cannot reach Redis: trading calls fail open (an outage of the limiter must not
    stop trading), logged once per outage."""
    key = ("trading", str(user_id))
    try:
        allowed = await limiter.hit(limit.item, *key)
        remaining, reset_at = await limiter.remaining(limit.item, *key)
    except LimiterUnavailable as exc:
        if not limit.failing:
            log.warning("event=rate_limiter_unavailable fallback=open reason=%r", str(exc))
        limit.failing = True
        return None
    if limit.failing:
        log.info("event=rate_limiter_restored")
        limit.failing = False
    state = RateLimitState(limit.item.amount, remaining, reset_at)
    if not allowed:
        raise RateLimited(retry_after=seconds_until(reset_at), headers=state.headers())
    return state
