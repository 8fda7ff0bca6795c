"""``mt5gate agent --api URL --agent-id ID [--token T] [--backend mt5|sim] [--prices SYMBOLS]
[--transport link|http] [--link-retry SECONDS]``.

The token comes from ``--token`` or, better (a command line shows in ``ps``), from
``$MT5GATE_AGENT_TOKEN``. The first SIGINT/SIGTERM (Ctrl-C, Ctrl-Break on Windows) lets the
job in hand finish and then exits 0; a second one exits at once with 130. A token the API
refuses (401: revoked, rotated or wrong) stops the agent with one line on stderr and exit 3.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mt5gate_agent import __version__
from mt5gate_agent.backends import BACKENDS
from mt5gate_agent.config import DEFAULT_WATCH_INTERVAL, TRANSPORTS, AgentConfig
from mt5gate_agent.runner import TokenRefused, run_agent

TOKEN_ENV = "MT5GATE_AGENT_TOKEN"
# Not 1 (a startup problem) nor 130 (interrupted): a supervisor can tell that restarting
# with the same token is pointless.
TOKEN_REFUSED_EXIT = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mt5gate agent",
        description="Run the mt5gate agent beside one MetaTrader 5 terminal.",
    )
    parser.add_argument("--api", required=True, help="the API's URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--agent-id", required=True, help="the agent id the API provisioned")
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"the agent token (default: ${TOKEN_ENV}, which keeps it out of the process list)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="mt5",
        help="mt5: a MetaTrader 5 terminal on this machine (default); sim: the simulator",
    )
    parser.add_argument(
        "--prices",
        metavar="SYMBOLS",
        default="",
        help="act as a price source: push the changed ticks of these comma-separated symbols "
        "(the server must mark this agent as a price source)",
    )
    parser.add_argument(
        "--price-interval",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="how often ticks are pushed (default 0.25)",
    )
    parser.add_argument(
        "--watch-interval",
        type=float,
        default=DEFAULT_WATCH_INTERVAL,
        metavar="SECONDS",
        help="how often the account (positions, pending orders, deals, balance) is compared "
        "with the last look and its changes reported as account events (default 0.25; 0 "
        "turns the watcher off)",
    )
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="link",
        help="link: one WebSocket to the API, jobs pushed down it (default; the HTTP routes "
        "while the server refuses it); http: long-poll the HTTP routes only",
    )
    parser.add_argument(
        "--link-retry",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="while the server refuses the link, try it again this often (default 60)",
    )
    parser.add_argument(
        "--terminal-path", help="mt5 backend: path of terminal64.exe (default: auto-detect)"
    )
    parser.add_argument(
        "--deviation",
        type=int,
        default=20,
        metavar="POINTS",
        help="mt5 backend: max slippage of market orders, in points (default 20)",
    )
    parser.add_argument("--seed", type=int, help="sim backend: RNG seed (reproducible market)")
    parser.add_argument(
        "--sim-latency-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="sim backend: how long orders, closes and SL/TP changes take to execute, like "
        "MT5's order_send (default 0)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="default INFO",
    )
    parser.add_argument("--version", action="version", version=f"mt5gate-agent {__version__}")
    return parser


def parse_config(argv: Sequence[str]) -> tuple[AgentConfig, str]:
    """The agent's config and log level from the command line (exits 2 on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.token:
        parser.error(f"--token is required (or set ${TOKEN_ENV})")
    if args.price_interval <= 0:
        parser.error("--price-interval must be positive")
    if not 0 <= args.watch_interval <= 60:
        parser.error("--watch-interval must be between 0 and 60")
    if not 1 <= args.link_retry <= 3600:
        parser.error("--link-retry must be between 1 and 3600")
    if not 0 <= args.sim_latency_ms <= 60_000:
        parser.error("--sim-latency-ms must be between 0 and 60000")
    symbols = tuple(s.strip() for s in args.prices.split(",") if s.strip())
    config = AgentConfig(
        api_url=args.api,
        agent_id=args.agent_id,
        token=args.token,
        backend=args.backend,
        price_symbols=symbols,
        price_interval=args.price_interval,
        watch_interval=args.watch_interval,
        transport=args.transport,
        link_retry=args.link_retry,
        sim_seed=args.seed,
        sim_latency=args.sim_latency_ms / 1000,
        terminal_path=args.terminal_path,
        deviation=args.deviation,
    )
    return config, args.log_level


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` without the program name (a leading ``agent`` is skipped)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["agent"]:
        arguments = arguments[1:]
    config, log_level = parse_config(arguments)
    logging.basicConfig(
        level=log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: with prices pushed 4 times a second that drowns
    # the one line per job.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(log_level)))
    if config.backend == "mt5":
        try:
            import MetaTrader5  # noqa: F401
        except ImportError:
            print(
                "The mt5 backend needs the MetaTrader5 package (Windows, beside a terminal): "
                "pip install MetaTrader5. Use --backend sim to try the agent without it.",
                file=sys.stderr,
            )
            return 1
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_run(config))
    except KeyboardInterrupt:
        return 130
    except TokenRefused as refused:
        print(token_refused_line(refused), file=sys.stderr)
        return TOKEN_REFUSED_EXIT
    return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Linux and macOS, with the server's `uvicorn[standard]`;
    there is none for Windows), else asyncio's own loop. A job's hops, socket to backend
    thread and back, are most of the agent's share of a round trip."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def token_refused_line(refused: TokenRefused) -> str:
    cause = refused.cause
    return (
        f"mt5gate agent: the API refused the agent token (HTTP {cause.status_code} "
        f"{cause.detail}): it was revoked, "
        "rotated or mistyped. Provision a new one (POST /api/v1/broker-connections/"
        f"{{id}}/agent) and start the agent again with it in ${TOKEN_ENV}."
    )


async def _run(config: AgentConfig) -> None:
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            logging.getLogger("mt5gate_agent").info(
                'event=stopping reason=signal note="finishing the job in hand"'
            )
            stop.set()
        elif main_task is not None:
            main_task.cancel()

    restore = _install_signal_handlers(loop, on_signal)
    try:
        await run_agent(config, stop)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        restore()


def _install_signal_handlers(
    loop: asyncio.AbstractEventLoop, on_signal: Callable[[], None]
) -> Callable[[], None]:
    """Routes SIGINT, SIGTERM (and SIGBREAK on Windows) to ``on_signal`` on the loop.
    Returns a function that puts the previous handlers back."""
    signals = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGBREAK"):
        signals.append(signal.SIGBREAK)
    previous: dict[signal.Signals, Any] = {}
    for sig in signals:
        try:
            loop.add_signal_handler(sig, on_signal)
            previous[sig] = None
        except (NotImplementedError, RuntimeError):
            # Windows' event loops have no add_signal_handler: use signal.signal and hop
            # onto the loop's thread.
            previous[sig] = signal.signal(sig, lambda *_: loop.call_soon_threadsafe(on_signal))

    def restore() -> None:
        for sig, handler in previous.items():
            if handler is None:
                loop.remove_signal_handler(sig)
            else:
                signal.signal(sig, handler)

    return restore
