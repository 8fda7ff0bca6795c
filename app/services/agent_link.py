"""The agent link's rules (`WS /ws/agents/{agent_id}`; the socket itself is app/ws/agent_link):
jobs pushed the moment they exist, results, heartbeats and events coming back, and the
agent's presence while the link is open. No WebSocket here: the handler passes `send`.

- A link is the agent's row's `link_id` while it is open: a newer link overwrites it and
  tells every process (the `agent_revoked` wake-up, which also carries token rotations and
  deletions), and the older link, reading the row, closes itself: 4009 when another link
  holds the row, 4001 when the token is no longer its own (or the row is gone).
- Dispatch is the long-poll's: the same wake-ups reach the link on whichever process holds
  it, the same atomic claim (`claim_jobs`, a batch at once) moves jobs to running as they
  are pushed. A job created in the process that holds the link skips both: it is inserted
  already claimed by the link, under the same guard as a claim (the row still names this
  link and its token), and pushed at once (`take`; `JobStore.links` names the links held
  here). A pushed job the agent has not acknowledged (`claimed`) goes back to pending when
  the link closes (`release_job`: it is pushed again, once, after the agent reconnects;
  expiry still holds). Results and events go through the HTTP routes' services.
- Presence: the link counts as a heartbeat (refreshed as a long-poll refreshes it); when it
  closes, `link_closed_at` makes the agent offline at once for every process, and its
  `agent` event says so on the account stream; unless the close is this process's own
  shutdown (the agent is not gone: it keeps its heartbeat's presence while it links
  again). A process that dies with a link open leaves `link_id` set: its heartbeat then
  ages out as an HTTP agent's does.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app import dispatch
from app.core import json_codec
from app.core.config import Settings
from app.core.errors import InvalidResult, JobNotRunning
from app.core.tasks import wait_any
from app.dispatch import JobStore
from app.events import (
    AccountEvents,
    agent_seen,
    event_errors,
    heartbeat_answer,
    heartbeat_seen,
    order_changed,
    report_events,
    strict_batch_errors,
)
from app.models import Agent, Job, utcnow
from mt5gate_protocol.agent import Heartbeat
from mt5gate_protocol.jobs import JobEnvelope, JobStatus
from mt5gate_protocol.link import (
    AGENT_MESSAGES,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_INVALID_TOKEN,
    CLOSE_LINK_REPLACED,
    REASON_INVALID_TOKEN,
    REASON_LINK_REPLACED,
    Claimed,
    ErrorCode,
    EventsAccepted,
    EventsMessage,
    HeartbeatAccepted,
    HeartbeatMessage,
    JobPush,
    LinkError,
    Pong,
    ResultAccepted,
    ResultMessage,
    Welcome,
)

log = logging.getLogger("mt5gate.agent_link")

# The largest message the link reads (the HTTP routes' body limit).
MAX_LINK_MESSAGE_CHARS = 1_048_576
MAX_RESULTS_IN_FLIGHT = 32
# What the close of a link may take (releasing its unacknowledged jobs, its presence).
FINISH_TIMEOUT_SECONDS = 5.0

AGENTS = cast(Table, Agent.__table__)
TAKE_LINK = (
    update(AGENTS)
    .where(AGENTS.c.id == bindparam("p_agent_id"), AGENTS.c.token_hash == bindparam("p_hash"))
    .values(link_id=bindparam("p_link_id"), last_heartbeat_at=bindparam("p_now"))
)
# The link's heartbeat: written only while the row is still this link's, with this token.
TOUCH_LINK = (
    update(AGENTS)
    .where(
        AGENTS.c.id == bindparam("p_agent_id"),
        AGENTS.c.link_id == bindparam("p_link_id"),
        AGENTS.c.token_hash == bindparam("p_hash"),
    )
    .values(last_heartbeat_at=bindparam("p_now"))
)
DROP_LINK = (
    update(AGENTS)
    .where(AGENTS.c.id == bindparam("p_agent_id"), AGENTS.c.link_id == bindparam("p_link_id"))
    .values(link_id=None, link_closed_at=bindparam("p_now"))
)
# The server is shutting down, the agent is not leaving: the row is let go of without
# `link_closed_at`, so its presence is its heartbeat's until it links again elsewhere.
HAND_BACK_LINK = (
    update(AGENTS)
    .where(AGENTS.c.id == bindparam("p_agent_id"), AGENTS.c.link_id == bindparam("p_link_id"))
    .values(link_id=None)
)
LINK_OWNER = select(AGENTS.c.token_hash, AGENTS.c.link_id).where(
    AGENTS.c.id == bindparam("p_agent_id")
)

Close = tuple[int, str]
Send = Callable[[str], Awaitable[None]]


class LinkRefused(Exception):
    """The link could not be taken: the token stopped being the agent's meanwhile."""


