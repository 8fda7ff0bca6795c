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
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx
from websockets.exceptions import WebSocketException

from mt5gate_agent.backends import Backend, BackendWorker, BrokerError, create_backend
from mt5gate_agent.client import AgentApiError, AgentClient, HeartbeatReply
from mt5gate_agent.config import AgentConfig
from mt5gate_agent.link import AgentLink, LinkDown, LinkRefused
from mt5gate_agent.watch import AccountWatcher, EventSender, JobGate
from mt5gate_protocol.jobs import CompletedResult, FailedResult, JobEnvelope, JobError, JobStatus

log = logging.getLogger("mt5gate_agent")

# Network trouble and API answers that a later attempt may not get.
API_FAILURES: tuple[type[Exception], ...] = (httpx.HTTPError, AgentApiError)
SIGN_OFF_TIMEOUT_SECONDS = 2.0
SIGN_OFF_FAILURES: tuple[type[Exception], ...] = (TimeoutError, *API_FAILURES)
# Trouble opening the link that a later attempt may not meet.
LINK_FAILURES: tuple[type[Exception], ...] = (
    AgentApiError,
    OSError,
    TimeoutError,
    WebSocketException,
)
# A polled job still in hand after this long has the next long poll sent meanwhile (an order
# at a broker takes 50-300 ms: a job created meanwhile is claimed at once). A quicker one
# posts its result first: a poll sent beside it costs more than it saves, measured 3.7 ms
# (9.6 vs 5.9 ms p50) a sequential round trip, as it competes with the job for the agent's
# CPU and with the result for the server's.
EARLY_POLL_AFTER_SECONDS = 0.02
# Results of jobs executed, kept by id: a job pushed again (its `claimed` was lost with a
# link) gets its result again instead of a second execution.
DONE_JOBS_KEPT = 1000


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
    if isinstance(exc, LinkDown):
        return f"{exc.detail}: {exc.message}"
    if isinstance(exc, AgentApiError):
        return f"{exc.detail} (HTTP {exc.status_code})"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Backoff:
    """Exponential delays with "equal jitter": half the delay fixed, half random, so a fleet
    of agents that lost the API together does not come back in lockstep. ``full_jitter``:
    anywhere from 0 to the ceiling (the link's reconnects: the first one is nearly at once)."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        rng: Callable[[], float] = random.random,
        full_jitter: bool = False,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        self._full = full_jitter
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * 2.0**self.attempt)
        self.attempt += 1
        if self._full:
            return ceiling * self._rng()
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
        # A refused token cannot sign off either; over the link, closing it was the sign-off
        # (an HTTP heartbeat now would show the agent online for a while).
        if agent.refused is None and not agent.signed_off:
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
        # The link while it is open; "link" while the agent holds or re-opens one, "http"
        # while it long-polls (transport http, or the server refused the link).
        self.link: AgentLink | None = None
        self.link_reader: asyncio.Task[None] | None = None
        self.mode = config.transport
        self.signed_off = False
        # Jobs pushed and claimed, in the order they came, run one at a time.
        self.pushed: asyncio.Queue[JobEnvelope] = asyncio.Queue()
        # Ids of the jobs queued or in hand, and results of the last jobs done.
        self.in_hand: set[str] = set()
        self.done: OrderedDict[str, CompletedResult | FailedResult] = OrderedDict()
        # Results sent (or to send) over the link, kept until the server acknowledges them.
        self.unacked: dict[str, tuple[JobEnvelope, CompletedResult | FailedResult]] = {}
        self.all_acked = asyncio.Event()
        self.all_acked.set()
        # When each job in hand arrived (perf_counter): job_done's `agent_ms`, the agent's
        # whole share of a round trip, from the job read off the wire to its result sent.
        self.arrived: dict[str, float] = {}

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
            if self.config.transport == "link":
                await self.link_loop()
            else:
                await self.job_loop()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if self.event_sender is not None and self.refused is None:
                await self.event_sender.drain(SIGN_OFF_TIMEOUT_SECONDS)
            await self.close_link()

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
        heartbeat = await self.heartbeat(terminal_connected=connected)
        self.clock_offset = heartbeat.clock_offset
        self.last_deal_ticket = heartbeat.last_deal_ticket

    async def heartbeat(self, *, terminal_connected: bool) -> HeartbeatReply:
        """Over the link when it is open, over HTTP otherwise (or if the link drops first)."""
        link = self.link
        if link is not None and link.is_open:
            with contextlib.suppress(LinkDown):
                return await link.heartbeat(
                    version=self.config.version, terminal_connected=terminal_connected
                )
        return await self.client.heartbeat(
            version=self.config.version, terminal_connected=terminal_connected
        )

    async def post_events(self, events: list[dict[str, Any]]) -> None:
        """The event sender's route: the link when it is open, HTTP otherwise."""
        link = self.link
        if link is not None and link.is_open:
            with contextlib.suppress(LinkDown):
                await link.post_events(events)
                return
        await self.client.post_events(events)

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

    async def job_loop(self, *, until: float | None = None) -> None:
        """Long-polls jobs and runs them one at a time.

        A job still in hand after ``EARLY_POLL_AFTER_SECONDS`` has the next long poll
        waiting at the server meanwhile, so a job created during a slow order is claimed at
        once; a quick one posts its result before the next poll goes out (sent beside it,
        the poll slowed a sequential round trip by 3.7 ms). At most one poll is in flight:
        a job it claims waits here until the one in hand is done, and is itself in hand
        when ``stop`` comes (run, result posted).
        With ``until`` (the event loop's clock) it returns then, its last poll settled, so
        that the link can be tried again.
        """
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        poll: asyncio.Task[JobEnvelope | None] | None = None
        loop = asyncio.get_running_loop()

        def wait() -> int:
            if until is None:
                return self.config.poll_wait
            # At least 1 s: no run of 0 s polls as the period ends.
            return max(1, min(self.config.poll_wait, round(until - loop.time())))

        def time_left() -> bool:
            return until is None or until - loop.time() > 0.5

        try:
            while not self.stop.is_set() and time_left():
                if poll is None:
                    # After a failure the first poll returns at once, so that getting
                    # through is known (and logged) now rather than when a long poll ends.
                    poll = self.start_poll(0 if backoff.attempt else wait())
                try:
                    job = await self.next_job(poll)
                    if job is not None:
                        self.arrived.setdefault(str(job.id), time.perf_counter())
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
                    handling = asyncio.create_task(self.handle_polled(job), name="agent-job")
                    try:
                        await asyncio.wait({handling}, timeout=EARLY_POLL_AFTER_SECONDS)
                        if not handling.done() and time_left():
                            poll = self.start_poll(wait())
                        await handling
                    except asyncio.CancelledError:
                        handling.cancel()  # cancelled itself (a second Ctrl-C): the job too
                        raise
        finally:
            if poll is not None:
                await self.settle(poll)

    # -- the link ------------------------------------------------------------------------

    async def link_loop(self) -> None:
        """Holds the link: jobs pushed down it run one at a time (:meth:`run_pushed`). A
        dropped link is opened again with backoff; while the server refuses it (HTTP
        403/404 on the upgrade) the agent long-polls, trying the link every ``link_retry``
        seconds. Returns when ``stop`` is set, the link still open (see :meth:`close_link`)."""
        config = self.config
        backoff = Backoff(config.link_backoff_initial, config.link_backoff_max, full_jitter=True)
        executor = asyncio.create_task(self.run_pushed(), name="agent-pushed-jobs")
        try:
            while not self.stop.is_set():
                try:
                    link = await AgentLink.open(
                        config.api_url,
                        config.agent_id,
                        config.token,
                        timeout=config.request_timeout,
                        on_job=self.on_pushed_job,
                        on_result=self.on_result_answer,
                    )
                except LinkRefused as exc:
                    log.info(
                        kv(
                            event="link_fallback",
                            reason=f"http_{exc.status_code}",
                            retry_in_s=config.link_retry,
                        )
                    )
                    await self.fall_back(config.link_retry)
                    continue
                except LINK_FAILURES as exc:
                    if self.refuse(exc):
                        return
                    delay = backoff.next()
                    log.warning(kv(event="link_failed", reason=describe(exc), retry_in_s=delay))
                    if not await self.pause(delay):
                        return
                    continue
                opened = time.monotonic()
                await self.hold(link)
                if self.stop.is_set() and link.is_open:
                    return
                self.link = None
                code = link.close_code
                log.info(kv(event="link_closed", code=code, reason=link.close_reason or None))
                if code == 4001:
                    self.refuse(AgentApiError(401, "invalid_agent_token", "link closed 4001"))
                    return
                if time.monotonic() - opened > config.link_backoff_max:
                    backoff.reset()
                if code == 4009:
                    # A newer link for this agent id: another agent holds the token. Not at
                    # once, so that two of them do not take the link from each other in a loop.
                    delay = config.link_backoff_max
                else:
                    delay = backoff.next()
                if not await self.pause(delay):
                    return
        finally:
            await self.finish_pushed(executor)

    async def hold(self, link: AgentLink) -> None:
        """Uses ``link`` until it closes or ``stop`` is set."""
        assert link.welcome is not None
        self.link = link
        self.clock_offset = link.welcome.clock_offset
        self.last_deal_ticket = link.welcome.last_deal_ticket
        log.info(
            kv(
                event="link_opened",
                agent_id=self.config.agent_id,
                clock_offset_ms=self.clock_offset * 1000,
                unacked_results=len(self.unacked) or None,
            )
        )
        self.link_reader = reader = asyncio.create_task(link.run(), name="agent-link")
        for job_id, (_, result) in list(self.unacked.items()):
            with contextlib.suppress(LinkDown):
                await link.send_result(job_id, result)
        stopped = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()

    async def on_pushed_job(self, job: JobEnvelope) -> None:
        """A job pushed: ``claimed`` at once, then queued (or, for a job pushed again after
        a drop, its result sent again; it never runs twice)."""
        link = self.link
        if self.stop.is_set() or link is None:
            # Not claimed: the server puts it back to pending when the link closes.
            return
        job_id = str(job.id)
        log.debug(kv(event="job_pushed", job_id=job_id, job_type=job.job_type))
        try:
            await link.send_claimed(job_id)
            if job_id in self.in_hand:
                return
            result = self.done.get(job_id)
            if result is not None:
                self.keep_unacked(job, result)
                await link.send_result(job_id, result)
                return
        except LinkDown:
            return
        self.arrived.setdefault(job_id, time.perf_counter())
        self.in_hand.add(job_id)
        self.pushed.put_nowait(job)

    def on_result_answer(self, job_id: str, accepted: bool, reason: str) -> None:
        kept = self.unacked.pop(job_id, None)
        if not accepted and kept is not None:
            log.warning(kv(event="result_refused", job_id=job_id, reason=reason))
        if not self.unacked:
            self.all_acked.set()

    def keep_unacked(self, job: JobEnvelope, result: CompletedResult | FailedResult) -> None:
        self.unacked[str(job.id)] = (job, result)
        self.all_acked.clear()

    async def run_pushed(self) -> None:
        while True:
            job = await self.pushed.get()
            try:
                await self.handle(job)
            finally:
                self.in_hand.discard(str(job.id))
                self.pushed.task_done()

    async def finish_pushed(self, executor: asyncio.Task[None]) -> None:
        """Stopping: the jobs already claimed are run and their results sent."""
        if self.refused is None:
            await self.pushed.join()
        executor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await executor

    async def fall_back(self, seconds: float) -> None:
        """Long-polls for ``seconds`` (the link was refused); results still unacknowledged
        go over HTTP first."""
        self.mode = "http"
        try:
            await self.flush_unacked()
            await self.job_loop(until=asyncio.get_running_loop().time() + seconds)
        finally:
            self.mode = "link"

    async def flush_unacked(self) -> None:
        for job_id, (job, result) in list(self.unacked.items()):
            await self.post_result_http(job, result)
            self.unacked.pop(job_id, None)
        if not self.unacked:
            self.all_acked.set()

    async def close_link(self) -> None:
        """Stopping: waits (briefly) for the results' acknowledgements, signs off over the
        link and closes it; what is still unacknowledged then is posted over HTTP."""
        link, reader = self.link, self.link_reader
        self.link = self.link_reader = None
        if link is not None and link.is_open and self.refused is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_acked.wait(), SIGN_OFF_TIMEOUT_SECONDS)
            with contextlib.suppress(LinkDown):
                await link.heartbeat(version=self.config.version, terminal_connected=False)
            self.signed_off = True
        if link is not None:
            await link.close()
        if reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader, SIGN_OFF_TIMEOUT_SECONDS)
        if self.unacked and self.refused is None:
            self.mode = "http"
            await self.flush_unacked()

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
            await self.handle_polled(job)

    def is_expired(self, job: JobEnvelope) -> bool:
        return job.expires_at.timestamp() <= time.time() + self.clock_offset

    async def handle_polled(self, job: JobEnvelope) -> None:
        """A job from ``jobs/next``; one pushed on a link that dropped may come back this
        way while it is still queued here: the queued one runs, once."""
        if str(job.id) in self.in_hand:
            log.info(kv(event="job_redelivered", job_id=job.id, note="already in hand"))
            # its arrival stays the first one's
            return
        await self.handle(job)

    async def handle(self, job: JobEnvelope) -> None:
        """Executes one job (unless expired, or already done: its result is sent again) and
        reports its result; never raises."""
        done = self.done.get(str(job.id))
        if done is not None:
            self.arrived.pop(str(job.id), None)
            log.info(kv(event="job_redelivered", job_id=job.id, note="result sent again"))
            await self.post_result(job, done)
            return
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
        arrived = self.arrived.pop(str(job.id), None)
        log.info(
            kv(
                event="job_done",
                job_id=job.id,
                job_type=job.job_type,
                outcome=outcome,
                code=code,
                ms=elapsed_ms,
                agent_ms=None if arrived is None else (time.perf_counter() - arrived) * 1000,
                reported=reported,
            )
        )

    async def post_result(self, job: JobEnvelope, result: CompletedResult | FailedResult) -> str:
        """Reports a result: over the link when it is open (kept until acknowledged; ``sent``),
        kept for the next link while it is being opened again (``kept``), else over HTTP."""
        job_id = str(job.id)
        self.done[job_id] = result
        while len(self.done) > DONE_JOBS_KEPT:
            self.done.popitem(last=False)
        if self.mode == "link":
            self.keep_unacked(job, result)
            link = self.link
            if link is None or not link.is_open:
                return "kept"
            try:
                await link.send_result(job_id, result)
            except LinkDown:
                return "kept"
            return "sent"
        return await self.post_result_http(job, result)

    async def post_result_http(
        self, job: JobEnvelope, result: CompletedResult | FailedResult
    ) -> str:
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
            self,
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
