"""Servers and workers on hosts whose clocks disagree, against one PostgreSQL database.

Each host's clock is the store's `utcnow`, shifted here as a host's clock would be (minutes or
hours off): what several machines share must be measured by the database's clock alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest

from trainwire.server import store as store_module
from trainwire.server.config import Settings
from trainwire.server.db import Database
from trainwire.server.migrate import upgrade
from trainwire.server.status import collect_status
from trainwire.server.store import Store

from ..conftest import fresh_postgres_database

AHEAD = timedelta(hours=2)
BEHIND = -timedelta(minutes=10)


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    url = fresh_postgres_database(postgres_server_url)
    upgrade(url)
    return url


@pytest.fixture
def store(postgres_url: str) -> Iterator[Store]:
    database = Database(postgres_url)
    try:
        yield Store(database)
    finally:
        database.dispose()


@pytest.fixture
def host_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[timedelta], None]:
    """Sets this process's clock (the store's `utcnow`) that far off the true time."""
    true_now = store_module.utcnow

    def shift(offset: timedelta) -> None:
        def shifted() -> datetime:
            return true_now() + offset

        monkeypatch.setattr(store_module, "utcnow", shifted)

    return shift


def test_workers_are_alive_or_lost_by_the_database_clock_whatever_their_hosts_say(
    store: Store, postgres_url: str, host_clock: Callable[[timedelta], None]
) -> None:
    """A worker whose host runs 2 hours ahead showed as alive ("seen -7200s ago") for 2 hours
    after it died, and one 10 minutes behind as lost while it worked, in `trainwire status`
    and `trainwire_workers_alive` alike."""
    host_clock(AHEAD)
    store.worker_seen("ahead", "host-a", 1, [], None, 0)
    host_clock(BEHIND)
    store.worker_seen("behind", "host-b", 1, [], None, 0)
    host_clock(timedelta(0))  # `trainwire status` runs on a third host, on time

    status = collect_status(Settings(database_url=postgres_url, lease_s=30.0))
    assert {w["id"]: w["state"] for w in status["workers"]} == {"ahead": "alive", "behind": "alive"}
    assert status["workers_alive"] == 2
    assert all(0 <= w["seen_s_ago"] < 60 for w in status["workers"])

    # Both stop reporting: once two leases have passed (by any clock), both are lost.
    time.sleep(1.2)
    status = collect_status(Settings(database_url=postgres_url, lease_s=0.5))
    assert {w["id"]: w["state"] for w in status["workers"]} == {"ahead": "lost", "behind": "lost"}
    assert status["workers_alive"] == 0
