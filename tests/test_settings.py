"""Settings: production refuses weak or missing secrets; dev creates them once and reuses them."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from app.core.config import ConfigError, Settings
from tests.conftest import TEST_ENCRYPTION_KEY, TEST_JWT_SECRET
from tests.servers import free_port

SECRET_ENV = ("JWT_SECRET", "ENCRYPTION_KEY")


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No secret or store from the developer's shell, and ./var/ in a fresh directory."""
    for name in (*SECRET_ENV, "MT5GATE_ENV", "DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def mt5gate_env(**values: str) -> dict[str, str]:
    """The environment for a `mt5gate` subprocess: the shell's, minus any mt5gate setting."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    return {**env, **values}


def run_mt5gate(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


WEAK_JWT_SECRETS = [
    pytest.param("", id="missing"),
    pytest.param("changethis", id="placeholder"),
    pytest.param("CHANGEME", id="placeholder-upper"),
    pytest.param("short-but-random-ish", id="too-short"),
    pytest.param("a" * 64, id="one-char-repeated"),
    pytest.param("ab" * 32, id="two-chars-repeated"),
    # Found from outside: each of these started a production server.
    pytest.param("abcde" * 7, id="five-chars-repeated"),
    pytest.param("secret" * 6, id="a-word-repeated"),
    pytest.param("changethischangethischangethis12", id="placeholder-repeated"),
    pytest.param("abcdefghijklmnopqrstuvwxyz0123456789", id="counting"),
]
WEAK_ENCRYPTION_KEYS = [
    pytest.param("", id="missing"),
    pytest.param("changethis", id="placeholder"),
    pytest.param("not base64 at all!", id="not-base64"),
    pytest.param(base64.urlsafe_b64encode(os.urandom(16)).decode(), id="16-bytes"),
    pytest.param(base64.urlsafe_b64encode(bytes(32)).decode(), id="all-zero"),
    pytest.param(base64.urlsafe_b64encode(bytes(range(16)) * 2).decode(), id="a-count-twice"),
    pytest.param(base64.urlsafe_b64encode(bytes(range(32))).decode(), id="counting-bytes"),
    pytest.param(base64.urlsafe_b64encode(b"0123456789abcdef" * 2).decode(), id="hex-twice"),
]
# Secrets as people generate them: each must start a production server, every time.
STRONG_JWT_SECRETS = [
    pytest.param(lambda: secrets.token_hex(16), id="token_hex-16"),  # 32 hex digits
    pytest.param(lambda: secrets.token_hex(32), id="token_hex-32"),
    pytest.param(lambda: secrets.token_urlsafe(24), id="token_urlsafe-24"),  # 32 chars
    pytest.param(lambda: secrets.token_urlsafe(48), id="token_urlsafe-48"),
    pytest.param(lambda: base64.b64encode(os.urandom(32)).decode(), id="openssl-rand-base64-32"),
    pytest.param(lambda: "prod-secret-" + secrets.token_urlsafe(32), id="a-word-and-randomness"),
]


@pytest.mark.parametrize("jwt_secret", WEAK_JWT_SECRETS)
def test_production_refuses_a_weak_or_missing_jwt_secret(jwt_secret: str) -> None:
    candidate = settings(
        mt5gate_env="production", jwt_secret=jwt_secret, encryption_key=TEST_ENCRYPTION_KEY
    )
    with pytest.raises(ConfigError, match="JWT_SECRET") as caught:
        candidate.with_secrets()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("encryption_key", WEAK_ENCRYPTION_KEYS)
def test_production_refuses_a_weak_or_missing_encryption_key(encryption_key: str) -> None:
    candidate = settings(
        mt5gate_env="production", jwt_secret=TEST_JWT_SECRET, encryption_key=encryption_key
    )
    with pytest.raises(ConfigError, match="ENCRYPTION_KEY") as caught:
        candidate.with_secrets()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "weak",
    [
        pytest.param("abcde" * 7, id="abcde-x7"),
        pytest.param("secret" * 6, id="secret-x6"),
        pytest.param("changethischangethischangethis12", id="changethis-x3"),
    ],
)
def test_the_refusal_says_why_in_one_line(weak: str) -> None:
    candidate = settings(
        mt5gate_env="production", jwt_secret=weak, encryption_key=TEST_ENCRYPTION_KEY
    )
    with pytest.raises(ConfigError) as caught:
        candidate.with_secrets()
    reason = str(caught.value)
    assert reason.startswith("JWT_SECRET is ")
    assert "placeholder" in reason or "repeats or counts" in reason
    assert "secrets.token_urlsafe" in reason  # and how to make a good one
    assert weak not in reason  # the secret itself is never printed


@pytest.mark.parametrize("make_secret", STRONG_JWT_SECRETS)
def test_production_accepts_random_secrets_of_every_common_kind(
    make_secret: Callable[[], str],
) -> None:
    for _ in range(200):  # a random secret that fails now and then would stop a deploy
        secret, key = make_secret(), Fernet.generate_key().decode()
        strong = settings(mt5gate_env="production", jwt_secret=secret, encryption_key=key)
        assert strong.with_secrets() is strong, secret


def test_production_accepts_strong_secrets(tmp_path: Path) -> None:
    strong = settings(
        mt5gate_env="production",
        jwt_secret=base64.urlsafe_b64encode(os.urandom(48)).decode(),
        encryption_key=Fernet.generate_key().decode(),
    )
    assert strong.with_secrets() is strong
    assert not (tmp_path / "var").exists()  # production never writes dev secrets


def test_production_does_not_fall_back_to_dev_secrets(tmp_path: Path) -> None:
    settings(mt5gate_env="dev").with_secrets()  # leaves var/secrets.json behind
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        settings(mt5gate_env="production").with_secrets()


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        pytest.param({}, "JWT_SECRET", id="no-secrets"),
        pytest.param({"JWT_SECRET": "changethis"}, "JWT_SECRET", id="placeholder-secret"),
        pytest.param({"JWT_SECRET": TEST_JWT_SECRET}, "ENCRYPTION_KEY", id="no-encryption-key"),
        pytest.param(
            {"JWT_SECRET": TEST_JWT_SECRET, "ENCRYPTION_KEY": "nope"},
            "ENCRYPTION_KEY",
            id="bad-encryption-key",
        ),
        pytest.param(
            {"JWT_SECRET": "abcde" * 7, "ENCRYPTION_KEY": TEST_ENCRYPTION_KEY},
            "JWT_SECRET is not random",
            id="patterned-secret",
        ),
        pytest.param(
            {
                "JWT_SECRET": TEST_JWT_SECRET,
                "ENCRYPTION_KEY": base64.urlsafe_b64encode(bytes(range(16)) * 2).decode(),
            },
            "ENCRYPTION_KEY is not random",
            id="patterned-encryption-key",
        ),
    ],
)
def test_serve_in_production_exits_with_a_one_line_reason(
    tmp_path: Path, env: dict[str, str], reason: str
) -> None:
    result = run_mt5gate(
        ["serve", "--port", str(free_port())],
        mt5gate_env(MT5GATE_ENV="production", **env),
        tmp_path,
        timeout=30,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mt5gate: ")
    assert reason in lines[0]
    assert not (tmp_path / "var").exists()


def test_dev_creates_the_secrets_once_under_var(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mt5gate.config"):
        first = settings(mt5gate_env="dev").with_secrets()
    secrets_file = tmp_path / "var" / "secrets.json"
    assert secrets_file.exists()
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert "dev_secrets_created" in caplog.text
    stored = json.loads(secrets_file.read_text())
    assert stored == {"jwt_secret": first.jwt_secret, "encryption_key": first.encryption_key}
    Fernet(first.encryption_key.encode())  # a usable key

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mt5gate.config"):
        second = settings(mt5gate_env="dev").with_secrets()
    assert (second.jwt_secret, second.encryption_key) == (first.jwt_secret, first.encryption_key)
    assert "dev_secrets_created" not in caplog.text
    assert json.loads(secrets_file.read_text()) == stored


def test_dev_keeps_secrets_that_are_set(tmp_path: Path) -> None:
    explicit = settings(
        mt5gate_env="dev", jwt_secret=TEST_JWT_SECRET, encryption_key=TEST_ENCRYPTION_KEY
    )
    assert explicit.with_secrets().jwt_secret == TEST_JWT_SECRET
    assert not (tmp_path / "var").exists()

    only_jwt = settings(mt5gate_env="dev", jwt_secret=TEST_JWT_SECRET).with_secrets()
    assert only_jwt.jwt_secret == TEST_JWT_SECRET
    stored = json.loads((tmp_path / "var" / "secrets.json").read_text())
    assert only_jwt.encryption_key == stored["encryption_key"]


def test_dev_refuses_a_weak_secret_that_is_set() -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        settings(mt5gate_env="dev", jwt_secret="too-short").with_secrets()


def test_a_corrupt_dev_secrets_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "secrets.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"secrets\.json") as caught:
        settings(mt5gate_env="dev").with_secrets()
    assert "\n" not in str(caught.value)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_OFFLINE_AFTER_SECONDS", "5")
    monkeypatch.setenv("TRADE_JOB_TTL_SECONDS", "12.5")
    monkeypatch.setenv("ACCESS_TOKEN_TTL_SECONDS", "60")
    monkeypatch.setenv("JWT_ALGORITHM", "HS512")
    loaded = settings()
    assert loaded.agent_offline_after_seconds == 5
    assert loaded.trade_job_ttl_seconds == 12.5
    assert loaded.access_token_ttl_seconds == 60
    assert loaded.jwt_algorithm == "HS512"


def test_defaults_match_the_contract() -> None:
    defaults = settings()
    assert defaults.mt5gate_env == "dev"
    assert defaults.database_url == "sqlite+aiosqlite:///./var/mt5gate.db"
    assert defaults.redis_url == "memory://"
    assert defaults.jwt_algorithm == "HS256"
    assert defaults.agent_offline_after_seconds == 600
    assert defaults.trade_job_ttl_seconds == 30


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_database_urls_get_the_async_driver(given: str, expected: str) -> None:
    assert settings(database_url=given).database_url == expected


@pytest.mark.parametrize("algorithm", ["none", "RS256", "hs256"])
def test_only_hmac_algorithms_are_allowed(algorithm: str) -> None:
    with pytest.raises(ValueError, match="jwt_algorithm"):
        settings(jwt_algorithm=algorithm)
