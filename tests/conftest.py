"""Shared fixtures: a fresh database per test run on SQLite, and on PostgreSQL when configured.

PostgreSQL tests run when TRAINWIRE_TEST_POSTGRES_URL is set. With CI set they must run: a missing
URL fails the run instead of skipping silently.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from trainwire.server.db import Database, normalise_url
from trainwire.server.migrate import upgrade
from trainwire.server.store import Store

POSTGRES_URL_VARIABLE = "TRAINWIRE_TEST_POSTGRES_URL"


def postgres_admin_url() -> str | None:
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url and os.environ.get("CI"):
        pytest.fail(
            f"CI is set but {POSTGRES_URL_VARIABLE} is not: PostgreSQL tests must run in CI"
        )
    return url


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """A fresh, empty PostgreSQL database for this test run, dropped when the run ends."""
    global _admin_url
    admin_url = postgres_admin_url()
    if not admin_url:
        pytest.skip(f"{POSTGRES_URL_VARIABLE} is not set")
    _admin_url = normalise_url(admin_url)
    name = f"trainwire_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    _fresh_databases.append(name)
    return make_url(_admin_url).set(database=name).render_as_string(hide_password=False)


# The databases this run made, all on the server of `_admin_url`. A test's own database is dropped
# once the test ends, by a thread of its own (`_drop_soon`): not in the fixture's teardown, which
# pytest-timeout counts against the test (each drop forces a checkpoint: a couple of hundred took
# over 300 s on a loaded 2-core machine), nor all at the end, where they lengthened the run. The
# rest (the run's own, modules') are dropped in `pytest_sessionfinish`, after the thread's.
_admin_url: str | None = None
_fresh_databases: list[str] = []
_doomed: queue.SimpleQueue[str | None] = queue.SimpleQueue()
_dropper: threading.Thread | None = None
_drop_failed: list[str] = []


def _drop(names: Iterable[str]) -> list[str]:
    """Drops each of the databases `names`; the names of those it could not drop. Each drop on a
    connection from the pool, so one connection lost does not keep the later ones."""
    assert _admin_url is not None
    failed = []
    admin = create_engine(_admin_url, isolation_level="AUTOCOMMIT")
    try:
        for name in names:
            try:
                with admin.connect() as connection:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            except Exception:  # one left behind must not keep the others
                failed.append(name)
    finally:
        admin.dispose()
    return failed


def _drop_soon(url: str) -> None:
    """Drops the database of `url`, one this run made, on the dropping thread."""
    global _dropper
    name = make_url(url).database
    assert name is not None
    _fresh_databases.remove(name)
    if _dropper is None:
        _dropper = threading.Thread(
            target=lambda: _drop_failed.extend(_drop(iter(_doomed.get, None))), daemon=True
        )
        _dropper.start()
    _doomed.put(name)


# Files that take minutes on one worker, run first, roughly the longest first: `make test` hands
# whole files to its two workers in collection order (`--dist loadfile --no-loadscope-reorder`;
# xdist's default order, by test count, put the benchmarks' five smoke runs last, and one worker
# ran them alone for two minutes). The short files left for the end even the workers out. Totals
# of one run on a 2-core machine, in seconds: benchmarks 200 (before api's 255: its runs are each
# a minute or so and cannot be split), job survival 145, jobs 100, restart 100, store 90,
# topology 60.
_LONG_FILES = (
    "test_benchmarks.py",
    "test_api.py",
    "test_job_survival.py",
    "test_jobs.py",
    "test_restart.py",
    "test_store.py",
    "test_topology.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return _LONG_FILES.index(name) if name in _LONG_FILES else len(_LONG_FILES)

    items.sort(key=rank)  # stable: the rest in collection order


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _dropper is not None:
        _doomed.put(None)
        _dropper.join()
    if _admin_url is not None:
        for name in _drop(_fresh_databases + _drop_failed):  # the thread's failures tried again
            print(f"could not drop test database {name}", file=sys.stderr)


def fresh_postgres_database(server_url: str, template: str | None = None) -> str:
    """Another fresh database on the same server, empty or a copy of database `template`;
    dropped when the run ends."""
    name = f"trainwire_test_{uuid.uuid4().hex[:12]}"
    copied = f' TEMPLATE "{template}"' if template else ""
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"{copied}'))
    admin.dispose()
    _fresh_databases.append(name)
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


# Every database fixture runs its test on SQLite and on PostgreSQL.
_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=_BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database, un-migrated: SQLite in tmp_path, or a new PostgreSQL db."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'trainwire.db'}"
        return
    url = fresh_postgres_database(request.getfixturevalue("postgres_server_url"))
    yield url
    _drop_soon(url)


# Hundreds of tests each want a migrated database; running every migration for each took about
# 0.4 s on PostgreSQL and 0.15 s on SQLite. Each run (each xdist worker) migrates one database
# per backend instead, and every test gets a copy of it: the same bytes `upgrade` wrote.


@pytest.fixture(scope="session")
def migrated_sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head, to copy; never handed to a test itself."""
    path = tmp_path_factory.mktemp("migrated") / "trainwire.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def migrated_postgres_name(postgres_server_url: str) -> str:
    """The name of a PostgreSQL database migrated to head, a template for copies; never handed
    to a test itself (a template must have no connections while it is copied)."""
    url = fresh_postgres_database(postgres_server_url)
    upgrade(url)
    name = make_url(url).database
    assert name is not None
    return name


@pytest.fixture(params=_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a copy of this run's migrated one."""
    if request.param == "sqlite":
        path = tmp_path / "trainwire.db"
        # The backup API copies the pages whatever the journal mode (a WAL file included).
        with (
            closing(sqlite3.connect(request.getfixturevalue("migrated_sqlite_path"))) as source,
            closing(sqlite3.connect(path)) as copy,
        ):
            source.backup(copy)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("migrated_postgres_name")
    url = fresh_postgres_database(request.getfixturevalue("postgres_server_url"), template)
    yield url
    _drop_soon(url)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    database = Database(database_url)
    try:
        yield Store(database)
    finally:
        database.dispose()
