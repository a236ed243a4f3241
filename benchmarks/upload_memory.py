"""Upload memory benchmark: how much a dataset upload raises the server's peak memory.

For SQLite and PostgreSQL, in one run: a `trainwire serve` (no workers) receives a float32
regression dataset of 256 MiB (32 MiB with --quick) from the SDK, 3 times in a row (once with
--quick), each a different dataset, after a tiny upload that warms the server up (imports, the
first connection). For each upload:
- peak_growth_mib and peak_over_array: the server process's peak resident memory (VmHWM, reset
  to the resident memory just before the upload through /proc/PID/clear_refs) over its resident
  memory before the upload, in MiB and over the array's bytes (features and targets): 1.0 is
  one copy of the upload;
- retained_mib: the resident memory 1 s after the upload over that before it, what the upload
  left behind (a driver's buffer kept by a pooled connection would show here);
- seconds: the upload's time, from the SDK's call to its answer.
Linux only (/proc).

Run: .venv/bin/python benchmarks/upload_memory.py [--quick]; the last line is JSON.
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
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from trainwire.client import Client  # noqa: E402
from trainwire.server.db import normalise_url  # noqa: E402
from trainwire.server.local import local_server  # noqa: E402
from trainwire.server.migrate import upgrade  # noqa: E402

MiB = 1024 * 1024
ROWS = 16384


def memory(pid: int, field: str) -> int:
    """A field of /proc/PID/status in bytes (VmRSS: resident now; VmHWM: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        upgrade(url)
        yield url


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    name = f"trainwire_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(normalise_url(admin_url)).set(database=name)
    try:
        rendered = url.render_as_string(hide_password=False)
        upgrade(rendered)
        yield rendered
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bench_backend(url: str, mib: int, uploads: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((ROWS, mib * MiB // 4 // ROWS), dtype=np.float32)
    targets = rng.standard_normal(ROWS, dtype=np.float32)
    array_bytes = features.nbytes + targets.nbytes
    rows: dict[str, list[float]] = {
        "peak_growth_mib": [], "peak_over_array": [], "retained_mib": [], "seconds": [],
    }  # fmt: skip
    env = {"TRAINWIRE_MAX_DATASET_BYTES": str(2 * array_bytes)}
    with local_server(url, workers=0, extra_env=env) as server:
        pid = server.process.pid
        with Client(server.target, timeout=600) as client:
            client.upload_dataset(features[:8], targets[:8], dedupe=False, progress=False)
            for upload in range(uploads):
                time.sleep(0.5)  # the server settles after the last upload
                features[0, 0] = upload  # another dataset each time
                before = memory(pid, "VmRSS")
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
                start = time.monotonic()
                client.upload_dataset(features, targets, dedupe=False, progress=False)
                rows["seconds"].append(round(time.monotonic() - start, 2))
                peak = memory(pid, "VmHWM")
                time.sleep(1.0)
                retained = memory(pid, "VmRSS") - before
                rows["peak_growth_mib"].append(round((peak - before) / MiB, 1))
                rows["peak_over_array"].append(round((peak - before) / array_bytes, 3))
                rows["retained_mib"].append(round(retained / MiB, 1))
    return {"array_mib": round(array_bytes / MiB, 1), **rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    mib, uploads = (32, 1) if args.quick else (256, 3)
    results: dict[str, Any] = {"benchmark": "upload_memory"}
    admin = os.environ.get(
        "TRAINWIRE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    with postgres_database(admin) as url:
        results["postgres"] = bench_backend(url, mib, uploads)
    with sqlite_database() as url:
        results["sqlite"] = bench_backend(url, mib, uploads)
    print(f"{'':<10}{'array MiB':>11}{'peak / array':>24}{'retained MiB':>24}")
    for backend in ("postgres", "sqlite"):
        row = results[backend]
        peaks = " ".join(f"{v:.2f}" for v in row["peak_over_array"])
        kept = " ".join(f"{v:.0f}" for v in row["retained_mib"])
        print(f"{backend:<10}{row['array_mib']:>11}{peaks:>24}{kept:>24}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
