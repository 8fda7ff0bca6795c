"""app/ws/protocol.py leans on uvicorn's private internals: this is the fence around them.

The installed uvicorn must be within pyproject.toml's bound and have exactly what
LeanWebSocketProtocol relies on; a uvicorn that changed any of it is detected, and the
server falls back to uvicorn's own protocol (logged once), on which the stream works.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
import uvicorn
from packaging.requirements import Requirement
from uvicorn.protocols.websockets import websockets_sansio_impl

from app.ws.protocol import (
    STOCK_PROTOCOL,
    LeanWebSocketProtocol,
    lean_protocol_problems,
    websocket_protocol,
)
from tests.conftest import make_settings
from tests.flows import register_user
from tests.servers import run_api
from tests.stores import Store, reset_store
from tests.ws_clients import connect, new_instrument, publish, recv_tick, tick, wait_live

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
UVICORN_SOURCE = inspect.getsource(websockets_sansio_impl)


def test_the_installed_uvicorn_is_within_the_bound_that_pyproject_declares() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (uvicorn_requirement,) = (
        Requirement(d) for d in dependencies if Requirement(d).name == "uvicorn"
    )
    assert uvicorn_requirement.specifier.contains(uvicorn.__version__)
    assert "<" in str(uvicorn_requirement.specifier)  # bounded above


def test_the_installed_uvicorn_has_what_the_lean_protocol_relies_on() -> None:
    assert lean_protocol_problems() == []
    assert websocket_protocol() is LeanWebSocketProtocol


def changed_uvicorn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str) -> type:
    """uvicorn's protocol class as a release that changed `old` into `new` would have it."""
    assert old in UVICORN_SOURCE
    path = tmp_path / f"changed_{abs(hash((old, new)))}.py"
    path.write_text(UVICORN_SOURCE.replace(old, new))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)  # where inspect finds its source
    spec.loader.exec_module(module)
    protocol: type = module.WebSocketsSansIOProtocol
    return protocol


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            "self.queue.empty()",
            "self.queue.qsize() == 0",
            "self.queue is used for ['qsize']",
        ),
        (
            "await self.writable.wait()",
            "await asyncio.wait_for(self.writable.wait(), None)",
            None,  # still only wait(): allowed
        ),
        (
            "self.loop.create_task(self.run_asgi())",
            "self.loop.create_task(self.run_asgi(self.writable))",
            "self.writable is used other than by calling its methods",
        ),
        (
            "self.response = self.conn.accept(event)",
            "self.response = self.conn.accept(self.request)",
            "self.request is read",
        ),
        (
            "self.start_keepalive()\n",
            "self.start_keepalive()\n                    self.response.headers.clear()\n",
            "self.response is read after start_keepalive",
        ),
        ("def start_keepalive(self)", "def begin_keepalive(self)", "no method start_keepalive"),
        (
            "        self.disconnected = False\n",
            "",
            "__init__ no longer sets self.disconnected",
        ),
        (
            '"extensions": {"websocket.http.response": {}},',
            "",
            'handle_connect builds no scope with "extensions"',
        ),
    ],
)
def test_a_uvicorn_that_changed_what_the_lean_protocol_relies_on_is_detected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str, problem: str | None
) -> None:
    problems = lean_protocol_problems(changed_uvicorn(tmp_path, monkeypatch, old, new))
    assert problems == ([problem] if problem else [])


def test_a_changed_uvicorn_falls_back_to_its_own_protocol_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    changed = changed_uvicorn(
        tmp_path, monkeypatch, "self.queue.empty()", "self.queue.qsize() == 0"
    )
    with caplog.at_level(logging.WARNING, logger="mt5gate.ws"):
        assert websocket_protocol(changed) == STOCK_PROTOCOL
        assert websocket_protocol(changed) == STOCK_PROTOCOL
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith("event=ws_lean_protocol_disabled fallback=websockets-sansio ")
    assert "qsize" in lines[0]


async def test_the_price_stream_works_on_uvicorns_own_protocol(store: Store) -> None:
    await reset_store(store)
    instrument = new_instrument()
    async with run_api(make_settings(store), ws=STOCK_PROTOCOL) as api:
        async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as http:
            user = await register_user(http)
        await publish(api.resources.redis, tick(instrument, ts=1))
        async with connect(api, f"/ws/prices/{instrument}", user.token) as ws:
            assert (await recv_tick(ws))["ts"] == 1
            await wait_live(api.resources.ws, instrument, sockets=1)
            await publish(api.resources.redis, tick(instrument, ts=2))
            assert (await recv_tick(ws))["ts"] == 2
