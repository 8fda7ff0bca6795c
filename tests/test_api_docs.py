"""The documentation is where a user looks: `/docs` works offline, the OpenAPI document
describes what every operation can answer and the WebSocket routes, and `docs/API.md`
names every route the app serves."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIWebSocketRoute, iter_route_contexts
from starlette.routing import Mount, WebSocketRoute

from app.main import create_app
from app.ws import price_routes
from tests.conftest import make_settings
from tests.servers import RunningApi, run_api
from tests.stores import sqlite_store

REPO = Path(__file__).resolve().parent.parent
API_MD = REPO / "docs" / "API.md"
SHARED_API_MD = REPO.parent / "shared" / "API.md"
VALIDATION_LIST = {"$ref": "#/components/schemas/HTTPValidationError"}
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
ASSET_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture
async def docs_api(tmp_path: Path) -> AsyncIterator[RunningApi]:
    # Documentation does not depend on the store: one server on the embedded stores.
    async with run_api(make_settings(sqlite_store(tmp_path))) as running:
        yield running


@pytest.fixture
async def served(docs_api: RunningApi) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=docs_api.base_url) as http:
        schema: dict[str, Any] = (await http.get("/openapi.json")).json()
    return schema


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]


async def test_docs_page_loads_only_same_origin_assets(docs_api: RunningApi) -> None:
    async with httpx.AsyncClient(base_url=docs_api.base_url) as http:
        page = await http.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        # Nothing from another origin: no CDN, no online validator badge.
        assert not re.findall(r"https?://", page.text), page.text
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert {Path(urlsplit(asset).path).suffix for asset in assets} == set(ASSET_TYPES)
        for asset in assets:
            url = urljoin(f"{docs_api.base_url}/docs", asset)
            assert urlsplit(url).netloc == urlsplit(docs_api.base_url).netloc, asset
            response = await http.get(url)
            assert response.status_code == 200, asset
            assert ASSET_TYPES[Path(urlsplit(url).path).suffix] in response.headers["content-type"]
            assert len(response.content) > 500, asset
        assert "url: '/openapi.json'" in page.text
        assert (await http.get("/redoc")).status_code == 404


async def test_swagger_ui_is_the_packaged_distribution(docs_api: RunningApi) -> None:
    async with httpx.AsyncClient(base_url=docs_api.base_url) as http:
        script = (await http.get("/docs/assets/swagger-ui-bundle.js")).text
    assert "SwaggerUIBundle" in script
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.(\d+)\.\d+"', script)
    assert version is not None
    assert (int(version[1]), int(version[2])) >= (5, 30), version[0]


async def test_served_schema_describes_both_websocket_routes(served: dict[str, Any]) -> None:
    text = served["info"]["description"]
    for needle in (
        "WS /ws/prices/{instrument}?token=",
        "WS /ws/prices?token=",
        '"type": "subscribe"',
        '"type": "subscriptions"',
        '"type": "tick"',
        '"type": "error"',
        "`4001`",
        "`1008`",
        "`1013`",
    ):
        assert needle in text, needle


async def test_every_body_documents_400_and_413(served: dict[str, Any]) -> None:
    with_body = [(m, p, op) for m, p, op in operations(served) if "requestBody" in op]
    assert with_body
    for method, path, operation in with_body:
        for status in ("400", "413"):
            answer = operation["responses"].get(status)
            assert answer is not None, (method, path, status)
            assert answer["content"]["application/json"]["schema"] == ERROR_BODY


async def test_every_api_operation_documents_503_database_unavailable(
    served: dict[str, Any],
) -> None:
    for method, path, operation in operations(served):
        if path.startswith("/api/"):
            answer = operation["responses"]["503"]
            assert "`database_unavailable`" in answer["description"], (method, path)
            schema = answer["content"]["application/json"]["schema"]
            assert schema == ERROR_BODY or ERROR_BODY in schema["anyOf"], (method, path)


async def test_every_422_allows_the_validation_list(served: dict[str, Any]) -> None:
    checked = 0
    for method, path, operation in operations(served):
        if "requestBody" not in operation and not operation.get("parameters"):
            continue
        schema = operation["responses"]["422"]["content"]["application/json"]["schema"]
        assert schema == VALIDATION_LIST or VALIDATION_LIST in schema["anyOf"], (method, path)
        checked += 1
    assert checked
    # The routes with a 422 of their own keep it next to the list.
    orders = served["paths"]["/api/v1/orders"]["post"]["responses"]["422"]
    assert {"$ref": "#/components/schemas/OrderRejectedBody"} in orders["content"][
        "application/json"
    ]["schema"]["anyOf"]


async def test_405_allow_lists_every_method_of_the_path(
    docs_api: RunningApi, served: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(base_url=docs_api.base_url) as http:
        for template, item in served["paths"].items():
            path = re.sub(r"\{[^}]+\}", "1", template)
            documented = {method.upper() for method in item}
            unused = next(m for m in ("PUT", "PATCH", "DELETE", "POST") if m not in documented)
            response = await http.request(unused, path)
            assert response.status_code == 405, (unused, template)
            assert response.json()["detail"] == "method_not_allowed"
            allowed = {m.strip() for m in response.headers["allow"].split(",")}
            assert allowed - {"HEAD"} == documented, template


def normalized(method: str, path: str) -> str:
    return f"{method} {re.sub(r'{[^}]*}', '{}', path)}"


def named_routes(text: str) -> set[str]:
    """Every `METHOD /path` the text names, path parameters' names left out."""
    return {
        normalized(method, path)
        for method, path in re.findall(r"\b(GET|POST|PUT|PATCH|DELETE|WS) (/[^\s`?)]*)", text)
    }


def route_table(app: FastAPI) -> set[str]:
    """The app's own routes, as `METHOD /path`, the price sockets (routed ahead of the
    app) and the routes left out of the OpenAPI document included."""
    table: set[str] = set()
    # FastAPI keeps an included router's routes inside it; this walks them with their
    # prefixes, as its OpenAPI generator does.
    contexts = [*iter_route_contexts(app.routes), *iter_route_contexts(price_routes.ROUTES)]
    for context in contexts:
        route, path = context.original_route, context.path
        assert path is not None, route
        if isinstance(route, WebSocketRoute | APIWebSocketRoute):
            table.add(normalized("WS", path))
        elif isinstance(route, Mount):
            table.add(normalized("GET", f"{path}/{{file}}"))
        else:
            table |= {normalized(m, path) for m in context.methods or () if m != "HEAD"}
    return table


def test_api_md_names_every_route_the_app_serves(tmp_path: Path) -> None:
    app = create_app(make_settings(sqlite_store(tmp_path)))
    table = route_table(app)
    assert {"POST /api/v1/orders", "WS /ws/prices/{}", "GET /docs"} <= table
    missing = table - named_routes(API_MD.read_text())
    assert not missing, f"routes docs/API.md does not name: {sorted(missing)}"


def test_api_md_holds_the_whole_contract() -> None:
    if not SHARED_API_MD.exists():
        pytest.skip("no shared contract beside this clone to compare with")
    assert SHARED_API_MD.read_text() in API_MD.read_text()


def test_readme_links_the_contract_in_the_repository() -> None:
    readme = (REPO / "README.md").read_text()
    assert "(docs/API.md)" in readme
    assert "../shared/" not in readme
