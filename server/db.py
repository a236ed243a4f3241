"""Database engines and the unit-of-work session scope.

SQLite runs in WAL mode with a busy timeout, and every transaction that will write starts with
`BEGIN IMMEDIATE` (a deferred read that upgrades to a write gets SQLITE_BUSY despite the timeout).
PostgreSQL connections use TCP keepalives and a connect timeout and, in the server and the
workers, end a session left idle inside a transaction (a process frozen or cut off
mid-transaction), which releases its locks.
Engines are created in the process that uses them: a pooled connection must not cross a fork.
"""

from __future__ import annotations

import logging
import math
import shlex
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .errors import Unavailable
from .logs import Throttle

SQLITE_BUSY_TIMEOUT_MS = 30_000

#: libpq's TCP keepalives: a connection whose peer vanished without a reset (a network partition,
#: a host powered off) fails after about 10 + 3 * 5 = 25 s of silence instead of waiting for ever
#: (a call waiting on its answer would hold its thread for good). Those the URL sets are kept.
POSTGRES_KEEPALIVES: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}

#: libpq's `connect_timeout`, in seconds: a database that accepts TCP connections but does not
#: answer (hung, or behind a frozen proxy or a partition that still acknowledges, where the
#: keepalives above never fail) made every new connection wait without end, and the call or
#: health check behind it. A healthy PostgreSQL, distant and over TLS, connects in well under
#: a second; 5 s leaves room for a loaded one and for a slow authentication while failing an
#: unreachable one (UNAVAILABLE) long before a client's usual deadline. A URL's own is kept.
#: No `statement_timeout` is set beside it: on a frozen path the server never sees the statement
#: (bounding that is the client's side: the health check's ping deadline), and a server-side
#: limit would cut legitimate long statements (a big checkpoint or dataset, a migration).
POSTGRES_CONNECT_TIMEOUT_S = 5

log = logging.getLogger("trainwire.db")


def normalise_url(url: str) -> str:
    """Pick psycopg (v3) for a bare `postgresql://` URL; any other URL as it was given (a
    rendering would percent-encode it: `sqlite:///%3Amemory%3A` in messages)."""
    parsed = make_url(url)
    if parsed.drivername not in ("postgresql", "postgres"):
        return url
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


# Query parameters that carry a password (libpq's `?password=`, `?sslpassword=`).
_SECRET_PARAMETERS = ("password", "sslpassword")


def masked_url(url: str) -> str:
    """`url` as it may be shown to a person or logged: every password, in its user part or in a
    query parameter, as `***`. Without one, as it was given (SQLAlchemy's rendering would
    percent-encode `sqlite:///:memory:`). ArgumentError if `url` is not a URL."""
    parsed = make_url(url)
    if "@" in (parsed.host or ""):
        # An unencoded "@" in the password: SQLAlchemy takes its tail for the host. All that
        # comes before the last "@" may be the password.
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    secrets = {name: "***" for name in parsed.query if name.lower() in _SECRET_PARAMETERS}
    if parsed.password is None and not secrets:
        return url
    shown = parsed.update_query_dict(secrets).render_as_string(hide_password=True)
    return shown.replace("=%2A%2A%2A", "=***")  # the query's mask, percent-encoded by rendering


