"""An agent that answers every job at once with a canned result, in its own process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as EventType
from typing import Any

import httpx

NOW = datetime.now(UTC).isoformat().replace("+00:00", "Z")
POSITION = {
    "position_id": 1001,
    "symbol": "EURUSD",
    "side": "buy",
    "volume": 0.1,
    "open_price": 1.08,
    "current_price": 1.081,
    "sl": None,
    "tp": None,
    "profit": 10.0,
    "swap": 0.0,
    "opened_at": NOW,
}
CANNED_OUTPUT: dict[str, Any] = {
    "trade": {"ticket": 1001, "fill_price": 1.08321, "volume": 0.1, "filled_at": NOW},
    "get_positions": {"positions": [POSITION]},
    "close_position": {"closed_price": 1.081, "volume": 0.1, "pnl": 10.0, "closed_at": NOW},
    "modify_position": {"position": POSITION},
    "get_account": {
        "balance": 10000.0,
        "equity": 10010.0,
        "margin_used": 108.0,
        "margin_available": 9902.0,
        "currency": "USD",
        "leverage": 100,
    },
}


def candles_output(count: int) -> dict[str, Any]:
    start = 1_700_000_000
    return {
        "candles": [
            {
                "time": start + i * 3600,
                "open": 1.1,
                "high": 1.2,
                "low": 1.0,
                "close": 1.15,
                "volume": 100,
            }
            for i in range(count)
        ]
    }


# Each placed order gets a ticket of its own, as at a broker (see `result_body`).
FIRST_PENDING_TICKET = 2001


def deal(index: int) -> dict[str, Any]:
    return {
        "ticket": 9_000_000 - index,
        "order_ticket": 8_000_000 - index,
        "position_id": 7_000_000 - index // 2,
        "type": "buy" if index % 2 else "sell",
        "symbol": "EURUSD",
        "side": "buy" if index % 2 else "sell",
        "entry": "in" if index % 2 else "out",
        "volume": 0.1,
        "price": 1.08 + index * 1e-5,
        "profit": 0.0 if index % 2 else 12.5,
        "commission": -0.35,
        "swap": 0.0,
        "fee": 0.0,
        "reason": "mt5gate",
        "time": NOW,
    }


DEALS = [deal(index) for index in range(1000)]


def output_for(job: dict[str, Any]) -> dict[str, Any]:
    if job["job_type"] == "get_candles":
        return candles_output(int(job["input_data"].get("count", 200)))
    if job["job_type"] == "get_history":
        return {"deals": DEALS[: int(job["input_data"].get("limit", 100))]}
    output: dict[str, Any] = CANNED_OUTPUT[job["job_type"]]
    return output


_BODIES: dict[tuple[str, int], bytes] = {}
_pending_tickets = itertools.count(FIRST_PENDING_TICKET)


def result_body(job: dict[str, Any]) -> bytes:
    """The result's JSON, encoded once per job type and size: the agent's own cost stays
    out of the figures (a thousand deals take milliseconds to encode). A pending order
    placed gets the next ticket, and a cancellation names the ticket it was given: with
    one ticket for every order, each cancellation would mark every order placed so far."""
    if job["job_type"] == "place_pending_order":
        placed = {"ticket": next(_pending_tickets), "placed_at": NOW}
        return json.dumps({"status": "completed", "output_data": placed}).encode()
    if job["job_type"] == "cancel_pending_order":
        cancelled = {"ticket": job["input_data"]["ticket"], "cancelled_at": NOW}
        return json.dumps({"status": "completed", "output_data": cancelled}).encode()
    key = (
        job["job_type"],
        int(job["input_data"].get("limit") or job["input_data"].get("count") or 0),
    )
    body = _BODIES.get(key)
    if body is None:
        body = json.dumps({"status": "completed", "output_data": output_for(job)}).encode()
        _BODIES[key] = body
    return body


async def _serve_jobs(
    base_url: str, agent_id: str, token: str, workers: int, stop: EventType
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=workers * 2, max_keepalive_connections=workers * 2)
    async with httpx.AsyncClient(
        base_url=f"{base_url}/api/v1/agents/{agent_id}", headers=headers, timeout=60, limits=limits
    ) as http:

        async def worker() -> None:
            while not stop.is_set():
                response = await http.get("/jobs/next", params={"wait": 2})
                if response.status_code != 200:
                    continue
                job = response.json()
                await http.post(
                    f"/jobs/{job['id']}/result",
                    content=result_body(job),
                    headers={"Content-Type": "application/json"},
                )

        await asyncio.gather(*(worker() for _ in range(workers)))


async def _serve_link(
    base_url: str, agent_id: str, token: str, _workers: int, stop: EventType
) -> None:
    """The same agent over the agent link: each pushed job acknowledged and answered at
    once, on the one socket (the results' acknowledgements are read and dropped)."""
    import websockets

    url = f"{base_url.replace('http://', 'ws://', 1)}/ws/agents/{agent_id}"
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(url, additional_headers=headers, max_size=2**24) as ws:

        async def close_when_stopped() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.2)
            await ws.close()

        # The stop is watched beside the reader, not by a timeout on each read (a task
        # per frame: the agent's own CPU would be in the figures).
        watcher = asyncio.create_task(close_when_stopped())
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                if not isinstance(message, str) or not message.startswith('{"type":"job"'):
                    continue
                job = json.loads(message)["job"]
                job_id = job["id"]
                await ws.send(f'{{"type":"claimed","job_id":"{job_id}"}}')
                body = result_body(job).decode()
                await ws.send(f'{{"type":"result","job_id":"{job_id}","result":{body}}}')
        watcher.cancel()


def _run(
    base_url: str, agent_id: str, token: str, workers: int, stop: EventType, link: bool
) -> None:
    serve = _serve_link if link else _serve_jobs
    try:
        import uvloop

        uvloop.run(serve(base_url, agent_id, token, workers, stop))
    except ImportError:
        asyncio.run(serve(base_url, agent_id, token, workers, stop))


class InstantAgent:
    """`with InstantAgent(url, id, token, workers=32):` runs the agent in a child process;
    `link=True`: over the agent link (one WebSocket) instead of HTTP long-polls."""

    def __init__(
        self, base_url: str, agent_id: str, token: str, *, workers: int = 1, link: bool = False
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.process = context.Process(
            target=_run,
            args=(base_url, agent_id, token, workers, self.stop, link),
            daemon=True,
        )

    def __enter__(self) -> InstantAgent:
        self.process.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
