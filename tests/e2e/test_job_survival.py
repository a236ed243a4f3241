"""Jobs survive workers that die, stop, or lose the database; cancel and max_attempts hold.

Real processes on SQLite and PostgreSQL: `trainwire serve` with worker processes (2 s leases so a
killed worker's job is rescued quickly) and the SDK over gRPC; the database is read directly only
to inspect what the API does not show (worker pids, stored weights, the event log).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from trainwire.client import Client, DatasetInfo, Job
from trainwire.engine import load_state
from trainwire.server.db import Database
from trainwire.server.local import LocalServer, local_server
from trainwire.server.migrate import upgrade
from trainwire.server.records import JobState
from trainwire.server.store import Store

from ..conftest import fresh_postgres_database
from ..support.checkpoints import assert_same_checkpoints, server_checkpoints
from ..support.tcp_proxy import TcpProxy
from ..support.waiting import wait_for

FAST_LEASES = {
    "TRAINWIRE_LEASE_S": "2",
    "TRAINWIRE_POLL_INTERVAL_S": "0.1",
    # Jobs sent to another queue stay QUEUED.
    "TRAINWIRE_QUEUES": "default",
}
SLOW_MODEL = {
    "layers": [
        {"type": "dense", "units": 128, "activation": "relu"},
        {"type": "dense", "units": 128, "activation": "relu"},
        {"type": "dense", "units": 4},
    ]
}
TINY_MODEL = {"layers": [{"type": "dense", "units": 2}]}


@dataclass
class Cluster:
    url: str
    server: LocalServer
    client: Client
    store: Store


def database_for(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A fresh, migrated database of `backend` ("sqlite" or "postgres")."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'trainwire.db'}"
    else:
        url = fresh_postgres_database(request.getfixturevalue("postgres_server_url"))
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    url = database_for(request.param, request, tmp_path_factory)
    database = Database(url)
    with (
        local_server(url, workers=2, extra_env=FAST_LEASES) as server,
        Client(server.target) as client,
    ):
        yield Cluster(url, server, client, Store(database))
    database.dispose()


def slow_dataset(client: Client) -> DatasetInfo:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    y = (x[:, :4] @ rng.normal(size=(4, 4))).argmax(axis=1)
    return client.upload_dataset(x, y, task="multiclass")


def submit_slow(client: Client, data: DatasetInfo, **kwargs: object) -> Job:
    options: dict[str, object] = {
        "epochs": 30,
        "batch_size": 16,
        "seed": 11,
        "checkpoint_every_epochs": 2,
        "validation_fraction": 0.1,
    }
    options.update(kwargs)
    return client.create_job(data, SLOW_MODEL, **options)  # type: ignore[arg-type]


def running_epoch(job: Job) -> int:
    """The epochs a job has finished while RUNNING; -1 in any other state."""
    status = job.status()
    return status.epoch if status.state == "RUNNING" else -1


def worker_pid(cluster: Cluster, job: Job) -> int:
    worker = cluster.store.get_job(job.name.removeprefix("jobs/")).worker_id
    assert worker is not None, "a running job names its worker"
    return int(worker.split(":")[1])


def final_weights(cluster: Cluster, job: Job) -> dict[str, np.ndarray]:
    job_id = job.name.removeprefix("jobs/")
    final = [c for c in cluster.store.list_checkpoints(job_id) if c.is_final]
    assert len(final) == 1
    arrays, _ = load_state(cluster.store.checkpoint_data(final[0].id))
    return {k: v for k, v in arrays.items() if k.startswith("model.")}


def events(cluster: Cluster, job: Job) -> list[tuple[JobState, str]]:
    job_id = job.name.removeprefix("jobs/")
    return [(e.state, e.message) for e in cluster.store.job_events(job_id)]


def assert_same_weights(one: dict[str, np.ndarray], two: dict[str, np.ndarray]) -> None:
    assert one.keys() == two.keys()
    for name in one:
        assert np.array_equal(one[name], two[name]), f"{name} differs"


def test_killed_worker_resumes_bit_for_bit(cluster: Cluster) -> None:
    data = slow_dataset(cluster.client)
    reference = submit_slow(cluster.client, data)
    assert reference.wait(timeout=180).attempt == 1

    job = submit_slow(cluster.client, data)
    wait_for(lambda: running_epoch(job) >= 6, 120, "epoch 6")
    os.kill(worker_pid(cluster, job), signal.SIGKILL)
    status = job.wait(timeout=180)
    assert status.state == "SUCCEEDED"
    assert status.attempt == 2, "the job was rescued and resumed once"
    assert any("stopped renewing its lease" in message for _, message in events(cluster, job))
    assert_same_weights(final_weights(cluster, job), final_weights(cluster, reference))
    x = np.random.default_rng(0).normal(size=(50, 32)).astype(np.float32)
    np.testing.assert_array_equal(job.predict(x).outputs, reference.predict(x).outputs)
    # Metrics were replayed, not duplicated: one value per (metric, step).
    values = cluster.store.metric_values(job.name.removeprefix("jobs/"))
    losses = [v for v in values if v.name == "loss"]
    assert [v.epoch for v in losses] == list(range(1, 31))


def test_sigterm_hands_the_job_back_and_it_resumes_exactly(cluster: Cluster) -> None:
    data = slow_dataset(cluster.client)
    reference = submit_slow(cluster.client, data, checkpoint_every_epochs=0)
    reference.wait(timeout=180)
    job = submit_slow(cluster.client, data, checkpoint_every_epochs=0)
    wait_for(lambda: running_epoch(job) >= 4, 120, "epoch 4")
    os.kill(worker_pid(cluster, job), signal.SIGTERM)
    status = job.wait(timeout=180)
    assert status.state == "SUCCEEDED"
    assert status.attempt == 1, "a worker shutting down does not cost an attempt"
    assert any("handed back" in message for _, message in events(cluster, job))
    assert_same_weights(final_weights(cluster, job), final_weights(cluster, reference))
    # The checkpoint taken mid-epoch at the hand-back says so, over the API too.
    checkpoints = job.checkpoints()
    assert [(c.is_partial, c.is_final) for c in checkpoints] == [(True, False), (False, True)]
    assert_same_checkpoints(checkpoints, server_checkpoints(cluster.server.target, job.name))


def test_killed_worker_past_max_attempts_fails_with_reason(cluster: Cluster) -> None:
    data = slow_dataset(cluster.client)
    job = submit_slow(cluster.client, data, max_attempts=1)
    wait_for(lambda: running_epoch(job) >= 2, 120, "epoch 2")
    os.kill(worker_pid(cluster, job), signal.SIGKILL)
    wait_for(lambda: job.status().finished, 60, "the job to end")
    status = job.status()
    assert status.state == "FAILED"
    assert "stopped renewing its lease" in status.error and "attempt 1 of 1" in status.error


def test_cancel_queued_and_running_jobs(cluster: Cluster) -> None:
    data = slow_dataset(cluster.client)
    queued = cluster.client.create_job(data, SLOW_MODEL, queue="nobody-listens")
    assert queued.cancel().state == "CANCELLED"
    assert queued.cancel().state == "CANCELLED", "a cancel retried after a lost answer"

    running = submit_slow(cluster.client, data, epochs=200)
    wait_for(lambda: running_epoch(running) >= 1, 120, "epoch 1")
    asked = time.monotonic()
    assert running.cancel().state == "CANCELLING"
    # The design target is 2 s; how long it took is shown, not asserted (a shared machine).
    wait_for(lambda: running.status().state == "CANCELLED", 30, "CANCELLED")
    print(f"cancel of a running job took {time.monotonic() - asked:.2f}s")
    job_id = running.name.removeprefix("jobs/")
    assert cluster.store.list_checkpoints(job_id), "the cancelled job checkpointed first"


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def claims(store: Store, job_id: str) -> int:
    """How many times a worker claimed the job, from its event log."""
    return sum(e.message.startswith("running on ") for e in store.job_events(job_id))


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_jobs_each_run_exactly_once(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """4 worker processes, 200 small jobs submitted concurrently by 8 client threads."""
    url = database_for(backend, request, tmp_path_factory)
    database = Database(url)
    store = Store(database)
    with (
        local_server(url, workers=4, extra_env={"TRAINWIRE_POLL_INTERVAL_S": "0.1"}) as server,
        Client(server.target) as client,
    ):
        rng = np.random.default_rng(3)
        x = rng.normal(size=(40, 2)).astype(np.float32)
        data = client.upload_dataset(x, (x[:, 0] > 0).astype(np.int64), task="multiclass")
        with ThreadPoolExecutor(8) as pool:
            jobs = list(
                pool.map(
                    lambda i: client.create_job(data, TINY_MODEL, epochs=1, seed=i), range(200)
                )
            )
        names = {job.name for job in jobs}
        assert len(names) == 200
        ids = [name.removeprefix("jobs/") for name in names]

        def all_finished() -> bool:
            return all(store.get_job(i).state.is_finished for i in ids)

        wait_for(all_finished, 300, "200 jobs to finish")
        for job_id in ids:
            job = store.get_job(job_id)
            assert job.state is JobState.SUCCEEDED and job.attempt == 1, job
            assert claims(store, job_id) == 1
            states = [e.state for e in store.job_events(job_id)]
            assert states.count(JobState.SUCCEEDED) == 1
        queued, _ = store.list_jobs(10, "", state=JobState.QUEUED)
        assert queued == []
    database.dispose()


@pytest.mark.postgres
def test_workers_ride_out_a_database_outage(postgres_server_url: str) -> None:
    url = fresh_postgres_database(postgres_server_url)
    upgrade(url)
    parsed = make_url(url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    proxied = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    database = Database(url)
    store = Store(database)
    workers = subprocess.Popen(
        [sys.executable, "-m", "trainwire.server.cli", "worker", "--concurrency", "2"],
        env={**os.environ, "TRAINWIRE_DATABASE_URL": proxied, "TRAINWIRE_POLL_INTERVAL_S": "0.1"},
    )
    try:
        with local_server(url, workers=0) as server, Client(server.target) as client:
            data = slow_dataset(client)
            jobs = [submit_slow(client, data, epochs=12, seed=s) for s in range(4)]
            wait_for(lambda: any(running_epoch(j) >= 1 for j in jobs), 120, "training")
            proxy.cut()
            time.sleep(4)
            proxy.restore()
            for job in jobs:
                status = job.wait(timeout=300)
                assert status.state == "SUCCEEDED" and status.attempt == 1
                job_id = job.name.removeprefix("jobs/")
                assert claims(store, job_id) == 1
                states = [e.state for e in store.job_events(job_id)]
                assert states.count(JobState.SUCCEEDED) == 1
    finally:
        workers.send_signal(signal.SIGTERM)
        workers.wait(60)
        proxy.close()
        database.dispose()


def freeze_holding_its_job(store: Store, pid: int, job_id: str) -> None:
    """SIGSTOPs the worker `pid` at a moment its transaction holds the job's row lock (as a long
    VM pause or a partition without a reset can leave it): it takes the lock for milliseconds at
    each lease renewal, epoch and checkpoint, so the row is probed until one is caught."""
    probe = text("SELECT id FROM jobs WHERE id = :id FOR UPDATE SKIP LOCKED")

    def locked() -> bool:
        with store.db.engine.connect() as connection:
            free = connection.execute(probe, {"id": job_id}).first()
            connection.rollback()
            return free is None

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if locked():
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.2)  # a commit under way when it stopped has landed by now
            if locked():
                return
            os.kill(pid, signal.SIGCONT)
    raise AssertionError("never caught the worker holding its job's row lock")


@pytest.mark.postgres
def test_a_worker_frozen_holding_its_job_row_neither_keeps_the_job_nor_blocks_cancel(
    postgres_server_url: str,
) -> None:
    """The frozen worker's session kept its lock for ever: the job stayed RUNNING on it (the
    rescue skips locked rows) and CancelJob hung past its deadline. PostgreSQL now ends a
    session idle in a transaction for a lease, so the cancel goes through and the job is
    rescued, CANCELLED, within a few leases."""
    url = fresh_postgres_database(postgres_server_url)
    upgrade(url)
    database = Database(url)
    store = Store(database)
    lease_s = float(FAST_LEASES["TRAINWIRE_LEASE_S"])
    with (
        local_server(url, workers=1, extra_env=FAST_LEASES) as server,
        Client(server.target, timeout=10) as client,
    ):
        job = submit_slow(client, slow_dataset(client), epochs=200, checkpoint_every_epochs=1)
        wait_for(lambda: running_epoch(job) >= 1, 120, "epoch 1")
        cluster = Cluster(url, server, client, store)
        pid = worker_pid(cluster, job)
        try:
            freeze_holding_its_job(store, pid, job.name.removeprefix("jobs/"))
            frozen = time.monotonic()
            assert job.cancel().state in ("CANCELLING", "CANCELLED")
            print(f"CancelJob answered {time.monotonic() - frozen:.2f}s after the freeze")
            # The lease and the idle bound run out together, then a rescue every second.
            wait_for(lambda: job.status().state == "CANCELLED", lease_s * 2 + 10, "CANCELLED")
            assert any("stopped renewing its lease" in m for _, m in events(cluster, job))
        finally:
            os.kill(pid, signal.SIGCONT)
    database.dispose()


def test_serve_sigterm_drains_and_hands_back_running_job(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'trainwire.db'}"
    with local_server(url, workers=1) as server, Client(server.target) as client:
        data = slow_dataset(client)
        job = submit_slow(client, data, epochs=500)
        wait_for(lambda: running_epoch(job) >= 1, 120, "epoch 1")
        started = time.monotonic()
        assert server.stop() == 0
        print(f"serve stopped {time.monotonic() - started:.2f}s after SIGTERM")
    database = Database(url)
    try:
        store = Store(database)
        record = store.get_job(job.name.removeprefix("jobs/"))
        assert record.state is JobState.QUEUED and record.attempt == 0
        assert store.list_checkpoints(record.id), (
            "the job was checkpointed before it was handed back"
        )
    finally:
        database.dispose()


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_children_stop_when_their_server_is_killed_outright(tmp_path: object) -> None:
    """A worker and a second server process on the same port, left without their parent."""
    url = f"sqlite:///{tmp_path}/orphans.db"
    with local_server(url, workers=1, extra_env={"TRAINWIRE_SERVER_PROCESSES": "2"}) as server:
        pid = server.process.pid
        children: list[int] = []

        def both_started() -> bool:
            with open(f"/proc/{pid}/task/{pid}/children") as listing:
                children[:] = [int(child) for child in listing.read().split()]
            return len(children) == 2

        wait_for(both_started, 30, "the server's worker and second server process")
        server.process.kill()  # SIGKILL: no chance to stop its children
        server.process.wait()
        try:
            wait_for(lambda: not any(map(_running, children)), 30, "the orphans to stop")
        finally:
            for child in filter(_running, children):  # never leave them behind
                os.kill(child, signal.SIGKILL)


LEFT_BEHIND = """
import os, signal, sys
from trainwire.server.local import local_server
with local_server(sys.argv[1], workers=1) as server:
    with open(f"/proc/{server.process.pid}/cmdline", "rb") as command:
        shown = sys.argv[1].encode() in command.read()
    print(server.process.pid, shown, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # a test run or demo killed outright
"""


def test_a_local_server_stops_when_the_program_that_started_it_is_killed(
    tmp_path: object,
) -> None:
    url = f"sqlite:///{tmp_path}/left.db"
    starter = subprocess.run(
        [sys.executable, "-c", LEFT_BEHIND, url], capture_output=True, text=True, timeout=120
    )
    assert starter.returncode == -signal.SIGKILL, starter.stderr
    pid, shown = starter.stdout.split()
    try:
        wait_for(lambda: not _running(int(pid)), 30, "the server to stop")
    finally:
        if _running(int(pid)):
            os.kill(int(pid), signal.SIGKILL)
    assert shown == "False", "the database URL is not on the server's command line, for ps"
