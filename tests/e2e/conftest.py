"""A live `trainwire serve` (real gRPC on a free port, real worker processes) per database."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from trainwire.client import Client, DatasetInfo
from trainwire.server.local import LocalServer, local_server

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from iris import load_iris

from ..conftest import fresh_postgres_database


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def live_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'trainwire.db'}"
    else:
        url = fresh_postgres_database(request.getfixturevalue("postgres_server_url"))
        # PostgreSQL is migrated by the documented command, not by the server.
        subprocess.run(
            [sys.executable, "-m", "trainwire.server.cli", "db", "upgrade", "--database-url", url],
            check=True,
            capture_output=True,
        )
    # Workers take the default queue only, so jobs sent to other queues stay QUEUED.
    with local_server(url, workers=2, extra_env={"TRAINWIRE_QUEUES": "default"}) as server:
        yield server
    assert server.process.returncode == 0, "".join(server.output[-40:])


@pytest.fixture(scope="module")
def client(live_server: LocalServer) -> Iterator[Client]:
    with Client(live_server.target, timeout=30) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def iris() -> dict[str, np.ndarray]:
    features, labels, _, _ = load_iris()
    order = np.random.default_rng(7).permutation(len(features))
    train, test = order[:120], order[120:]
    mean, std = features[train].mean(axis=0), features[train].std(axis=0)
    scaled = ((features - mean) / std).astype(np.float32)
    return {
        "x_train": scaled[train],
        "y_train": labels[train],
        "x_test": scaled[test],
        "y_test": labels[test],
    }


@pytest.fixture(scope="module")
def iris_dataset(client: Client, iris: dict[str, np.ndarray]) -> DatasetInfo:
    return client.upload_dataset(iris["x_train"], iris["y_train"], name="iris")
