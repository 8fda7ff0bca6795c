"""A logger's records as events a test can await (instead of sleeping until something ran)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager


class LogEvents(logging.Handler):
    """Collects a logger's lines; a test awaits one. Records may come from any thread (the
    agent's backend worker logs from its own)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.DEBUG)
        self.loop = loop
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.loop.call_soon_threadsafe(self._changed.set)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_for(self, text: str, times: int = 1, timeout: float = 10.0) -> None:
        """Until `times` lines (since the watch began) contain `text`."""
        async with asyncio.timeout(timeout):
            while self.count(text) < times:
                self._changed.clear()
                if self.count(text) >= times:
                    return
                await self._changed.wait()


@contextmanager
def watch_log(name: str) -> Iterator[LogEvents]:
    """The lines of logger `name` (DEBUG and up) while the block runs; call it from the
    event loop that awaits them."""
    logger = logging.getLogger(name)
    events, level = LogEvents(asyncio.get_running_loop()), logger.level
    logger.addHandler(events)
    logger.setLevel(logging.DEBUG)
    try:
        yield events
    finally:
        logger.removeHandler(events)
        logger.setLevel(level)
