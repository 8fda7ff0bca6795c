"""The agent's settings: one frozen dataclass, built by the CLI or by whoever embeds the agent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mt5gate_agent import __version__

# What the simulated price-source agent of ``mt5gate demo`` pushes.
DEFAULT_PRICE_SYMBOLS: tuple[str, ...] = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
# Four looks a second: a change at the broker reaches the server within ~0.3 s.
DEFAULT_WATCH_INTERVAL = 0.25
TRANSPORTS: tuple[str, ...] = ("link", "http")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything :func:`mt5gate_agent.runner.run_agent` needs.

    ``api_url`` is the server's root (``http://127.0.0.1:8000``); a trailing ``/api/v1`` is
    accepted too. ``price_symbols`` empty means the agent is not a price source.
    """

    api_url: str
    agent_id: str
    token: str
    backend: str = "mt5"
    # Price source: push these symbols' changed ticks every ``price_interval`` seconds.
    price_symbols: tuple[str, ...] = ()
    price_interval: float = 0.25
    # The account watcher: a snapshot of positions, pending orders, deals and the account
    # every ``watch_interval`` seconds, its changes posted as events; 0 turns it off.
    watch_interval: float = DEFAULT_WATCH_INTERVAL
    # How jobs arrive: "link" (one WebSocket, jobs pushed; the HTTP routes while the
    # server refuses it) or "http" (long-poll only).
    transport: Literal["link", "http"] = "link"
    # While the server refuses the link (HTTP 403/404 on the upgrade): try it again this
    # often, long-polling meanwhile.
    link_retry: float = 60.0
    # Reconnecting a dropped link: full jitter, from ``link_backoff_initial`` doubling to
    # ``link_backoff_max`` (also the wait after 4009, a newer link for this agent id).
    link_backoff_initial: float = 0.1
    link_backoff_max: float = 10.0
    # Long-poll: ``jobs/next?wait=poll_wait`` (the API allows 0–30 s).
    poll_wait: int = 25
    heartbeat_interval: float = 10.0
    # Reconnect delays: exponential from ``backoff_initial`` to ``backoff_max``, with jitter.
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # For every request but the long poll, which gets ``poll_wait`` on top.
    request_timeout: float = 10.0
    # How long the result of a job already executed is retried before it is given up.
    result_retry_seconds: float = 60.0
    # Backend options: the simulator's seed and execution latency (seconds, for orders,
    # closes and SL/TP changes); the mt5 terminal's path and max slippage.
    sim_seed: int | None = None
    sim_latency: float = 0.0
    terminal_path: str | None = None
    deviation: int = 20
    version: str = __version__
