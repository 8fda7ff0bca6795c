"""Log lines never carry an access token."""

from __future__ import annotations

import io
import logging

import pytest

from app.core.logging import RedactSecrets


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/ws/prices?token=eyJhbGciOi.eyJzdWIi.sig-_x", "/ws/prices?token=[redacted]"),
        ("/ws/prices/EURUSD?x=1&token=abc&y=2", "/ws/prices/EURUSD?x=1&token=[redacted]&y=2"),
        ("/ws/prices", "/ws/prices"),
    ],
)
def test_tokens_in_logged_urls_are_redacted(path: str, shown: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", path)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == f'127.0.0.1:5000 - "WebSocket {shown}" [accepted]\n'
