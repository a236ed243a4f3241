"""Worker memory benchmark: how much a worker's peak memory grows to train a large dataset, and
to save and read back a large checkpoint.

For SQLite and PostgreSQL, in one run: a `trainwire serve` (no workers) receives, from the SDK,
a float32 regression dataset of 256 MiB (32 MiB with --quick) and a small one, and the jobs
below; then a worker process of this script's own claims each job and runs it (`run_job`, what
`trainwire worker` runs), measuring itself from just after the claim (/proc/self/status: VmHWM,
reset to the resident memory then through /proc/self/clear_refs):
- dataset_float32, dataset_float64: one epoch over the large dataset (a 0.2 validation split) of
  a one-unit model in float32, then float64; peak_over_array is the peak's growth over the
  dataset's bytes (features and targets as stored): 1.0 is one copy of the dataset, and a
  float64 model needs its features as float64 (2.0);
- checkpoint: two epochs of a float64 MLP (about 8.4M parameters, 1M with --quick) with Adam,
  checkpointed after the first (the weights, Adam's two moments and the trainer's position:
  state_mib), then the final weights; save_peak_over_state is the run's peak growth over the
  state's bytes (the trainer itself is 1.0 of it), retained_over_state what the process still
  held once the job was done and its trainer gone (a driver's buffer kept by a pooled connection
  would show here), and read_peak_over_state the peak growth while the checkpoint is read back
  as a resume and the model cache read it.
Linux only (/proc).

Run: .venv/bin/python benchmarks/worker_memory.py [--quick]; the last line is JSON.
PostgreSQL: TRAINWIRE_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test); a
fresh database is created and dropped.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder is sys.path[0]; benchmarks/queue.py must not shadow the standard
# library's queue for the imports below.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from trainwire.client import Client  # noqa: E402
from trainwire.engine import load_state  # noqa: E402
from trainwire.server.config import Settings  # noqa: E402
from trainwire.server.db import Database  # noqa: E402
from trainwire.server.local import local_server  # noqa: E402
from trainwire.server.store import Store  # noqa: E402
from trainwire.server.worker import run_job  # noqa: E402

sys.path.insert(0, _HERE)  # the sibling benchmark's database helpers, after the imports above
from upload_memory import memory, postgres_database, sqlite_database  # noqa: E402

MiB = 1024 * 1024
ROWS = 65536


def _reset_peak() -> int:
    """Resets this process's VmHWM to its resident memory; returns that."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return memory(os.getpid(), "VmRSS")


def child(url: str, job_id: str, state_bytes: int) -> dict[str, float]:
    """Runs one job in this process, measuring itself (see the module's docstring)."""
    store = Store(Database(url))
    settings = Settings(database_url=url)
    claim = store.claim_job("bench-worker")
    assert claim is not None and claim.job.id == job_id, "the job to measure was not claimed"
    before = _reset_peak()
    run_job(store, settings, claim, threading.Event())
    peak = memory(os.getpid(), "VmHWM") - before
    gc.collect()
    result = {"peak_mib": peak / MiB, "retained_mib": (memory(os.getpid(), "VmRSS") - before) / MiB}
    if state_bytes:
        resumable = store.latest_resumable_checkpoint(job_id)
        assert resumable is not None, "the job kept no checkpoint to resume from"
        before = _reset_peak()
        # A release before checkpoint_state read the bytes whole, then parsed them.
        reading = getattr(store, "checkpoint_state", None)
        state = (
            reading(resumable.id) if reading else load_state(store.checkpoint_data(resumable.id))
        )
        result["read_peak_mib"] = (memory(os.getpid(), "VmHWM") - before) / MiB
        del state
    return result


def _run_child(url: str, job_id: str, state_bytes: int = 0) -> dict[str, float]:
    script = os.path.abspath(__file__)
    args = [sys.executable, script, "--child", url, job_id, str(state_bytes)]
    output = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def bench_backend(url: str, mib: int, hidden: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((ROWS, mib * MiB // 4 // ROWS), dtype=np.float32)
    targets = rng.standard_normal(ROWS, dtype=np.float32)
    array_bytes = features.nbytes + targets.nbytes
    small_x = rng.standard_normal((256, hidden), dtype=np.float32)
    small_y = rng.standard_normal(256, dtype=np.float32)
    env = {"TRAINWIRE_MAX_DATASET_BYTES": str(2 * array_bytes)}
    with (
        local_server(url, workers=0, extra_env=env) as server,
        Client(server.target, timeout=600) as client,
    ):
        large = client.upload_dataset(features, targets, progress=False)
        small = client.upload_dataset(small_x, small_y, progress=False)
        one_unit = {"input_dim": features.shape[1], "layers": [{"type": "dense", "units": 1}]}
        jobs = {
            dtype: client.create_job(
                large, one_unit, epochs=1, batch_size=4096, validation_fraction=0.2,
                dtype=dtype,
            )
            for dtype in ("float32", "float64")
        }  # fmt: skip
        mlp = {
            "input_dim": hidden,
            "layers": [{"type": "dense", "units": hidden * 2}, {"type": "dense", "units": 1}],
        }
        checkpointed = client.create_job(
            small, mlp, epochs=2, batch_size=256, checkpoint_every_epochs=1, dtype="float64"
        )
    del features, targets
    result: dict[str, Any] = {"array_mib": round(array_bytes / MiB, 1)}
    for dtype, job in jobs.items():
        row = _run_child(url, job.name.split("/")[-1])
        result[f"dataset_{dtype}"] = {
            "peak_over_array": round(row["peak_mib"] * MiB / array_bytes, 3),
            "retained_mib": round(row["retained_mib"], 1),
        }
    parameters = hidden * hidden * 2 + hidden * 2 + hidden * 2 + 1
    state_bytes = 3 * 8 * parameters  # the weights and Adam's two moments, float64
    row = _run_child(url, checkpointed.name.split("/")[-1], state_bytes)
    result["checkpoint"] = {
        "state_mib": round(state_bytes / MiB, 1),
        "save_peak_over_state": round(row["peak_mib"] * MiB / state_bytes, 3),
        "retained_over_state": round(row["retained_mib"] * MiB / state_bytes, 3),
        "read_peak_over_state": round(row["read_peak_mib"] * MiB / state_bytes, 3),
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--child", nargs=3, metavar=("URL", "JOB", "STATE_BYTES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        url, job_id, state_bytes = args.child
        print(json.dumps(child(url, job_id, int(state_bytes))))
        return 0
    mib, hidden = (32, 512) if args.quick else (256, 2048)
    results: dict[str, Any] = {"benchmark": "worker_memory"}
    admin = os.environ.get(
        "TRAINWIRE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    with postgres_database(admin) as url:
        results["postgres"] = bench_backend(url, mib, hidden)
    with sqlite_database() as url:
        results["sqlite"] = bench_backend(url, mib, hidden)
    print(f"{'':<10}{'array MiB':>10}{'f32 peak':>10}{'f64 peak':>10}{'state MiB':>10}"
          f"{'save':>8}{'kept':>8}{'read':>8}")  # fmt: skip
    for backend in ("postgres", "sqlite"):
        row = results[backend]
        saved = row["checkpoint"]
        print(
            f"{backend:<10}{row['array_mib']:>10}"
            f"{row['dataset_float32']['peak_over_array']:>10.2f}"
            f"{row['dataset_float64']['peak_over_array']:>10.2f}{saved['state_mib']:>10}"
            f"{saved['save_peak_over_state']:>8.2f}{saved['retained_over_state']:>8.2f}"
            f"{saved['read_peak_over_state']:>8.2f}"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
