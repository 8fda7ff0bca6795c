"""All settings in one typed place, read from the environment (and `.env`)."""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

from cryptography.fernet import Fernet
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("mt5gate.config")

WEAK_SECRETS = {"", "changethis", "secret", "changeme", "password"}
# Words of the placeholders people leave in: a secret that is mostly these is one.
PLACEHOLDER_WORDS = ("changethis", "changeme", "placeholder", "example", "password", "secret")
MIN_JWT_SECRET_LENGTH = 32
# The least estimated entropy (`estimated_bits`) a secret may have. Random secrets of the
# minimum size estimate far above it (32 hex digits: 55 at the lowest of 20,000 draws, 79
# on average; 32 url-safe characters: 89; a Fernet key's 32 bytes: 119), and strings with
# structure far below (`abcde` x 7: 9, `secret` x 6: 14, `changethis` x 3 + `12`: 38,
# bytes 0..15 twice: 16).
MIN_SECRET_BITS = 48
GENERATE_JWT_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
GENERATE_ENCRYPTION_KEY = (
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)
# The estimate looks at this much of a secret at most (its cost grows with the square).
ESTIMATE_MAX_SYMBOLS = 512
ALLOWED_JWT_ALGORITHMS = ("HS256", "HS384", "HS512")
DEV_SECRETS_FILE = Path("var") / "secrets.json"


