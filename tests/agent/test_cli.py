"""``mt5gate agent``: arguments, and signals ending the process cleanly."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from real_api import RealAgentApi

from mt5gate_agent.cli import main, parse_config

REPO = Path(__file__).resolve().parents[2]


def test_arguments_make_the_config() -> None:
    config, level = parse_config(
        [
            "--api",
            "http://h:8000",
            "--agent-id",
            "a1",
            "--token",
            "t",
            "--backend",
            "sim",
            "--prices",
            "EURUSD, XAUUSD,",
            "--seed",
            "3",
        ]
    )
    assert (config.api_url, config.agent_id, config.token, config.backend) == (
        "http://h:8000",
        "a1",
        "t",
        "sim",
    )
    assert config.price_symbols == ("EURUSD", "XAUUSD")
    assert (config.sim_seed, level) == (3, "INFO")


def test_the_backend_defaults_to_mt5_and_prices_to_none() -> None:
    config, _ = parse_config(["--api", "http://h", "--agent-id", "a1", "--token", "t"])
    assert (config.backend, config.price_symbols) == ("mt5", ())


@pytest.mark.parametrize(("given", "expected"), [([], 0.25), (["--watch-interval", "0"], 0.0)])
def test_the_account_watcher_looks_four_times_a_second_unless_told(
    given: list[str], expected: float
) -> None:
    config, _ = parse_config(["--api", "http://h", "--agent-id", "a1", "--token", "t", *given])
    assert config.watch_interval == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [([], ("link", 60.0)), (["--transport", "http", "--link-retry", "5"], ("http", 5.0))],
)
def test_the_agent_uses_the_link_unless_told(given: list[str], expected: tuple[str, float]) -> None:
    config, _ = parse_config(["--api", "http://h", "--agent-id", "a1", "--token", "t", *given])
    assert (config.transport, config.link_retry) == expected


@pytest.mark.parametrize("given", [["--transport", "ws"], ["--link-retry", "0"]])
def test_a_bad_transport_or_link_retry_is_a_usage_error(given: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config(["--api", "h", "--agent-id", "a", "--token", "t", *given])
    assert exited.value.code == 2


@pytest.mark.parametrize("interval", ["-1", "61"])
def test_a_watch_interval_out_of_range_is_a_usage_error(interval: str) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config(
            ["--api", "h", "--agent-id", "a", "--token", "t", "--watch-interval", interval]
        )
    assert exited.value.code == 2


def test_the_token_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MT5GATE_AGENT_TOKEN", "from-env")
    config, _ = parse_config(["--api", "http://h", "--agent-id", "a1"])
    assert config.token == "from-env"


def test_a_missing_token_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MT5GATE_AGENT_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["agent", "--api", "http://h", "--agent-id", "a1"])
    assert exited.value.code == 2


def test_an_unknown_backend_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--api", "http://h", "--agent-id", "a1", "--token", "t", "--backend", "zmq"])
    assert exited.value.code == 2


async def spawn_agent(api: RealAgentApi) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mt5gate_agent",
        "agent",
        "--api",
        api.url,
        "--agent-id",
        api.agent_id,
        f"--token={api.token}",
        "--backend",
        "sim",
        "--prices",
        "EURUSD,XAUUSD",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_the_agent_with_exit_code_0(
    api: RealAgentApi, sig: signal.Signals
) -> None:
    process = await spawn_agent(api)
    try:
        # On the link (the default), or long-polling: the job finds the agent either way.
        await api.wait_for(lambda: api.links_opened + api.polls >= 1, timeout=20)
        job_id = await api.add_job("get_account", {})
        assert (await api.wait_result(job_id))["status"] == "completed"
        process.send_signal(sig)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    log = stderr.decode()
    assert "event=stopping" in log
    assert f"event=job_done job_id={job_id} job_type=get_account outcome=completed" in log
    assert "event=agent_stopped" in log
    # One line per request at 4 pushes a second would drown the job lines.
    assert "HTTP Request" not in log
