"""Queue benchmark: claim/complete throughput, CreateJob-to-RUNNING latency, persistence overhead.

For SQLite and PostgreSQL, in one run:
- jobs_per_s: no-op jobs claimed and completed per second by 1, 2 and 4 worker processes (1 and 2
  with --quick; worker_counts lists them), each
  looping over the real `Store.claim_job` and `Store.finish_job` (the queue without training),
  from the instant they all start at (each waits for it, connected) to the last job's completion
  (2,000 jobs a round; 50 with --quick);
  jobs_done_per_worker shows how they shared the jobs (a worker that got none shows 0);
- bare_jobs_per_s and ratio_vs_bare (Trainwire's jobs/s over the peer's): the same no-op loop on a
  bare queue in the same database, the peer. It has a table of its own (id, state, worker, token,
  updated_at; an index on state and id) and uses the driver alone (psycopg; sqlite3 with
  Trainwire's PRAGMAs): a claim is one UPDATE of the first QUEUED row (FOR UPDATE SKIP LOCKED on
  PostgreSQL, BEGIN IMMEDIATE on SQLite) and a finish one UPDATE fenced by the claim's token, two
  transactions a job as in Trainwire. What Trainwire does on top (SQLAlchemy sessions, priorities
  and queues, leases and attempts, a job event with each change) is its cost in the ratio. Each
  worker count runs in rounds (3; 1 with --quick), the two queues back to back in alternating
  order: the rates are medians over the rounds and the ratio the median of the rounds' own
  ratios (ratio_vs_bare_by_round), as a shared machine drifts between runs;
- enqueue_to_running_p50_ms / _max_ms: from just before the SDK's CreateJob to the job's claim by
  an idle `trainwire worker` with the default settings (LISTEN/NOTIFY on PostgreSQL; on SQLite,
  polling every poll_interval_s, 0.5 s), over 50 jobs (5 with --quick): the median and the
  maximum, as so few jobs tell no p99. The pause between jobs is random, so a job may arrive at
  any point of the worker's polling cycle (a fixed pause would arrive at the same point each time);
- persist_overhead_fraction: how much longer a real worker takes to train a job than the same
  training takes alone (the engine benchmark's large network, 784-512-512-10 with Adam at batch
  128 on 60,000 examples, 4 epochs: metrics every epoch, a full checkpoint after epoch 2 and the
  final weights), not counting the worker's loading of data; best of 3 interleaved runs each
  (--quick: one run each, on 3,000 examples).

Run: .venv/bin/python benchmarks/queue.py [--quick]; the last line is JSON.
PostgreSQL: TRAINWIRE_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test); a
fresh database is created and dropped.
"""

from __future__ import annotations

import os
import sys

# This file is named like the standard library's `queue`; keep its folder off the import path.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import contextlib
import json
import secrets
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, NoReturn

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from trainwire.client import Client
from trainwire.engine import save_state
from trainwire.server.config import Settings
from trainwire.server.datasets import DatasetService
from trainwire.server.db import SQLITE_BUSY_TIMEOUT_MS, Database, is_sqlite, normalise_url
from trainwire.server.local import local_server
from trainwire.server.migrate import upgrade
from trainwire.server.records import Dataset, JobState, NewJob, TaskKind
from trainwire.server.store import Store, new_id, utcnow
from trainwire.server.training import build_model, build_trainer
from trainwire.server.worker import run_job

NOOP_SPEC = {"input_dim": 1, "layers": [{"type": "dense", "units": 1}]}
NOOP_TRAINING = {"epochs": 1, "batch_size": 1, "loss": "mse", "seed": 0}


