"""What the server knows of one broker account, and how each event changes it.

The state is a plain JSON-able dict, stored whole beside the connection's log and written
in the same transaction as the events that changed it (see `_log`), so that it always
reflects exactly the events up to its `last_event_id`:

    origin          the id before the log's first event (see `new_state`)
    last_event_id   the id of the newest event; ids are consecutive integers
    floor           the highest id the log no longer holds: `since` below it is a snapshot
    account         the latest `account`, or None before the agent reported one
    positions       {position_id (str): position}
    pending_orders  {ticket (str): pending_order}
    agent           the latest `agent` event's data, or None before the first
    latest          {coalescing key: event}: the newest profit-only `position_changed` of
                    each position (`p:{id}`) and the newest `account` (`account`); these
                    are not kept in the stream one by one (a replay ends with the latest)
    last_deal_ticket the newest deal ticket recorded, or None
    orders          {order_id: status} of the last `order` events (the newest 1000)

`apply` turns what was reported into the events to emit: repeats of what the state
already says are dropped, a `state` report becomes the differences it shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

# The fields of a position that move with the market; a change of only these is
# "profit-only" (coalesced).
MARKET_FIELDS = frozenset({"profit", "current_price", "swap"})
ACCOUNT_KEY = "account"
# Orders whose last status the state keeps (to say each status once): the newest ones.
ORDERS_REMEMBERED = 1000


@dataclass(frozen=True, slots=True)
class Draft:
    """An event before it has an id: what the agent reported, or what the server says."""

    kind: str
    data: dict[str, Any]
    at: str


@dataclass(frozen=True, slots=True)
class Emitted:
    """An event with its id; `coalesce` is its key in `latest` when it is not kept in the
    stream (profit-only position changes and account updates), else None."""

    id: int
    kind: str
    at: str
    data: dict[str, Any]
    coalesce: str | None

    def body(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "at": self.at, "data": self.data}


def new_state(now: float | None = None) -> dict[str, Any]:
    """An empty state whose ids start above any a previous log of this connection used:
    from the clock in microseconds (below 2**53 until the year 2255, so a JavaScript
    number holds it). A Redis that lost the log thus starts a new range, and a client's
    `since` from the old one is told apart (it gets a snapshot, not the wrong events)."""
    origin = int((time.time() if now is None else now) * 1_000_000)
    return {
        "origin": origin,
        "last_event_id": origin,
        "floor": origin,
        "account": None,
        "positions": {},
        "pending_orders": {},
        "agent": None,
        "latest": {},
        "last_deal_ticket": None,
        "orders": {},
    }


def profit_only(before: dict[str, Any], after: dict[str, Any]) -> bool:
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    return bool(changed) and changed <= MARKET_FIELDS


class Applier:
    """Applies drafts to a state in order, collecting the events they emit."""

    def __init__(self, state: dict[str, Any], known_deals: set[int]) -> None:
        self.state = state
        self.known_deals = known_deals
        self.emitted: list[Emitted] = []
        self.new_deals: list[int] = []

    def apply(self, draft: Draft) -> None:
        getattr(self, f"_{draft.kind}")(draft)

    # -- the server's own ---------------------------------------------------------------

    def _order(self, draft: Draft) -> None:
        """Once per status of an order, whoever offers it how often."""
        orders = self.state.setdefault("orders", {})
        order_id, status = draft.data["order_id"], draft.data["status"]
        if orders.get(order_id) == status:
            return
        orders.pop(order_id, None)
        orders[order_id] = status
        while len(orders) > ORDERS_REMEMBERED:
            del orders[next(iter(orders))]
        self._emit(draft, None)

    def _agent(self, draft: Draft) -> None:
        """Once per change of the agent's status."""
        if self.state["agent"] == draft.data:
            return
        self.state["agent"] = draft.data
        self._emit(draft, None)

    def _emit(self, draft: Draft, coalesce: str | None) -> None:
        state = self.state
        state["last_event_id"] += 1
        event = Emitted(state["last_event_id"], draft.kind, draft.at, draft.data, coalesce)
        self.emitted.append(event)
        if coalesce is not None:
            state["latest"][coalesce] = event.body()

    # -- positions ----------------------------------------------------------------------

    def _position_opened(self, draft: Draft) -> None:
        key = str(draft.data["position_id"])
        known = self.state["positions"].get(key)
        if known == draft.data:
            return
        if known is not None:  # a position the server knew: what changed is a change
            self._position_changed(Draft("position_changed", draft.data, draft.at))
            return
        self.state["positions"][key] = draft.data
        self._emit(draft, None)

    def _position_changed(self, draft: Draft) -> None:
        key = str(draft.data["position_id"])
        known = self.state["positions"].get(key)
        if known == draft.data:
            return
        self.state["positions"][key] = draft.data
        coalesce = f"p:{key}" if known is not None and profit_only(known, draft.data) else None
        self._emit(draft, coalesce)

    def _position_closed(self, draft: Draft) -> None:
        """Once: the close of a position the state does not hold is a repeat."""
        key = str(draft.data["position_id"])
        if self.state["positions"].pop(key, None) is None:
            return
        self.state["latest"].pop(f"p:{key}", None)
        self._emit(draft, None)

    # -- pending orders -----------------------------------------------------------------

    def _pending_order_placed(self, draft: Draft) -> None:
        key = str(draft.data["ticket"])
        if self.state["pending_orders"].get(key) == draft.data:
            return
        self.state["pending_orders"][key] = draft.data
        self._emit(draft, None)

    _pending_order_changed = _pending_order_placed

    def _pending_order_removed(self, draft: Draft) -> None:
        """Once: the removal of a pending order the state does not hold is a repeat."""
        if self.state["pending_orders"].pop(str(draft.data["ticket"]), None) is not None:
            self._emit(draft, None)

    # -- deals and the account ----------------------------------------------------------

    def _deal(self, draft: Draft) -> None:
        ticket = int(draft.data["ticket"])
        if ticket in self.known_deals:
            return
        self.known_deals.add(ticket)
        self.new_deals.append(ticket)
        last = self.state["last_deal_ticket"]
        self.state["last_deal_ticket"] = ticket if last is None else max(last, ticket)
        self._emit(draft, None)

    def _account(self, draft: Draft) -> None:
        if self.state["account"] == draft.data:
            return
        self.state["account"] = draft.data
        self._emit(draft, ACCOUNT_KEY)

    # -- the agent's whole view ---------------------------------------------------------

    def _state(self, draft: Draft) -> None:
        """The differences between what the server knew and what the terminal shows."""
        at = draft.at
        seen = draft.data
        positions = {str(p["position_id"]): p for p in seen["positions"]}
        for key, known in list(self.state["positions"].items()):
            if key not in positions:
                self._position_closed(Draft("position_closed", closed_unseen(known, at), at))
        for position in positions.values():
            self._position_opened(Draft("position_opened", position, at))
        orders = {str(o["ticket"]): o for o in seen["pending_orders"]}
        for key, known in list(self.state["pending_orders"].items()):
            if key not in orders:
                removed = {"ticket": known["ticket"], "reason": removal_reason(known, at)}
                self._pending_order_removed(Draft("pending_order_removed", removed, at))
        for order in orders.values():
            self._pending_order_placed(
                Draft(
                    "pending_order_changed"
                    if str(order["ticket"]) in self.state["pending_orders"]
                    else "pending_order_placed",
                    order,
                    at,
                )
            )
        self._account(Draft("account", seen["account"], at))


