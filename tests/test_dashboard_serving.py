"""How `mt5gate serve` serves the dashboard: headers, caching, its files, its config.

The page itself is driven in a real browser by tests/test_dashboard.py.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import re
import tomllib
from pathlib import Path

import httpx
import pytest

from app.web.dashboard import STATIC_DIR, serves_websocket
from scripts.vendor_lightweight_charts import PACKAGE, VERSION, check_integrity
from tests.servers import RunningApi

ROOT = Path(__file__).resolve().parent.parent
CSP = (
    "default-src 'self'; connect-src 'self'; frame-ancestors 'none'; object-src 'none'; "
    "base-uri 'none'"
)
VENDORED = f"/dashboard/vendor/{PACKAGE}-{VERSION}.standalone.production.mjs"
IMPORT = re.compile(r"""(?:from|import)\s*["']([^"']+)["']""")


@pytest.fixture
async def http(api: RunningApi) -> httpx.AsyncClient:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        yield client


def assert_security_headers(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_the_page_is_served_at_the_root_with_the_contracts_headers(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert_security_headers(response)
    # Revalidated on every load: a new release is never hidden behind a cached page.
    assert response.headers["cache-control"] == "no-cache"
    assert '<script type="module" src="/dashboard/js/main.js"></script>' in response.text
    assert "<script>" not in response.text
    assert " style=" not in response.text

    again = await http.get("/", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    assert (await http.head("/")).status_code == 200


async def test_our_modules_are_javascript_and_revalidated(http: httpx.AsyncClient) -> None:
    response = await http.get("/dashboard/js/main.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert_security_headers(response)


async def test_the_vendored_chart_library_is_cached_for_good(http: httpx.AsyncClient) -> None:
    response = await http.get(VENDORED)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert_security_headers(response)
    assert f"Lightweight Charts™ v{VERSION}" in response.text[:300]
    licence = await http.get(f"/dashboard/vendor/{PACKAGE}-{VERSION}.LICENSE")
    assert "Apache License" in licence.text


async def test_every_file_the_page_refers_to_is_served(http: httpx.AsyncClient) -> None:
    """Follows the page's links and every module's imports, as the browser would."""
    page = (await http.get("/")).text
    pending = re.findall(r'(?:href|src)="(/dashboard/[^"]+)"', page)
    seen: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        response = await http.get(path)
        assert response.status_code == 200, path
        if path.endswith(".js"):
            directory = path.rsplit("/", 1)[0]
            pending += [
                normalise(f"{directory}/{target}") for target in IMPORT.findall(response.text)
            ]
    assert VENDORED in seen
    assert "/dashboard/js/chart.js" in seen
    assert "/dashboard/dashboard.css" in seen


def normalise(path: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/" + "/".join(parts)


async def test_a_path_outside_the_dashboards_files_is_not_served(
    http: httpx.AsyncClient,
) -> None:
    assert (await http.get("/dashboard/../app/core/config.py")).status_code == 404
    assert (await http.get("/dashboard/%2e%2e/%2e%2e/pyproject.toml")).status_code == 404
    assert (await http.get("/dashboard/js/nothing.js")).status_code == 404


async def test_the_config_offers_no_demo_sign_in_outside_the_demo(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/dashboard/config.json")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert_security_headers(response)
    assert response.json()["demo_login"] is None


async def test_the_config_offers_exactly_the_routes_this_server_has(
    http: httpx.AsyncClient,
) -> None:
    features = (await http.get("/dashboard/config.json")).json()["features"]
    paths = (await http.get("/openapi.json")).json()["paths"]
    expected = {
        "pending_orders": "/api/v1/pending-orders" in paths,
        "history": "/api/v1/history/deals" in paths,
        "symbols": "/api/v1/symbols" in paths,
        "jobs": "/api/v1/jobs/{job_id}" in paths,
        "api_keys": "/api/v1/api-keys" in paths,
    }
    assert {name: features[name] for name in expected} == expected
    assert isinstance(features["account_stream"], bool)


async def test_the_websocket_probe_tells_a_served_path_from_an_unknown_one(
    api: RunningApi,
) -> None:
    # /ws/prices is served by a middleware ahead of the router; the probe finds it anyway.
    assert await serves_websocket(api.app, "/ws/prices") is True
    assert await serves_websocket(api.app, "/ws/prices/EURUSD") is True
    assert await serves_websocket(api.app, "/ws/no-such-stream") is False


def test_a_non_editable_install_ships_every_dashboard_file() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["app"]
    files = [path for path in STATIC_DIR.rglob("*") if path.is_file()]
    assert files
    for path in files:
        relative = path.relative_to(ROOT / "app").as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


def test_the_page_and_the_chart_module_load_the_pinned_library() -> None:
    name = f"{PACKAGE}-{VERSION}.standalone.production.mjs"
    vendored = {path.name for path in (STATIC_DIR / "vendor").iterdir()}
    assert vendored == {name, f"{PACKAGE}-{VERSION}.LICENSE"}
    assert f"/dashboard/vendor/{name}" in (STATIC_DIR / "index.html").read_text()
    assert f"../vendor/{name}" in (STATIC_DIR / "js" / "chart.js").read_text()


def test_the_vendoring_script_refuses_a_tarball_that_is_not_the_published_one() -> None:
    tarball = b"the package's bytes"
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    check_integrity(tarball, integrity, "pkg@1")
    with pytest.raises(SystemExit, match="does not match"):
        check_integrity(tarball + b"!", integrity, "pkg@1")
    with pytest.raises(SystemExit, match="algorithm 'sha1'"):
        check_integrity(tarball, "sha1-" + integrity[7:], "pkg@1")
