"""The account watcher: what changed on the terminal, reported as account events.

MT5 has no callbacks, so the agent compares snapshots. A few times a second
(``AgentConfig.watch_interval``) it reads, one step at a time on the backend's one worker
thread, the new deals, the open positions, the pending orders and the account; the
:class:`AccountDiffer` turns the difference with what it reported before into the
contract's events (``position_opened``/``changed``/``closed``, ``pending_order_placed``/
``changed``/``removed``, ``deal``, ``account``), and the :class:`EventSender` posts them to
``POST /agents/{agent_id}/events`` in order, in batches of at most 500.

Invariants:

- **Jobs go first.** :class:`JobGate` counts the jobs in hand (from the moment the job loop
  gets one until its result is posted); before each snapshot step the watcher waits until
  there are none. A job therefore waits behind one snapshot step at most (the one already
  on the worker thread), and no event about a job's effect (a ``position_opened`` after a
  fill) reaches the server before the job's result, hence after its ``order`` event.
- **State first.** The first thing reported after each start, after events had to be
  dropped (the outbox overflowed while the API was unreachable), and after an outage of
  ``RESYNC_AFTER_OUTAGE_SECONDS`` (the server may have taken the agent for offline), is
  ``{"kind": "state", "data": {account, positions, pending_orders}}``: the server compares
  it with what it knew, so a restart invents nothing and loses nothing.
- **Deals once.** Each deal ticket is reported once, starting after the heartbeat's
  ``last_deal_ticket`` (the newest deal the server has); without one (an older server, or
  none recorded yet), after the newest deal the first snapshot sees.
- **Throttled.** A position whose profit (or current price or swap) alone moved, and the
  account, are reported at most once a second each; the comparison is always with what was
  last *reported*, so the latest figures go out as soon as the second has passed.
- **Never lost, in order.** A POST that fails (network, 5xx, 408, 429) is retried with
  backoff while the snapshots go on; queued profit-only changes and account events are
  coalesced (the newest wins). A 422 ``invalid_events`` is logged and the refused events
  dropped (the others are sent again once), never retried forever; a 401 stops the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx

from mt5gate_agent.backends import Backend, BackendWorker, BrokerError
from mt5gate_agent.backends.base import iso_utc
from mt5gate_agent.client import AgentApiError, EventsRefused
from mt5gate_protocol.jobs import JobType

log = logging.getLogger("mt5gate_agent.watch")

MAX_EVENTS_PER_POST = 500
# Profit-only position changes and account changes: at most one event per this many seconds.
THROTTLE_SECONDS = 1.0
# A position gone from the terminal waits this long for its closing deal to show in the
# history (MT5 can list the deal a moment after the position disappears).
CLOSE_GRACE_SECONDS = 2.0
# Queued events beyond this many (the API unreachable for long): the non-deal ones are
# dropped and a fresh `state` is reported instead.
MAX_OUTBOX = 10_000
# After POSTs failed for this long (the API unreachable: the server may have taken the
# agent for offline), the next look reports a fresh `state`, after what was queued.
RESYNC_AFTER_OUTAGE_SECONDS = 30.0
# How far back the deals are read: wide enough for a broker server clock the agent could
# not measure yet (the deals' window is in server time).
DEAL_LOOKBACK_SECONDS = 86_400.0
# How far back finished orders are read to learn why a pending order left the book.
ORDER_LOOKBACK_SECONDS = 60.0
# Fields of a position that move with the market alone (throttled).
MARKET_FIELDS = frozenset({"profit", "current_price", "swap"})
CLOSING_ENTRIES = frozenset({"out", "out_by", "inout"})
# A finished order's state → the reason its pending order left the book.
REMOVAL_REASONS = {
    "filled": "triggered",
    "partial": "triggered",
    "cancelled": "cancelled",
    "expired": "expired",
    "rejected": "rejected",
}

Event = dict[str, Any]


@dataclass(slots=True)
class Snapshot:
    """One look at the account: the deals newer than the watcher's floor (oldest first),
    the open positions and pending orders by ticket, the account."""

    deals: list[dict[str, Any]]
    positions: dict[int, dict[str, Any]]
    pending_orders: dict[int, dict[str, Any]]
    account: dict[str, Any]
    # Why pending orders that left the book did, from the broker's finished orders.
    finished_orders: dict[int, str] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """The `state` event's data."""
        return {
            "account": self.account,
            "positions": [self.positions[t] for t in sorted(self.positions)],
            "pending_orders": [self.pending_orders[t] for t in sorted(self.pending_orders)],
        }