# --- databases ----------------------------------------------------------------------------------


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
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        shown = make_url(normalise_url(admin_url)).render_as_string(hide_password=True)
        raise SystemExit(
            f"this benchmark needs PostgreSQL and cannot reach {shown} ({error.orig}); "
            "set TRAINWIRE_BENCH_POSTGRES_URL to a database it may create databases from"
        ) from None
    url = make_url(normalise_url(admin_url)).set(database=name)
    try:
        rendered = url.render_as_string(hide_password=False)
        upgrade(rendered)
        yield rendered
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def add_dataset(store: Store, features: np.ndarray, targets: np.ndarray, task: TaskKind) -> str:
    dataset = Dataset(
        id=new_id(),
        project="default",
        display_name="bench",
        task=task,
        num_classes=int(targets.max()) + 1 if task is not TaskKind.REGRESSION else 0,
        num_examples=len(features),
        feature_dtype=str(features.dtype),
        feature_shape=features.shape,
        target_dtype=str(targets.dtype),
        target_shape=targets.shape,
        size_bytes=features.nbytes + targets.nbytes,
        sha256="0" * 64,
        labels={},
        feature_names=[],
        class_names=[],
        created_at=utcnow(),
    )
    store.create_dataset(dataset, save_state({"features": features, "targets": targets}))
    return dataset.id


# --- throughput: no-op workers ------------------------------------------------------------------


def trainwire_queue(url: str) -> Callable[[], bool]:
    """Claims and completes one job with Trainwire's `Store`; False when none is queued."""
    store = Store(Database(url))
    with store.db.engine.connect():  # connect before the clock starts
        pass
    worker = f"bench:{os.getpid()}"

    def claim_and_finish() -> bool:
        claim = store.claim_job(worker)
        if claim is None:
            return False
        store.finish_job(claim, JobState.SUCCEEDED)
        return True

    return claim_and_finish


BARE_TABLE = """CREATE TABLE IF NOT EXISTS bare_jobs (
    id INTEGER PRIMARY KEY, state TEXT NOT NULL, worker TEXT, token TEXT, updated_at TIMESTAMP
)"""
BARE_INDEX = "CREATE INDEX IF NOT EXISTS ix_bare_jobs_claim ON bare_jobs (state, id)"
BARE_CLAIM = """UPDATE bare_jobs SET state = 'RUNNING', worker = {p}, token = {p},
    updated_at = CURRENT_TIMESTAMP
WHERE id = (SELECT id FROM bare_jobs WHERE state = 'QUEUED' ORDER BY id LIMIT 1 {lock})
    AND state = 'QUEUED'
RETURNING id"""
BARE_FINISH = """UPDATE bare_jobs SET state = 'SUCCEEDED', updated_at = CURRENT_TIMESTAMP
WHERE id = {p} AND token = {p}
RETURNING id"""


def bare_queue(url: str) -> Callable[[], bool]:
    """The peer: the same as `trainwire_queue` with the driver alone, on `bare_jobs`."""
    worker = f"bare:{os.getpid()}"
    if is_sqlite(url):
        lite = sqlite3.connect(make_url(url).database or "", isolation_level=None)
        lite.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        lite.execute("PRAGMA journal_mode = WAL")
        lite.execute("PRAGMA synchronous = NORMAL")
        claim, finish = BARE_CLAIM.format(p="?", lock=""), BARE_FINISH.format(p="?")

        def run(statement: str, params: tuple[Any, ...]) -> Any:
            lite.execute("BEGIN IMMEDIATE")
            row = lite.execute(statement, params).fetchone()
            lite.execute("COMMIT")
            return row

    else:
        import psycopg  # the postgres extra

        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        pg = psycopg.connect(conninfo)
        lock = "FOR UPDATE SKIP LOCKED"
        claim, finish = BARE_CLAIM.format(p="%s", lock=lock), BARE_FINISH.format(p="%s")

        def run(statement: str, params: tuple[Any, ...]) -> Any:
            row = pg.execute(statement, params).fetchone()
            pg.commit()
            return row

    def claim_and_finish() -> bool:
        token = secrets.token_hex(16)
        row = run(claim, (worker, token))
        if row is None:
            return False
        if run(finish, (row[0], token)) is None:
            raise RuntimeError(f"bare job {row[0]} was no longer held by {worker}")
        return True

    return claim_and_finish