class AgentLink:
    """One open link of one agent: `open`, then `push_jobs` and `handle` (one message
    each) side by side, then `finish`, whatever ended it."""

    def __init__(
        self,
        *,
        jobs: JobStore,
        account_events: AccountEvents,
        db: AsyncEngine,
        settings: Settings,
        agent: Agent,
        send: Send,
    ) -> None:
        self.jobs = jobs
        self.account_events = account_events
        self.db = db
        self.settings = settings
        self.agent = agent
        self.send = send
        self.link_id = uuid.uuid4()
        # Pushed, not yet acknowledged: released when the link closes.
        self.unacknowledged: set[uuid.UUID] = set()
        self.pushed = 0
        self._refresh_every = min(10.0, settings.agent_offline_after_seconds / 3)
        # Results are stored side by side (each is its own statement), at most this many
        # at once; the reader waits for a slot, so an agent cannot queue without bound.
        self._answer_slots = asyncio.Semaphore(MAX_RESULTS_IN_FLIGHT)
        self._answering: set[asyncio.Task[None]] = set()
        self._claiming: set[asyncio.Task[Any]] = set()
        # False once the link begins to close: new jobs are stored pending, not taken.
        self.accepting = True
        # Set when storing a result failed (the database), or a job taken here could not be
        # pushed (the socket stalled): the link closes 1011. The agent sends again on its
        # next link the results it was never told were accepted; the jobs it never got are
        # released, and pushed then.
        self.failed = asyncio.Event()

    @property
    def agent_key(self) -> str:
        return str(self.agent.id)

    async def open(self) -> None:
        """Takes the agent's link (the newest wins), tells every process, says welcome."""
        now = utcnow()
        keys = {
            "p_agent_id": self.agent.id,
            "p_hash": self.agent.token_hash,
            "p_link_id": self.link_id,
            "p_now": now,
        }
        async with self.db.connect() as conn:
            taken = await conn.execute(TAKE_LINK, keys)  # the link's first heartbeat too
        if not taken.rowcount:
            raise LinkRefused()
        self.agent.last_heartbeat_at = now
        await self.jobs.events.agent_revoked(self.agent_key)  # older links: close (4009)
        answer = await heartbeat_answer(
            self.account_events.log,
            self.agent,
            now,
            terminal_connected=self.agent.terminal_connected,
            offline_after=self.settings.agent_offline_after_seconds,
        )
        welcome = Welcome(
            server_time=answer.server_time,
            last_deal_ticket=answer.last_deal_ticket,
            ping_interval=self.settings.ws_ping_interval_seconds,
        )
        await self.send(welcome.model_dump_json())
        self.jobs.links[self.agent.id] = self  # the newest link here takes the jobs made here
        log.info("event=agent_link_opened agent_id=%s link_id=%s", self.agent.id, self.link_id)

    async def still_current(self) -> Close | None:
        """Why this link must close now (its token replaced, a newer link), None if not."""
        async with self.db.connect() as conn:
            row = (await conn.execute(LINK_OWNER, {"p_agent_id": self.agent.id})).first()
        if row is None or row.token_hash != self.agent.token_hash:
            return (CLOSE_INVALID_TOKEN, REASON_INVALID_TOKEN)
        if row.link_id != self.link_id:
            return (CLOSE_LINK_REPLACED, REASON_LINK_REPLACED)
        return None

    async def push_jobs(self) -> Close:
        """Claims and pushes the agent's jobs as they come, until the link must close;
        returns the close (the handler's reader notices a client that leaves)."""
        events = self.jobs.events
        with (
            events.watch_created(self.agent_key) as created,
            events.watch_revoked(self.agent_key) as revoked,
        ):
            # Anything created or revoked before the watches began: one look covers it.
            created.set()
            revoked.set()
            next_refresh = time.monotonic() + self._refresh_every
            while True:
                if revoked.is_set():
                    revoked.clear()
                    if (verdict := await self.still_current()) is not None:
                        return verdict
                if events.draining.is_set():
                    return (CLOSE_GOING_AWAY, "shutting_down")
                if self.failed.is_set():
                    return (CLOSE_INTERNAL, "internal")
                announced = created.is_set()
                created.clear()
                pushed = await self._push_pending() if announced else 0
                if announced and not pushed and (verdict := await self.still_current()):
                    return verdict  # a job is there, but not for this token (a lost wake-up)
                if time.monotonic() >= next_refresh:
                    if (verdict := await self._refresh()) is not None:
                        return verdict
                    next_refresh = time.monotonic() + self._refresh_every
                until_refresh = max(0.0, next_refresh - time.monotonic())
                log.debug("event=agent_link_waiting agent_id=%s", self.agent.id)
                await wait_any(
                    created, revoked, events.draining, self.failed, timeout=until_refresh
                )

    async def _push_pending(self) -> int:
        """Every pending job of the agent, claimed and pushed, oldest first: a batch at a
        time (`claim_jobs`), until a claim takes less than a whole batch. The wake-up was
        cleared before the first claim, so a job stored after a claim began wakes this
        loop again."""
        pushed = 0
        while True:
            jobs = await self._claim()
            for job in jobs:
                await self._push(job)
            pushed += len(jobs)
            if len(jobs) < dispatch.LINK_CLAIM_BATCH:
                return pushed

    async def _push(self, job: Job) -> None:
        envelope = JobEnvelope.model_validate(job, from_attributes=True)
        await self.send(JobPush(job=envelope).model_dump_json())
        self.pushed += 1

    def take(
        self, values: dict[str, Any], serving: dispatch.Serving | None = None
    ) -> asyncio.Task[Job | None] | None:
        """A job created in this process for this link's agent: inserted claimed by the
        link and pushed (see `dispatch.insert_onto_link`); None once the link is closing.
        Tracked as a claim is, so the link's close waits for it and releases the job."""
        if not self.accepting:
            return None
        taking = asyncio.get_running_loop().create_task(self._take(values, serving))
        self._claiming.add(taking)
        taking.add_done_callback(self._claiming.discard)
        return taking

    async def _take(self, values: dict[str, Any], serving: dispatch.Serving | None) -> Job | None:
        job = await dispatch.insert_onto_link(
            self.jobs,
            values,
            link_id=self.link_id,
            token_hash=self.agent.token_hash,
            serving=serving,
        )
        if job is None:
            return None
        self.unacknowledged.add(job.id)
        try:
            await self._push(job)
        except Exception as exc:  # the job is this link's: its close releases it
            log.info("event=agent_link_push_failed job_id=%s reason=%r", job.id, exc)
            self.failed.set()
        return job

    async def _claim(self) -> list[Job]:
        """One claim, which a cancelled pusher does not cut short: a claim the database
        made is always known (`unacknowledged`), so the link's close releases it."""
        agent = self.agent
        claim = asyncio.get_running_loop().create_task(
            dispatch.claim_jobs(self.jobs, agent_id=agent.id, token_hash=agent.token_hash)
        )
        self._claiming.add(claim)
        claim.add_done_callback(self._claimed)
        return await asyncio.shield(claim)

    def _claimed(self, claim: asyncio.Task[list[Job]]) -> None:
        self._claiming.discard(claim)
        if not claim.cancelled() and claim.exception() is None:
            self.unacknowledged.update(job.id for job in claim.result())

    async def _refresh(self) -> Close | None:
        """The link's heartbeat; a row no longer this link's says why the link ends."""
        now = utcnow()
        keys = {
            "p_agent_id": self.agent.id,
            "p_link_id": self.link_id,
            "p_hash": self.agent.token_hash,
            "p_now": now,
        }
        async with self.db.connect() as conn:
            touched = await conn.execute(TOUCH_LINK, keys)
        if touched.rowcount:
            self.agent.last_heartbeat_at = now
            return None
        return await self.still_current() or (CLOSE_LINK_REPLACED, REASON_LINK_REPLACED)

    async def handle(self, text: str | None) -> None:
        """One message from the agent, answered; a bad one gets an `error` frame."""
        if text is None:
            return await self._error("invalid_message", "Messages are JSON text frames.")
        if len(text) > MAX_LINK_MESSAGE_CHARS:
            return await self._error("invalid_message", "The message is too large.")
        try:
            # The Rust codec: a 1,000-deal history result is ~300 KB (1.0 ms, not 2.2).
            body = json_codec.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
            return await self._error("invalid_message", "The message is not valid JSON.")
        kind = body.get("type") if isinstance(body, dict) else None
        model = AGENT_MESSAGES.get(kind) if isinstance(kind, str) else None
        if model is None:
            return await self._error(
                "invalid_message", f"type must be one of {', '.join(AGENT_MESSAGES)}."
            )
        if model is EventsMessage:
            return await self._events(body)
        try:
            message = model.model_validate(body)
        except ValidationError as exc:
            return await self._refuse_shape(body, exc)
        if isinstance(message, Claimed):
            self.unacknowledged.discard(message.job_id)
        elif isinstance(message, ResultMessage):
            await self._answer_slots.acquire()
            answer = asyncio.get_running_loop().create_task(self._answer(message))
            self._answering.add(answer)
            answer.add_done_callback(self._answering.discard)
        elif isinstance(message, HeartbeatMessage):
            await self._heartbeat(message.heartbeat)
        else:
            await self.send(Pong().model_dump_json())
        return None

    async def _refuse_shape(self, body: dict[str, Any], exc: ValidationError) -> None:
        job_id = body.get("job_id")
        if body["type"] == "result" and all(e["loc"][:1] == ("result",) for e in exc.errors()):
            try:  # the job is named: the agent can stop re-sending a result it cannot fix
                named = uuid.UUID(job_id) if isinstance(job_id, str) else None
            except ValueError:
                named = None
            if named is not None:
                return await self._error("invalid_result", _first_error(exc), job_id=named)
        return await self._error("invalid_message", _first_error(exc))

    async def _answer(self, message: ResultMessage) -> None:
        try:
            await self._result(message)
        except Exception as exc:
            log.warning("event=agent_link_result_failed job_id=%s error=%r", message.job_id, exc)
            self.failed.set()
        finally:
            self._answer_slots.release()

    async def _result(self, message: ResultMessage) -> None:
        job_id = message.job_id
        self.unacknowledged.discard(job_id)  # a result says it was received
        try:
            job = await dispatch.complete_job(
                self.jobs, agent_id=self.agent.id, job_id=job_id, result=message.result
            )
        except InvalidResult as exc:
            return await self._error("invalid_result", exc.message, job_id=job_id)
        except JobNotRunning:
            earlier = await dispatch.get_job(self.jobs, job_id)
            answered = (JobStatus.COMPLETED, JobStatus.FAILED)
            if (
                earlier is None
                or earlier.agent_id != self.agent.id
                or earlier.status not in answered
            ):
                return await self._error(
                    "job_not_running", "No such job running for this agent.", job_id=job_id
                )
            # A repeat of a result already stored (the agent missed its acknowledgement).
            log.info("event=agent_link_result_repeat job_id=%s", job_id)
            return await self._acknowledge(job_id, earlier.status)
        await order_changed(
            self.account_events.log, connection_id=self.agent.connection_id, job=job
        )
        return await self._acknowledge(job.id, job.status)

    async def _acknowledge(self, job_id: uuid.UUID, status: str) -> None:
        """`result_accepted`; the result is stored whether or not it can be sent (an agent
        that left re-sends it and gets this answer again)."""
        try:
            await self.send(ResultAccepted(job_id=job_id, status=status).model_dump_json())
        except Exception as exc:  # the socket is gone or stalled: the reader ends the link
            log.info("event=agent_link_ack_unsent job_id=%s reason=%r", job_id, exc)

    async def _heartbeat(self, body: Heartbeat) -> None:
        answer = await heartbeat_seen(
            self.account_events.log,
            self.db,
            self.agent,
            body,
            offline_after=self.settings.agent_offline_after_seconds,
        )
        if body.terminal_connected is not None:
            self.agent.terminal_connected = body.terminal_connected
        accepted = HeartbeatAccepted(
            server_time=answer.server_time, last_deal_ticket=answer.last_deal_ticket
        )
        await self.send(accepted.model_dump_json())

    async def _events(self, body: dict[str, Any]) -> None:
        raw_ref = body.get("ref")
        ref = raw_ref if type(raw_ref) is int and 0 <= raw_ref < 2**53 else None
        try:
            message = EventsMessage.model_validate(body)
        except ValidationError as exc:
            batch_errors = [e for e in exc.errors() if e["loc"][:1] == ("batch",)]
            if ref is None or len(batch_errors) != len(exc.errors()):
                return await self._error("invalid_message", _first_error(exc), ref=ref)
            return await self._refuse_events(ref, list(batch_errors), under="batch")
        if (errors := strict_batch_errors(body["batch"])) is not None:
            return await self._refuse_events(message.ref, errors, under="")
        try:
            accepted = await report_events(
                self.account_events, self.db, agent=self.agent, batch=message.batch
            )
        except RedisError as exc:
            log.warning("event=agent_link_events_unavailable reason=%s", type(exc).__name__)
            return await self._error(
                "events_unavailable", "The event log is unavailable; send again.", ref=message.ref
            )
        await self.send(EventsAccepted(ref=message.ref, accepted=accepted).model_dump_json())
        return None

    async def _refuse_events(self, ref: int, errors: list[Any], *, under: str) -> None:
        found = event_errors(errors, under=under)
        count = len(found)
        frame = LinkError(
            detail="invalid_events",
            message=f"{count} error{'s' if count != 1 else ''}; nothing of the batch was stored.",
            ref=ref,
            errors=found,
        )
        await self.send(frame.model_dump_json(exclude_none=True))

    async def _error(
        self,
        detail: ErrorCode,
        message: str,
        *,
        ref: int | None = None,
        job_id: uuid.UUID | None = None,
    ) -> None:
        frame = LinkError(detail=detail, message=message, ref=ref, job_id=job_id)
        await self.send(frame.model_dump_json(exclude_none=True))

    async def finish(self) -> None:
        """The link closed: its unacknowledged jobs back to pending, and the agent offline
        at once, unless a newer link holds it or this process is shutting down."""
        self.accepting = False
        if self.jobs.links.get(self.agent.id) is self:
            del self.jobs.links[self.agent.id]
        if self._claiming or self._answering:  # claims and results underway: let them end
            await asyncio.gather(*self._claiming, *self._answering, return_exceptions=True)
        for job_id in sorted(self.unacknowledged):
            await dispatch.release_job(self.jobs, job_id=job_id, agent_id=self.agent.id)
            log.info("event=job_released job_id=%s reason=link_closed", job_id)
        self.unacknowledged.clear()
        if self.jobs.events.draining.is_set():
            # This process is going away, the agent is not: it links again to another (or
            # to this one restarted) within its backoff, and an order meanwhile waits for it
            # (202, then filled) instead of 503 agent_offline. A gone agent still ages out.
            async with self.db.connect() as conn:
                await conn.execute(
                    HAND_BACK_LINK, {"p_agent_id": self.agent.id, "p_link_id": self.link_id}
                )
            log.info("event=agent_link_handed_back agent_id=%s reason=shutting_down", self.agent.id)
            return
        now = utcnow()
        async with self.db.connect() as conn:
            dropped = await conn.execute(
                DROP_LINK, {"p_agent_id": self.agent.id, "p_link_id": self.link_id, "p_now": now}
            )
        if not dropped.rowcount:
            return  # a newer link holds the agent (or its row is gone): its presence stands
        self.agent.link_closed_at = now
        try:
            await agent_seen(
                self.account_events.log,
                self.agent,
                terminal_connected=self.agent.terminal_connected,
                offline_after=self.settings.agent_offline_after_seconds,
            )
        except RedisError as exc:  # the agent watch says it on its next round
            log.warning("event=account_event_lost kind=agent reason=%s", type(exc).__name__)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "message"
    return f"{where}: {error['msg']}"[:300]