def pending_order_data(view: dict[str, Any]) -> dict[str, Any]:
    """A backend's pending order as the contract's `pending_order` (the agent does not know
    mt5gate's order ids: the server fills ``order_id`` from its records)."""
    return {"order_id": None, **view}


def event(kind: str, data: dict[str, Any], at: float) -> Event:
    return {"kind": kind, "data": data, "at": iso_utc(at)}


class AccountDiffer:
    """Snapshots in, events out; no I/O, no clock of its own (``now`` is monotonic seconds,
    ``at`` the server-corrected wall clock the events are stamped with).

    What it compares with is what it *reported*: a throttled change not yet reported stays
    a difference until it is.
    """

    def __init__(
        self, *, throttle: float = THROTTLE_SECONDS, close_grace: float = CLOSE_GRACE_SECONDS
    ):
        self.throttle = throttle
        self.close_grace = close_grace
        self.started = False
        # Deals with a ticket at or below this are reported or history the server has
        # (deal tickets only grow).
        self.deal_floor = 0
        self._positions: dict[int, dict[str, Any]] = {}
        self._pending: dict[int, dict[str, Any]] = {}
        self._account: dict[str, Any] | None = None
        self._profit_sent_at: dict[int, float] = {}
        self._account_sent_at = -float("inf")
        # Closing deals seen for each position since it was last seen open.
        self._closing_deals: dict[int, list[dict[str, Any]]] = {}
        # Positions gone from the terminal whose closing deal has not shown yet: since when.
        self._vanished: dict[int, float] = {}

    # -- starting over -------------------------------------------------------------------

    def restart(self, snapshot: Snapshot, *, now: float, at: float) -> list[Event]:
        """Takes ``snapshot`` as what the server knows, and returns the `state` event that
        tells it so (the deals in it, past the floor, are reported as well)."""
        self._positions = dict(snapshot.positions)
        self._pending = {t: pending_order_data(v) for t, v in snapshot.pending_orders.items()}
        self._account = snapshot.account
        self._profit_sent_at = dict.fromkeys(self._positions, now)
        self._account_sent_at = now
        self._closing_deals.clear()
        self._vanished.clear()
        self.started = True
        state = snapshot.state()
        state["pending_orders"] = [pending_order_data(o) for o in state["pending_orders"]]
        return [event("state", state, at), *self._new_deals(snapshot.deals, at)]

    def set_deal_floor(self, ticket: int) -> None:
        self.deal_floor = max(self.deal_floor, ticket)

    # -- comparing -----------------------------------------------------------------------

    def unexplained_removals(self, snapshot: Snapshot) -> list[dict[str, Any]]:
        """Reported pending orders gone from ``snapshot`` with no deal or position of their
        ticket to say they triggered: the watcher asks the broker's history about them."""
        triggered = self._triggered_tickets(snapshot)
        return [
            order
            for ticket, order in self._pending.items()
            if ticket not in snapshot.pending_orders and ticket not in triggered
        ]

    def diff(self, snapshot: Snapshot, *, now: float, at: float) -> list[Event]:
        """The events that take the server from what was reported to ``snapshot``."""
        assert self.started, "restart() first"
        pending_events = self._diff_pending(snapshot, at)
        deals = self._new_deals(snapshot.deals, at)
        for deal in snapshot.deals:
            if deal.get("entry") in CLOSING_ENTRIES and deal.get("position_id"):
                self._closing_deals.setdefault(int(deal["position_id"]), []).append(deal)
        position_events = self._diff_positions(snapshot, now, at)
        events = pending_events + position_events + deals
        account = snapshot.account
        if account != self._account and now - self._account_sent_at >= self.throttle:
            self._account, self._account_sent_at = account, now
            events.append(event("account", account, at))
        return events

    def _new_deals(self, deals: list[dict[str, Any]], at: float) -> list[Event]:
        events = []
        for deal in sorted(deals, key=lambda d: int(d["ticket"])):
            ticket = int(deal["ticket"])
            if ticket <= self.deal_floor:
                continue
            self.deal_floor = ticket
            events.append(event("deal", deal, at))
        return events

    def _triggered_tickets(self, snapshot: Snapshot) -> set[int]:
        """Tickets of orders that became positions: a deal of that order, or a position
        under that ticket (MT5 and the simulator open a position under its order's)."""
        tickets = {int(d["order_ticket"]) for d in snapshot.deals if d.get("order_ticket")}
        return tickets | set(snapshot.positions)

    def _diff_pending(self, snapshot: Snapshot, at: float) -> list[Event]:
        events: list[Event] = []
        triggered = self._triggered_tickets(snapshot)
        for ticket in [t for t in self._pending if t not in snapshot.pending_orders]:
            order = self._pending.pop(ticket)
            if ticket in triggered:
                reason = "triggered"
            elif ticket in snapshot.finished_orders:
                reason = REMOVAL_REASONS.get(snapshot.finished_orders[ticket], "cancelled")
            elif _expiration_passed(order, at):
                reason = "expired"
            else:
                reason = "cancelled"
            events.append(event("pending_order_removed", {"ticket": ticket, "reason": reason}, at))
        for ticket in sorted(snapshot.pending_orders):
            order = pending_order_data(snapshot.pending_orders[ticket])
            known = self._pending.get(ticket)
            if known == order:
                continue
            self._pending[ticket] = order
            kind = "pending_order_placed" if known is None else "pending_order_changed"
            events.append(event(kind, order, at))
        return events

    def _diff_positions(self, snapshot: Snapshot, now: float, at: float) -> list[Event]:
        events: list[Event] = []
        current = snapshot.positions
        for position_id in [p for p in self._positions if p not in current]:
            self._vanished.setdefault(position_id, now)
        for position_id, since in list(self._vanished.items()):
            if position_id in current:  # a look that missed it: it is still open
                del self._vanished[position_id]
                continue
            deals = self._closing_deals.get(position_id)
            if not deals and now - since < self.close_grace:
                continue
            last = self._positions.pop(position_id)
            del self._vanished[position_id]
            self._profit_sent_at.pop(position_id, None)
            self._closing_deals.pop(position_id, None)
            events.append(event("position_closed", _closed(last, deals or [], at), at))
        for position_id in sorted(current):
            position = current[position_id]
            known = self._positions.get(position_id)
            self._closing_deals.pop(position_id, None)  # out deals of an open one: partial
            if known == position:
                continue
            if known is None:
                kind = "position_opened"
            else:
                market_only = all(
                    known.get(name) == value
                    for name, value in position.items()
                    if name not in MARKET_FIELDS
                )
                if market_only and now - self._profit_sent_at.get(position_id, 0) < self.throttle:
                    continue
                kind = "position_changed"
            self._positions[position_id] = position
            self._profit_sent_at[position_id] = now
            events.append(event(kind, position, at))
        # Deals of positions never seen open (opened and closed between two looks).
        for position_id in [p for p in self._closing_deals if p not in self._positions]:
            del self._closing_deals[position_id]
        return events