def add_bare_jobs(url: str, jobs: int) -> None:
    """`jobs` QUEUED rows in the peer's table; the done rows of earlier runs stay, as in
    Trainwire's."""
    engine = create_engine(normalise_url(url))
    with engine.begin() as connection:
        connection.execute(text(BARE_TABLE))
        connection.execute(text(BARE_INDEX))
        first = connection.execute(
            text("SELECT COALESCE(MAX(id), 0) + 1 FROM bare_jobs")
        ).scalar_one()
        connection.execute(
            text("INSERT INTO bare_jobs (id, state) VALUES (:id, 'QUEUED')"),
            [{"id": first + i} for i in range(jobs)],
        )
    engine.dispose()


def noop_worker(bare: bool) -> None:
    """A worker process that claims and completes jobs without training, until none is left.

    Its database is TRAINWIRE_DATABASE_URL. It connects, says "ready" and waits for the start
    instant on stdin: every worker is waiting when the clock starts, however slowly the processes
    started.
    """
    url = os.environ["TRAINWIRE_DATABASE_URL"]
    claim_and_finish = bare_queue(url) if bare else trainwire_queue(url)
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    time.sleep(max(0.0, start_at - time.time()))
    last = time.time()
    done = 0
    while claim_and_finish():
        done += 1
        last = time.time()
    print(json.dumps({"last": last, "done": done}), flush=True)