class ConfigError(RuntimeError):
    """A setting makes it unsafe or impossible to start; the message is one line."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    mt5gate_env: Literal["dev", "production"] = "dev"
    database_url: str = "sqlite+aiosqlite:///./var/mt5gate.db"
    # Database connections a process keeps open, and how many more it may open for a burst
    # (each closed again when returned). Above the jobs a process has in flight: a
    # connection opened and closed per burst costs a connect, TLS negotiation and a login
    # (PostgreSQL), a thread (SQLite's driver).
    database_pool_size: int = Field(default=40, ge=1, le=1000)
    database_max_overflow: int = Field(default=20, ge=0, le=1000)
    redis_url: str = "memory://"
    # A Redis connection silent this long is checked with a PING (see app/core/redis.py).
    redis_health_check_interval_seconds: float = Field(default=15, gt=0)
    # Put before every Redis key and channel (`prices:…`, `candles:…`, `mt5gate:jobs:…`):
    # empty, the contract's names, unchanged; set, deployments sharing a Redis are apart.
    redis_key_prefix: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$")

    jwt_secret: str = ""
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    access_token_ttl_seconds: int = Field(default=3600, gt=0)
    encryption_key: str = ""

    agent_offline_after_seconds: float = Field(default=600, gt=0)
    trade_job_ttl_seconds: float = Field(default=30, gt=0)
    # Reads (positions, account, candles) are useless once their caller gave up.
    read_job_ttl_seconds: float = Field(default=30, gt=0)
    # A job claimed by an agent that never answers ends as `lost` after this long.
    job_result_timeout_seconds: float = Field(default=60, gt=0)
    # The fallback poll of waiters, in case a wake-up message was lost.
    job_poll_interval_seconds: float = Field(default=0.5, gt=0)
    job_wakeups_enabled: bool = True
    # The agent link (WS /ws/agents/{id}); `false` refuses its handshake (agents long-poll).
    agent_link_enabled: bool = True

    # How long a trading call waits for its agent's answer (the contract's budgets): writes
    # (orders, closing and modifying positions), reads (positions, account), candles.
    trade_wait_seconds: float = Field(default=10, gt=0)
    read_wait_seconds: float = Field(default=5, gt=0)
    candles_wait_seconds: float = Field(default=10, gt=0)
    candles_cache_ttl_seconds: int = Field(default=30, gt=0)
    # The broker's records: deal and order history, symbol specifications (the latter
    # cached per connection in Redis).
    history_wait_seconds: float = Field(default=10, gt=0)
    symbols_wait_seconds: float = Field(default=10, gt=0)
    symbols_cache_ttl_seconds: int = Field(default=300, gt=0)
    # A WebSocket whose client has read nothing for this long while ticks wait for it (one
    # send blocked this long on a full buffer) is closed with 1013.
    ws_stall_timeout_seconds: float = Field(default=10, gt=0)
    # Ticks waiting for one socket; past this, older ticks of an instrument are dropped.
    ws_queue_size: int = Field(default=256, ge=8)
    ws_max_instruments_per_socket: int = Field(default=100, gt=0)
    # `channels`: SUBSCRIBE to an instrument while this process has a socket on it;
    # `pattern`: one PSUBSCRIBE prices:* for all (see bench/fanout.py for the trade-off).
    ws_redis_subscription: Literal["channels", "pattern"] = "channels"
    # Account events (WS /ws/account): open sockets per user across every process; the
    # messages queued for one socket past which it is closed with 1013 (never dropped one);
    # what the per-connection log keeps: every event among the newest `keep_count` or
    # younger than `keep_seconds`.
    ws_max_account_sockets_per_user: int = Field(default=20, gt=0)
    ws_account_queue_size: int = Field(default=1024, ge=8)
    account_events_keep_count: int = Field(default=10_000, gt=0)
    account_events_keep_seconds: float = Field(default=86_400, ge=0)
    ws_ping_interval_seconds: float = Field(default=20, gt=0)
    # A peer that does not answer a ping within this long is dead: its socket is closed.
    ws_ping_timeout_seconds: float = Field(default=20, gt=0)
    # Calls per second per user on the onboarding-gated routes, across all API processes.
    rate_limit_trading_per_second: int = Field(default=20, gt=0)
    # `false`: no per-user limit at all (the failed-login limit always holds).
    rate_limit_enabled: bool = True
    # Peers whose X-Forwarded-For is believed (uvicorn's setting, under its name): a
    # client's address decides its failed-login limit, so only a proxy of ours may set it.
    forwarded_allow_ips: str = "127.0.0.1,::1"
    shutdown_timeout_seconds: float = Field(default=5, gt=0)
    log_level: str = "INFO"
    # Every agent price push and job long-poll in the access log (else a summary a minute).
    access_log_agent_traffic: bool = False
    # `json`: one JSON object per line (time, level, logger, event and its fields).
    log_format: Literal["text", "json"] = "text"
    # /metrics: off with `false`; with a token set, it needs `Authorization: Bearer <token>`.
    metrics_enabled: bool = True
    metrics_token: str = ""

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, url: str) -> str:
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            return "postgresql+asyncpg://" + url.split("://", 1)[1]
        if url.startswith("sqlite://"):
            return "sqlite+aiosqlite://" + url.split("://", 1)[1]
        return url

    @property
    def is_production(self) -> bool:
        return self.mt5gate_env == "production"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @cached_property
    def fernet(self) -> Fernet:
        return Fernet(self.encryption_key.encode())

    def with_secrets(self) -> Settings:
        """Checks the secrets; in dev, fills missing ones from (or into) ./var/secrets.json."""
        if self.is_production:
            check_secrets(self)
            return self
        missing = {
            name for name in ("jwt_secret", "encryption_key") if getattr(self, name) in WEAK_SECRETS
        }
        if not missing:
            check_secrets(self)
            return self
        stored = load_or_create_dev_secrets()
        filled = self.model_copy(update={name: stored[name] for name in missing})
        check_secrets(filled)
        return filled


def lz76_phrases(symbols: Sequence[int]) -> int:
    """The number of phrases of the Lempel-Ziv (1976) parse of `symbols`: the pieces it
    takes to write them when each piece may copy a run from earlier (overlapping is
    allowed) and adds one new symbol. A repeated pattern costs a piece or two."""
    count, start, length = 0, 0, len(symbols)
    while start < length:
        longest = 0
        for earlier in range(start):
            run = 0
            while start + run < length and symbols[earlier + run] == symbols[start + run]:
                run += 1
            longest = max(longest, run)
        start += longest + 1
        count += 1
    return count


def estimated_bits(symbols: Sequence[int]) -> float:
    """A conservative estimate of a secret's entropy, in bits: its Lempel-Ziv phrases times
    log2 of the distinct symbols it uses. Taken also over the differences of neighbours,
    so that a counting run (`abcd...`, bytes 0, 1, 2, ...) costs as little as a repeat;
    the smaller estimate counts. Not a proof of strength: a floor that random secrets
    clear by far and patterned ones do not."""
    symbols = symbols[:ESTIMATE_MAX_SYMBOLS]
    distinct = len(set(symbols))
    if distinct < 2:
        return 0.0
    steps = [later - earlier for earlier, later in zip(symbols, symbols[1:], strict=False)]
    phrases = min(lz76_phrases(symbols), 1 + lz76_phrases(steps))
    return phrases * math.log2(distinct)


def weakness(name: str, symbols: Sequence[int], *, placeholders: bool = False) -> str | None:
    """Why the secret `name` is weak, in one line; None when it is not. With `placeholders`,
    the placeholder words in it count for nothing."""
    kept = symbols
    found = []
    if placeholders:
        text = bytes(symbols).decode("latin-1").lower()
        found = [word for word in PLACEHOLDER_WORDS if word in text]
        for word in found:
            text = text.replace(word, "")
        kept = list(text.encode("latin-1"))
    bits = estimated_bits(kept)
    if bits >= MIN_SECRET_BITS:
        return None
    if found:
        return f"{name} is built on the placeholder {found[0]!r}"
    return (
        f"{name} is not random: it repeats or counts (about {bits:.0f} bits by its "
        f"Lempel-Ziv complexity, {MIN_SECRET_BITS} needed)"
    )


def check_secrets(settings: Settings) -> None:
    secret = settings.jwt_secret
    if secret.strip().lower() in WEAK_SECRETS:
        raise ConfigError("JWT_SECRET is missing or a placeholder; set a random value")
    if len(secret) < MIN_JWT_SECRET_LENGTH:
        raise ConfigError(f"JWT_SECRET is too short; use at least {MIN_JWT_SECRET_LENGTH} chars")
    reason = weakness("JWT_SECRET", list(secret.encode()), placeholders=True)
    if reason is not None:
        raise ConfigError(f"{reason}; generate one with {GENERATE_JWT_SECRET}")
    try:
        key = base64.urlsafe_b64decode(settings.encryption_key.encode())
        valid = len(key) == 32
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(
            f"ENCRYPTION_KEY is missing or invalid; generate one with {GENERATE_ENCRYPTION_KEY}"
        )
    reason = weakness("ENCRYPTION_KEY", list(key))
    if reason is not None:
        raise ConfigError(f"{reason}; generate one with {GENERATE_ENCRYPTION_KEY}")


def load_or_create_dev_secrets(path: Path = DEV_SECRETS_FILE) -> dict[str, str]:
    """The dev secrets under ./var/, created once (owner-only) and reused after that."""
    fresh = {
        "jwt_secret": secrets.token_urlsafe(48),
        "encryption_key": Fernet.generate_key().decode(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once agree on one file; 0o600 from the start.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_dev_secrets(path)
    with os.fdopen(fd, "w") as file:
        json.dump(fresh, file)
    log.warning("event=dev_secrets_created path=%s reason=no JWT_SECRET/ENCRYPTION_KEY set", path)
    return fresh


def read_dev_secrets(path: Path) -> dict[str, str]:
    for _ in range(50):  # another process may be between creating and writing the file
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict) and all(
            isinstance(stored.get(name), str) for name in ("jwt_secret", "encryption_key")
        ):
            return {name: stored[name] for name in ("jwt_secret", "encryption_key")}
        time.sleep(0.02)
    raise ConfigError(f"{path} is unreadable or incomplete; delete it to create new dev secrets")