def _closed(last: dict[str, Any], deals: list[dict[str, Any]], at: float) -> dict[str, Any]:
    """`position_closed` data from the deals that closed the position, or, if the history
    never showed them, from the position as last seen (reason `other`)."""
    if not deals:
        return {
            "position_id": last["position_id"],
            "symbol": last["symbol"],
            "volume": last["volume"],
            "closed_price": last["current_price"],
            "pnl": last["profit"],
            "reason": "other",
            "closed_at": iso_utc(at),
        }
    volume = sum(float(d["volume"]) for d in deals)
    price = (
        sum(float(d["price"]) * float(d["volume"]) for d in deals) / volume
        if volume
        else float(deals[-1]["price"])
    )
    pnl = sum(
        float(d.get(name) or 0.0) for d in deals for name in ("profit", "swap", "commission", "fee")
    )
    return {
        "position_id": last["position_id"],
        "symbol": last["symbol"],
        "volume": round(volume, 8) or last["volume"],
        "closed_price": round(price, 8),
        "pnl": round(pnl, 2),
        "reason": deals[-1]["reason"],
        "closed_at": deals[-1]["time"],
    }


def _expiration_passed(order: dict[str, Any], at: float) -> bool:
    expiration = order.get("expiration") or {}
    moment = expiration.get("at")
    if expiration.get("type") == "specified" and isinstance(moment, str):
        return datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp() <= at
    if expiration.get("type") == "day":
        placed = datetime.fromisoformat(str(order["placed_at"]).replace("Z", "+00:00"))
        return placed.timestamp() // 86_400 < at // 86_400
    return False


