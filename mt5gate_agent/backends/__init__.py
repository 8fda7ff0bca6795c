"""Backends: where the agent's jobs actually run (a MetaTrader 5 terminal or the simulator)."""

from __future__ import annotations

from mt5gate_agent.backends.base import Backend, BackendWorker, BrokerError

__all__ = ["BACKENDS", "Backend", "BackendWorker", "BrokerError", "create_backend"]

BACKENDS = ("mt5", "sim")


def create_backend(
    name: str,
    *,
    seed: int | None = None,
    terminal_path: str | None = None,
    deviation: int = 20,
    sim_latency: float = 0.0,
) -> Backend:
    """The backend called ``name``: ``"mt5"`` (a real terminal) or ``"sim"`` (the simulator).

    Neither imports anything heavy here: the ``mt5`` backend imports ``MetaTrader5`` when it
    logs in, so the factory works on any OS.
    """
    if name == "sim":
        from mt5gate_agent.backends.sim import SimBackend

        return SimBackend(seed=seed, latency_seconds=sim_latency)
    if name == "mt5":
        from mt5gate_agent.backends.mt5 import Mt5Backend

        return Mt5Backend(terminal_path=terminal_path, deviation=deviation)
    raise ValueError(f"unknown backend {name!r} (expected one of {', '.join(BACKENDS)})")
