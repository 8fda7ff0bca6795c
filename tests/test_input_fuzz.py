"""Unknown or malformed input never yields a 5xx, on every route the OpenAPI schema lists.

Two layers: a table of bad bodies (empty, not JSON, wrongly typed, oversized) sent to every
route, then hypothesis generating arbitrary paths, parameters, headers and JSON bodies.
Each request carries the credential its route expects, so the input reaches validation.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api.body_limit import MAX_BODY_BYTES
from app.models import Agent
from tests.flows import (
    AgentHandle,
    TestUser,
    add_connection,
    complete_onboarding,
    provision_agent,
    register_user,
)
from tests.servers import RunningApi

CODE = re.compile(r"^[a-z][a-z0-9_]*$")
# Statuses the contract gives a meaning to: they are answers, not bugs.
CONTRACT_5XX = {(503, "agent_offline"), (504, "agent_timeout"), (503, "feed_offline")}
# A long-poll that is not told otherwise waits 25 s; fuzzing never wants that.
FAST_QUERY = {"wait": "0"}


@dataclass(frozen=True, repr=False)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]

    @property
    def is_agent_route(self) -> bool:
        return self.path.startswith("/api/v1/agents/")

    @property
    def is_public(self) -> bool:
        return self.path.startswith("/api/v1/auth/") or not self.path.startswith("/api/")

    @property
    def body_required(self) -> bool:
        return bool(self.spec.get("requestBody", {}).get("required"))

    @property
    def query_names(self) -> list[str]:
        return [p["name"] for p in self.spec.get("parameters", []) if p["in"] == "query"]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    __repr__ = __str__


@dataclass
class World:
    """A user whose trading calls answer at once (their agent never connected), and
    a price-source agent of another user for the agent routes."""

    api: RunningApi
    user: TestUser
    connection_id: str
    agent: AgentHandle
    operations: list[Operation]

    def headers_for(self, op: Operation) -> dict[str, str]:
        if op.is_public:
            return {}
        return self.agent.headers if op.is_agent_route else self.user.headers

    def path_values(self, op: Operation) -> dict[str, str]:
        own_connection = self.connection_id if op.method != "DELETE" else str(uuid.uuid4())
        values = {"connection_id": own_connection, "agent_id": self.agent.id}
        return {name: values.get(name, str(uuid.uuid4())) for name in path_names(op.path)}

    def url(self, op: Operation, values: dict[str, str]) -> str:
        path = op.path
        for name, value in values.items():
            path = path.replace("{" + name + "}", url_quote(value))
        return self.api.base_url + path


def url_quote(value: str) -> str:
    # surrogatepass: a lone surrogate goes out as the invalid UTF-8 it would be.
    return quote(value, safe="", errors="surrogatepass")


def query_string(params: dict[str, str]) -> str:
    return "&".join(f"{url_quote(k)}={url_quote(v)}" for k, v in params.items())


def path_names(path: str) -> list[str]:
    return re.findall(r"\{([^}]+)\}", path)


def operations_of(api: RunningApi) -> list[Operation]:
    schema = api.app.openapi()
    return [
        Operation(method.upper(), path, spec)
        for path, methods in schema["paths"].items()
        for method, spec in methods.items()
    ]


def body_property_schemas(api: RunningApi, op: Operation) -> list[tuple[str, dict[str, Any]]]:
    """(name, schema) of each request-body property, across $refs and anyOf/oneOf variants."""
    components = api.app.openapi()["components"]["schemas"]
    content = op.spec.get("requestBody", {}).get("content", {})
    pending = [content.get("application/json", {}).get("schema", {})]
    found: list[tuple[str, dict[str, Any]]] = []
    while pending:
        schema = pending.pop()
        if "$ref" in schema:
            pending.append(components[schema["$ref"].rsplit("/", 1)[1]])
            continue
        pending.extend(schema.get("anyOf", []) + schema.get("oneOf", []))
        found.extend(schema.get("properties", {}).items())
    return found


def body_properties(api: RunningApi, op: Operation) -> list[str]:
    """The property names of the request body."""
    return list(dict.fromkeys(name for name, _ in body_property_schemas(api, op)))


@pytest.fixture
async def world(api: RunningApi, client: httpx.AsyncClient) -> World:
    user = await register_user(client)
    connection_id = await add_connection(client, user)
    await provision_agent(client, user, connection_id)
    await complete_onboarding(client, user)

    feeder = await register_user(client)
    agent = await provision_agent(client, feeder, await add_connection(client, feeder))
    async with api.resources.session_factory() as session:
        row = await session.get(Agent, uuid.UUID(agent.id))
        assert row is not None
        row.is_price_source = True
        await session.commit()
    return World(api, user, connection_id, agent, operations_of(api))


def check_answer(response: httpx.Response, what: object) -> None:
    """No 5xx outside the contract's own; every 4xx carries a stable `detail`."""
    status = response.status_code
    if status >= 500:
        detail = response.json().get("detail") if is_json(response) else None
        assert (status, detail) in CONTRACT_5XX, f"{what}: {status} {response.text[:500]}"
        return
    if status < 400:
        return
    assert is_json(response), f"{what}: {status} is not JSON: {response.text[:200]}"
    detail = response.json().get("detail")
    if isinstance(detail, list):  # FastAPI's 422 shape
        assert status == 422, f"{what}: {status} {response.text[:300]}"
        assert all({"type", "loc", "msg"} <= set(error) for error in detail), response.text
    else:
        assert isinstance(detail, str), f"{what}: {response.text[:300]}"
        assert CODE.match(detail), f"{what}: detail {detail!r} is not a code"


