"""`mt5gate agent` as a separate process, for end-to-end tests: start it, await its log
lines, signal it, stop it.

The agent logs one ``event=...`` line per step on stderr (``agent_online``, ``job_done``,
``api_reconnected``, ``stopping``, ``agent_stopped``): tests await those lines instead of
sleeping. Every line is also written to a log file, whose tail failure messages quote.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from tests.flows import AgentHandle

STOP_TIMEOUT_SECONDS = 10.0


class AgentProcess:
    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._eof = False
        self._reader = asyncio.create_task(self._read_stderr(), name="agent-stderr")

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        with self.log_path.open("w") as log:
            async for raw in self.process.stderr:
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append(line)
                log.write(line + "\n")
                log.flush()
                self._changed.set()
        self._eof = True
        self._changed.set()

    def mark(self) -> int:
        """The number of lines logged so far: a ``start`` for :meth:`wait_for_line`."""
        return len(self.lines)

    def tail(self, count: int = 30) -> str:
        return "\n".join(self.lines[-count:])

    def find(self, text: str, *, start: int = 0) -> int | None:
        """The index of the first line from ``start`` on that contains ``text``."""
        for index in range(start, len(self.lines)):
            if text in self.lines[index]:
                return index
        return None

    async def wait_for_line(self, text: str, *, start: int = 0, timeout: float = 10.0) -> int:
        """Waits until a line from ``start`` on contains ``text``; returns its index."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = self.find(text, start=start)
            if found is not None:
                return found
            start = len(self.lines)
            if self._eof:
                await self.process.wait()
                raise AssertionError(
                    f"the agent exited ({self.process.returncode}) without logging {text!r}:\n"
                    + self.tail()
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {text!r} from the agent in {timeout} s:\n" + self.tail())
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_exit(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """Waits for the process to end (and its log to be read to the end)."""
        returncode = await asyncio.wait_for(self.process.wait(), timeout)
        await asyncio.wait_for(self._reader, timeout)
        return returncode

    def send_signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within the timeout. Idempotent."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reader, STOP_TIMEOUT_SECONDS)


async def start_agent(
    api_url: str,
    agent: AgentHandle,
    log_path: Path,
    *extra_args: str,
    cwd: Path | None = None,
    token_in_env: bool = False,
) -> AgentProcess:
    """Runs ``mt5gate agent --api URL --agent-id ID --token T --backend sim [extra_args]``
    as a user would (with ``token_in_env``, the token in ``$MT5GATE_AGENT_TOKEN`` instead
    of ``--token``), and returns once the process is started (not yet online: await
    ``event=agent_online``)."""
    env = {k: v for k, v in os.environ.items() if k != "MT5GATE_AGENT_TOKEN"}
    # One token in 64 starts with "-", which argparse takes for an option after a
    # separate "--token": the "=" form is the one that always works.
    token_args = [f"--token={agent.token}"]
    if token_in_env:
        env["MT5GATE_AGENT_TOKEN"], token_args = agent.token, []
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "agent",
        "--api",
        api_url,
        "--agent-id",
        agent.id,
        *token_args,
        "--backend",
        "sim",
        *extra_args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return AgentProcess(process, log_path)
