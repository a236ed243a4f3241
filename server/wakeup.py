"""Waking idle workers: PostgreSQL LISTEN/NOTIFY, with polling as the fallback (and on SQLite).

`Store.create_job` and `Store.release_job` send NOTIFY on the jobs channel in the enqueueing
transaction, so an idle worker on PostgreSQL hears of a new job when it commits. A lost LISTEN
connection is logged once per outage, and the worker polls until it can be made again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from .db import is_sqlite, normalise_url
from .store import JOBS_CHANNEL

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("trainwire.worker")

SLICE_S = 0.25


class Wakeup:
    def __init__(self, database_url: str) -> None:
        self.listen = not is_sqlite(database_url)
        url = make_url(normalise_url(database_url)).set(drivername="postgresql")
        self.conninfo = url.render_as_string(hide_password=False)
        self.connection: psycopg.Connection[tuple[object, ...]] | None = None
        self.failing = False  # the LISTEN connection failed and has not been made since

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        import psycopg  # the postgres extra; only needed when the database is PostgreSQL

        connection = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)
        try:
            connection.execute(f"LISTEN {JOBS_CHANNEL}")
        except BaseException:
            connection.close()  # or every failed LISTEN would leak a connection
            raise
        self.connection = connection
        if self.failing:
            log.info("LISTEN connection made again; waking on NOTIFY")
            self.failing = False
        return connection

    def wait(self, timeout_s: float, stop: threading.Event) -> bool:
        """Returns when a job may be waiting (True on a notification), on stop, or on timeout."""
        if not self.listen:
            stop.wait(timeout_s)
            return False
        import psycopg  # the postgres extra; only needed when the database is PostgreSQL

        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                connection = self.connection or self._connect()
                for _ in connection.notifies(timeout=min(SLICE_S, remaining), stop_after=1):
                    return True
            except psycopg.Error as error:  # connection lost: poll until it can be made again
                if not self.failing:
                    log.warning("LISTEN connection failed (%s); polling until it is back", error)
                    self.failing = True
                else:
                    log.debug("LISTEN connection failed again (%s)", error)
                self.close()
                stop.wait(min(SLICE_S, max(remaining, 0.0)))
        return False

    def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.close()
            self.connection = None