def is_json(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict)


JSON_HEADERS = {"Content-Type": "application/json"}
BAD_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "empty": (b"", JSON_HEADERS),
    "truncated-json": (b'{"email": ', JSON_HEADERS),
    "not-utf8": (b'{"a": "\xff\xfe"}', JSON_HEADERS),
    "deeply-nested": (b"[" * 100_000, JSON_HEADERS),
    "huge-int": (b'{"login": 1' + b"0" * 5000 + b"}", JSON_HEADERS),
    "nan": (b'{"a": NaN, "b": -Infinity}', JSON_HEADERS),
    "null": (b"null", JSON_HEADERS),
    "array": (b"[1, 2]", JSON_HEADERS),
    "string": (b'"text"', JSON_HEADERS),
    "number": (b"42", JSON_HEADERS),
    "form": (b"a=1&b=2", {"Content-Type": "application/x-www-form-urlencoded"}),
    "text": (b"hello", {"Content-Type": "text/plain"}),
    "nul-and-surrogate": (b'{"x": "\\u0000\\ud800"}', JSON_HEADERS),
}
NOT_AN_OBJECT = {"null", "array", "string", "number"}


async def test_bad_bodies_get_a_stable_4xx_on_every_route(world: World) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        for op in world.operations:
            url = world.url(op, world.path_values(op))
            for kind, (content, headers) in BAD_BODIES.items():
                response = await http.request(
                    op.method,
                    url,
                    params=FAST_QUERY,
                    content=content,
                    headers={**world.headers_for(op), **headers},
                )
                check_answer(response, f"{op} with a {kind} body")
                if op.body_required and kind in NOT_AN_OBJECT | {"empty", "truncated-json"}:
                    assert response.status_code == 422, f"{op} {kind}: {response.text[:300]}"


async def test_wrongly_typed_fields_are_422_on_every_route(world: World) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        for op in world.operations:
            names = body_properties(world.api, op)
            if not names:
                continue
            wrong_values: list[object] = [[], {"nested": True}, "\x00", 10**30]
            for wrong in wrong_values:
                body = dict.fromkeys(names, wrong)
                response = await http.request(
                    op.method,
                    world.url(op, world.path_values(op)),
                    params=FAST_QUERY,
                    content=json.dumps(body).encode(),
                    headers={**world.headers_for(op), **JSON_HEADERS},
                )
                check_answer(response, f"{op} with {body}")
                assert response.status_code == 422, f"{op} {body}: {response.text[:300]}"


def string_properties(api: RunningApi, op: Operation) -> list[str]:
    """The body's properties declared as (possibly nullable) strings without a pattern."""
    names: list[str] = []
    for name, sub in body_property_schemas(api, op):
        variants = sub.get("anyOf", [sub])
        if any(v.get("type") == "string" and "pattern" not in v for v in variants):
            names.append(name)
    return names


async def test_nul_in_any_string_field_is_a_4xx_on_every_route(world: World) -> None:
    """PostgreSQL text cannot hold NUL: a schema that lets one through answers 500 there.
    Fix: add `app.schemas.common.STORABLE` to the field's Annotated[...]."""
    async with httpx.AsyncClient(timeout=30) as http:
        for op in world.operations:
            names = string_properties(world.api, op)
            if not names:
                continue
            body = dict.fromkeys(names, "ok\x00")
            response = await http.request(
                op.method,
                world.url(op, world.path_values(op)),
                params=FAST_QUERY,
                content=json.dumps(body).encode(),
                headers={**world.headers_for(op), **JSON_HEADERS},
            )
            check_answer(response, f"{op} with {body}")


