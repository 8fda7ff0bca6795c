"""Structured log lines: `time level logger event=... key=value ...`, or one JSON object per
line (`LOG_FORMAT=json`); each line an HTTP request causes carries its `request_id`."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s%(request_suffix)s"
# Access tokens travel in WebSocket URLs (`?token=`), which uvicorn logs.
SECRET_IN_URL = re.compile(r"((?:access_)?token=)[^&\s\"']+")
# `key=value` fields of a structured message; a value runs until the next ` key=`.
FIELD = re.compile(r"(\w+)=(.*?)(?= \w+=|$)")

# The id of the HTTP request being handled (set by app/api/observability.py), if any.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class RedactSecrets(logging.Filter):
    """Replaces `token=<secret>` in every log line with `token=[redacted]`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg = SECRET_IN_URL.sub(r"\1[redacted]", message)
            record.args = None
        return True


# What an agent sends all the time: a price push (several a second) and a job long-poll.
AGENT_TRAFFIC = {
    "price_pushes": re.compile(r"POST /api/v1/agents/[^/?]+/prices(?:\?.*)?"),
    "long_polls": re.compile(r"GET /api/v1/agents/[^/?]+/jobs/next(?:\?.*)?"),
}
SUMMARY_INTERVAL_SECONDS = 60.0


class SummariseAgentTraffic(logging.Filter):
    """Keeps agents' successful price pushes and job long-polls out of uvicorn's access
    log (they would drown every other line), and logs how many there were instead, at
    most once a `interval`. A failed one (4xx, 5xx) is logged as any request is."""

    def __init__(
        self,
        interval: float = SUMMARY_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.counts = dict.fromkeys(AGENT_TRAFFIC, 0)
        self.since = clock()

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access line: '%s - "%s %s HTTP/%s" %d' (client, method, path, ...).
        args = record.args
        if not isinstance(args, tuple) or len(args) != 5:
            return True
        _, method, path, _, status = args
        if not isinstance(status, int) or status >= 400:
            return True
        request = f"{method} {path}"
        kind = next((k for k, p in AGENT_TRAFFIC.items() if p.fullmatch(request)), None)
        if kind is None:
            return True
        self.counts[kind] += 1
        now = self.clock()
        if now - self.since >= self.interval:
            logging.getLogger("mt5gate.access").info(
                "event=access_summary seconds=%.0f %s",
                now - self.since,
                " ".join(f"{k}={n}" for k, n in self.counts.items()),
            )
            self.counts = dict.fromkeys(AGENT_TRAFFIC, 0)
            self.since = now
        return False


class AddRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        current = request_id.get()
        record.request_id = current
        record.request_suffix = f" request_id={current}" if current else ""
        return True


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "event", <the key=value fields>, "request_id"}`; a line
    that is not `event=...` keeps its text as `message`."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
        }
        if message.startswith("event="):
            line.update(dict(FIELD.findall(message)))
        else:
            line["message"] = message
        if getattr(record, "request_id", None):
            line["request_id"] = record.request_id  # type: ignore[attr-defined]
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(
    level: str = "INFO", log_format: str = "text", *, agent_traffic: bool = False
) -> None:
    """`agent_traffic`: every agent price push and long-poll in the access log, instead
    of a summary a minute."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_mt5gate", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(FORMAT))
    handler.addFilter(RedactSecrets())
    handler.addFilter(AddRequestId())
    handler._mt5gate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("mt5gate").setLevel(level.upper())
    access = logging.getLogger("uvicorn.access")
    for old in [f for f in access.filters if isinstance(f, SummariseAgentTraffic)]:
        access.removeFilter(old)
    if not agent_traffic:
        access.addFilter(SummariseAgentTraffic())
    # Alembic announces every plugin it loads at INFO; its migration steps stay visible.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