class JobGate:
    """Jobs go first: counts the jobs in hand, and lets the watcher wait until none is."""

    def __init__(self) -> None:
        self._in_hand = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        """Around a job, from receiving it to posting its result."""
        self._in_hand += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_hand -= 1
            if not self._in_hand:
                self._idle.set()

    async def wait_idle(self) -> None:
        if self._in_hand:
            await self._idle.wait()


class EventPoster(Protocol):
    """Who takes a batch: the agent's HTTP client, or the agent (the link when it is open)."""

    async def post_events(self, events: list[dict[str, Any]]) -> None: ...


class EventSender:
    """The outbox: events in the order they were seen, posted in batches of at most 500,
    retried until they are taken (see the module docstring)."""

    def __init__(
        self,
        client: EventPoster,
        *,
        backoff: Callable[[], Any],
        on_refused_token: Callable[[BaseException], bool],
        max_outbox: int = MAX_OUTBOX,
    ) -> None:
        self.client = client
        self._backoff_factory = backoff
        self._on_refused_token = on_refused_token
        self.max_outbox = max_outbox
        self.outbox: deque[Event] = deque()
        self._queued = asyncio.Event()
        # Set when events had to be dropped, or after an outage: the watcher reports a
        # fresh `state` at its next look.
        self.state_wanted = False
        self.resync_after = RESYNC_AFTER_OUTAGE_SECONDS
        self._failing_since: float | None = None
        # The events the POST in progress carries (by id): never written over.
        self._in_flight: set[int] = set()
        # The last queued `account`, and each position's last queued event: where a newer
        # profit-only change or account is written instead of queued anew.
        self._latest: dict[Any, Event] = {}
        self.unsupported = False
        self.posted_batches = 0

    def add(self, events: list[Event]) -> None:
        if not events:
            return
        for given in events:
            item = dict(given)  # the outbox's own: a newer one may be written over it
            if item["kind"] == "state":
                self._latest.clear()  # nothing after a state moves before it
            key = _entity(item)
            queued = self._latest.get(key) if key is not None else None
            if (
                queued is not None
                and id(queued) not in self._in_flight
                and _coalesces(queued, item)
            ):
                # Only the newest figures matter while they wait, in the older one's place.
                queued.clear()
                queued.update(item)
                continue
            self.outbox.append(item)
            if key is not None:
                self._latest[key] = item
        if len(self.outbox) > self.max_outbox:
            kept = [e for e in self.outbox if e["kind"] == "deal"]
            log.warning(
                "event=events_dropped count=%d kept_deals=%d note=%s",
                len(self.outbox) - len(kept),
                len(kept),
                '"outbox full while the API was unreachable: a fresh state follows"',
            )
            self.outbox = deque(kept)
            self._latest.clear()
            self.state_wanted = True
        self._queued.set()

    def _taken(self, count: int) -> None:
        """The first ``count`` queued events were taken (or dropped)."""
        for _ in range(count):
            item = self.outbox.popleft()
            key = _entity(item)
            if key is not None and self._latest.get(key) is item:
                del self._latest[key]

    def _next_batch(self) -> list[Event]:
        batch = [self.outbox[i] for i in range(min(MAX_EVENTS_PER_POST, len(self.outbox)))]
        self._in_flight = {id(item) for item in batch}
        return batch

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self._backoff_factory()
        while not stop.is_set():
            if not self.outbox:
                self._queued.clear()
                await self._queued.wait()
                continue
            batch = self._next_batch()
            try:
                await self._post(batch)
            except AgentApiError as exc:
                if self._on_refused_token(exc):
                    return
                if exc.status_code in (404, 405):
                    log.warning(
                        "event=events_unsupported status=%d note=%s",
                        exc.status_code,
                        '"the server takes no agent events; the watcher stops"',
                    )
                    self.unsupported = True
                    return
                delay = backoff.next()
                self._failing_since = self._failing_since or time.monotonic()
                log.warning(
                    "event=events_post_failed reason=%s status=%d retry_in_s=%.2f",
                    exc.detail,
                    exc.status_code,
                    delay,
                )
                await _pause(stop, delay)
                continue
            except httpx.HTTPError as exc:
                delay = backoff.next()
                self._failing_since = self._failing_since or time.monotonic()
                log.warning(
                    "event=events_post_failed reason=%s retry_in_s=%.2f", type(exc).__name__, delay
                )
                await _pause(stop, delay)
                continue
            finally:
                # No await before the batch is popped below: nothing is written over it.
                self._in_flight = set()
            backoff.reset()
            self._taken(len(batch))
            if self._failing_since is not None:
                outage = time.monotonic() - self._failing_since
                self._failing_since = None
                if outage >= self.resync_after:
                    log.info("event=events_resync outage_s=%.1f", outage)
                    self.state_wanted = True

    async def drain(self, timeout: float) -> None:
        """Stopping: one more try, within ``timeout`` seconds, to post what is queued (what
        is still not taken then is left to the `state` of the next start)."""
        if self.unsupported:
            return
        try:
            async with asyncio.timeout(timeout):
                while self.outbox:
                    batch = self._next_batch()
                    await self._post(batch)
                    self._in_flight = set()
                    self._taken(len(batch))
        except (TimeoutError, AgentApiError, httpx.HTTPError) as exc:
            log.info(
                "event=events_not_drained count=%d reason=%s", len(self.outbox), type(exc).__name__
            )

    async def _post(self, batch: list[Event]) -> None:
        """Posts ``batch``; on 422 drops the refused events (logged) and posts the rest once
        more, dropping the whole batch if that is refused too. Raises what is retryable."""
        for attempt in (1, 2):
            try:
                await self.client.post_events(batch)
                self.posted_batches += 1
                return
            except EventsRefused as refused:
                bad = {e.get("index") for e in refused.errors if isinstance(e.get("index"), int)}
                for error in refused.errors[:10]:
                    index = error.get("index")
                    kind = (
                        batch[index]["kind"]
                        if isinstance(index, int) and index < len(batch)
                        else None
                    )
                    log.error(
                        "event=events_refused kind=%s index=%s loc=%s msg=%r",
                        kind,
                        index,
                        ".".join(str(part) for part in error.get("loc") or ()),
                        str(error.get("msg", ""))[:200],
                    )
                kept = [e for i, e in enumerate(batch) if i not in bad]
                if attempt == 2 or not bad or len(kept) == len(batch) or not kept:
                    log.error("event=events_batch_dropped count=%d", len(batch))
                    return
                batch = kept


