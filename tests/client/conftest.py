"""Fixtures of the SDK tests: one live `trainwire serve` (one worker) and small datasets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from trainwire.client import Client, DatasetInfo, Dense, Sequential
from trainwire.server.local import LocalServer, local_server
from trainwire.v1 import jobs_pb2

MODEL = Sequential([Dense(8, activation="relu"), Dense(3)])
# PEM files whose armour and body the SDK accepts (`rpc.check_pem`), for tests that never reach a
# handshake, where gRPC would find them no certificate or key: a DER SEQUENCE, empty.
CERTIFICATE_PEM = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"
KEY_PEM = b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n"


def blobs(rows: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three separable classes in 4 features."""
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % 3
    centres = np.array([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]], np.float32)
    features = centres[labels] + rng.normal(scale=0.3, size=(rows, 4)).astype(np.float32)
    return features.astype(np.float32), labels.astype(np.int64)


def epoch_end_event(time: Timestamp) -> jobs_pb2.JobEvent:
    """A job's event at its second epoch's end (of five): progress, two metrics out of name
    order, a message."""
    return jobs_pb2.JobEvent(
        sequence=9, time=time, state=jobs_pb2.JOB_STATE_RUNNING,
        progress=jobs_pb2.Progress(
            epoch=2, total_epochs=5, step=16, total_steps=40, examples_per_second=1250.5,
            eta_seconds=0.75,
        ),
        metrics=[
            jobs_pb2.MetricPoint(name="val_loss", value=0.25, step=16, epoch=2),
            jobs_pb2.MetricPoint(name="loss", value=0.5, step=16, epoch=2),
        ],
        message="epoch 2 done",
    )  # fmt: skip


@pytest.fixture(scope="package")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    url = f"sqlite:///{tmp_path_factory.mktemp('sdk') / 'trainwire.db'}"
    # Workers take the default queue only, so jobs sent to other queues stay QUEUED.
    env = {"TRAINWIRE_POLL_INTERVAL_S": "0.1", "TRAINWIRE_QUEUES": "default"}
    with local_server(url, workers=1, extra_env=env) as server:
        yield server


@pytest.fixture(scope="package")
def client(live_server: LocalServer) -> Iterator[Client]:
    with Client(live_server.target, timeout=30) as sdk:
        yield sdk


@pytest.fixture(scope="package")
def dataset(client: Client) -> DatasetInfo:
    features, labels = blobs()
    return client.upload_dataset(features, labels, name="blobs")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
