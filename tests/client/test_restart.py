"""A watch survives a server crash and restart: no event lost, none repeated.

The gRPC server runs without workers; a separate `trainwire worker` keeps training (and writing
events) while the server is down, so the watch must catch up on events made during the outage.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from trainwire.client import Client
from trainwire.server.local import local_server

from .conftest import MODEL, blobs


def test_watch_reconnects_across_a_server_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'trainwire.db'}"
    worker: subprocess.Popen[bytes] | None = None
    try:
        with local_server(url, workers=0) as first:
            port = int(first.target.rsplit(":", 1)[1])
            client = Client(first.target, timeout=10)
            features, labels = blobs()
            data = client.upload_dataset(features, labels)
            worker = subprocess.Popen(
                [sys.executable, "-m", "trainwire.server.cli", "worker", "--database-url", url],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            job = client.create_job(data, MODEL, epochs=600, batch_size=8)
            watch = job.watch(timeout=120)
            seen = [next(watch).sequence for _ in range(3)]
            assert not job.status().finished, "the job must outlive the outage"
            first.process.kill()  # a crash: the stream and the connection drop at once
            first.process.wait()
            time.sleep(0.5)  # the worker records events while no server answers
        with local_server(url, workers=0, port=port):
            seen += [event.sequence for event in watch]
            final = job.status()
        client.close()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
    assert final.state == "SUCCEEDED"
    assert watch.reconnects >= 1
    assert seen == list(range(1, len(seen) + 1)), "no event lost or repeated"
    assert len(seen) >= 600 + 3, "QUEUED, RUNNING, one event per epoch, SUCCEEDED"
