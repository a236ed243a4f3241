"""Shared fixtures: a fresh database per test run on SQLite, and on PostgreSQL when configured.

PostgreSQL tests run when TRAINWIRE_TEST_POSTGRES_URL is set. With CI set they must run: a missing
URL fails the run instead of skipping silently.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
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


# The databases this run made, all on the server of `_admin_url`: dropped in
# `pytest_sessionfinish`, not in a fixture's teardown, which pytest-timeout counts against the
# run's last test (each drop forces a checkpoint: a couple of hundred took over its 300 s on a
# loaded 2-core machine).
_admin_url: str | None = None
_fresh_databases: list[str] = []


# Files that take minutes on one worker, run first: `make test`'s `--dist loadfile` hands whole
# files to its two workers in collection order, and the benchmarks' smoke runs (a few minutes),
# collected last, left one worker running them alone at the end of the run.
_LONG_FILES = ("test_benchmarks.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in _LONG_FILES)  # stable: the rest in order


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _admin_url is None:
        return
    admin = create_engine(_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for doomed in _fresh_databases:
            try:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{doomed}" WITH (FORCE)'))
            except Exception as error:  # one left behind must not keep the others
                print(f"could not drop test database {doomed}: {error}", file=sys.stderr)
    admin.dispose()


def fresh_postgres_database(server_url: str) -> str:
    """Another fresh database on the same server (for tests that need an empty schema); dropped
    when the run ends."""
    name = f"trainwire_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    _fresh_databases.append(name)
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database, un-migrated: SQLite in tmp_path, or a new PostgreSQL db."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'trainwire.db'}"
    server_url = request.getfixturevalue("postgres_server_url")
    return fresh_postgres_database(server_url)


@pytest.fixture
def database_url(empty_database_url: str) -> str:
    """A migrated, empty database."""
    upgrade(empty_database_url)
    return empty_database_url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    database = Database(database_url)
    try:
        yield Store(database)
    finally:
        database.dispose()
