"""Structured log lines: `time level logger event=... key=value ...`."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_mt5gate", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._mt5gate = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("mt5gate").setLevel(level.upper())
    # Alembic announces every plugin it loads at INFO; its migration steps stay visible.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
