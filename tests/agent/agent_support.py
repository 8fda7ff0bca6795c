"""Helpers shared by the agent's tests and fixtures (a module of its own, not conftest, so
tests import it by a name no other conftest can shadow)."""

from __future__ import annotations

START = 1_764_000_000.0  # 2025-11-24T16:00:00Z


class ManualClock:
    """An injectable clock that only moves when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
