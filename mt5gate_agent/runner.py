"""The agent's loop: log in, heartbeat, long-poll jobs, run them, post results, push prices.

:func:`run_agent` is a plain coroutine with no signal handling and no global state, so it
runs the same way under the CLI and as a task inside another program (``mt5gate demo``).
Setting ``stop`` ends it: a long poll in flight is abandoned, the job in hand is finished
and its result posted, then the backend is closed and the coroutine returns.

Expired jobs: a job whose ``expires_at`` (compared with our clock corrected by the offset
measured at the last heartbeat) has passed is not executed; the agent posts
``{"status": "failed", "error": {"code": "expired", ...}}`` so the server learns at once
that nothing happened, instead of waiting for the job to time out while "running".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from mt5gate_agent.backends import Backend, BackendWorker, BrokerError, create_backend
from mt5gate_agent.client import AgentApiError, AgentClient
from mt5gate_agent.config import AgentConfig
from mt5gate_agent.watch import AccountWatcher, EventSender, JobGate
from mt5gate_protocol.jobs import CompletedResult, FailedResult, JobEnvelope, JobError, JobStatus

log = logging.getLogger("mt5gate_agent")

# Network trouble and API answers that a later attempt may not get.
API_FAILURES: tuple[type[Exception], ...] = (httpx.HTTPError, AgentApiError)
SIGN_OFF_TIMEOUT_SECONDS = 2.0
SIGN_OFF_FAILURES: tuple[type[Exception], ...] = (TimeoutError, *API_FAILURES)


class TokenRefused(Exception):
    """The API answered 401 to the agent's token: revoked (its connection deleted), rotated
    (provisioned again) or wrong. Retrying cannot help, so the agent stops."""

    def __init__(self, cause: AgentApiError) -> None:
        super().__init__(describe(cause))
        self.cause = cause


def is_token_refused(exc: BaseException) -> bool:
    return isinstance(exc, AgentApiError) and exc.status_code == 401


def failed(code: str, message: str, retcode: int | None = None) -> FailedResult:
    """A failed result. Not checked here: the server is its judge (a 422 there is a refused
    result), as for any body the agent sends."""
    error = JobError.model_construct(code=code, message=message, retcode=retcode)
    return FailedResult(status=JobStatus.FAILED, error=error)


def kv(**fields: Any) -> str:
    """``event=job_done job_id=42 ms=3.1``: one greppable, parseable log line."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, float):
            text = f"{value:.1f}"
        else:
            text = str(value)
        if not text or any(c.isspace() or c in '"=' for c in text):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def describe(exc: BaseException) -> str:
    """``ConnectError: [Errno 111] Connection refused``, or the API's code and status."""
    if isinstance(exc, AgentApiError):
        return f"{exc.detail} (HTTP {exc.status_code})"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Backoff:
    """Exponential delays with "equal jitter": half the delay fixed, half random, so a fleet
    of agents that lost the API together does not come back in lockstep."""

    def __init__(
        self, initial: float, maximum: float, *, rng: Callable[[], float] = random.random
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * 2.0**self.attempt)
        self.attempt += 1
        return ceiling / 2 + ceiling / 2 * self._rng()

    def reset(self) -> None:
        self.attempt = 0


