"""Structured log lines: `time level logger event=... key=value ...`, or one JSON object per
line (`LOG_FORMAT=json`); each line an HTTP request causes carries its `request_id`."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
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


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
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
    # Alembic announces every plugin it loads at INFO; its migration steps stay visible.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