def throughput(url: str, workers: int, jobs: int, bare: bool) -> tuple[float, list[int]]:
    """Jobs/s of `workers` no-op workers started at one instant, and the jobs each completed;
    on Trainwire's queue, or with `bare` on the peer's."""
    if bare:
        add_bare_jobs(url, jobs)
    else:
        database = Database(url)
        store = Store(database)
        dataset_id = add_dataset(
            store, np.zeros((1, 1), np.float32), np.zeros(1, np.float32), TaskKind.REGRESSION
        )
        for _ in range(jobs):
            store.create_job(NewJob(dataset_id, NOOP_SPEC, NOOP_TRAINING))
        database.dispose()
    # The URL (a password too) travels in the environment, not on the command line, where `ps`
    # shows it to anyone. Each worker's stderr goes to a file: read when it fails, never blocking.
    env = {**os.environ, "TRAINWIRE_DATABASE_URL": url}
    with contextlib.ExitStack() as stack:
        processes: list[tuple[subprocess.Popen[str], IO[str]]] = []
        for _ in range(workers):
            errors: IO[str] = stack.enter_context(tempfile.TemporaryFile("w+"))
            process = stack.enter_context(
                subprocess.Popen(
                    [sys.executable, __file__, "--noop-worker", "bare" if bare else "trainwire"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=errors,
                    text=True,
                    env=env,
                )
            )
            stack.callback(_kill, process)  # before the exit of Popen, which waits
            processes.append((process, errors))
        for process, errors in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                _worker_failed(process, errors)
        start_at = time.time() + 0.2
        for process, _ in processes:
            assert process.stdin is not None
            process.stdin.write(f"{start_at}\n")
            process.stdin.flush()
        reports = []
        for process, errors in processes:
            lines = process.communicate()[0].strip().splitlines()
            if process.returncode != 0 or not lines:
                _worker_failed(process, errors)
            reports.append(json.loads(lines[-1]))
    done = [report["done"] for report in reports]
    if not any(done):
        raise RuntimeError(f"none of {workers} no-op workers completed a job: {reports}")
    assert sum(done) == jobs, reports
    # A worker that found the queue empty says nothing about when the last job was done.
    elapsed = max(report["last"] for report in reports if report["done"]) - start_at
    return jobs / elapsed, done


def _worker_failed(process: subprocess.Popen[str], errors: IO[str]) -> NoReturn:
    process.wait()
    errors.seek(0)
    raise RuntimeError(
        f"a no-op worker failed (exit status {process.returncode}):\n{errors.read().strip()}"
    )


def _kill(process: subprocess.Popen[str]) -> None:
    """Kills a worker still running: another one failed."""
    if process.poll() is None:
        process.kill()


# --- latency: CreateJob to RUNNING through the real server and an idle worker ---------------------


def enqueue_latency(url: str, samples: int) -> list[float]:
    """Milliseconds from CreateJob to the job's claim, `samples` jobs one after the other."""
    poll_s = Settings().poll_interval_s
    env = {"TRAINWIRE_POLL_INTERVAL_S": str(poll_s)}  # the default, whatever the shell sets
    database = Database(url)
    store = Store(database)
    rng = np.random.default_rng(0)
    latencies = []
    with local_server(url, workers=1, extra_env=env) as server, Client(server.target) as client:
        x = np.zeros((4, 1), np.float32)
        data = client.upload_dataset(x, np.zeros(4, np.float32), task="regression")
        time.sleep(2.0)  # let the worker start and go idle
        for _ in range(samples):
            before = time.time()
            job = client.create_job(data, {"layers": [{"type": "dense", "units": 1}]}, epochs=1)
            job.wait(timeout=60, poll_interval=0.02)
            started = store.get_job(job.name.removeprefix("jobs/")).started_at
            assert started is not None
            latencies.append((started.timestamp() - before) * 1000)
            # The worker goes back to waiting; the next job arrives at a random point of its cycle.
            time.sleep(0.3 + rng.uniform(0, poll_s))
    database.dispose()
    return latencies


# --- persistence overhead of a real training job -------------------------------------------------


def persist_overhead(url: str, examples: int, epochs: int, repeats: int) -> float:
    """(a real worker's run of a job) / (the same training alone) - 1, each the fastest of
    `repeats` interleaved runs (the machine is shared: single runs vary by several percent)."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(examples, 784)).astype(np.float32)
    targets = rng.integers(0, 10, size=examples).astype(np.int64)
    database = Database(url)
    store = Store(database)
    settings = Settings(database_url=url)
    dataset_id = add_dataset(store, features, targets, TaskKind.MULTICLASS_CLASSIFICATION)
    spec = {
        "input_dim": 784,
        "layers": [
            {"type": "dense", "units": 512, "activation": "relu"},
            {"type": "dense", "units": 512, "activation": "relu"},
            {"type": "dense", "units": 10},
        ],
    }
    training = {
        "epochs": epochs,
        "batch_size": 128,
        "loss": "softmax_cross_entropy",
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "seed": 0,
        "metrics": ["accuracy"],
        "checkpoint_every_epochs": max(1, epochs // 2),
        "dtype": "float32",
    }
    # The worker reads the dataset from the database once per job; that read is not persistence,
    # so here it is served from memory and the worker's time is training plus persistence.
    loaded = DatasetService(store, settings).arrays(dataset_id)
    original_arrays = DatasetService.arrays
    # (No validation split here: the worker's would compact these arrays in place.)
    DatasetService.arrays = lambda self, dataset, feature_dtype=None: loaded
    alone_s = worker_s = float("inf")
    try:
        for _ in range(repeats):
            trainer = build_trainer(build_model(spec, training), training)
            started = time.perf_counter()
            trainer.fit(features, targets, epochs=epochs)
            alone_s = min(alone_s, time.perf_counter() - started)

            store.create_job(NewJob(dataset_id, spec, training))
            claim = store.claim_job("bench")
            assert claim is not None
            started = time.perf_counter()
            state = run_job(store, settings, claim, threading.Event())
            worker_s = min(worker_s, time.perf_counter() - started)
            assert state is JobState.SUCCEEDED
    finally:
        DatasetService.arrays = original_arrays
        database.dispose()
    print(f"  training alone {alone_s:.2f}s, in a worker {worker_s:.2f}s (best of {repeats})")
    return worker_s / alone_s - 1.0


def bench_backend(url: str, quick: bool) -> dict[str, Any]:
    jobs = 50 if quick else 2000
    rounds = 1 if quick else 3
    result: dict[str, Any] = {
        "jobs_per_s": {},
        "jobs_done_per_worker": {},
        "bare_jobs_per_s": {},
        "bare_jobs_done_per_worker": {},
        "ratio_vs_bare": {},
        "ratio_vs_bare_by_round": {},
        "jobs_per_round": jobs,
        # --quick, a smoke run, spares the 4 processes: starting them is most of its time.
        "worker_counts": [1, 2] if quick else [1, 2, 4],
    }
    for workers in result["worker_counts"]:
        rates: dict[bool, list[float]] = {False: [], True: []}
        done: dict[bool, list[int]] = {}
        for index in range(rounds):
            for bare in (False, True) if index % 2 == 0 else (True, False):
                rate, done[bare] = throughput(url, workers, jobs, bare)
                rates[bare].append(rate)
        ratios = [ours / theirs for ours, theirs in zip(rates[False], rates[True], strict=True)]
        print(
            f"  {workers} no-op workers: {np.median(rates[False]):.1f} jobs/s, jobs done by each "
            f"{done[False]}; bare: {np.median(rates[True]):.1f} jobs/s, by each {done[True]} "
            f"(ratios by round: {', '.join(f'{r:.3f}' for r in ratios)})"
        )
        key = str(workers)
        result["jobs_per_s"][key] = round(float(np.median(rates[False])), 1)
        result["jobs_done_per_worker"][key] = done[False]  # the last round's
        result["bare_jobs_per_s"][key] = round(float(np.median(rates[True])), 1)
        result["bare_jobs_done_per_worker"][key] = done[True]
        result["ratio_vs_bare"][key] = round(float(np.median(ratios)), 3)
        result["ratio_vs_bare_by_round"][key] = [round(r, 3) for r in ratios]
    latencies = enqueue_latency(url, 5 if quick else 50)
    result["enqueue_to_running_p50_ms"] = round(float(np.median(latencies)), 1)
    result["enqueue_to_running_max_ms"] = round(max(latencies), 1)
    result["enqueue_to_running_jobs"] = len(latencies)
    result["poll_interval_s"] = Settings().poll_interval_s
    examples = 3_000 if quick else 60_000
    overhead = persist_overhead(url, examples, epochs=4, repeats=1 if quick else 3)
    result["persist_overhead_fraction"] = round(overhead, 4)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--noop-worker", choices=("trainwire", "bare"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.noop_worker:
        noop_worker(args.noop_worker == "bare")
        return 0
    results: dict[str, Any] = {"benchmark": "queue"}
    admin = os.environ.get(
        "TRAINWIRE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    print("postgres")
    with postgres_database(admin) as url:
        results["postgres"] = bench_backend(url, args.quick)
    print("sqlite")
    with sqlite_database() as url:
        results["sqlite"] = bench_backend(url, args.quick)
    print(
        f"{'':<10}{'jobs/s 1w':>11}{'2w':>9}{'4w':>9}{'vs bare 1w':>12}{'2w':>7}{'4w':>7}"
        f"{'p50 ms':>9}{'max ms':>9}{'persist':>9}"
    )
    for backend in ("postgres", "sqlite"):
        row = results[backend]
        rates, ratios = row["jobs_per_s"], row["ratio_vs_bare"]
        print(
            f"{backend:<10}{rates['1']:>11}{rates['2']:>9}{rates.get('4', '-'):>9}"
            f"{ratios['1']:>12}{ratios['2']:>7}{ratios.get('4', '-'):>7}"
            f"{row['enqueue_to_running_p50_ms']:>9}{row['enqueue_to_running_max_ms']:>9}"
            f"{row['persist_overhead_fraction']:>9.2%}"
        )
    sqlite = results["sqlite"]
    print(
        "vs bare: Trainwire's jobs/s over a bare queue's on the same database (one UPDATE to "
        "claim, one to finish, with the driver alone), the same workers; the median of "
        f"{len(sqlite['ratio_vs_bare_by_round']['1'])} rounds' ratios, in alternating order"
    )
    print(
        f"p50 / max ms: CreateJob to the job's claim by an idle worker, median and maximum of "
        f"{sqlite['enqueue_to_running_jobs']} jobs; SQLite polls every "
        f"{sqlite['poll_interval_s']} s (the default), PostgreSQL wakes on NOTIFY"
    )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