def _entity(item: Event) -> Any:
    """What an event is about, for coalescing: the account, a position, or nothing."""
    if item["kind"] == "account":
        return "account"
    if item["kind"].startswith("position_"):
        return ("position", item["data"].get("position_id"))
    return None


def _coalesces(queued: Event, new: Event) -> bool:
    """Whether ``new`` may be written over ``queued`` (the last queued event about the same
    thing): an `account` over an `account`; a `position_changed` over a `position_changed`
    whose volume, sl and tp it repeats (a profit move)."""
    if queued["kind"] != new["kind"]:
        return False
    if new["kind"] == "account":
        return True
    if new["kind"] != "position_changed":
        return False
    old, current = queued["data"], new["data"]
    return all(
        old.get(name) == value for name, value in current.items() if name not in MARKET_FIELDS
    )


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0))


class AccountWatcher:
    """The loop: every ``interval`` seconds a snapshot (one backend step at a time, each
    after the jobs in hand), its events to the sender."""

    def __init__(
        self,
        worker: BackendWorker,
        sender: EventSender,
        gate: JobGate,
        *,
        interval: float,
        server_clock: Callable[[], float],
        last_deal_ticket: Callable[[], int | None],
        differ: AccountDiffer | None = None,
    ) -> None:
        self.worker = worker
        self.backend: Backend = worker.backend
        self.sender = sender
        self.gate = gate
        self.interval = interval
        self.server_clock = server_clock
        self.last_deal_ticket = last_deal_ticket
        self.differ = differ or AccountDiffer()
        self.snapshots = 0
        # Seconds the last snapshot steps kept the worker thread (for the benchmark).
        self.step_seconds: deque[float] = deque(maxlen=10_000)

    async def _step(self, fn: Callable[..., Any], *args: Any) -> Any:
        await self.gate.wait_idle()
        started = time.perf_counter()
        try:
            return await self.worker.call(fn, *args)
        finally:
            self.step_seconds.append(time.perf_counter() - started)

    async def snapshot(self) -> Snapshot:
        """One look at the account; deals first, so that a position seen open or gone is
        never older than the deals read with it."""
        execute = self.backend.execute
        deals = await self._step(
            self.backend.recent_deals, self.differ.deal_floor, DEAL_LOOKBACK_SECONDS
        )
        positions = (await self._step(execute, JobType.GET_POSITIONS, {}))["positions"]
        pending = (await self._step(execute, JobType.GET_PENDING_ORDERS, {}))["pending_orders"]
        account = await self._step(execute, JobType.GET_ACCOUNT, {})
        snapshot = Snapshot(
            deals=deals,
            positions={int(p["position_id"]): p for p in positions},
            pending_orders={int(o["ticket"]): o for o in pending},
            account=account,
        )
        if self.differ.started:
            gone = self.differ.unexplained_removals(snapshot)
            if gone:
                snapshot.finished_orders = await self._finished_orders(gone)
        self.snapshots += 1
        return snapshot

    async def _finished_orders(self, orders: list[dict[str, Any]]) -> dict[int, str]:
        earliest = min(
            datetime.fromisoformat(str(o["placed_at"]).replace("Z", "+00:00")).timestamp()
            for o in orders
        )
        now = self.server_clock()
        try:
            found = await self._step(
                self.backend.execute,
                JobType.GET_HISTORY,
                {
                    "kind": "orders",
                    "from": iso_utc(earliest - ORDER_LOOKBACK_SECONDS),
                    "to": iso_utc(now + 86_400),
                    "limit": 1000,
                },
            )
        except BrokerError as exc:
            log.warning("event=order_history_failed reason=%s", exc.code)
            return {}
        tickets = {int(o["ticket"]) for o in orders}
        return {
            int(o["ticket"]): str(o["state"])
            for o in found["orders"]
            if int(o["ticket"]) in tickets
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Watches until ``stop``; backend failures are logged and the next look retried."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        failing = False
        while not stop.is_set() and not self.sender.unsupported:
            try:
                await self.look(loop.time())
                if failing:
                    log.info("event=watch_recovered")
                failing = False
            except BrokerError as exc:
                if not failing:
                    log.warning("event=watch_failed reason=%s message=%r", exc.code, exc.message)
                failing = True
            except Exception:
                log.exception("event=watch_crashed")
                failing = True
            next_at = max(next_at + self.interval, loop.time())
            await _pause(stop, next_at - loop.time())

    async def look(self, now: float) -> list[Event]:
        """One snapshot and its events, handed to the sender (the first one, and the one
        after events were lost, as a `state`)."""
        if not self.differ.started:
            floor = self.last_deal_ticket()
            if floor is not None:
                self.differ.set_deal_floor(floor)
        snapshot = await self.snapshot()
        at = self.server_clock()
        if not self.differ.started or self.sender.state_wanted:
            if not self.differ.started and self.last_deal_ticket() is None and snapshot.deals:
                # No floor from the server: what is there already is not news.
                self.differ.set_deal_floor(max(int(d["ticket"]) for d in snapshot.deals))
            self.sender.state_wanted = False
            events = self.differ.restart(snapshot, now=now, at=at)
        else:
            events = self.differ.diff(snapshot, now=now, at=at)
        self.sender.add(events)
        return events
