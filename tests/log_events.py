"""A logger's records as events a test can await (instead of sleeping until something ran)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager


class LogEvents(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self._changed.set()

    def count(self, text: str) -> int:
        return sum(text in message for message in self.messages)

    async def wait_for(self, text: str, *, times: int = 1, timeout: float = 10) -> None:
        """Until `times` records (since the watch began) contain `text`."""
        async with asyncio.timeout(timeout):
            while self.count(text) < times:
                self._changed.clear()
                await self._changed.wait()


@contextmanager
def watch_log(name: str) -> Iterator[LogEvents]:
    """The records of logger `name` (DEBUG and up) while the block runs."""
    logger = logging.getLogger(name)
    events, level = LogEvents(), logger.level
    logger.addHandler(events)
    logger.setLevel(logging.DEBUG)
    try:
        yield events
    finally:
        logger.removeHandler(events)
        logger.setLevel(level)
