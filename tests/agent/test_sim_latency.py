"""The simulator's optional execution latency, and ``--sim-latency-ms``."""

from __future__ import annotations

import pytest
from agent_support import ManualClock

from mt5gate_agent.backends import create_backend
from mt5gate_agent.backends.sim import SimBackend
from mt5gate_agent.cli import parse_config

AGENT_ARGS = ["--api", "http://h", "--agent-id", "a1", "--token", "t", "--backend", "sim"]


class SleepRecorder:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def test_orders_closes_and_stop_changes_take_the_latency_reads_do_not() -> None:
    sleep = SleepRecorder()
    sim = SimBackend(seed=7, clock=ManualClock(), latency_seconds=0.04, sleep=sleep)
    order = {"symbol": "EURUSD", "side": "buy", "volume": 0.1, "sl": None, "tp": None}
    ticket = sim.execute("trade", order)["ticket"]
    sim.execute("modify_position", {"ticket": ticket, "sl": 1.0, "tp": None})
    sim.execute("close_position", {"ticket": ticket})
    assert sleep.calls == [0.04, 0.04, 0.04]

    sim.execute("get_positions", {})
    sim.execute("get_account", {})
    sim.execute("get_candles", {"symbol": "EURUSD", "timeframe": "M1", "count": 5})
    assert len(sleep.calls) == 3


def test_no_latency_by_default() -> None:
    sleep = SleepRecorder()
    sim = SimBackend(seed=7, clock=ManualClock(), sleep=sleep)
    sim.execute("trade", {"symbol": "EURUSD", "side": "sell", "volume": 0.1})
    assert sleep.calls == []


@pytest.mark.parametrize("latency", [-0.01, float("nan"), float("inf")])
def test_a_latency_that_is_not_a_finite_non_negative_number_is_refused(latency: float) -> None:
    with pytest.raises(ValueError, match="latency_seconds"):
        SimBackend(latency_seconds=latency)


def test_the_cli_flag_reaches_the_simulator_in_seconds() -> None:
    config, _ = parse_config([*AGENT_ARGS, "--sim-latency-ms", "40"])
    assert config.sim_latency == pytest.approx(0.04)
    backend = create_backend("sim", sim_latency=config.sim_latency)
    assert isinstance(backend, SimBackend)
    assert backend.latency_seconds == pytest.approx(0.04)


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "60001"])
def test_an_out_of_range_cli_latency_is_a_usage_error(value: str) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config([*AGENT_ARGS, "--sim-latency-ms", value])
    assert exited.value.code == 2