async def oversized_chunks() -> AsyncIterator[bytes]:
    chunk = b'{"padding": "' + b"x" * 65_536
    sent = 0
    while sent <= MAX_BODY_BYTES:
        yield chunk
        sent += len(chunk)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_oversized_bodies_are_413_on_every_route(world: World, framing: str) -> None:
    oversized = b"x" * (MAX_BODY_BYTES + 1)
    async with httpx.AsyncClient(timeout=30) as http:
        for op in world.operations:
            response = await http.request(
                op.method,
                world.url(op, world.path_values(op)),
                params=FAST_QUERY,
                content=oversized if framing == "content-length" else oversized_chunks(),
                headers={**world.headers_for(op), **JSON_HEADERS},
            )
            if framing == "chunked" and "requestBody" not in op.spec:
                # Without a declared length the limit bites as the body is read, and a
                # route that takes no body never reads it (nor buffers it).
                check_answer(response, f"{op} with an unread oversized body")
                continue
            assert response.status_code == 413, f"{op}: {response.status_code}"
            assert response.json()["detail"] == "body_too_large"


async def test_a_body_of_exactly_the_limit_is_not_413(world: World) -> None:
    body = b'{"email": "a@example.com", "password": "' + b"x" * MAX_BODY_BYTES
    body = body[: MAX_BODY_BYTES - 2] + b'"}'
    async with httpx.AsyncClient(base_url=world.api.base_url, timeout=30) as http:
        response = await http.post("/api/v1/auth/login", content=body, headers=JSON_HEADERS)
    assert len(body) == MAX_BODY_BYTES
    assert response.status_code == 422  # the password is too long; the size was fine
    assert response.json()["detail"][0]["loc"] == ["body", "password"]


# ---- hypothesis --------------------------------------------------------------------------

NASTY_STRINGS = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "\ud800", "x\udfffy", "é", "😀", "%00", "../..", "null", "1e9999"]
)
# Every code point, NUL and lone surrogates included (st.text() leaves surrogates out).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=[]), min_size=1, max_size=12)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    ANY_TEXT,
    NASTY_STRINGS,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
# What HTTP lets a header value hold (the client refuses the rest): latin-1, no controls,
# no surrounding spaces.
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
).map(str.strip)
PARAM_TEXT = st.one_of(
    st.text(max_size=30), NASTY_STRINGS, st.integers().map(str), st.floats().map(str)
)


@st.composite
def requests(draw: st.DrawFn, world: World, op: Operation) -> dict[str, Any]:
    values = world.path_values(op)
    for name in values:
        values[name] = draw(
            st.one_of(st.just(values[name]), st.just(values[name]), st.uuids().map(str), PARAM_TEXT)
        )
    values = {name: value or "x" for name, value in values.items()}  # `//` is another route

    query = {name: draw(PARAM_TEXT) for name in op.query_names if draw(st.booleans())}
    query.update(draw(st.dictionaries(st.text(max_size=8), PARAM_TEXT, max_size=2)))
    query.update(FAST_QUERY if "wait" in op.query_names or draw(st.booleans()) else {})
    if "wait" in op.query_names:
        query["wait"] = draw(st.sampled_from(["0", "0.05", "-1", "31", "nan", "abc"]))

    right = world.headers_for(op)
    wrong = [world.user.headers, world.agent.headers, {}, {"Authorization": "Bearer x.y.z"}]
    credential = draw(st.sampled_from(wrong)) if draw(st.booleans()) else right
    headers: dict[str, str | bytes] = {**credential}
    if draw(st.booleans()) and draw(st.booleans()):  # any latin-1 value, as raw bytes
        headers["Authorization"] = draw(HEADER_TEXT).encode("latin-1")
    if draw(st.booleans()):
        headers["Content-Type"] = draw(
            st.sampled_from(["application/json", "text/plain", "application/merge-patch+json"])
        )
    else:
        headers["Content-Type"] = "application/json"

    shaped = body_strategy(world.api, op)
    body_kind = draw(st.sampled_from(["shaped"] * 6 + ["json", "bytes", "none"]))
    if body_kind == "shaped":
        content: bytes | None = json.dumps(draw(shaped)).encode()
    elif body_kind == "json":
        content = json.dumps(draw(JSON_VALUES)).encode()
    elif body_kind == "bytes":
        content = draw(st.binary(max_size=64))
    else:
        content = None
    return {
        "method": op.method,
        "url": f"{world.url(op, values)}?{query_string(query)}",
        "headers": headers,
        "content": content,
    }


LIKELY_STRINGS = st.sampled_from(
    ["a@example.com", "EURUSD", "buy", "sell", "completed", "failed", "H1", "no_money", "x" * 300]
)


