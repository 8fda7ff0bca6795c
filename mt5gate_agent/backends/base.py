"""What every backend offers, and the one worker thread all backend calls run on.

A backend's methods are blocking: the ``MetaTrader5`` package is a blocking, not
thread-safe IPC client of the terminal, so the agent never calls a backend from the event
loop; it hands every call to a :class:`BackendWorker`, whose single thread serialises them.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast

from mt5gate_protocol.jobs import JobType

T = TypeVar("T")

TIMEFRAMES = ("M1", "M5", "M15", "M30", "H1", "H4", "D1", "W1", "MN1")


class BrokerError(Exception):
    """The broker (or the terminal) said no. ``code`` is the contract's snake_case code."""

    def __init__(self, code: str, message: str, retcode: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retcode = retcode

    def as_error(self) -> dict[str, Any]:
        """The ``error`` object of a failed job result."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retcode is not None:
            error["retcode"] = self.retcode
        return error

    def __repr__(self) -> str:
        return f"BrokerError({self.code!r}, {self.message!r}, retcode={self.retcode!r})"


class Backend(Protocol):
    """A broker account the agent trades on. Every method blocks; call them from one thread."""

    def login(self, server: str, login: int, password: str) -> None:
        """Connect and log into the account; raises :class:`BrokerError`."""

    def execute(self, job_type: str, input_data: dict[str, Any]) -> dict[str, Any]:
        """Run one job and return its ``output_data``; raises :class:`BrokerError`."""

    def ticks(self, symbols: list[str]) -> dict[str, dict[str, Any]]:
        """The last tick ``{bid, ask, ts}`` (ts in epoch ms) of each symbol that has one."""

    def is_connected(self) -> bool:
        """Whether the terminal is connected to the broker's trade server."""

    def recent_deals(self, after_ticket: int, lookback_seconds: float) -> list[dict[str, Any]]:
        """The contract's `deal`s with a ticket above ``after_ticket`` from the last
        ``lookback_seconds``, oldest first: what the account watcher reports."""

    def close(self) -> None:
        """Release the terminal connection. Idempotent."""


class BackendWorker:
    """Runs a backend's blocking calls, one at a time, on a single dedicated thread."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt5gate-backend")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def aclose(self, *, close_backend: bool = True) -> None:
        """Waits for the call in progress, optionally closes the backend, stops the thread."""
        try:
            if close_backend:
                await self.call(self.backend.close)
        finally:
            self._executor.shutdown(wait=False)


JOB_TYPES = frozenset(JobType)


def job_handler(backend: object, job_type: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The backend's method for `job_type`: its `_<job_type>` (`_trade`, `_get_positions`,
    ...), one per protocol job type; `unsupported_job_type` for any other name."""
    handler = getattr(backend, f"_{job_type}", None) if job_type in JOB_TYPES else None
    if handler is None:
        raise BrokerError("unsupported_job_type", f"unknown job type {job_type!r}")
    return cast(Callable[[dict[str, Any]], dict[str, Any]], handler)


def iso_utc(epoch_seconds: float) -> str:
    """``2026-11-24T21:15:03.120Z``: the contract's time format."""
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def require(input_data: dict[str, Any], key: str) -> Any:
    """A mandatory input field, or ``invalid_request``."""
    value = input_data.get(key)
    if value is None:
        raise BrokerError("invalid_request", f"input_data.{key} is required")
    return value


def parse_side(value: Any) -> str:
    side = str(value).lower()
    if side not in ("buy", "sell"):
        raise BrokerError("invalid_request", f"side must be 'buy' or 'sell', not {value!r}")
    return side


def parse_positive(input_data: dict[str, Any], key: str, *, optional: bool = False) -> float | None:
    """A positive number field; None, 0 or absent mean "not set" when ``optional``."""
    value = input_data.get(key)
    if value is None or (optional and value == 0):
        if optional:
            return None
        raise BrokerError("invalid_request", f"input_data.{key} is required")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BrokerError("invalid_request", f"input_data.{key} must be a number") from None
    if not number > 0 or number == float("inf"):
        raise BrokerError("invalid_request", f"input_data.{key} must be a positive number")
    return number


def parse_ticket(input_data: dict[str, Any]) -> int:
    value = require(input_data, "ticket")
    try:
        ticket = int(value)
    except (TypeError, ValueError):
        raise BrokerError("invalid_request", "input_data.ticket must be an integer") from None
    if isinstance(value, float) and value != ticket:
        raise BrokerError("invalid_request", "input_data.ticket must be an integer")
    return ticket


def parse_candles_request(input_data: dict[str, Any]) -> tuple[str, str, int]:
    symbol = str(require(input_data, "symbol"))
    timeframe = str(input_data.get("timeframe") or "H1").upper()
    if timeframe not in TIMEFRAMES:
        raise BrokerError("invalid_request", f"unknown timeframe {timeframe!r}")
    try:
        raw_count = input_data.get("count")
        count = 200 if raw_count is None else int(raw_count)
    except (TypeError, ValueError):
        raise BrokerError("invalid_request", "input_data.count must be an integer") from None
    if not 1 <= count <= 5000:
        raise BrokerError("invalid_request", "input_data.count must be between 1 and 5000")
    return symbol, timeframe, count


def volume_steps(volume: float, step: float) -> float:
    """How many ``step``s ``volume`` is (a float; integral when volume is on the grid)."""
    return volume / step


def is_on_step(volume: float, step: float) -> bool:
    steps = volume_steps(volume, step)
    return abs(steps - round(steps)) < 1e-6


def round_volume(volume: float) -> float:
    """Kills float noise in lot arithmetic (0.30000000000000004 → 0.3)."""
    return round(volume, 8)


def optional_price(input_data: dict[str, Any], key: str, current: float | None) -> float | None:
    """A modify request's sl/tp: absent keeps ``current``, null or 0 removes, else a price."""
    if key not in input_data:
        return current
    return parse_positive(input_data, key, optional=True)


PENDING_TYPES = ("limit", "stop", "stop_limit")
EXPIRATION_TYPES = ("gtc", "day", "specified")
MAX_HISTORY_LIMIT = 1000


def parse_time(value: Any, key: str) -> float:
    """An ISO-8601 time with a zone (the contract's UTC) as epoch seconds."""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise BrokerError("invalid_request", f"input_data.{key} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        raise BrokerError("invalid_request", f"input_data.{key} has no time zone")
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """A `place_pending_order` job's input, checked."""

    symbol: str
    side: str
    type: str  # "limit", "stop" or "stop_limit"
    volume: float
    price: float
    stop_limit_price: float | None  # set for a stop_limit only
    sl: float | None
    tp: float | None
    expiration: dict[str, Any]  # {"type", "at"} as the contract writes it
    expires_at: float | None  # `at` in epoch seconds (UTC), for `specified`


def parse_pending_request(input_data: dict[str, Any]) -> PendingRequest:
    kind = str(require(input_data, "type"))
    if kind not in PENDING_TYPES:
        raise BrokerError("invalid_request", f"type must be one of {PENDING_TYPES}, not {kind!r}")
    volume = parse_positive(input_data, "volume")
    price = parse_positive(input_data, "price")
    assert volume is not None
    assert price is not None
    stop_limit = parse_positive(input_data, "stop_limit_price", optional=True)
    if kind == "stop_limit" and stop_limit is None:
        raise BrokerError("invalid_request", "a stop_limit order needs stop_limit_price")
    expiration, expires_at = parse_expiration(input_data)
    return PendingRequest(
        symbol=str(require(input_data, "symbol")),
        side=parse_side(require(input_data, "side")),
        type=kind,
        volume=volume,
        price=price,
        stop_limit_price=stop_limit if kind == "stop_limit" else None,
        sl=parse_positive(input_data, "sl", optional=True),
        tp=parse_positive(input_data, "tp", optional=True),
        expiration=expiration,
        expires_at=expires_at,
    )


def parse_expiration(input_data: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """The request's ``expiration`` as the contract writes it, and its ``at`` in epoch
    seconds (None unless ``specified``)."""
    raw = input_data.get("expiration") or {"type": "gtc"}
    if not isinstance(raw, dict):
        raise BrokerError("invalid_request", "input_data.expiration must be an object")
    kind = raw.get("type") or "gtc"
    if kind not in EXPIRATION_TYPES:
        raise BrokerError("invalid_request", f"unknown expiration type {kind!r}")
    if kind != "specified":
        return {"type": kind, "at": None}, None
    at = parse_time(require(raw, "at"), "expiration.at")
    return {"type": kind, "at": iso_utc(at)}, at


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    kind: str  # "deals" or "orders"
    start: float  # epoch seconds, inclusive
    end: float  # epoch seconds, exclusive
    limit: int
    before: int | None
    symbol: str | None
    position_id: int | None

    def keeps(self, ticket: int, at: float, symbol: str | None, position_id: int | None) -> bool:
        return (
            self.start <= at < self.end
            and (self.before is None or ticket < self.before)
            and (self.symbol is None or symbol == self.symbol)
            and (self.position_id is None or position_id == self.position_id)
        )


def parse_history_request(input_data: dict[str, Any]) -> HistoryRequest:
    kind = require(input_data, "kind")
    if kind not in ("deals", "orders"):
        raise BrokerError("invalid_request", "input_data.kind must be 'deals' or 'orders'")
    limit = input_data.get("limit") or 100
    if not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise BrokerError("invalid_request", f"input_data.limit must be 1-{MAX_HISTORY_LIMIT}")
    before = input_data.get("before")
    position_id = input_data.get("position_id")
    symbol = input_data.get("symbol")
    return HistoryRequest(
        kind=kind,
        start=parse_time(require(input_data, "from"), "from"),
        end=parse_time(require(input_data, "to"), "to"),
        limit=limit,
        before=None if before is None else int(before),
        symbol=None if symbol is None else str(symbol),
        position_id=None if position_id is None else int(position_id),
    )


def symbol_matches_group(name: str, group: str | None) -> bool:
    """MT5's group filter: comma-separated patterns with ``*``; one starting with ``!``
    excludes. The last pattern that matches decides, as in ``symbols_get(group=...)``."""
    if not group:
        return True
    matched = False
    for pattern in (part.strip() for part in group.split(",")):
        if not pattern:
            continue
        negate = pattern.startswith("!")
        if fnmatch.fnmatchcase(name, pattern[1:] if negate else pattern):
            matched = not negate
    return matched
