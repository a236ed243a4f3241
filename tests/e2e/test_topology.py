"""The compose topology as processes on PostgreSQL: migrate, a server without workers, and a
separate `trainwire worker` process tree; and the refusal to serve an un-migrated database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from trainwire.client import Client
from trainwire.server.local import local_server

from ..conftest import fresh_postgres_database

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