def valid_strings(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """Strings that pass the declared constraints, so the checks behind them run."""
    if schema.get("format") == "uuid":
        return st.uuids().map(str)
    if schema.get("format") == "email":
        return st.emails().map(lambda email: email[:200])
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    low = max(int(schema.get("minLength", 1)), 1)
    high = max(min(int(schema.get("maxLength", 40)), 40), low)
    return st.one_of(
        st.text(
            st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=low, max_size=high
        ),
        LIKELY_STRINGS,
    )


def body_strategy(api: RunningApi, op: Operation) -> st.SearchStrategy[Any]:
    """Bodies shaped like the route's schema, mostly of the declared types (so they get past
    the first check and reach the deeper ones), sometimes of any type."""
    key = (op.method, op.path)
    if key not in _BODY_STRATEGIES:
        components = api.app.openapi()["components"]["schemas"]
        content = op.spec.get("requestBody", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema", {})
        # The root keeps its type: bodies of any type are the "json" kind in `requests`.
        _BODY_STRATEGIES[key] = schema_values(schema, components, depth=0, root=True)
    return _BODY_STRATEGIES[key]


_BODY_STRATEGIES: dict[tuple[str, str], st.SearchStrategy[Any]] = {}


def schema_values(
    schema: dict[str, Any], components: dict[str, Any], depth: int, root: bool = False
) -> st.SearchStrategy[Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    if depth > 3:
        return SCALARS
    variants = schema.get("anyOf", []) + schema.get("oneOf", [])
    if variants:
        return st.one_of([schema_values(v, components, depth + 1, root) for v in variants])
    if "const" in schema:
        typed: st.SearchStrategy[Any] = st.just(schema["const"])
    elif "enum" in schema:
        typed = st.sampled_from(schema["enum"])
    else:
        typed = typed_values(schema, components, depth)
    return typed if root else st.one_of(typed, typed, typed, JSON_VALUES)


def typed_values(
    schema: dict[str, Any], components: dict[str, Any], depth: int
) -> st.SearchStrategy[Any]:
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        values = {
            name: schema_values(sub, components, depth + 1) for name, sub in properties.items()
        }
        for pattern_schema in schema.get("patternProperties", {}).values():
            keys = st.one_of(LIKELY_STRINGS, NASTY_STRINGS, st.text(max_size=40))
            entries = schema_values(pattern_schema, components, depth + 1)
            return st.dictionaries(keys, entries, max_size=3)
        return st.fixed_dictionaries(
            {n: v for n, v in values.items() if n in required},
            optional={n: v for n, v in values.items() if n not in required},
        )
    if kind == "string":
        valid = valid_strings(schema)
        # A valid string with a NUL or a lone surrogate inside: what slips past a length check.
        poisoned = st.tuples(valid, st.sampled_from(["\x00", "\ud800"])).map(
            lambda pair: pair[0][:1] + pair[1] + pair[0][1:]
        )
        return st.one_of(valid, valid, poisoned, NASTY_STRINGS, ANY_TEXT)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        in_range = (
            st.integers(int(low or 0) + 1, int(min(high or 10**9, 10**12)) - 1)
            if kind == "integer"
            else st.floats(float(low or 0), float(high or 1e9), exclude_min=True)
        )
        edges = st.sampled_from([low, high, 0, -1, 2**63, 10**30]).filter(lambda v: v is not None)
        odd = st.floats(allow_nan=True, allow_infinity=True)
        return st.one_of(in_range, in_range, edges, odd)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(schema_values(schema.get("items", {}), components, depth + 1), max_size=3)
    if kind == "null":
        return st.none()
    return JSON_VALUES


RANDOM_PATHS = st.lists(
    st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(["agents", "me", "..", "%2e"])),
    min_size=1,
    max_size=4,
).map(lambda parts: "/api/v1/" + "/".join(url_quote(p) for p in parts))


def fuzz_every_route(world: World, examples_per_route: int) -> None:
    """Routes that take a body get all the examples, the others a third (only their path,
    query and headers vary)."""
    with httpx.Client(timeout=30) as http:

        def fuzz(op: Operation) -> None:
            @settings(
                max_examples=examples_per_route
                if "requestBody" in op.spec
                else examples_per_route // 3,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(request=requests(world, op))
            def known_route(request: dict[str, Any]) -> None:
                check_answer(http.request(**request), f"{op} {request}")

            known_route()

        for op in world.operations:
            fuzz(op)

        @settings(max_examples=examples_per_route, deadline=None, database=None)
        @given(
            method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
            path=RANDOM_PATHS,
            body=st.binary(max_size=32),
        )
        def unknown_route(method: str, path: str, body: bytes) -> None:
            response = http.request(
                method, world.api.base_url + path, content=body, headers=world.user.headers
            )
            check_answer(response, f"{method} {path}")

        unknown_route()


async def test_no_input_reaches_a_5xx(world: World) -> None:
    # Runs in a worker thread: the server under test lives on this test's event loop.
    await asyncio.to_thread(fuzz_every_route, world, 60)
