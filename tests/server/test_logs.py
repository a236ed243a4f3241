"""Server logs: JSON lines carrying request ids, and library warnings among them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from trainwire.server.local import local_server
from trainwire.server.logs import REQUEST_ID, configure_logging
from trainwire.server.wrappers import in_pool


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


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TRAINWIRE_LOG_LEVEL", "verbose", "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("TRAINWIRE_LOG_FORMAT", "yaml", "must be json or text"),
    ],
)
def test_a_log_setting_that_names_nothing_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    """A misspelt level passed for INFO, a misspelt format for the default."""
    monkeypatch.setenv(variable, value)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    with pytest.raises(ValueError, match=f"{variable} {message}.*Received: '{value}'"):
        configure_logging()
    assert (root.handlers, root.level) == saved, "nothing was configured"


def test_a_log_level_is_taken_in_any_case(json_log: io.StringIO) -> None:
    logging.getLogger().setLevel(logging.NOTSET)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRAINWIRE_LOG_LEVEL", " warning ")
        configure_logging()
    assert logging.getLogger().level == logging.WARNING


def test_an_empty_log_level_is_the_default(
    json_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty TRAINWIRE_LOG_LEVEL counts as unset: INFO."""
    monkeypatch.setenv("TRAINWIRE_LOG_LEVEL", "")
    logging.getLogger().setLevel(logging.CRITICAL)
    configure_logging()
    assert logging.getLogger().level == logging.INFO


def test_pool_work_of_a_call_logs_with_its_request_id(json_log: io.StringIO) -> None:
    """The work a coroutine handler (an upload, a watch, a prediction's model lookup) hands to
    the thread pool logged without its call's request id: `run_in_executor` runs it in no
    context, `in_pool` in the call's."""

    def pool_work() -> str:
        logging.getLogger("trainwire.server").warning("from the pool")
        return REQUEST_ID.get()

    async def call() -> str:
        REQUEST_ID.set("req-7")
        with ThreadPoolExecutor(1) as executor:
            return await in_pool(executor, pool_work)

    assert asyncio.run(call()) == "req-7"
    (line,) = json_log.getvalue().splitlines()
    assert json.loads(line)["request_id"] == "req-7"


def test_a_c1_control_in_a_message_is_escaped_and_other_text_kept(json_log: io.StringIO) -> None:
    """A line may quote user text (a refused name): a raw CSI (U+009B) in it is run by some
    terminals showing the log, as ESC [ is. It is written as its JSON escape, text in other
    scripts as it is, and the line reads back as the message."""
    message = "refused name 'caf\u00e9 \x9b31m red \u65e5\u672c'"
    logging.getLogger("trainwire.server").warning("%s", message)
    (line,) = json_log.getvalue().splitlines()
    assert "\\u009b" in line and "\x9b" not in line
    assert "caf\u00e9" in line and "\u65e5\u672c" in line
    assert json.loads(line)["message"] == message


def test_a_stopping_server_logs_that_it_stopped_as_a_json_line(tmp_path: Path) -> None:
    """The line "Trainwire stopped" was printed raw to stderr, which no JSON reader of the log
    takes.
    Every line but the "listening" one (stdout, read by scripts for the port) is JSON."""
    env = {"TRAINWIRE_LOG_FORMAT": "json"}
    with local_server(f"sqlite:///{tmp_path / 'trainwire.db'}", workers=0, extra_env=env) as run:
        pass
    assert run.process.returncode == 0
    lines = [line for line in run.output if not line.startswith("Trainwire listening on ")]
    entries = [json.loads(line) for line in lines]
    assert [e["level"] for e in entries if e["message"] == "Trainwire stopped"] == ["INFO"]