def suggested_command(command: str, database_url_option: str | None) -> str:
    """`trainwire COMMAND` in backquotes, as a message suggests running it next on the same
    database. `database_url_option`: the URL the user gave as --database-url, which the command
    must then carry (without it, it would read TRAINWIRE_DATABASE_URL or the default: another
    database), its password masked, as no message shows one, and the user told to put it back.
    None, when TRAINWIRE_DATABASE_URL or the default named the database: the command alone,
    which reads them alike."""
    if database_url_option is None:
        return f"`trainwire {command}`"
    masked = masked_url(database_url_option)
    # Quoted for the shell: `***` would be a glob, and a query's `&` would end the command.
    suggestion = f"`trainwire {command} --database-url {shlex.quote(masked)}`"
    if masked != database_url_option:
        suggestion += " (replace *** with your password, URL-encoded)"
    return suggestion


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names, made absolute against the current directory as SQLite
    opens a relative one (a `file:` URI's path too); None for another database or an in-memory
    one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    name = parsed.database or ""
    if parsed.query.get("uri"):  # sqlite:///file:name.db?mode=...&uri=true
        in_memory = name.startswith("file::memory:") or parsed.query.get("mode") == "memory"
        if not name.startswith("file:") or in_memory:
            return None
        name = name.removeprefix("file:").split("?", 1)[0]
    if not name or name == ":memory:":
        return None
    return Path(name).absolute()


def make_engine(
    url: str,
    sqlite_foreign_keys: bool = True,
    idle_in_transaction_s: float | None = None,
    **kwargs: Any,
) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout, explicit BEGIN handling and (unless
    `sqlite_foreign_keys` is false, as for migrations) enforced foreign keys; PostgreSQL gets TCP
    keepalives, a connect timeout and, if `idle_in_transaction_s` is given, PostgreSQL's
    `idle_in_transaction_session_timeout`: the database ends a session of this engine that sits
    that long in an open transaction, releasing its locks (see `Database`)."""
    url = normalise_url(url)
    if not is_sqlite(url):
        return _postgres_engine(url, idle_in_transaction_s, **kwargs)
    engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the sqlite3 module, start transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if sqlite_foreign_keys else 'OFF'}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _enable_wal(cursor: Any) -> None:
    """Puts the SQLite file in WAL mode, waiting up to the busy timeout for another process.

    SQLite answers SQLITE_BUSY at once, without the busy handler, to a connection that opens
    the file while the last connection of another process is closing it (that one cleans up the
    WAL under an exclusive lock) or recovering it: two `serve` or `db upgrade` started together
    on a new file failed so ("database is locked"). The lock is held for moments: try again."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _postgres_engine(url: str, idle_in_transaction_s: float | None, **kwargs: Any) -> Engine:
    query = make_url(url).query
    defaults = {**POSTGRES_KEEPALIVES, "connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    libpq = {name: value for name, value in defaults.items() if name not in query}
    # No server-side prepared statements: once psycopg prepares a statement (its 5th run on a
    # connection), its parameters travel in a message of their own, which PostgreSQL receives
    # while its idle-in-transaction clock runs, so a big checkpoint or dataset sent slower than
    # the lease was cut as a hung session. Planning each statement again costs far less.
    connect_args = {**libpq, "prepare_threshold": None, **kwargs.pop("connect_args", {})}
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _configure_postgres(dbapi_connection: Any, _record: Any) -> None:
        # Send bytes (checkpoints, datasets) in binary format: no escaping to hex text.
        from psycopg.types.string import BytesBinaryDumper

        dbapi_connection.adapters.register_dumper(bytes, BytesBinaryDumper)
        if idle_in_transaction_s is not None:
            dbapi_connection.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                (f"{_idle_timeout_ms(idle_in_transaction_s)}ms",),
            )
            dbapi_connection.commit()  # the setting outlives the transaction psycopg began

    return engine


# PostgreSQL's timeouts are 32-bit milliseconds (about 24.8 days): a longer lease is that.
_MAX_POSTGRES_TIMEOUT_MS = 2**31 - 1
# The shortest idle-in-transaction bound: a sub-second lease (tests) must not end transactions
# that a loaded machine stretches between two statements.
_MIN_IDLE_IN_TRANSACTION_MS = 1000


def _idle_timeout_ms(seconds: float) -> int:
    milliseconds = math.ceil(seconds * 1000)
    return min(max(milliseconds, _MIN_IDLE_IN_TRANSACTION_MS), _MAX_POSTGRES_TIMEOUT_MS)


class Database:
    """One engine and the two kinds of unit of work: `read()` and `write()`.

    `idle_in_transaction_s` (PostgreSQL; the server and the workers pass their lease): a session
    that sits that long inside a transaction is ended by the database. Every transaction here is
    one store method's, which never waits on anything but the database between its statements,
    so only a process that froze (SIGSTOP, a long VM pause) or lost its network without a reset
    mid-transaction sits so long; ended, it releases its row locks, or a frozen worker's lock on
    its job would keep the job from every rescue (`rescue_expired` skips locked rows) and every
    CancelJob waiting. Migrations run on an engine of their own, without it.
    """

    def __init__(
        self, url: str, idle_in_transaction_s: float | None = None, **engine_kwargs: Any
    ) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(
            self.url, idle_in_transaction_s=idle_in_transaction_s, **engine_kwargs
        )
        self.is_sqlite = is_sqlite(self.url)
        writer = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        self._read_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(writer, expire_on_commit=False)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads only; rolled back at the end."""
        with _translate_errors(), self._read_sessions() as session:
            try:
                yield session
            finally:
                session.rollback()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session that commits at the end, or rolls back if the block raises."""
        with _translate_errors(), self._write_sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def _translate_errors() -> Iterator[None]:
    try:
        yield
    except OperationalError as error:
        if error.connection_invalidated or _is_connection_error(error):
            raise _unavailable("The database is unreachable", error) from error
        if _is_sqlite_busy(error):
            # Another process held SQLite's write lock past the busy timeout (a process frozen
            # in a write): passing, as an outage is. Raised as it was, a call answered INTERNAL
            # and a worker's write failed its job for good rather than retrying.
            raise _unavailable("The database is locked by another write", error) from error
        raise
    except DBAPIError as error:
        if error.connection_invalidated:
            raise _unavailable("The database connection was lost", error) from error
        raise


def _unavailable(what: str, error: DBAPIError) -> Unavailable:
    """What callers (and clients, over gRPC) are told: the driver's own text names the
    database's host, port and user, so it goes to the server's log only — as a warning once a
    minute at most (an outage fails every call and health check), else at debug level."""
    log.log(_UNAVAILABLE_WARNINGS.level(), "%s: %s", what.lower(), error.orig)
    return Unavailable(f"{what}; try again shortly")


UNAVAILABLE_LOG_EVERY_S = 60.0
_UNAVAILABLE_WARNINGS = Throttle(UNAVAILABLE_LOG_EVERY_S)


def _is_sqlite_busy(error: OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: the file's lock is held by another connection."""
    text = str(error.orig).lower()
    return "database is locked" in text or "database table is locked" in text


def _is_connection_error(error: OperationalError) -> bool:
    text = str(error.orig).lower()
    return any(word in text for word in ("connection", "could not connect", "server closed"))