def closed_unseen(position: dict[str, Any], at: str) -> dict[str, Any]:
    """A `position_closed` for a position that was gone when the agent looked again (it
    closed while the agent was away): its last known price and profit, reason `other`
    (its closing deal, reported with the deals, says who closed it)."""
    return {
        "position_id": position["position_id"],
        "symbol": position["symbol"],
        "volume": position["volume"],
        "closed_price": position["current_price"],
        "pnl": position["profit"],
        "reason": "other",
        "closed_at": at,
    }


def removal_reason(order: dict[str, Any], at: str) -> str:
    """Why a pending order that vanished while the agent was away is gone, as far as the
    server can tell: `expired` when its own expiration has passed, else `cancelled`."""
    expiration = order.get("expiration") or {}
    expires = expiration.get("at") if expiration.get("type") == "specified" else None
    return "expired" if expires is not None and expires <= at else "cancelled"


def snapshot_of(state: dict[str, Any]) -> dict[str, Any]:
    """`{last_event_id, account, positions, pending_orders}` as the contract lists them."""
    return {
        "last_event_id": state["last_event_id"],
        "account": state["account"],
        "positions": list(state["positions"].values()) if state["account"] else None,
        "pending_orders": list(state["pending_orders"].values()) if state["account"] else None,
    }
