"""The process's Prometheus series (`mt5gate_*`), in prometheus-client's default registry.

One registry per process, not prometheus-client's multiprocess mode: every `mt5gate serve`
is a process of its own on its own port (see deploy/), so Prometheus scrapes each one as a
target of its own and sums across them (`sum by (route) (rate(...))`). Multiprocess mode
exists for workers forked behind one shared port, where a scrape reaches a random worker;
it writes every sample through files in a shared directory, which nothing here needs.
The default registry also brings the process's own series (CPU, memory, open files).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "mt5gate_http_requests",
    "HTTP requests answered, by route template (never the raw path) and status.",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "mt5gate_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 10, 30),
)
# Round trips are 5-15 ms at p50-p99 here (README, bench/dispatch.py): fine buckets over
# 1-100 ms, coarse ones beyond for agents far away or timing out.
JOB_ROUND_TRIP_SECONDS = Histogram(
    "mt5gate_job_round_trip_seconds",
    "From creating a job to its result reaching the request that waits for it.",
    ["job_type", "outcome"],
    buckets=(
        0.001,
        0.002,
        0.003,
        0.005,
        0.0075,
        0.01,
        0.015,
        0.02,
        0.03,
        0.05,
        0.075,
        0.1,
        0.25,
        0.5,
        1,
        5,
        10,
    ),
)
AGENTS_ONLINE = Gauge(
    "mt5gate_agents_online", "Agents seen within AGENT_OFFLINE_AFTER_SECONDS (database-wide)."
)
WEBSOCKETS_OPEN = Gauge(
    "mt5gate_websockets_open", "WebSockets open on this process, by stream.", ["stream"]
)
TICKS_RECEIVED = Counter("mt5gate_ticks_received", "Ticks this process received from Redis.")
TICKS_DELIVERED = Counter(
    "mt5gate_ticks_delivered", "Ticks queued for or written to this process's price sockets."
)
TICKS_DROPPED = Gauge(
    "mt5gate_ticks_dropped_for_slow_clients",
    "Ticks dropped for the open sockets that fell behind (newer ticks replaced them).",
)
REDIS_RECONNECTS = Counter(
    "mt5gate_redis_reconnects", "Times a Redis subscription of this process was lost.", ["listener"]
)
