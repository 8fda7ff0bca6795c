"""The broker's history (deals, finished orders): one `get_history` job per read.

The range is checked here, before any job: `to` after `from`, at most 366 days apart; both
default to the last 7 days. The agent answers newest first; the answer is re-sorted here
anyway, so that the order holds whatever the agent did.

The records are served as the job stored them: the agent's answer was validated against
`HistoryOutput` and normalised (`model_dump(mode="json")`) before it was written, so a
thousand deals are not validated a second time on their way out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from app.core.errors import InvalidRange
from app.models import Job, utcnow
from app.schemas.common import iso_utc
from app.schemas.trading import GetHistoryInput
from app.services.orders import order_ids_by_ticket
from app.services.trading import UserAccount, run_read_job
from mt5gate_protocol.jobs import JobType

DEFAULT_SPAN = timedelta(days=7)
MAX_SPAN = timedelta(days=366)


@dataclass(frozen=True)
class HistoryQuery:
    start: datetime | None
    end: datetime | None
    limit: int
    before: int | None
    symbol: str | None
    position_id: int | None


def as_utc(moment: datetime) -> datetime:
    """A time without a zone is taken as UTC, the contract's zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def history_range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """`[from, to)`: the defaults filled in, the span checked (422 `invalid_range`)."""
    try:
        return filled_range(start, end)
    except OverflowError:  # a time near year 1 or 9999, moved to UTC or by the default span
        raise InvalidRange("`from` and `to` must lie within years 1 to 9999, UTC.") from None


def filled_range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    end = as_utc(end) if end is not None else None
    start = as_utc(start) if start is not None else None
    if end is None:
        end = utcnow() if start is None else max(utcnow(), start + timedelta(seconds=1))
    if start is None:
        start = end - DEFAULT_SPAN
    if end <= start:
        raise InvalidRange("`to` must be after `from`.")
    if end - start > MAX_SPAN:
        raise InvalidRange("`from` and `to` may be at most 366 days apart.")
    return start, end


async def fetch_history(
    account: UserAccount, *, kind: Literal["deals", "orders"], query: HistoryQuery
) -> tuple[Job, list[dict[str, Any]]]:
    """The job and the agent's records of `kind` that the query selects, newest first, at
    most `limit` (504 without an answer)."""
    start, end = history_range(query.start, query.end)
    request = GetHistoryInput.model_validate(
        {
            "kind": kind,
            "from": start,
            "to": end,
            "limit": query.limit,
            "before": query.before,
            "symbol": query.symbol,
            "position_id": query.position_id,
        }
    )
    job, output = await run_read_job(
        account,
        job_type=JobType.GET_HISTORY,
        input_data=request.model_dump(mode="json", by_alias=True, exclude_none=True),
        wait=account.trading.settings.history_wait_seconds,
    )
    records: list[dict[str, Any]] = output.get(kind) or []
    # The agent filters too; this holds the answer to the query whatever an agent did.
    since, until = iso_utc(start), iso_utc(end)
    time_field = "time" if kind == "deals" else "done_at"
    kept = [
        record
        for record in records
        if since <= record_time(record, time_field) < until
        and (query.before is None or record["ticket"] < query.before)
        and (query.symbol is None or record.get("symbol") == query.symbol)
        and (query.position_id is None or record.get("position_id") == query.position_id)
    ]
    return job, newest_first(kept, time_field=time_field)[: query.limit]


def record_time(record: dict[str, Any], time_field: str) -> str:
    """A stored record's time: the normalised ISO-8601 UTC string of the answer (one format,
    one zone), which compares and sorts as the times do. An order not done yet counts from
    when it was placed."""
    return str(record.get(time_field) or record.get("placed_at") or "")


def newest_first(records: list[dict[str, Any]], *, time_field: str) -> list[dict[str, Any]]:
    """By time, then ticket, descending."""
    return sorted(
        records,
        key=lambda record: (record_time(record, time_field), record["ticket"]),
        reverse=True,
    )


async def list_deals(account: UserAccount, *, query: HistoryQuery) -> list[dict[str, Any]]:
    """The `deal` records, newest first, at most `limit`."""
    _, deals = await fetch_history(account, kind="deals", query=query)
    return deals


async def list_history_orders(account: UserAccount, *, query: HistoryQuery) -> list[dict[str, Any]]:
    """The `history_order` records, newest first, at most `limit`, each with the `order_id`
    of the mt5gate order it was (null for one placed elsewhere)."""
    job, orders = await fetch_history(account, kind="orders", query=query)
    # A filled market order's ticket is its position's, which MT5 numbers after the order.
    order_ids = await order_ids_by_ticket(
        account.trading, agent_id=job.agent_id, tickets=[o["ticket"] for o in orders]
    )
    for order in orders:
        order_id = order_ids.get(order["ticket"])
        order["order_id"] = str(order_id) if order_id is not None else None
    return orders
