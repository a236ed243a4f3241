"""Server logs: JSON lines carrying request ids, and library warnings among them."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest

from trainwire.server.logs import REQUEST_ID, configure_logging


@pytest.fixture
def json_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What `configure_logging` writes, in JSON; the logging setup is undone afterwards."""
    monkeypatch.setenv("TRAINWIRE_LOG_FORMAT", "json")
    monkeypatch.delenv("TRAINWIRE_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    written = io.StringIO()
    handler.setStream(written)
    try:
        yield written
    finally:
        logging.captureWarnings(False)
        root.handlers[:], level = saved
        root.setLevel(level)


def test_a_library_warning_becomes_a_json_log_line_with_its_request(
    json_log: io.StringIO,
) -> None:
    token = REQUEST_ID.set("req-42")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("overflow encountered in reduce", RuntimeWarning, stacklevel=1)
    finally:
        REQUEST_ID.reset(token)
    entries = [json.loads(line) for line in json_log.getvalue().splitlines()]
    (entry,) = [e for e in entries if "overflow encountered" in e["message"]]
    assert entry["level"] == "WARNING" and entry["logger"] == "py.warnings"
    assert entry["request_id"] == "req-42"
