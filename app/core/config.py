"""All settings in one typed place, read from the environment (and `.env`)."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import time
from functools import cached_property
from pathlib import Path
from typing import Literal

from cryptography.fernet import Fernet
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("mt5gate.config")

WEAK_SECRETS = {"", "changethis", "secret", "changeme", "password"}
MIN_JWT_SECRET_LENGTH = 32
# A random secret of that length has far more; these catch `aaaa...` and `abab...`.
MIN_DISTINCT_JWT_SECRET_CHARS = 5
MIN_DISTINCT_KEY_BYTES = 16
ALLOWED_JWT_ALGORITHMS = ("HS256", "HS384", "HS512")
DEV_SECRETS_FILE = Path("var") / "secrets.json"


class ConfigError(RuntimeError):
    """A setting makes it unsafe or impossible to start; the message is one line."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    mt5gate_env: Literal["dev", "production"] = "dev"
    database_url: str = "sqlite+aiosqlite:///./var/mt5gate.db"
    redis_url: str = "memory://"

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

    # How long a trading call waits for its agent's answer (the contract's budgets): writes
    # (orders, closing and modifying positions), reads (positions, account), candles.
    trade_wait_seconds: float = Field(default=10, gt=0)
    read_wait_seconds: float = Field(default=5, gt=0)
    candles_wait_seconds: float = Field(default=10, gt=0)
    candles_cache_ttl_seconds: int = Field(default=30, gt=0)
    # A WebSocket whose client has read nothing for this long while ticks wait for it (one
    # send blocked this long on a full buffer) is closed with 1013.
    ws_stall_timeout_seconds: float = Field(default=10, gt=0)
    # Ticks waiting for one socket; past this, older ticks of an instrument are dropped.
    ws_queue_size: int = Field(default=256, ge=8)
    ws_max_instruments_per_socket: int = Field(default=100, gt=0)
    # `channels`: SUBSCRIBE to an instrument while this process has a socket on it;
    # `pattern`: one PSUBSCRIBE prices:* for all (see bench/fanout.py for the trade-off).
    ws_redis_subscription: Literal["channels", "pattern"] = "channels"
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


def check_secrets(settings: Settings) -> None:
    secret = settings.jwt_secret
    if secret.strip().lower() in WEAK_SECRETS:
        raise ConfigError("JWT_SECRET is missing or a placeholder; set a random value")
    if len(secret) < MIN_JWT_SECRET_LENGTH:
        raise ConfigError(f"JWT_SECRET is too short; use at least {MIN_JWT_SECRET_LENGTH} chars")
    if len(set(secret)) < MIN_DISTINCT_JWT_SECRET_CHARS:
        raise ConfigError("JWT_SECRET repeats a few characters; set a random value")
    try:
        key = base64.urlsafe_b64decode(settings.encryption_key.encode())
        valid = len(key) == 32
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(
            "ENCRYPTION_KEY is missing or invalid; generate one with "
            "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())'"
        )
    if len(set(key)) < MIN_DISTINCT_KEY_BYTES:
        raise ConfigError("ENCRYPTION_KEY is not random (too few distinct bytes); generate one")


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