async def run_agent(
    config: AgentConfig,
    stop: asyncio.Event,
    *,
    backend: Backend | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Runs the agent until ``stop`` is set; raises :class:`TokenRefused` (after stopping
    cleanly) when the API refuses the token, which no retry can cure.

    ``backend`` overrides ``config.backend`` (the caller then owns it and closes it);
    ``transport`` is handed to httpx (tests).
    """
    owns_backend = backend is None
    if backend is None:
        backend = create_backend(
            config.backend,
            seed=config.sim_seed,
            terminal_path=config.terminal_path,
            deviation=config.deviation,
            sim_latency=config.sim_latency,
        )
    worker = BackendWorker(backend)
    client = AgentClient(
        config.api_url,
        config.agent_id,
        config.token,
        timeout=config.request_timeout,
        transport=transport,
    )
    agent = _Agent(config, stop, worker, client)
    try:
        await agent.run()
    finally:
        if agent.refused is None:  # a refused token cannot sign off either
            await agent.sign_off()
        await client.aclose()
        await worker.aclose(close_backend=owns_backend)
        log.info(kv(event="agent_stopped", agent_id=config.agent_id))
    if agent.refused is not None:
        raise TokenRefused(agent.refused)


class _Agent:
    def __init__(
        self,
        config: AgentConfig,
        stop: asyncio.Event,
        worker: BackendWorker,
        client: AgentClient,
    ) -> None:
        self.config = config
        self.stop = stop
        self.worker = worker
        self.backend = worker.backend
        self.client = client
        # Server clock minus local clock, from the last heartbeat.
        self.clock_offset = 0.0
        # The 401 that ended the agent: its token is dead.
        self.refused: AgentApiError | None = None
        # From the last heartbeat: where the account watcher's deals start.
        self.last_deal_ticket: int | None = None
        # Jobs go first: the account watcher's backend calls wait for the jobs in hand.
        self.jobs_first = JobGate()
        self.event_sender: EventSender | None = None

    def refuse(self, exc: BaseException) -> bool:
        """Stops the agent if `exc` is the API refusing its token; True when it was."""
        if not is_token_refused(exc):
            return False
        assert isinstance(exc, AgentApiError)
        if self.refused is None:
            self.refused = exc
            log.error(kv(event="token_refused", reason=describe(exc)))
        self.stop.set()
        return True

    async def run(self) -> None:
        if not await self.connect():
            return
        background = [asyncio.create_task(self.heartbeat_loop(), name="agent-heartbeat")]
        if self.config.price_symbols:
            background.append(asyncio.create_task(self.price_loop(), name="agent-prices"))
        if self.config.watch_interval > 0:
            background.extend(self.watch_tasks())
        try:
            await self.job_loop()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if self.event_sender is not None and self.refused is None:
                await self.event_sender.drain(SIGN_OFF_TIMEOUT_SECONDS)

    async def pause(self, seconds: float) -> bool:
        """Waits ``seconds``; False if ``stop`` was set meanwhile (or already)."""
        if self.stop.is_set():
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=max(seconds, 0))
        return not self.stop.is_set()

    # -- connecting ----------------------------------------------------------------------

    async def connect(self) -> bool:
        """Credentials, broker login, first heartbeat; retried until done or stopped."""
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        while not self.stop.is_set():
            try:
                credentials = await self.client.credentials()
                await self.worker.call(
                    self.backend.login,
                    credentials.server,
                    credentials.login,
                    credentials.password,
                )
                log.info(
                    kv(
                        event="broker_login",
                        backend=self.config.backend,
                        server=credentials.server,
                        login=credentials.login,
                    )
                )
                await self.send_heartbeat()
                log.info(
                    kv(
                        event="agent_online",
                        agent_id=self.config.agent_id,
                        clock_offset_ms=self.clock_offset * 1000,
                        price_symbols=",".join(self.config.price_symbols) or None,
                    )
                )
                return True
            except (httpx.HTTPError, AgentApiError, BrokerError) as exc:
                if self.refuse(exc):
                    return False
                delay = backoff.next()
                reason = (
                    f"{exc.code}: {exc.message}" if isinstance(exc, BrokerError) else describe(exc)
                )
                log.warning(kv(event="connect_failed", reason=reason, retry_in_s=delay))
                if not await self.pause(delay):
                    return False
        return False

    async def send_heartbeat(self) -> None:
        connected = await self.worker.call(self.backend.is_connected)
        heartbeat = await self.client.heartbeat(
            version=self.config.version, terminal_connected=connected
        )
        self.clock_offset = heartbeat.clock_offset
        self.last_deal_ticket = heartbeat.last_deal_ticket

    async def sign_off(self) -> None:
        """Tells the server, best effort, that this agent no longer executes anything, so
        that orders are refused at once (agent_offline) rather than left to expire."""
        try:
            await asyncio.wait_for(
                self.client.heartbeat(version=self.config.version, terminal_connected=False),
                SIGN_OFF_TIMEOUT_SECONDS,
            )
        except SIGN_OFF_FAILURES as exc:
            log.info(kv(event="sign_off_failed", reason=describe(exc)))

    async def heartbeat_loop(self) -> None:
        # Every API call is a heartbeat too; this one carries the terminal's state and keeps
        # the clock offset fresh. Its failures are logged only: the job loop reconnects.
        while await self.pause(self.config.heartbeat_interval):
            try:
                await self.send_heartbeat()
            except API_FAILURES as exc:
                if self.refuse(exc):
                    return
                log.warning(kv(event="heartbeat_failed", reason=describe(exc)))
            except BrokerError as exc:
                log.warning(kv(event="heartbeat_failed", reason=exc.code))
            except Exception:
                log.exception(kv(event="heartbeat_crashed"))

    # -- jobs ----------------------------------------------------------------------------

    async def job_loop(self) -> None:
        """Long-polls jobs and runs them one at a time.

        While a job runs and its result is posted, the next long poll is already waiting
        at the server, so a job created meanwhile is claimed at once rather than after the
        result's round trip (without it a sequential round trip pays one more agent
        request). At most one poll is in flight: a job it claims waits here until the one
        in hand is done, and is itself in hand when ``stop`` comes (run, result posted).
        """
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        poll: asyncio.Task[JobEnvelope | None] | None = None
        try:
            while not self.stop.is_set():
                if poll is None:
                    # After a failure the first poll returns at once, so that getting
                    # through is known (and logged) now rather than when a long poll ends.
                    poll = self.start_poll(0 if backoff.attempt else self.config.poll_wait)
                try:
                    job = await self.next_job(poll)
                except API_FAILURES as exc:
                    if self.refuse(exc):
                        return
                    delay = backoff.next()
                    log.warning(kv(event="api_unavailable", reason=describe(exc), retry_in_s=delay))
                    if not await self.pause(delay):
                        return
                    continue
                finally:
                    poll = None
                if backoff.attempt:
                    log.info(kv(event="api_reconnected", attempts=backoff.attempt))
                backoff.reset()
                if job is not None:
                    poll = self.start_poll(self.config.poll_wait)
                    await self.handle(job)
        finally:
            if poll is not None:
                await self.settle(poll)

    def start_poll(self, wait: int) -> asyncio.Task[JobEnvelope | None]:
        return asyncio.create_task(self.client.next_job(wait), name="agent-poll")

    async def next_job(self, poll: asyncio.Task[JobEnvelope | None]) -> JobEnvelope | None:
        """The job ``poll`` claims, None after an empty poll or when ``stop`` interrupts the
        poll (it is then abandoned: no job was in hand yet)."""
        stopped = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({poll, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not poll.done():
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
            return None
        return poll.result()

    async def settle(self, poll: asyncio.Task[JobEnvelope | None]) -> None:
        """Ends the poll left in flight when the loop ends: a job it already claimed is
        run and its result posted (the server handed it over); otherwise it is abandoned."""
        if not poll.done():
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
            return
        if poll.cancelled() or poll.exception() is not None:
            return
        job = poll.result()
        if job is not None and self.refused is None:
            await self.handle(job)

    def is_expired(self, job: JobEnvelope) -> bool:
        return job.expires_at.timestamp() <= time.time() + self.clock_offset

    async def handle(self, job: JobEnvelope) -> None:
        """Executes one job (unless expired) and posts its result; never raises."""
        with self.jobs_first.job():
            await self._handle(job)

    async def _handle(self, job: JobEnvelope) -> None:
        started = time.perf_counter()
        code: str | None = None
        result: CompletedResult | FailedResult
        if self.is_expired(job):
            outcome, code = JobStatus.EXPIRED, "expired"
            result = failed(
                "expired",
                f"the job expired at {job.expires_at.isoformat()} before the "
                "agent could start it; it was not executed",
            )
        else:
            try:
                output = await self.worker.call(self.backend.execute, job.job_type, job.input_data)
                outcome = JobStatus.COMPLETED
                result = CompletedResult(status=JobStatus.COMPLETED, output_data=output)
            except BrokerError as exc:
                outcome, code = JobStatus.FAILED, exc.code
                result = failed(**exc.as_error())
            except Exception as exc:
                log.exception(kv(event="job_crashed", job_id=job.id, job_type=job.job_type))
                outcome, code = JobStatus.FAILED, "agent_error"
                result = failed("agent_error", describe(exc))
        elapsed_ms = (time.perf_counter() - started) * 1000
        reported = await self.post_result(job, result)
        log.info(
            kv(
                event="job_done",
                job_id=job.id,
                job_type=job.job_type,
                outcome=outcome,
                code=code,
                ms=elapsed_ms,
                reported=reported,
            )
        )

    async def post_result(self, job: JobEnvelope, result: CompletedResult | FailedResult) -> str:
        """Posts a result, retrying network and 5xx failures for ``result_retry_seconds``
        (even while stopping: the job ran, the server must hear it). Returns ``yes``,
        ``refused`` (the server answered 4xx, e.g. 409 job_not_running) or ``lost``."""
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        deadline = time.monotonic() + self.config.result_retry_seconds
        while True:
            try:
                await self.client.post_result(job.id, result)
                return "yes"
            except AgentApiError as exc:
                if 400 <= exc.status_code < 500 and exc.status_code not in (408, 429):
                    log.warning(kv(event="result_refused", job_id=job.id, reason=describe(exc)))
                    self.refuse(exc)
                    return "refused"
                failure: Exception = exc
            except httpx.HTTPError as exc:
                failure = exc
            delay = backoff.next()
            if time.monotonic() + delay > deadline:
                log.error(kv(event="result_lost", job_id=job.id, reason=describe(failure)))
                return "lost"
            log.warning(
                kv(event="result_retry", job_id=job.id, reason=describe(failure), retry_in_s=delay)
            )
            await asyncio.sleep(delay)

    # -- account events ------------------------------------------------------------------

    def watch_tasks(self) -> list[asyncio.Task[None]]:
        """The account watcher and the sender of its events (see :mod:`mt5gate_agent.watch`)."""
        sender = self.event_sender = EventSender(
            self.client,
            backoff=lambda: Backoff(self.config.backoff_initial, self.config.backoff_max),
            on_refused_token=self.refuse,
        )
        watcher = AccountWatcher(
            self.worker,
            sender,
            self.jobs_first,
            interval=self.config.watch_interval,
            server_clock=lambda: time.time() + self.clock_offset,
            last_deal_ticket=lambda: self.last_deal_ticket,
        )
        return [
            asyncio.create_task(watcher.run(self.stop), name="agent-watch"),
            asyncio.create_task(sender.run(self.stop), name="agent-events"),
        ]

    # -- prices --------------------------------------------------------------------------

    async def price_loop(self) -> None:
        """Every ``price_interval``: read the ticks, push those whose bid or ask changed since
        the last push, in one batch. Ticks that could not be sent wait for the next push
        (newest wins). A 403 ``not_price_source`` ends the loop; jobs keep running."""
        symbols = list(self.config.price_symbols)
        interval = self.config.price_interval
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        sent: dict[str, tuple[float, float]] = {}
        pending: dict[str, dict[str, Any]] = {}
        warned_missing = False
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.stop.is_set():
            delay = interval
            try:
                ticks = await self.worker.call(self.backend.ticks, symbols)
            except BrokerError as exc:
                log.warning(kv(event="ticks_failed", reason=exc.code, message=exc.message))
                ticks = {}
            except Exception:
                # A backend bug must not silently end the feed: log it, try again later.
                log.exception(kv(event="ticks_crashed"))
                ticks = {}
                delay = self.config.backoff_max
            missing = [s for s in symbols if s not in ticks]
            if missing and not warned_missing:
                log.warning(kv(event="price_symbols_missing", symbols=",".join(missing)))
                warned_missing = True
            for symbol, tick in ticks.items():
                if sent.get(symbol) == (tick["bid"], tick["ask"]):
                    pending.pop(symbol, None)
                else:
                    pending[symbol] = tick
            if pending:
                try:
                    await self.client.push_prices(pending)
                except AgentApiError as exc:
                    if self.refuse(exc):
                        return
                    if exc.status_code == 403 and exc.detail == "not_price_source":
                        log.warning(
                            kv(
                                event="price_source_refused",
                                reason="the server does not take prices from this agent; "
                                "run `mt5gate set-price-source` to allow it",
                            )
                        )
                        return
                    delay = backoff.next()
                    log.warning(kv(event="prices_failed", reason=describe(exc), retry_in_s=delay))
                except httpx.HTTPError as exc:
                    delay = backoff.next()
                    log.warning(kv(event="prices_failed", reason=describe(exc), retry_in_s=delay))
                else:
                    backoff.reset()
                    for symbol, tick in pending.items():
                        sent[symbol] = (tick["bid"], tick["ask"])
                    pending = {}
            next_at = max(next_at + delay, loop.time())
            if not await self.pause(next_at - loop.time()):
                return
