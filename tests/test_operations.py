"""For operators: /healthz, /readyz, /metrics, JSON logs with request ids."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from alembic import command
from prometheus_client.parser import text_string_to_metric_families

from app.core.migrate import alembic_config, head_revision, upgrade_to_head_async
from tests.conftest import make_settings
from tests.flows import Trader, onboard_trader
from tests.private_redis import private_redis
from tests.servers import RunningApi, run_api, start_serve
from tests.stores import Store, create_postgres_database, drop_postgres_database, postgres_store
from tests.trading_agent import fake_agent

ORDER = {"symbol": "EURUSD", "side": "buy", "volume": 0.1}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page, parsed by prometheus_client's own parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(
    page: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return page.get((name, frozenset(labels.items())), 0.0)


async def test_healthz_and_readyz_answer_without_auth(api: RunningApi) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as http:
        health = await http.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "schema": "ok", "redis": "ok"}
        assert "X-RateLimit-Limit" not in ready.headers


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_readyz_is_503_when_redis_is_gone(store: Store, tmp_path: Path) -> None:
    with private_redis(tmp_path) as redis_server:
        settings = make_settings(store, redis_url=redis_server.url)
        async with run_api(settings) as api, httpx.AsyncClient(base_url=api.base_url) as http:
            assert (await http.get("/readyz")).status_code == 200
            redis_server.stop()
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {
                "detail": "not_ready",
                "checks": {"database": "ok", "schema": "ok", "redis": "unreachable"},
            }
            assert (await http.get("/healthz")).status_code == 200


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_a_call_that_needs_redis_while_it_is_gone_is_503_redis_unavailable(
    store: Store, tmp_path: Path
) -> None:
    """redis-py's ConnectionError is its own, not the builtin: it once fell through to a
    500. An agent's events live in Redis; with Redis away the batch is refused whole, 503,
    and stored once Redis is back."""
    event = {
        "kind": "account",
        "at": "2026-12-01T00:00:00Z",
        "data": {
            "balance": 1000,
            "equity": 1000,
            "margin_used": 0,
            "margin_available": 1000,
            "currency": "USD",
            "leverage": 100,
        },
    }
    with private_redis(tmp_path) as redis_server:
        settings = make_settings(store, redis_url=redis_server.url)
        async with (
            run_api(settings) as api,
            httpx.AsyncClient(base_url=f"{api.base_url}/api/v1", timeout=30) as http,
        ):
            trader = await onboard_trader(http)
            agent = trader.agent
            redis_server.stop()
            refused = await http.post(
                agent.path("events"), json={"events": [event]}, headers=agent.headers
            )
            assert refused.status_code == 503, refused.text
            assert refused.json()["detail"] == "redis_unavailable"
            redis_server.start()
            accepted = await http.post(
                agent.path("events"), json={"events": [event]}, headers=agent.headers
            )
            assert accepted.status_code == 202, accepted.text
            assert accepted.json() == {"accepted": 1}


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_readyz_is_503_when_the_schema_is_behind(store: Store) -> None:
    name, url = await asyncio.to_thread(create_postgres_database)
    try:
        fresh = postgres_store(url)
        await upgrade_to_head_async(url)
        async with (
            run_api(make_settings(fresh)) as api,
            httpx.AsyncClient(base_url=api.base_url) as http,
        ):
            assert (await http.get("/readyz")).status_code == 200
            await _downgrade_one(url)
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            body = ready.json()
            assert body["detail"] == "not_ready"
            assert body["checks"]["database"] == "ok"
            assert head_revision() in body["checks"]["schema"]
            assert "postgres@" not in ready.text
    finally:
        await asyncio.to_thread(drop_postgres_database, name)


async def _downgrade_one(url: str) -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(url), "-1")


async def test_metrics_move_after_an_order(
    api: RunningApi, client: httpx.AsyncClient, trader: Trader
) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as http:
        before = samples((await http.get("/metrics")).text)
        async with fake_agent(client, trader).running():
            order = await client.post("/orders", json=ORDER, headers=trader.headers)
        assert order.status_code == 201
        await client.get(f"/orders/{order.json()['order_id']}", headers=trader.headers)
        page = await http.get("/metrics")
    assert page.headers["content-type"].startswith("text/plain")
    after = samples(page.text)
    requests = "mt5gate_http_requests_total"
    labels = {"method": "POST", "route": "/api/v1/orders", "status": "201"}
    assert sample(after, requests, **labels) == sample(before, requests, **labels) + 1
    by_template = {"method": "GET", "route": "/api/v1/orders/{order_id}", "status": "200"}
    assert sample(after, requests, **by_template) >= 1  # the template, never the id
    assert not any(order.json()["order_id"] in str(key) for key in after)
    trips = "mt5gate_job_round_trip_seconds_count"
    trade = {"job_type": "trade", "outcome": "completed"}
    assert sample(after, trips, **trade) == sample(before, trips, **trade) + 1
    fast = {**trade, "le": "0.1"}
    assert sample(after, "mt5gate_job_round_trip_seconds_bucket", **fast) >= 1
    assert sample(after, "mt5gate_agents_online") >= 1
    for name in (
        "mt5gate_websockets_open",
        "mt5gate_ticks_received_total",
        "mt5gate_ticks_delivered_total",
        "mt5gate_ticks_dropped_for_slow_clients",
        "process_resident_memory_bytes",
    ):
        assert any(key[0] == name for key in after), name


async def test_metrics_token_and_switch(store: Store) -> None:
    async with run_api(make_settings(store, metrics_token="scrape-me")) as api:
        async with httpx.AsyncClient(base_url=api.base_url) as http:
            assert (await http.get("/metrics")).status_code == 401
            wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            right = await http.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
            assert right.status_code == 200
    async with run_api(make_settings(store, metrics_enabled=False)) as api:
        async with httpx.AsyncClient(base_url=api.base_url) as http:
            assert (await http.get("/metrics")).status_code == 404


async def test_a_request_id_is_returned_and_kept_when_it_is_plain(api: RunningApi) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as http:
        given = await http.get("/healthz", headers={"X-Request-ID": "lb-1234.abc"})
        assert given.headers["X-Request-ID"] == "lb-1234.abc"
        made = await http.get("/api/v1/me")
        assert len(made.headers["X-Request-ID"]) == 32
        hostile = await http.get("/healthz", headers={"X-Request-ID": "a b\tinjected=1"})
        assert hostile.headers["X-Request-ID"] != "a b\tinjected=1"


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_json_logs_parse_line_by_line_and_carry_the_request_id(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    serving = start_serve(make_settings(store), tmp_path / "serve.log")
    try:
        response = httpx.get(
            f"{serving.base_url}/api/v1/me?token=secret-in-url",
            headers={"X-Request-ID": "trace-42"},
        )
        assert response.status_code == 401
    finally:
        serving.stop()
    lines = [json.loads(line) for line in serving.log_path.read_text().splitlines() if line]
    assert all({"time", "level", "logger"} <= set(line) for line in lines)
    assert any(line.get("event") == "started" and line.get("env") == "dev" for line in lines)
    traced = [line for line in lines if line.get("request_id") == "trace-42"]
    assert traced, lines[-5:]
    assert "secret-in-url" not in serving.log_path.read_text()
