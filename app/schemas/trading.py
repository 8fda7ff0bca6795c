"""The trading vocabulary shared by the user routes and the agent results: the agent
protocol's (`mt5gate_protocol`), re-exported for the REST schemas."""

from __future__ import annotations

from mt5gate_protocol.jobs import (
    CancelPendingOrderInput,
    GetHistoryInput,
    GetSymbolsInput,
    PlacePendingOrderInput,
)
from mt5gate_protocol.trading import (
    SYMBOL_PATTERN,
    Account,
    Candle,
    ClosedPosition,
    Deal,
    Expiration,
    HistoryOrder,
    OrderType,
    PendingOrder,
    Position,
    Side,
    SymbolInfo,
    Timeframe,
)

__all__ = [
    "SYMBOL_PATTERN",
    "Account",
    "CancelPendingOrderInput",
    "Candle",
    "ClosedPosition",
    "Deal",
    "Expiration",
    "GetHistoryInput",
    "GetSymbolsInput",
    "HistoryOrder",
    "OrderType",
    "PendingOrder",
    "PlacePendingOrderInput",
    "Position",
    "Side",
    "SymbolInfo",
    "Timeframe",
]
