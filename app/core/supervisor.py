"""Background loops that must not end silently (STYLE.md, habit 10), and their stop.

A loop started by the lifespan runs for the life of the process. If it raises (or
returns), `supervise` logs it with the traceback and starts it again, after a pause that
doubles while it keeps failing at once, so that a loop that always fails costs a log line
every few seconds, not a busy process. `stop_tasks` ends them at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

log = logging.getLogger("mt5gate.tasks")

# A cancellation can be lost: Python 3.11's wait_for drops one that arrives just as what it
# waits for completes (fakeredis reads through wait_for). Stopping repeats it this often.
CANCEL_REPEAT_SECONDS = 0.05
RESTART_DELAY_MIN_SECONDS = 0.1
RESTART_DELAY_MAX_SECONDS = 5.0
# A loop that ran this long before failing starts again after the shortest pause.
HEALTHY_RUN_SECONDS = 30.0


async def supervise(name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Runs `loop()` until cancelled, restarting it whenever it ends."""
    clock = asyncio.get_running_loop()
    delay = RESTART_DELAY_MIN_SECONDS
    while True:
        started = clock.time()
        try:
            await loop()
            log.error("event=task_ended task=%s restart_in=%.1fs", name, delay)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=task_failed task=%s restart_in=%.1fs", name, delay)
        if clock.time() - started >= HEALTHY_RUN_SECONDS:
            delay = RESTART_DELAY_MIN_SECONDS
        await asyncio.sleep(delay)
        delay = min(delay * 2, RESTART_DELAY_MAX_SECONDS)


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], *, timeout: float) -> int:
    """Cancels the tasks and waits for them, at most `timeout` seconds; returns how many
    are still running then."""
    clock = asyncio.get_running_loop()
    deadline = clock.time() + timeout
    pending = {task for task in tasks if not task.done()}
    while pending and (left := deadline - clock.time()) > 0:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(left, CANCEL_REPEAT_SECONDS))
    return len(pending)
