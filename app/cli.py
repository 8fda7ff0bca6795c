"""The `mt5gate` command: serve, migrate, agent, set-price-source, demo."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import uuid

from pydantic import ValidationError

from app.core.config import ConfigError, Settings
from app.core.logging import configure_logging

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mt5gate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API")
    serve.add_argument("--host", default=DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)

    commands.add_parser("migrate", help="apply the schema migrations")

    commands.add_parser(
        "agent", help="run the MT5 agent (see `mt5gate agent --help`)", add_help=False
    )

    price_source = commands.add_parser("set-price-source", help="mark an agent as a price source")
    price_source.add_argument("agent_id")
    price_source.add_argument("--off", action="store_true", help="unmark it")

    demo = commands.add_parser("demo", help="API + simulated agent + demo user, in one process")
    demo.add_argument("--host", default=DEFAULT_HOST)
    demo.add_argument("--port", type=int, default=DEFAULT_PORT)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"]:
        from mt5gate_agent.cli import main as agent_main

        return agent_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"mt5gate: invalid setting: {one_line(exc)}", file=sys.stderr)
        return 1
    configure_logging(
        settings.log_level,
        settings.log_format,
        agent_traffic=settings.access_log_agent_traffic,
    )
    try:
        if args.command == "serve":
            return serve(settings, args.host, args.port)
        if args.command == "migrate":
            from app.core.migrate import upgrade_to_head

            upgrade_to_head(settings.database_url)
            print("migrations applied")
            return 0
        if args.command == "set-price-source":
            return asyncio.run(set_price_source_command(settings, args.agent_id, not args.off))
        if args.command == "demo":
            from app.demo import run_demo

            return run_demo(settings, args.host, args.port)
    except ConfigError as exc:
        print(f"mt5gate: {exc}", file=sys.stderr)
        return 1
    return 2


def one_line(exc: ValidationError) -> str:
    """`ACCESS_TOKEN_TTL_SECONDS: Input should be greater than 0; ...`, env var names."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
        for error in exc.errors()
    )


def serve(settings: Settings, host: str, port: int) -> int:
    # Checked before the heavy imports, so a refusal to start is the only line printed.
    settings = settings.with_secrets()
    if not settings.is_sqlite:  # SQLite is migrated by the server itself, at startup
        from app.core.migrate import serve_refusal

        refusal = asyncio.run(serve_refusal(settings.database_url))
        if refusal:
            print(f"mt5gate: {refusal}", file=sys.stderr)
            return 1

    try:
        sock = listening_socket(host, port)
    except OSError as exc:
        print(f"mt5gate: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    from app.main import create_app
    from app.server import GatewayServer, server_config

    app = create_app(settings)
    server = GatewayServer(server_config(app, settings, host=host, port=port), app)
    server.run(sockets=[sock])
    return 0


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else: on a busy port `serve` ends at once
    (OSError), before the app has imported, started or connected to anything."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets whose proto
    # says TCP, and without it a response can wait ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def set_price_source_command(settings: Settings, agent_id: str, enabled: bool) -> int:
    """`mt5gate set-price-source AGENT_ID [--off]`."""
    from app.core.db import create_engine, create_session_factory
    from app.services.agents import set_price_source

    try:
        agent_uuid = uuid.UUID(agent_id)
    except ValueError:
        print(f"mt5gate: not an agent id: {agent_id!r}", file=sys.stderr)
        return 2
    engine = create_engine(settings.database_url)
    try:
        found = await set_price_source(
            create_session_factory(engine), agent_id=agent_uuid, enabled=enabled
        )
    finally:
        await engine.dispose()
    if not found:
        print(f"mt5gate: no agent {agent_uuid}", file=sys.stderr)
        return 1
    print(f"agent {agent_uuid} is {'now' if enabled else 'no longer'} a price source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
