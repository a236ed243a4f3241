"""Logging for the server and worker processes: JSON lines when not on a terminal, with the
request and job a line belongs to.

`TRAINWIRE_LOG_LEVEL` sets the level (INFO); `TRAINWIRE_LOG_FORMAT` forces `json` or `text`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime

REQUEST_ID: ContextVar[str] = ContextVar("trainwire_request_id", default="")
JOB_ID: ContextVar[str] = ContextVar("trainwire_job_id", default="")


@contextlib.contextmanager
def job_logged(job_id: str) -> Iterator[None]:
    """The log lines written inside carry `job_id`."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


# DEL and the C1 controls, which `json.dumps(ensure_ascii=False)` writes raw (it escapes only C0
# ones): a log line may quote user text, and a terminal showing the log runs a raw CSI (U+009B)
# as ESC [ would be run.
_RAW_CONTROL = re.compile(r"[\x7f-\x9f]")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and request/job ids when set."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if request_id := REQUEST_ID.get():
            entry["request_id"] = request_id
        if job_id := JOB_ID.get():
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Other non-ASCII text stays as it is, readable. Outside strings JSON is ASCII, so each
        # such character is inside one, where its \u escape reads back as the same character.
        return _RAW_CONTROL.sub(
            lambda found: f"\\u{ord(found.group()):04x}", json.dumps(entry, ensure_ascii=False)
        )


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"request={r}" for r in [REQUEST_ID.get()] if r]
        ids += [f"job={j}" for j in [JOB_ID.get()] if j]
        return f"{line} [{' '.join(ids)}]" if ids else line


class Throttle:
    """The level of a warning that repeats while a condition lasts (a database outage fails
    every health check, key refresh and housekeeping round): WARNING once per `every_s` at most,
    DEBUG in between. One per kind of message, so each still shows once a minute."""

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._last = -float("inf")
        self._lock = threading.Lock()

    def level(self) -> int:
        with self._lock:
            now = self.clock()
            if now - self._last < self.every_s:
                return logging.DEBUG
            self._last = now
            return logging.WARNING


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("json", "text")


def log_setting_problems(environ: Mapping[str, str]) -> list[str]:
    """What is wrong with TRAINWIRE_LOG_LEVEL and TRAINWIRE_LOG_FORMAT in `environ`, one message
    each: a misspelt level must not pass for INFO. `Settings.from_env` reports them with the
    other settings' problems, so one refusal names them all."""
    found = []
    # Empty is unset, as for every other TRAINWIRE_* variable.
    given_level = environ.get("TRAINWIRE_LOG_LEVEL") or "INFO"
    if given_level.strip().upper() not in LEVELS:
        found.append(
            f"TRAINWIRE_LOG_LEVEL must be one of {', '.join(LEVELS)}. Received: {given_level!r}"
        )
    given_format = environ.get("TRAINWIRE_LOG_FORMAT", "")
    chosen = given_format.strip().lower()
    if chosen and chosen not in FORMATS:
        found.append(
            f"TRAINWIRE_LOG_FORMAT must be json or text (or unset: JSON when stderr is not a "
            f"terminal). Received: {given_format!r}"
        )
    return found


def configure_logging() -> None:
    """Logs to stderr as TRAINWIRE_LOG_LEVEL and TRAINWIRE_LOG_FORMAT say (ValueError naming the
    choices for a value that is none of them, see `log_setting_problems`)."""
    problems = log_setting_problems(os.environ)
    if problems:
        raise ValueError("\n".join(problems))
    level = (os.environ.get("TRAINWIRE_LOG_LEVEL") or "INFO").strip().upper()
    chosen = os.environ.get("TRAINWIRE_LOG_FORMAT", "").strip().lower()
    use_json = chosen == "json" or (chosen != "text" and not sys.stderr.isatty())
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library warnings (NumPy's overflow warnings, deprecations) become log lines like the rest,
    # with the request or job they belong to, rather than raw text on stderr.
    logging.captureWarnings(True)
