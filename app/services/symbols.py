"""Symbol specifications, fetched by a `get_symbols` job and cached per connection.

Keys: `symbols:{connection_id}:list:{all}:{group}` for a list and
`symbols:{connection_id}:symbol:{name}` for one symbol, each the JSON of what the agent
answered, for `symbols_cache_ttl_seconds` (5 min). Only the connection's own agent's answers
are ever written there. Redis is an optimisation: down or holding garbage, it is a miss.
"""

from __future__ import annotations

import uuid

from pydantic import TypeAdapter
from redis.asyncio import Redis

from app.core.errors import SymbolNotFound
from app.core.redis import redis_key
from app.dispatch import create_job_and_wait
from app.schemas.trading import GetSymbolsInput, SymbolInfo
from app.services.orders import Trading
from app.services.redis_cache import read_cached, write_cached
from app.services.trading import online_agent, read_output
from mt5gate_protocol.jobs import JobType

SYMBOLS = TypeAdapter(list[SymbolInfo])


def list_key(connection_id: uuid.UUID, *, all_symbols: bool, group: str | None) -> str:
    return f"symbols:{connection_id}:list:{int(all_symbols)}:{group or ''}"


def symbol_key(connection_id: uuid.UUID, name: str) -> str:
    return f"symbols:{connection_id}:symbol:{name}"


async def fetch_symbols(
    trading: Trading,
    redis: Redis,
    *,
    user_id: uuid.UUID,
    connection_id: uuid.UUID | None,
    request: GetSymbolsInput,
) -> list[SymbolInfo]:
    """The agent's answer to `request`, from the connection's cache when it holds it."""
    agent = await online_agent(trading, user_id=user_id, connection_id=connection_id)
    if request.symbol is not None:
        name = symbol_key(agent.connection_id, request.symbol)
    else:
        name = list_key(agent.connection_id, all_symbols=request.all, group=request.group)
    key = redis_key(redis, name)
    hit = await read_cached(redis, key, SYMBOLS, what="symbols")
    if hit is not None:
        return hit
    job = await create_job_and_wait(
        trading.jobs,
        user_id=user_id,
        agent_id=agent.id,
        job_type=JobType.GET_SYMBOLS,
        input_data=request.model_dump(mode="json", exclude_none=True),
        ttl_seconds=trading.settings.read_job_ttl_seconds,
        timeout=trading.settings.symbols_wait_seconds,
    )
    if (job.error or {}).get("code") == "symbol_not_found":
        raise SymbolNotFound()
    symbols = SYMBOLS.validate_python(read_output(job)["symbols"])
    ttl = trading.settings.symbols_cache_ttl_seconds
    await write_cached(redis, key, SYMBOLS, symbols, ttl=ttl, what="symbols")
    return symbols


async def list_symbols(
    trading: Trading,
    redis: Redis,
    *,
    user_id: uuid.UUID,
    connection_id: uuid.UUID | None,
    all_symbols: bool,
    group: str | None,
) -> list[SymbolInfo]:
    return await fetch_symbols(
        trading,
        redis,
        user_id=user_id,
        connection_id=connection_id,
        request=GetSymbolsInput(all=all_symbols, group=group),
    )


async def get_symbol(
    trading: Trading,
    redis: Redis,
    *,
    user_id: uuid.UUID,
    connection_id: uuid.UUID | None,
    name: str,
) -> SymbolInfo:
    symbols = await fetch_symbols(
        trading,
        redis,
        user_id=user_id,
        connection_id=connection_id,
        request=GetSymbolsInput(symbol=name),
    )
    for symbol in symbols:
        if symbol.name == name:
            return symbol
    raise SymbolNotFound()
