"""The README's backup and restore procedure, end to end, on a live deployment.

A real `trainwire serve` with worker processes trains a job while the database is backed up the
documented way (PostgreSQL: `pg_dump -Fc`, restored by `pg_restore` into a new database;
SQLite: the online backup API, what `sqlite3 trainwire.db ".backup ..."` runs). The server is
then killed (the disaster) and a new one started on the restored copy: the job that was RUNNING
resumes from its last checkpoint and ends with the weights of an uninterrupted run, bit for bit;
the QUEUED one runs; every dataset and checkpoint reads back byte-identical; the events and
metrics the backup held are intact; the API key and a page token from before still work.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from sqlalchemy.engine import make_url

from trainwire.client import Client, InvalidArgument
from trainwire.engine import load_state
from trainwire.server.db import Database, sqlite_file
from trainwire.server.local import local_server
from trainwire.server.store import Store
from trainwire.v1 import jobs_pb2, jobs_pb2_grpc

from ..conftest import fresh_postgres_database
from ..support.waiting import wait_for

FAST_LEASES = {"TRAINWIRE_LEASE_S": "2", "TRAINWIRE_POLL_INTERVAL_S": "0.1"}
MODEL = {
    "layers": [
        {"type": "dense", "units": 64, "activation": "relu"},
        {"type": "dense", "units": 64, "activation": "relu"},
        {"type": "dense", "units": 4},
    ]
}
SETTINGS = {
    "epochs": 12,
    "batch_size": 16,
    "seed": 11,
    "checkpoint_every_epochs": 2,
    # Every checkpoint kept, so the backup's are still in the live database to compare with.
    "keep_checkpoints": 10,
    "validation_fraction": 0.1,
}

# A backup method: (URL of the live database, a directory for files) -> URL of a restored copy.
BackUpAndRestore = Callable[[str, Path], str]


def trainwire(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "trainwire.server.cli", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def libpq_url(url: str) -> str:
    """`url` as pg_dump and pg_restore take it (no SQLAlchemy driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def pg_dump_and_restore(
    server_url: str,
) -> BackUpAndRestore:
    def back_up_and_restore(url: str, directory: Path) -> str:
        dump = directory / "trainwire.dump"
        subprocess.run(
            ["pg_dump", "-Fc", "-f", str(dump), "--dbname", libpq_url(url)],
            check=True,
            capture_output=True,
        )
        restored = fresh_postgres_database(server_url)
        subprocess.run(
            ["pg_restore", "--dbname", libpq_url(restored), str(dump)],
            check=True,
            capture_output=True,
        )
        return restored

    return back_up_and_restore


def sqlite_backup_and_restore(url: str, directory: Path) -> str:
    """sqlite3's online backup (the CLI's `.backup`), restored as a new file."""
    live_file = sqlite_file(url)
    assert live_file is not None
    backup_file = directory / "backup.db"
    with sqlite3.connect(live_file) as live, sqlite3.connect(backup_file) as backup:
        live.backup(backup)
    restored_file = directory / "restored" / "trainwire.db"
    restored_file.parent.mkdir()
    shutil.copy(backup_file, restored_file)
    return f"sqlite:///{restored_file}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, BackUpAndRestore]:
    """A new database migrated by `trainwire db upgrade`, and the documented way to back it up
    and restore it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'trainwire.db'}"
        method: BackUpAndRestore = sqlite_backup_and_restore
    else:
        server_url = request.getfixturevalue("postgres_server_url")
        url = fresh_postgres_database(server_url)
        method = pg_dump_and_restore(server_url)
    trainwire("db", "upgrade", "--database-url", url)
    return url, method


def model_weights(store: Store, job_id: str) -> dict[str, np.ndarray]:
    final = [c for c in store.list_checkpoints(job_id) if c.is_final]
    assert len(final) == 1
    arrays, _ = load_state(store.checkpoint_data(final[0].id))
    return {name: array for name, array in arrays.items() if name.startswith("model.")}


def first_page_token(target: str, api_key: str) -> str:
    with grpc.insecure_channel(target) as channel:
        page = jobs_pb2_grpc.JobServiceStub(channel).ListJobs(
            jobs_pb2.ListJobsRequest(page_size=1),
            metadata=[("authorization", f"Bearer {api_key}")],
            timeout=30,
        )
    assert page.next_page_token
    return str(page.next_page_token)


def next_page(target: str, api_key: str, token: str) -> list[str]:
    with grpc.insecure_channel(target) as channel:
        page = jobs_pb2_grpc.JobServiceStub(channel).ListJobs(
            jobs_pb2.ListJobsRequest(page_size=10, page_token=token),
            metadata=[("authorization", f"Bearer {api_key}")],
            timeout=30,
        )
    return [job.name for job in page.jobs]


def test_a_live_deployment_backed_up_as_documented_restores_and_resumes_bit_for_bit(
    deployment: tuple[str, BackUpAndRestore], tmp_path: Path
) -> None:
    url, back_up_and_restore = deployment
    created = trainwire("keys", "create", "--project", "default", "--database-url", url)
    api_key = next(word for word in created.split() if word.startswith("tw_"))
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1000, 16)).astype(np.float32)
    y = (x[:, :4] @ rng.normal(size=(4, 4))).argmax(axis=1)
    # The live deployment's workers take the default queue only: `waiting` stays QUEUED.
    live_env = {**FAST_LEASES, "TRAINWIRE_QUEUES": "default"}
    with (
        local_server(url, workers=2, extra_env=live_env) as server,
        Client(server.target, api_key=api_key) as client,
    ):
        data = client.upload_dataset(x, y, task="multiclass")
        uninterrupted = client.create_job(data, MODEL, **SETTINGS)
        uninterrupted.wait(timeout=180)
        running = client.create_job(data, MODEL, **SETTINGS)
        waiting = client.create_job(data, MODEL, queue="later", **SETTINGS)
        wait_for(lambda: running.status().epoch >= 4, 120, "epoch 4 of the running job")
        token = first_page_token(server.target, api_key)
        restored_url = back_up_and_restore(url, tmp_path)
        server.process.kill()  # the disaster: no graceful hand-back
        server.process.wait()

    live, restored = Store(Database(url)), Store(Database(restored_url))
    running_id = running.name.removeprefix("jobs/")
    assert restored.get_job(running_id).state == "RUNNING", "backed up while it trained"
    # What the backup held is intact: blobs byte for byte, events and metrics as they were.
    dataset_id = data.name.removeprefix("datasets/")
    assert restored.dataset_data(dataset_id) == live.dataset_data(dataset_id)
    kept = {c.id for c in restored.list_checkpoints(running_id)}
    common = kept & {c.id for c in live.list_checkpoints(running_id)}
    assert len(common) >= 2, "checkpoints of epochs 2 and 4 at least"
    for checkpoint_id in common:
        assert restored.checkpoint_data(checkpoint_id) == live.checkpoint_data(checkpoint_id)
    backed_up_events = restored.job_events(running_id)
    assert backed_up_events == live.job_events(running_id)[: len(backed_up_events)]
    assert set(restored.metric_values(running_id)) <= set(live.metric_values(running_id))

    trainwire("db", "upgrade", "--database-url", restored_url)  # a no-op at this release's head
    with (
        local_server(restored_url, workers=2, extra_env=FAST_LEASES) as server,
        Client(server.target, api_key=api_key) as client,
    ):
        assert next_page(server.target, api_key, token) == [running.name, uninterrupted.name]
        # A watch resumes after an event the backup holds; one past every event it could
        # have is refused, not left silent.
        seen = len(backed_up_events) - 1
        watched = [event.sequence for event in client.watch_job(running.name, seen, timeout=180)]
        assert watched[0] == seen + 1 and watched == list(range(seen + 1, watched[-1] + 1))
        with pytest.raises(InvalidArgument, match="beyond"):
            next(iter(client.watch_job(running.name, watched[-1] + 1000)))
        status = client.get_job(running.name).wait(timeout=180)
        assert (status.state, status.attempt) == ("SUCCEEDED", 2)
        assert client.get_job(waiting.name).wait(timeout=180).state == "SUCCEEDED"
    resumed = model_weights(restored, running_id)
    reference = model_weights(restored, uninterrupted.name.removeprefix("jobs/"))
    assert resumed.keys() == reference.keys()
    for name in resumed:
        assert np.array_equal(resumed[name], reference[name]), f"{name} differs"
    live.db.dispose()
    restored.db.dispose()
