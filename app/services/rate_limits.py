"""The per-user limit of the onboarding-gated routes (the trading API)."""

from __future__ import annotations

import asyncio
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

    def reached(self) -> None:
        if self.failing:
            log.info("event=rate_limiter_restored")
            self.failing = False

    def unreachable(self, exc: LimiterUnavailable) -> None:
        if not self.failing:
            log.warning("event=rate_limiter_unavailable fallback=open reason=%r", str(exc))
        self.failing = True


class CountedCall:
    """A call the limiter counted and let through, its window's state still being read: the
    read overlaps the call's own work, since only the response's headers need it."""

    def __init__(self, limit: TradingLimit, window: asyncio.Task[tuple[int, float]]) -> None:
        self.limit = limit
        self.window = window
        # Retrieved even when no response goes out (the client left): no unread error.
        window.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def headers(self) -> dict[str, str]:
        """The X-RateLimit-* headers; none when the window could not be read (fail open)."""
        try:
            remaining, reset_at = await self.window
        except LimiterUnavailable as exc:
            self.limit.unreachable(exc)
            return {}
        return RateLimitState(self.limit.item.amount, remaining, reset_at).headers()


async def limit_trading_call(
    limiter: RateLimiter, limit: TradingLimit, user_id: uuid.UUID
) -> CountedCall | None:
    """Counts one call of the user's; raises RateLimited past the limit. None when the
    limiter cannot reach Redis: trading calls fail open (an outage of the limiter must not
    stop trading), logged once per outage."""
    key = ("trading", str(user_id))
    try:
        allowed = await limiter.hit(limit.item, *key)
        if not allowed:
            remaining, reset_at = await limiter.remaining(limit.item, *key)
    except LimiterUnavailable as exc:
        limit.unreachable(exc)
        return None
    limit.reached()
    if not allowed:
        state = RateLimitState(limit.item.amount, remaining, reset_at)
        raise RateLimited(retry_after=seconds_until(reset_at), headers=state.headers())
    window = asyncio.get_running_loop().create_task(limiter.remaining(limit.item, *key))
    return CountedCall(limit, window)
