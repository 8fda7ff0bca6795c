"""Structured log lines: `time level logger event=... key=value ...`."""

from __future__ import annotations

import logging
import re
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Access tokens travel in WebSocket URLs (`?token=`), which uvicorn logs.
SECRET_IN_URL = re.compile(r"((?:access_)?token=)[^&\s\"']+")


class RedactSecrets(logging.Filter):
    """Replaces `token=<secret>` in every log line with `token=[redacted]`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg = SECRET_IN_URL.sub(r"\1[redacted]", message)
            record.args = None
        return True


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_mt5gate", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(RedactSecrets())
        handler._mt5gate = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("mt5gate").setLevel(level.upper())
    # Alembic announces every plugin it loads at INFO; its migration steps stay visible.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
