"""The compose topology as processes on PostgreSQL: migrate, a server without workers, and a
separate `trainwire worker` process tree; and the refusal to serve an un-migrated database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from trainwire.client import Client
from trainwire.server.db import Database
from trainwire.server.local import local_server
from trainwire.server.records import Job, JobState
from trainwire.server.store import Store

from ..conftest import fresh_postgres_database
from ..support.ports import free_ports

pytestmark = pytest.mark.postgres

CLI = [sys.executable, "-m", "trainwire.server.cli"]


def test_server_refuses_unmigrated_postgres(postgres_server_url: str) -> None:
    url = fresh_postgres_database(postgres_server_url)
    result = subprocess.run(
        [*CLI, "serve", "--port", "0", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "trainwire db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def test_server_and_separate_workers_share_only_the_database(postgres_server_url: str) -> None:
    url = fresh_postgres_database(postgres_server_url)
    migrate = subprocess.run([*CLI, "db", "upgrade", "--database-url", url], capture_output=True)
    assert migrate.returncode == 0, migrate.stderr
    current = subprocess.run([*CLI, "db", "current", "--database-url", url], capture_output=True)
    assert current.returncode == 0, current.stdout
    workers = subprocess.Popen(
        [*CLI, "worker", "--concurrency", "2"],
        env={**os.environ, "TRAINWIRE_DATABASE_URL": url, "TRAINWIRE_POLL_INTERVAL_S": "0.1"},
    )
    try:
        with local_server(url, workers=0) as server, Client(server.target) as client:
            rng = np.random.default_rng(0)
            x = rng.normal(size=(200, 2)).astype(np.float32)
            y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
            data = client.upload_dataset(x, y, task="multiclass")
            model = {
                "layers": [
                    {"type": "dense", "units": 16, "activation": "tanh"},
                    {"type": "dense", "units": 2},
                ]
            }
            jobs = [client.create_job(data, model, epochs=5, seed=s) for s in range(4)]
            states = [job.wait(timeout=120).state for job in jobs]
            assert states == ["SUCCEEDED"] * 4
            attempts = {job.status().attempt for job in jobs}
            assert attempts == {1}
    finally:
        workers.send_signal(signal.SIGTERM)
        assert workers.wait(30) == 0


def scrape(port: int) -> dict[str, float]:
    """The samples of a /metrics endpoint, keyed by name and labels as written."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def test_compose_topology_survives_losing_a_server_and_a_worker(postgres_server_url: str) -> None:
    """PostgreSQL, the migration, two servers and three workers as separate processes; 50 jobs
    through both servers; one server and one worker killed mid-run."""
    url = fresh_postgres_database(postgres_server_url)
    subprocess.run([*CLI, "db", "upgrade", "--database-url", url], check=True, capture_output=True)
    first_port = free_ports(5)
    metric_ports = list(range(first_port, first_port + 5))
    common = {"TRAINWIRE_DATABASE_URL": url, "TRAINWIRE_LEASE_S": "2"}
    workers = [
        subprocess.Popen(
            [*CLI, "worker"],
            env={**os.environ, **common, "TRAINWIRE_METRICS_PORT": str(metric_ports[2 + i])},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(3)
    ]
    database = Database(url)
    store = Store(database)
    try:
        with (
            local_server(
                url, 0, {**common, "TRAINWIRE_METRICS_PORT": str(metric_ports[0])}
            ) as first,
            local_server(
                url, 0, {**common, "TRAINWIRE_METRICS_PORT": str(metric_ports[1])}
            ) as second,
            Client(first.target) as via_first,
            Client(second.target) as via_second,
        ):
            rng = np.random.default_rng(0)
            x = rng.normal(size=(1500, 16)).astype(np.float32)
            y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
            model = {"layers": [{"type": "dense", "units": 32, "activation": "tanh"},
                                {"type": "dense", "units": 2}]}  # fmt: skip
            data = via_first.upload_dataset(x, y, task="multiclass")
            jobs = []
            for i in range(50):
                sdk = via_first if i % 2 else via_second
                jobs.append(
                    sdk.create_job(data, model, epochs=12, seed=i, checkpoint_every_epochs=2)
                )
            first.process.kill()  # a server lost: its accepted jobs are in the database
            running = next_running(store, timeout_s=60)
            victim_pid = int(str(running.worker_id).split(":")[1])
            victim = next(w for w in workers if w.pid == victim_pid)
            victim.kill()
            ids = [job.name.removeprefix("jobs/") for job in jobs]
            deadline = time.monotonic() + 240
            while not all(store.get_job(i).state.is_finished for i in ids):
                assert time.monotonic() < deadline, "the 50 jobs did not finish"
                time.sleep(0.5)
            for job_id in ids:
                assert store.get_job(job_id).state is JobState.SUCCEEDED
                states = [e.state for e in store.job_events(job_id)]
                assert states.count(JobState.SUCCEEDED) == 1
            assert store.get_job(running.id).attempt == 2, "the killed worker's job was rescued"
            assert all(via_second.get_job(job.name).status().state == "SUCCEEDED" for job in jobs)

            server_metrics = scrape(metric_ports[1])
            created = server_metrics['trainwire_rpc_seconds_count{code="OK",method="CreateJob"}']
            assert created == 25
            # The deployment gauges are read from the database every 5 s, not in the scrape
            # (a hung database hung every scrape): they catch up within a read or two.
            succeeded = 'trainwire_jobs{queue="default",state="SUCCEEDED"}'
            deadline = time.monotonic() + 30
            while scrape(metric_ports[1]).get(succeeded) != 50:
                assert time.monotonic() < deadline, "the gauge never counted the 50 jobs"
                time.sleep(0.5)
            deadline = time.monotonic() + 30
            while scrape(metric_ports[1])["trainwire_workers_alive"] != 2:
                assert time.monotonic() < deadline, "the lost worker still counts as alive"
                time.sleep(0.5)
            done = sum(
                scrape(port).get('trainwire_job_seconds_count{state="SUCCEEDED"}', 0)
                for worker, port in zip(workers, metric_ports[2:], strict=True)
                if worker is not victim
            )
            assert 50 - 25 <= done <= 50, "the surviving workers report the jobs they finished"
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(30)
        database.dispose()


def next_running(store: Store, timeout_s: float) -> Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running, _ = store.list_jobs(10, "", state=JobState.RUNNING)
        if running and running[0].worker_id:
            return running[0]
        time.sleep(0.05)
    raise AssertionError("no job started running")
