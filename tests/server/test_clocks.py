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
from trainwire.server.records import JobState, MetricValue
from trainwire.server.status import collect_status
from trainwire.server.store import Store

from ..conftest import fresh_postgres_database
from .test_store import make_dataset, make_job

AHEAD = timedelta(hours=2)
BEHIND = -timedelta(minutes=10)


@pytest.fixture
def postgres_url(postgres_server_url: str, migrated_postgres_name: str) -> str:
    """A migrated PostgreSQL database: a copy of this run's migrated one (tests/conftest.py)."""
    return fresh_postgres_database(postgres_server_url, migrated_postgres_name)


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


def test_jobs_are_taken_oldest_first_and_listed_newest_first_whatever_their_servers_clocks(
    store: Store, host_clock: Callable[[timedelta], None]
) -> None:
    """A job created through a server whose host ran 10 minutes behind was taken before every
    job queued in the 10 minutes before it (and one through a server ahead waited behind every
    job of its lead), and listed as older than it was; datasets alike."""
    made = []
    for offset in (timedelta(0), BEHIND, AHEAD):  # created in this order, by three servers
        host_clock(offset)
        made.append((make_dataset(store), offset))
    datasets = [dataset for dataset, _ in made]
    jobs = []
    for dataset, offset in made:
        host_clock(offset)
        jobs.append(store.create_job(make_job(store, dataset)))
    host_clock(timedelta(0))

    listed, _ = store.list_jobs(10, "")
    assert [job.id for job in listed] == [job.id for job in reversed(jobs)]
    first_page, token = store.list_jobs(1, "")
    second_page, _ = store.list_jobs(1, token)
    assert [job.id for job in first_page + second_page] == [jobs[2].id, jobs[1].id]
    listed_datasets, _ = store.list_datasets(10, "")
    assert [d.id for d in listed_datasets] == [d.id for d in reversed(datasets)]

    claims = [store.claim_job("worker") for _ in jobs]
    assert [claim.job.id for claim in claims if claim is not None] == [job.id for job in jobs]


def test_a_jobs_times_and_events_follow_one_clock_whatever_its_workers_clocks(
    store: Store, host_clock: Callable[[timedelta], None]
) -> None:
    """A job queued through a server on time and run by a worker 2 hours ahead showed events
    stamped 2 hours after the job was queued, and a start hours after its end once a worker
    behind finished it (or a clock jump); every stored time of a job now comes from the
    database, so its events' times follow their sequence."""
    true_now = store_module.utcnow()
    job = store.create_job(make_job(store, make_dataset(store)))
    host_clock(AHEAD)
    claim = store.claim_job("ahead", lease_s=60.0)
    assert claim is not None
    store.record_epoch(claim, {"epoch": 1.0}, {"loss": 0.5}, [MetricValue("loss", 1, 1, 0.5)])
    store.save_checkpoint(claim, 1, 1, {"loss": 0.5}, b"weights")
    host_clock(BEHIND)  # the worker's clock jumped back (NTP), or a worker behind took over
    store.finish_job(claim, JobState.SUCCEEDED)

    times = [event.created_at for event in store.job_events(job.id)]
    assert len(times) == 4 and times == sorted(times)
    done = store.get_job(job.id)
    assert done.started_at is not None and done.ended_at is not None
    assert done.created_at <= done.started_at <= done.ended_at
    (checkpoint,) = store.list_checkpoints(job.id)
    stamped = [*times, done.created_at, done.started_at, done.ended_at, checkpoint.created_at]
    assert all(abs(moment - true_now) < timedelta(minutes=1) for moment in stamped)
