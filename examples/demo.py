"""`make demo`: start Trainwire, train an MLP on Iris through the SDK, predict, shut down.

Everything after starting the server goes through the Python SDK over a real gRPC channel; the
server trains with separate worker processes on an embedded SQLite database.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from iris import load_iris

from trainwire.client import Client
from trainwire.server.local import local_server


def main() -> int:
    started = time.perf_counter()
    features, labels, feature_names, class_names = load_iris()
    # A seeded 80/20 split, and features scaled with the training set's statistics.
    order = np.random.default_rng(7).permutation(len(features))
    train, test = order[:120], order[120:]
    mean, std = features[train].mean(axis=0), features[train].std(axis=0)
    scaled = (features - mean) / std

    with tempfile.TemporaryDirectory() as workdir:
        database = f"sqlite:///{workdir}/trainwire.db"
        print(f"Starting trainwire serve (SQLite at {workdir}/trainwire.db, 2 worker processes)")
        with local_server(database, workers=2) as server, Client(server.target) as client:
            print(f"Server listening on {server.target}")
            dataset = client.upload_dataset(
                scaled[train],
                labels[train],
                name="iris",
                feature_names=feature_names,
                class_names=class_names,
            )
            print(
                f"Uploaded {dataset.name}: {dataset.num_examples} examples, "
                f"{dataset.num_features} features, {dataset.num_classes} classes"
            )
            model = {
                "layers": [
                    {"type": "dense", "units": 16, "activation": "relu"},
                    {"type": "dense", "units": 16, "activation": "relu"},
                    {"type": "dense", "units": 3},
                ]
            }
            job = client.create_job(
                dataset,
                model,
                epochs=40,
                batch_size=16,
                optimizer={"name": "adam", "learning_rate": 0.01},
                validation_fraction=0.2,
                seed=0,
                display_name="iris-mlp",
            )
            print(f"Submitted {job.name}; training:")
            status = job.wait(timeout=120, progress=True)
            print(f"{job.name} {status.state} after {status.epoch} epochs")
            for name, value in sorted(status.metrics.items()):
                print(f"  {name:>14} = {value:.4f}")

            prediction = job.predict(scaled[test])
            assert prediction.labels is not None and prediction.probabilities is not None
            accuracy = float((prediction.labels == labels[test]).mean())
            print(f"Test accuracy on {len(test)} held-out flowers: {accuracy:.3f}")
            for row in range(5):
                truth = class_names[labels[test][row]]
                guess = class_names[prediction.labels[row]]
                confidence = prediction.probabilities[row].max()
                print(f"  {features[test][row]} -> {guess:<10} (p={confidence:.2f}, truth {truth})")
        print(f"Server stopped cleanly. Demo took {time.perf_counter() - started:.1f}s")
    return 0 if accuracy >= 0.85 else 1


if __name__ == "__main__":
    sys.exit(main())
