"""Small helpers for asyncio tasks and events, shared by the background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

log = logging.getLogger("mt5gate.tasks")

T = TypeVar("T")


async def wait_any(*events: asyncio.Event, timeout: float) -> None:
    """Returns when any of the events is set, or after `timeout` seconds."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def run_every(interval: float, work: Callable[[], Awaitable[object]], *, name: str) -> None:
    """A lifespan background task: `work` every `interval` seconds until cancelled. A round
    that fails (the database briefly away) is logged, and the next one tried."""
    while True:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("event=%s_failed reason=%r", name, exc)
        await asyncio.sleep(interval)


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
