"""Ticks as they travel through Redis: validated on the way in, serialized once on the way out."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from app.core.price_keys import CHANNEL_PREFIX, channel_for  # noqa: F401  (re-exported)
from app.schemas.trading import SYMBOL_PATTERN

INSTRUMENT_RE = re.compile(SYMBOL_PATTERN)
MAX_TICK_BYTES = 4096
MAX_TS = 2**53


class MalformedTick(ValueError):
    """A Redis message or key that is not a tick of the expected shape."""


@dataclass(frozen=True, slots=True)
class Tick:
    instrument: str
    bid: float
    ask: float
    ts: int


def is_instrument(value: object) -> bool:
    return isinstance(value, str) and INSTRUMENT_RE.fullmatch(value) is not None


def _price(body: dict[str, Any], field: str) -> float:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedTick(f"{field} is not a number")
    if not math.isfinite(value) or value <= 0:
        raise MalformedTick(f"{field} is not a positive finite number")
    return float(value)


def parse_tick(raw: bytes | str, *, instrument: str) -> Tick:
    """The tick in `raw`, which was read from `prices:{instrument}`; raises MalformedTick."""
    if len(raw) > MAX_TICK_BYTES:
        raise MalformedTick("too large")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedTick("not JSON") from exc
    if not isinstance(body, dict):
        raise MalformedTick("not an object")
    if body.get("instrument") != instrument:
        raise MalformedTick("instrument does not match the channel")
    ts = body.get("ts")
    if isinstance(ts, float) and ts.is_integer():
        ts = int(ts)
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < MAX_TS:
        raise MalformedTick("ts is not epoch milliseconds")
    return Tick(instrument, _price(body, "bid"), _price(body, "ask"), ts)


def tick_json(tick: Tick) -> str:
    """The JSON text of the `tick` message the contract sends to clients."""
    data = {"instrument": tick.instrument, "bid": tick.bid, "ask": tick.ask, "ts": tick.ts}
    return json.dumps({"type": "tick", "data": data}, separators=(",", ":"))
