"""Job dispatch, end to end: a job is created for an agent, claimed by it exactly once
(its long-poll), answered, and waited for; wake-ups carry each step across processes, and
the lifespan runs the sweeper and the fallback poll.

A job's life: `pending` → `running` (claimed by its agent) → `completed` | `failed`.
Side exits: `expired` (still pending at `expires_at`: it will never be handed out) and
`lost` (claimed, but the agent never answered within `job_result_timeout_seconds`; for a
trade the outcome is unknown). A late answer to a `lost` job is still accepted, because
the truth beats the guess. The statuses and job types are the protocol's
(`mt5gate_protocol.jobs`).

Modules: `_statements` (the SQL, built once), `_store` (create, claim, release, validate,
complete), `_waiting` (waiting for a result), `_wakeups` (the Redis-borne wake-ups),
`_long_poll` (the agent's `jobs/next`), `_upkeep` (sweeper and fallback poll).
"""

from app.dispatch._long_poll import next_job, token_still_current
from app.dispatch._statements import EXPIRED_ERROR, LINK_CLAIM_BATCH, LOST_ERROR
from app.dispatch._store import (
    AccountKey,
    JobStore,
    NotServing,
    Serving,
    claim_jobs,
    claim_next_job,
    complete_job,
    create_job,
    find_by_client_order_id,
    get_job,
    insert_onto_link,
    job_from,
    release_job,
    validate_result,
)
from app.dispatch._upkeep import recheck_waiters, sweep_jobs
from app.dispatch._waiting import JobWatch, create_job_and_wait, wait_for_job_result, watch_job
from app.dispatch._wakeups import (
    CREATED_CHANNEL,
    FINISHED_CHANNEL,
    REVOKED_CHANNEL,
    JobEvents,
    Wakeup,
)

__all__ = [
    "CREATED_CHANNEL",
    "EXPIRED_ERROR",
    "FINISHED_CHANNEL",
    "LINK_CLAIM_BATCH",
    "LOST_ERROR",
    "AccountKey",
    "REVOKED_CHANNEL",
    "Serving",
    "JobEvents",
    "JobStore",
    "JobWatch",
    "NotServing",
    "Wakeup",
    "claim_jobs",
    "claim_next_job",
    "complete_job",
    "create_job",
    "create_job_and_wait",
    "find_by_client_order_id",
    "get_job",
    "insert_onto_link",
    "job_from",
    "next_job",
    "recheck_waiters",
    "release_job",
    "sweep_jobs",
    "token_still_current",
    "validate_result",
    "wait_for_job_result",
    "watch_job",
]
