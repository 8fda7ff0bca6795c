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
from app.services.redis_cache import read_cached, write_cached
from app.services.trading import UserAccount, online_agent, read_output
from mt5gate_protocol.jobs import JobType

SYMBOLS = TypeAdapter(list[SymbolInfo])


def list_key(connection_id: uuid.UUID, *, all_symbols: bool, group: str | None) -> str:
    return f"symbols:{connection_id}:list:{int(all_symbols)}:{group or ''}"


def symbol_key(connection_id: uuid.UUID, name: str) -> str:
    return f"symbols:{connection_id}:symbol:{name}"


async def fetch_symbols(
    account: UserAccount, redis: Redis, *, request: GetSymbolsInput
) -> list[SymbolInfo]:
    """The agent's answer to `request`, from the connection's cache when it holds it."""
    trading = account.trading
    agent = await online_agent(account)
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
        user_id=account.user_id,
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
    account: UserAccount, redis: Redis, *, all_symbols: bool, group: str | None
) -> list[SymbolInfo]:
    return await fetch_symbols(
        account, redis, request=GetSymbolsInput(all=all_symbols, group=group)
    )


async def get_symbol(account: UserAccount, redis: Redis, *, name: str) -> SymbolInfo:
    for symbol in await fetch_symbols(account, redis, request=GetSymbolsInput(symbol=name)):
        if symbol.name == name:
            return symbol
    raise SymbolNotFound()
