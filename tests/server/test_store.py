"""The store and queue on SQLite and PostgreSQL: claims, fencing, idempotency, metric upserts."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import socket
import sqlite3
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, func, select, text, update
from sqlalchemy.engine import make_url

from trainwire.engine import save_state
from trainwire.server import store as store_module
from trainwire.server.config import Settings
from trainwire.server.datasets import DatasetService
from trainwire.server.db import Database
from trainwire.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from trainwire.server.migrate import upgrade
from trainwire.server.models import (
    Base,
    CheckpointBlobRow,
    CheckpointRow,
    DatasetBlobRow,
    JobLabelRow,
    JobRow,
)
from trainwire.server.records import Claim, Dataset, Job, JobState, MetricValue, NewJob, TaskKind
from trainwire.server.store import (
    CANCELLED_BY_REQUEST,
    MAX_PAGE_TOKEN_LENGTH,
    LeaseLost,
    Store,
    best_checkpoint,
    best_ranking,
    checkpoint_score,
    encode_page_token,
    new_id,
    page_scope,
    page_size_of,
    utcnow,
)

from ..conftest import fresh_postgres_database


def make_dataset(store: Store) -> Dataset:
    dataset = Dataset(
        id=new_id(),
        project="default",
        display_name="d",
        task=TaskKind.REGRESSION,
        num_classes=0,
        num_examples=2,
        feature_dtype="float32",
        feature_shape=(2, 1),
        target_dtype="float32",
        target_shape=(2,),
        size_bytes=16,
        sha256="0" * 64,
        labels={},
        feature_names=[],
        class_names=[],
        created_at=utcnow(),
    )
    return store.create_dataset(dataset, b"arrays")


def make_job(store: Store, dataset: Dataset, **kwargs: object) -> NewJob:
    new = NewJob(dataset_id=dataset.id, model_spec={"layers": []}, training={"epochs": 1})
    for key, value in kwargs.items():
        setattr(new, key, value)
    return new


def test_dataset_round_trip(store: Store) -> None:
    dataset = make_dataset(store)
    assert store.get_dataset(dataset.id) == dataset
    assert store.dataset_data(dataset.id) == b"arrays"
    with pytest.raises(NotFound, match="does not exist"):
        store.get_dataset(new_id())


def _memory(field: str) -> int:
    """A field of /proc/self/status, in bytes (VmRSS: resident now; VmHWM: its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def test_a_dataset_is_stored_without_the_driver_copying_its_bytes(store: Store) -> None:
    """Bound whole to an INSERT, a dataset's bytes were copied whole by the driver, outside
    Python's allocator (so this looks at the process's resident memory): SQLite made two copies
    (the bound value and the row), libpq one (its output buffer), 128 and 64 MiB here. They are
    written a piece at a time now (a blob handle, COPY)."""
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident memory")
    size = 64 * 1024 * 1024
    data = bytearray(size)
    data[::4096] = b"\x01" * (size // 4096)  # every page resident before the peak is reset
    data[-7:] = b"the end"
    dataset = replace(make_dataset(store), id=new_id(), size_bytes=size)
    resident = _memory("VmRSS")
    clear_refs.write_text("5")  # VmHWM := VmRSS
    stored = store.create_dataset(dataset, data)
    grew = _memory("VmHWM") - resident
    assert stored == replace(dataset, created_at=stored.created_at)  # the database's time
    assert grew < size // 4, f"the peak grew by {grew / 2**20:.1f} MiB for a 64 MiB dataset"
    assert store.dataset_data(dataset.id) == data


def test_a_checkpoint_is_stored_without_the_driver_keeping_its_bytes(store: Store) -> None:
    """Bound whole to an INSERT, a checkpoint's bytes were copied by the driver and kept by the
    pooled connection after the save (SQLite's cached statement, libpq's output buffer): 64 MiB
    here, for the life of the connection, and SQLite's peak was twice the checkpoint. They are
    written as a dataset's are, a piece at a time."""
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident memory")
    claim = claimed_job(store)
    size = 64 * 1024 * 1024
    data = bytearray(size)
    data[::4096] = b"\x01" * (size // 4096)  # every page resident before the peak is reset
    data[-7:] = b"the end"
    resident = _memory("VmRSS")
    clear_refs.write_text("5")  # VmHWM := VmRSS
    checkpoint = store.save_checkpoint(claim, 1, 10, {"loss": 1.0}, data)
    grew, kept = _memory("VmHWM") - resident, _memory("VmRSS") - resident
    assert grew < size // 4, f"the peak grew by {grew / 2**20:.1f} MiB for a 64 MiB checkpoint"
    assert kept < size // 4, f"{kept / 2**20:.1f} MiB stayed behind a 64 MiB checkpoint"
    assert checkpoint.size_bytes == size
    assert store.checkpoint_data(checkpoint.id) == data


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(array.data).hexdigest()


def _stored_arrays(store: Store, size: int) -> tuple[Dataset, dict[str, np.ndarray]]:
    """A dataset of `size` bytes of float32 features (and a few targets) as an upload stores
    it, and its arrays."""
    rows = 1024
    rng = np.random.default_rng(0)
    arrays = {
        "features": rng.standard_normal((rows, size // 4 // rows), dtype=np.float32),
        "targets": rng.standard_normal(rows, dtype=np.float32),
    }
    dataset = replace(make_dataset(store), id=new_id(), size_bytes=size)
    return store.create_dataset(dataset, save_state(arrays)), arrays


def test_a_dataset_is_read_for_training_into_its_arrays_alone(store: Store) -> None:
    """The worker read a dataset's bytes whole, then parsed them (safetensors' copy, then ours):
    3 times its size at the peak on SQLite; on PostgreSQL 4 times, the value coming as hex text
    that libpq's input buffer then kept (twice its size, for the life of the connection). Read
    a piece at a time now, into the arrays."""
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident memory")
    size = 64 * 1024 * 1024
    dataset, arrays = _stored_arrays(store, size)
    service = DatasetService(store, Settings())
    resident = _memory("VmRSS")
    clear_refs.write_text("5")  # VmHWM := VmRSS
    features, targets = service.arrays(dataset.id)
    grew = _memory("VmHWM") - resident
    assert grew < size * 5 // 4, f"the peak grew by {grew / 2**20:.1f} MiB for a 64 MiB dataset"
    # Compared by their hashes: a comparison's temporaries would count as kept.
    assert _digest(features) == _digest(arrays["features"])
    assert _digest(targets) == _digest(arrays["targets"])
    del features, targets
    kept = _memory("VmRSS") - resident
    assert kept < size // 4, f"{kept / 2**20:.1f} MiB stayed behind a 64 MiB dataset"


def test_a_float64_jobs_features_are_read_as_float64_alone(store: Store) -> None:
    """The engine converts float32 features for a float64 model: the worker held both (the
    stored float32 and the float64 copy, 3 times the stored size). It reads them as float64,
    converted a piece at a time: the same values, twice the stored size, no more."""
    size = 32 * 1024 * 1024
    dataset, arrays = _stored_arrays(store, size)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        features, _ = DatasetService(store, Settings()).arrays(dataset.id, "float64")
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < size * 2 + size // 8, f"the read took {peak / 2**20:.1f} MiB"
    assert features.dtype == np.float64
    assert np.array_equal(features, arrays["features"].astype(np.float64))


def test_a_checkpoint_is_read_into_its_arrays_alone(store: Store) -> None:
    """As a dataset: a resume and the model cache read a checkpoint whole, then parsed it (3
    times its size; 6 on PostgreSQL, 2 of them kept by libpq's input buffer)."""
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident memory")
    claim = claimed_job(store)
    size = 64 * 1024 * 1024
    weights = np.random.default_rng(0).standard_normal(size // 8)
    checkpoint = store.save_checkpoint(claim, 1, 10, {"loss": 1.0}, save_state({"w": weights}))
    resident = _memory("VmRSS")
    clear_refs.write_text("5")  # VmHWM := VmRSS
    state, _ = store.checkpoint_state(checkpoint.id)
    grew = _memory("VmHWM") - resident
    assert grew < size * 5 // 4, f"the peak grew by {grew / 2**20:.1f} MiB for a 64 MiB state"
    assert _digest(state["w"]) == _digest(weights)
    del state
    assert store.checkpoint_data(checkpoint.id) == save_state({"w": weights})
    kept = _memory("VmRSS") - resident
    assert kept < size // 4, f"{kept / 2**20:.1f} MiB stayed behind a 64 MiB checkpoint"


def test_a_checkpoint_is_read_keeping_only_the_arrays_asked_for(store: Store) -> None:
    """The model cache keeps a checkpoint's model arrays, not its optimizer's."""
    claim = claimed_job(store)
    rng = np.random.default_rng(1)
    arrays = {"optimizer.m": rng.standard_normal(3000), "model.w": rng.standard_normal(3000)}
    checkpoint = store.save_checkpoint(claim, 1, 10, {"loss": 1.0}, save_state(arrays))
    kept, _ = store.checkpoint_state(checkpoint.id, keep=lambda name: name.startswith("model."))
    assert kept.keys() == {"model.w"}
    assert kept["model.w"].tobytes() == arrays["model.w"].tobytes()
    whole, _ = store.checkpoint_state(checkpoint.id)
    assert whole.keys() == arrays.keys()


def test_a_compressible_dataset_is_read_whole(store: Store) -> None:
    """PostgreSQL compresses a value that compresses well (all zeros here); the pieces are cut
    from it once it is decompressed, and come back whole and in order."""
    arrays = {"features": np.zeros((4096, 300), np.float32), "targets": np.arange(4096.0)}
    arrays["features"][::7, 3] = 1.5
    dataset = replace(make_dataset(store), id=new_id())
    data = save_state(arrays)
    store.create_dataset(dataset, data)
    loaded, _ = store.dataset_state(dataset.id)
    assert loaded.keys() == arrays.keys()
    for name, array in arrays.items():
        assert loaded[name].tobytes() == array.tobytes(), name
    assert store.dataset_data(dataset.id) == data
    with pytest.raises(NotFound, match="does not exist"):
        store.dataset_state(new_id())
    with pytest.raises(NotFound, match="does not exist"):
        store.checkpoint_state(123456)


def test_claim_takes_highest_priority_then_oldest(store: Store) -> None:
    dataset = make_dataset(store)
    first = store.create_job(make_job(store, dataset))
    second = store.create_job(make_job(store, dataset))
    urgent = store.create_job(make_job(store, dataset, priority=5))
    other_queue = store.create_job(make_job(store, dataset, queue="gpu"))
    order = [store.claim_job("w", ["default"]) for _ in range(4)]
    assert [c.job.id if c else None for c in order] == [urgent.id, first.id, second.id, None]
    claimed = store.claim_job("w", ["gpu"])
    assert claimed is not None and claimed.job.id == other_queue.id
    assert claimed.job.state is JobState.RUNNING and claimed.job.attempt == 1


def test_claims_take_the_highest_priority_then_the_oldest_then_the_id(store: Store) -> None:
    """Of some queues or of all, in exactly the order of the partial indexes the claim reads
    (priority descending, creation time, id), ties in creation time included."""
    dataset = make_dataset(store)
    queues = ["default", "gpu", "cpu"]
    created = [
        store.create_job(make_job(store, dataset, priority=(i * 7) % 3, queue=queues[i % 3]))
        for i in range(24)
    ]
    jobs = JobRow.__table__
    with store.db.engine.begin() as connection:
        tied = jobs.c.id.in_([job.id for job in created[5:13]])
        connection.execute(update(jobs).where(tied).values(created_at=created[9].created_at))
        rows = connection.execute(
            select(jobs.c.priority, jobs.c.created_at, jobs.c.id, jobs.c.queue)
        )
        order = [(r.id, r.queue) for r in sorted(rows, key=lambda r: (-r[0], r[1], r[2]))]

    def drain(*queues: str) -> list[str]:
        claimed = []
        while (claim := store.claim_job("w", list(queues) or None)) is not None:
            claimed.append(claim.job.id)
        return claimed

    assert drain("gpu", "cpu") == [i for i, queue in order if queue in ("gpu", "cpu")]
    assert drain() == [i for i, queue in order if queue == "default"]


def test_a_claim_is_found_by_its_token_while_its_job_runs_under_it(store: Store) -> None:
    dataset = make_dataset(store)
    for _ in range(2):
        store.create_job(make_job(store, dataset))
    first = store.claim_job("w", token=new_id())
    second = store.claim_job("w", token=new_id())
    assert first is not None and second is not None
    assert store.claimed_with(first.token) == first
    assert store.claimed_with(new_id()) is None
    store.release_job(first)
    store.finish_job(second, JobState.SUCCEEDED)
    assert store.claimed_with(first.token) is None, "QUEUED again"
    assert store.claimed_with(second.token) is None, "finished"


def test_concurrent_claims_never_share_a_job(store: Store) -> None:
    dataset = make_dataset(store)
    created = {store.create_job(make_job(store, dataset)).id for _ in range(30)}
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(worker: int) -> None:
        while (claim := store.claim_job(f"w{worker}")) is not None:
            with lock:
                claimed.append(claim.job.id)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(drain, range(4)))
    assert sorted(claimed) == sorted(created)


def test_request_id_makes_create_idempotent(store: Store) -> None:
    dataset = make_dataset(store)
    one = store.create_job(make_job(store, dataset, request_id="abc"))
    two = store.create_job(make_job(store, dataset, request_id="abc"))
    assert one.id == two.id
    jobs, _ = store.list_jobs(100, "")
    assert len(jobs) == 1


def test_a_request_id_used_for_another_request_is_refused(store: Store) -> None:
    """The second request was answered with the first one's job: its settings were dropped
    without a word."""
    dataset = make_dataset(store)
    job = store.create_job(make_job(store, dataset, request_id="abc"))
    with pytest.raises(AlreadyExists) as refused:
        store.create_job(make_job(store, dataset, request_id="abc", priority=5))
    assert refused.value.message == (
        f"request_id 'abc' was already used by jobs/{job.id}, created with a different "
        "priority; send a new request_id to create another job (a retry must repeat the "
        "request unchanged)"
    )
    # Settings are named by the setting that differs, not as "a different training".
    other_training = make_job(
        store, dataset, request_id="abc", training={"epochs": 2}, labels={"sweep": "s1"}
    )
    with pytest.raises(AlreadyExists, match=r"a different training\.epochs, labels\.sweep;"):
        store.create_job(other_training)
    # A spec stored as JSON compares equal to the same spec given with tuples.
    again = make_job(store, dataset, request_id="abc", model_spec={"layers": ()})
    assert store.create_job(again).id == job.id
    assert len(store.list_jobs(100, "")[0]) == 1


def paused_after(
    monkeypatch: pytest.MonkeyPatch, store: Store, method: str
) -> tuple[threading.Event, threading.Event]:
    """Holds the first call of `store`'s `method` once it has run, its transaction still open
    (the commit comes after it), until `release` is set: (`reached`, `release`)."""
    reached, release = threading.Event(), threading.Event()
    original = getattr(store, method)

    def paused(*args: Any) -> None:
        original(*args)
        if not reached.is_set():
            reached.set()
            assert release.wait(60)

    monkeypatch.setattr(store, method, paused)
    return reached, release


def paused_before_call(
    monkeypatch: pytest.MonkeyPatch, store: Store, method: str
) -> tuple[threading.Event, threading.Event]:
    """Holds the first call of `store`'s `method` before it runs, its transaction open, until
    `release` is set: (`reached`, `release`)."""
    reached, release = threading.Event(), threading.Event()
    original = getattr(store, method)

    def paused(*args: Any) -> None:
        if not reached.is_set():
            reached.set()
            assert release.wait(60)
        original(*args)

    monkeypatch.setattr(store, method, paused)
    return reached, release


@pytest.mark.postgres
def test_a_request_id_reused_by_a_concurrent_create_is_refused(
    postgres_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two creates with one request_id, the second's lookup made before the first committed:
    its insert fails on the unique key, and the job found then must be compared too."""
    store = postgres_store
    dataset = make_dataset(store)
    inserted, release = paused_after(monkeypatch, store, "_notify")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(store.create_job, make_job(store, dataset, request_id="abc"))
        assert inserted.wait(60)
        second = pool.submit(
            store.create_job, make_job(store, dataset, request_id="abc", queue="gpu")
        )
        wait_for_a_lock_wait(store, "CreateJob")
        release.set()
        job: Job = first.result(60)
        with pytest.raises(AlreadyExists, match=f"used by jobs/{job.id}, .* different queue"):
            second.result(60)
    assert len(store.list_jobs(100, "")[0]) == 1


def test_a_dataset_s_request_id_stores_one_dataset_per_project(store: Store) -> None:
    """An insert whose request_id its project used (a concurrent upload won the unique
    constraint) stores nothing and returns the dataset stored with it; another project's
    use of the id is not seen."""
    ours = replace(make_dataset(store), id=new_id(), request_id="abc")
    stored = store.create_dataset(ours, b"arrays")
    again = store.create_dataset(replace(ours, id=new_id(), display_name="other"), b"other")
    assert again == stored and store.dataset_by_request_id("abc", "default") == stored
    theirs = store.create_dataset(replace(ours, id=new_id(), project="other"), b"arrays")
    assert theirs.id != stored.id and theirs.project == "other"
    assert store.dataset_by_request_id("abc", "nobody") is None
    assert len(store.list_datasets(100, "")[0]) == 3  # make_dataset's, ours, theirs


def test_a_request_id_is_per_project(store: Store) -> None:
    """Another project's use of a request id was refused "already used": it showed that the
    other project's job exists, where its data must look missing."""
    ours = make_dataset(store)
    theirs = store.create_dataset(replace(ours, id=new_id(), project="other"), b"arrays")
    our_job = store.create_job(make_job(store, ours, request_id="abc"))
    their_job = store.create_job(make_job(store, theirs, project="other", request_id="abc"))
    assert their_job.id != our_job.id and their_job.project == "other"
    again = store.create_job(make_job(store, theirs, project="other", request_id="abc"))
    assert again.id == their_job.id, "still idempotent within the project"
    assert len(store.list_jobs(100, "")[0]) == 2


def test_metrics_upsert_replays_harmlessly(store: Store) -> None:
    dataset = make_dataset(store)
    store.create_job(make_job(store, dataset))
    claim = store.claim_job("w")
    assert claim is not None
    values = [MetricValue("loss", 10, 1, 0.5), MetricValue("accuracy", 10, 1, 0.8)]
    store.record_epoch(claim, {"epoch": 1}, {"loss": 0.5}, values)
    store.record_epoch(claim, {"epoch": 1}, {"loss": 0.4}, [MetricValue("loss", 10, 1, 0.4)])
    stored = store.metric_values(claim.job.id)
    assert [(v.name, v.step, v.value) for v in stored] == [("accuracy", 10, 0.8), ("loss", 10, 0.4)]
    assert store.get_job(claim.job.id).metrics == {"loss": 0.4}


def test_stale_claim_can_write_nothing(store: Store) -> None:
    dataset = make_dataset(store)
    store.create_job(make_job(store, dataset))
    claim = store.claim_job("w1")
    assert claim is not None
    store.release_job(claim)
    again = store.claim_job("w2")
    assert again is not None and again.job.id == claim.job.id
    with pytest.raises(LeaseLost):
        store.record_epoch(claim, {}, {}, [MetricValue("loss", 1, 1, 1.0)])
    with pytest.raises(LeaseLost):
        store.record_metrics(claim, [MetricValue("batch_loss", 1, 1, 1.0)])
    with pytest.raises(LeaseLost):
        store.finish_job(claim, JobState.SUCCEEDED)
    assert store.metric_values(claim.job.id) == []
    finished = store.finish_job(again, JobState.SUCCEEDED)
    assert finished.state is JobState.SUCCEEDED and finished.ended_at is not None


def test_list_jobs_pages_and_filters(store: Store) -> None:
    dataset = make_dataset(store)
    ids = [
        store.create_job(make_job(store, dataset, labels={"n": str(i % 2)})).id for i in range(7)
    ]
    seen: list[str] = []
    token = ""
    while True:
        page, token = store.list_jobs(3, token)
        assert len(page) <= 3 and len(token) <= MAX_PAGE_TOKEN_LENGTH
        seen += [job.id for job in page]
        if not token:
            break
    assert seen == list(reversed(ids))
    odd, _ = store.list_jobs(10, "", labels={"n": "1"})
    assert [job.id for job in odd] == [ids[5], ids[3], ids[1]]
    with pytest.raises(InvalidArgument, match="page_token"):
        store.list_jobs(3, "not-a-token")


def test_a_forged_deeply_nested_page_token_is_invalid_not_internal(store: Store) -> None:
    """json.loads of 100,000 nested lists raised RecursionError: ListJobs answered INTERNAL."""
    forged = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    for listing in (store.list_jobs, store.list_datasets):
        with pytest.raises(InvalidArgument) as refused:
            listing(10, forged)
        assert refused.value.violations[0].field == "page_token"
        assert f"Received: {len(forged)} characters" in refused.value.message


def _forged(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()


def test_a_forged_page_token_is_invalid_argument_whatever_its_id_holds(store: Store) -> None:
    """An id with a NUL was INTERNAL on PostgreSQL (psycopg's DataError), a lone surrogate
    INTERNAL on both databases (UnicodeEncodeError): the id was passed on unchecked."""
    when = "2026-01-01T00:00:00+00:00"
    for forged in (
        _forged(when, "a\x00b"),
        _forged(when, "\ud800"),
        _forged(when, 7),
        _forged("2026-01-01T00:00:00", new_id()),  # no offset: never issued
        _forged(when, new_id(), "scope", "more"),
    ):
        for listing in (store.list_jobs, store.list_datasets):
            with pytest.raises(InvalidArgument) as refused:
                listing(10, forged)
            assert refused.value.message == (
                "page_token: is not a token returned by a previous List call"
            ), forged
    # A well-formed position, however far off, is only a place to start from.
    make_dataset(store)
    assert store.list_datasets(10, _forged("0001-01-01T00:00:00+14:00", new_id()))[0] == []
    assert len(store.list_datasets(10, _forged("9999-12-31T23:59:59-14:00", new_id()))[0]) == 1


def test_a_page_token_continues_only_the_listing_and_filters_that_returned_it(
    store: Store,
) -> None:
    dataset = make_dataset(store)
    make_dataset(store)
    for _ in range(3):
        store.create_job(make_job(store, dataset, labels={"n": "x"}))
    _, of_datasets = store.list_datasets(1, "")
    _, of_jobs = store.list_jobs(1, "")
    _, of_x = store.list_jobs(1, "", labels={"n": "x"})
    assert of_datasets and of_jobs and of_x
    elsewhere = [
        lambda: store.list_jobs(1, of_datasets),
        lambda: store.list_datasets(1, of_jobs),
        lambda: store.list_jobs(1, of_jobs, state=JobState.QUEUED),
        lambda: store.list_jobs(1, of_jobs, dataset_id=dataset.id),
        lambda: store.list_jobs(1, of_x, labels={"n": "y"}),
        lambda: store.list_jobs(1, of_x),
    ]
    for misused in elsewhere:
        with pytest.raises(InvalidArgument) as refused:
            misused()
        assert refused.value.violations[0].field == "page_token"
        assert "start again without page_token" in refused.value.message
    # With its own listing and filters (the page size may change), a token goes on.
    assert len(store.list_jobs(2, of_x, labels={"n": "x"})[0]) == 2
    assert len(store.list_datasets(5, of_datasets)[0]) == 1


def test_a_page_token_issued_before_tokens_named_their_listing_still_pages(store: Store) -> None:
    dataset = make_dataset(store)
    ids = [store.create_job(make_job(store, dataset)).id for _ in range(3)]
    newest = store.get_job(ids[-1])
    old_style = _forged(newest.created_at.isoformat(), newest.id)
    assert [job.id for job in store.list_jobs(10, old_style)[0]] == ids[-2::-1]


def test_label_filtered_pages_return_each_job_once(store: Store) -> None:
    """Matches sparse among the newest rows: when labels were checked in Python, a page was
    refilled from further fetches, and must not have looked at a fetched row twice."""
    dataset = make_dataset(store)
    # Newest first the labels run y y x x y y ...: of the newest page size + 1 rows only the
    # extra one matches.
    pattern = ["x", "y", "y", "x", "x", "y", "y", "x", "x", "y", "y"]
    ids = [store.create_job(make_job(store, dataset, labels={"n": n})).id for n in pattern]
    expected = [i for i, n in zip(ids, pattern, strict=True) if n == "x"][::-1]
    seen: list[str] = []
    token = ""
    while True:
        page, token = store.list_jobs(2, token, labels={"n": "x"})
        assert len(page) <= 2
        seen += [job.id for job in page]
        if not token:
            break
    assert seen == expected


def _every_page(listing: Any, size: int, **filters: object) -> list[str]:
    """The ids `listing` (Store.list_jobs or list_datasets) gives page after page of `size`."""
    seen: list[str] = []
    token = ""
    while True:
        page, token = listing(size, token, **filters)
        assert len(page) <= size
        seen += [item.id for item in page]
        if not token:
            return seen


def test_jobs_created_before_an_instant_are_listed_page_by_page(store: Store) -> None:
    """Cleaning up old jobs needed every page of the project read to find them: the filter
    starts the listing's index at the instant, with and without labels, and its page tokens
    continue that listing alone."""
    dataset = make_dataset(store)
    ids = [
        store.create_job(make_job(store, dataset, labels={"run": str(index % 2)})).id
        for index in range(7)
    ]
    created = {job_id: store.get_job(job_id).created_at for job_id in ids}
    boundary = created[ids[4]]
    newest_first = ids[::-1]
    for labels in ({}, {"run": "0"}):
        expected = [
            job_id
            for job_id in newest_first
            if created[job_id] < boundary and (not labels or job_id in ids[::2])
        ]
        assert len(expected) == (4 if not labels else 2)
        for size in (1, 2, 100):
            assert (
                _every_page(store.list_jobs, size, labels=labels, created_before=boundary)
                == expected
            ), (labels, size)
    assert store.list_jobs(10, "", created_before=created[ids[0]]) == ([], "")
    # A page token continues its own listing: one without the filter is refused with it, and
    # the reverse (a listing of other jobs).
    _, unfiltered = store.list_jobs(1, "")
    _, filtered = store.list_jobs(1, "", created_before=boundary)
    with pytest.raises(InvalidArgument, match="another List call or other filters"):
        store.list_jobs(1, unfiltered, created_before=boundary)
    with pytest.raises(InvalidArgument, match="another List call or other filters"):
        store.list_jobs(1, filtered)


def test_label_filters_page_through_exactly_the_jobs_holding_every_label(store: Store) -> None:
    """Filtered in the query: every label given must be held with that value, the key and the
    value compared exactly (quotes, dots, non-ASCII and empty strings alike, none of them a
    JSON path), each matching job once and newest first, whatever the page size."""
    dataset = make_dataset(store)
    quoted_key, quoted_value = 'it\'s a "key".x', 'wert "ü" \\ ☃ 😀'
    label_sets = [
        {"team": "a", "run": "1"},
        {"team": "a"},
        {"team": "b", "run": "1"},
        {quoted_key: quoted_value, "team": "a"},
        {"team": "a", "run": ""},
        {quoted_key: "wert", "team": "a"},
        {},
        {"Team": "a", "run": "1"},
        {"team": "a ", "run": "1"},
    ]
    created = [
        (store.create_job(make_job(store, dataset, labels=labels)).id, labels)
        for labels in label_sets * 3
    ]
    newest_first = created[::-1]
    for filters in (
        {"team": "a"},
        {"team": "a", "run": "1"},
        {"run": "1"},
        {"run": ""},
        {quoted_key: quoted_value},
        {quoted_key: quoted_value, "team": "a"},
        {"team": "a", "run": "2"},  # matches nothing
        {"team": "zzz"},  # matches nothing
        {"ü": "a"},  # matches nothing
        {"team": "a", "$": "a"},  # matches nothing
    ):
        expected = [
            job_id
            for job_id, labels in newest_first
            if all(labels.get(key) == value for key, value in filters.items())
        ]
        assert len(expected) in (0, 3, 6, 9, 12, 15), filters
        for size in (1, 2, 4, 100):
            assert _every_page(store.list_jobs, size, labels=filters) == expected, (filters, size)


def test_a_label_filter_no_job_can_match_is_an_empty_page_not_an_error(store: Store) -> None:
    """A NUL (PostgreSQL refuses it as a parameter) or more labels than a job may carry (SQLite
    refused a filter of over 1,000 terms) matches nothing, as every other label that no job
    holds does."""
    dataset = make_dataset(store)
    for _ in range(2):
        store.create_job(make_job(store, dataset, labels={"team": "a"}))
    many = {f"k{i}": "v" for i in range(2000)}
    for filters in ({"team": "a\x00"}, {"te\x00am": "a"}, many, {**many, "team": "a"}):
        assert store.list_jobs(10, "", labels=filters) == ([], "")
    _, of_jobs = store.list_jobs(1, "")
    with pytest.raises(InvalidArgument, match="page_token"):
        store.list_jobs(1, of_jobs, labels=many)


def test_a_job_stored_with_a_nul_in_a_label_leaves_label_filters_working(store: Store) -> None:
    """Labels were once stored without the control-character check: a NUL in one, kept as
    `\\u0000` in the JSON text, made PostgreSQL's `->>` fail on that row ("unsupported Unicode
    escape sequence") and so every label-filtered listing of its project. The row matches no
    label filter, and the others are listed."""
    dataset = make_dataset(store)
    legacy = store.create_job(make_job(store, dataset, labels={"team": "a", "note": "x"}))
    kept = store.create_job(make_job(store, dataset, labels={"team": "a"}))
    with store.db.write() as session:
        session.get(JobRow, legacy.id).labels = {"team": "a", "note": "x\x00y"}
    assert [job.id for job in store.list_jobs(10, "", labels={"team": "a"})[0]] == [kept.id]
    assert store.list_jobs(10, "", labels={"team": "b"}) == ([], "")
    assert store.get_job(legacy.id).labels == {"team": "a", "note": "x\x00y"}


def _label_rows(store: Store) -> set[tuple[str, str, str, str]]:
    """Every `job_labels` row: (job id, key, value, project)."""
    columns = (JobLabelRow.job_id, JobLabelRow.key, JobLabelRow.value, JobLabelRow.project)
    with store.db.engine.connect() as connection:
        return {
            (job, key, value, project)
            for job, key, value, project in connection.execute(select(*columns))
        }


def _rows_of(*jobs: Job) -> set[tuple[str, str, str, str]]:
    return {(job.id, key, value, job.project) for job in jobs for key, value in job.labels.items()}


def test_label_rows_are_written_with_their_job_and_deleted_with_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every way CreateJob answers writes a job's label rows once: a retry of its request id
    writes none, nor does a create that found no job for the id and then lost the insert to
    the job that holds it (its transaction is rolled back whole). A deleted job's rows go with
    it; a deleted dataset's finished jobs keep their labels, and are still found by them."""
    dataset = make_dataset(store)
    labels = {"team": "a", "run": "1"}
    first = store.create_job(make_job(store, dataset, request_id="r1", labels=labels))
    assert store.create_job(make_job(store, dataset, request_id="r1", labels=labels)) == first
    found = store.job_by_request_id
    lookups: list[str] = []

    def missed_once(request_id: str, project: str) -> Job | None:
        lookups.append(request_id)
        return None if len(lookups) == 1 else found(request_id, project)

    monkeypatch.setattr(store, "job_by_request_id", missed_once)
    assert store.create_job(make_job(store, dataset, request_id="r1", labels=labels)) == first
    assert lookups == ["r1", "r1"], "the insert lost to the job holding the id"
    monkeypatch.undo()
    other = store.create_job(make_job(store, dataset, labels={"team": "a", "note": "x"}))
    unlabelled = store.create_job(make_job(store, dataset))
    # Labels whose JSON text holds a NUL's escape match no filter (and PostgreSQL holds no NUL
    # in text): their job has no rows.
    for note in ("x\x00y", "\\u0000"):
        store.create_job(make_job(store, dataset, labels={"team": "a", "note": note}))
    assert _label_rows(store) == _rows_of(first, other, unlabelled)
    listed = store.list_jobs(10, "", labels={"team": "a"})[0]
    assert [job.id for job in listed] == [other.id, first.id]

    for _ in range(5):
        claim = store.claim_job("w")
        assert claim is not None
        store.finish_job(claim, JobState.SUCCEEDED)
    store.delete_job(other.id)
    assert _label_rows(store) == _rows_of(first)
    store.delete_dataset(dataset.id)
    assert _label_rows(store) == _rows_of(first)
    assert [job.id for job in store.list_jobs(10, "", labels={"team": "a"})[0]] == [first.id]


def test_a_label_filter_reads_first_what_the_fewest_jobs_match(store: Store) -> None:
    """Each label, and a state or dataset filter, is counted (up to a bound) and the fewest
    matched leads, whatever order the filter gave: led by a label most jobs hold, a page read
    all of them to find the few that hold the other (100,000 jobs: 360 ms on SQLite), or the
    few in a rare state (93-164 ms). Ties keep the filter's order, labels before the rest."""
    dataset, lone = make_dataset(store), make_dataset(store)
    for index in range(6):
        labels = {"team": "a", "run": str(index % 3)}
        if index == 4:
            labels["rare"] = "yes"
        store.create_job(make_job(store, lone if index == 5 else dataset, labels=labels))
    claim = store.claim_job("w")  # the oldest, RUNNING: one job in that state
    assert claim is not None

    def lead(labels: dict[str, str], **filters: Any) -> list[tuple[str, str]] | None:
        given = list(labels.items())
        project = filters.pop("project", "default")
        with store.db.read() as session:
            return store._label_filter_lead(
                session, given, filters.get("state"), filters.get("dataset_id"), project
            )

    assert lead({"team": "a", "rare": "yes"}) == [("rare", "yes"), ("team", "a")]
    assert lead({"team": "a", "run": "1", "x": "y"}, project=None) == [
        ("x", "y"),
        ("run", "1"),
        ("team", "a"),
    ]
    assert lead({"run": "2", "run ": "0"}) == [("run ", "0"), ("run", "2")]
    assert lead({"team": "a"}, project="elsewhere") == [("team", "a")]
    # A state or a dataset fewer jobs are in than hold any label leads (None: the jobs' own
    # listing); one as many are in, or more, leaves the labels to lead.
    assert lead({"team": "a"}, state=JobState.RUNNING) is None
    assert lead({"team": "a"}, dataset_id=lone.id) is None
    assert lead({"team": "a", "rare": "yes"}, state=JobState.RUNNING) == [
        ("rare", "yes"),
        ("team", "a"),
    ]
    assert lead({"run": "1"}, state=JobState.QUEUED) == [("run", "1")]


def test_label_filters_with_a_state_a_dataset_and_a_project_page_through_exactly_their_jobs(
    store: Store,
) -> None:
    """The label rows lead, and every other filter is checked on the jobs they name: each
    page holds exactly the jobs of the project, state and dataset asked for that hold every
    label, newest first, whatever the page size and whichever label leads."""
    datasets = [make_dataset(store), make_dataset(store)]
    research = replace(datasets[0], id=new_id(), project="research")
    store.create_dataset(research, b"arrays")
    created: list[Job] = []
    for index in range(24):
        labels = {"team": "ab"[index % 2], "run": str(index % 3)}
        if index % 5 == 0:
            labels["rare"] = "yes"
        dataset = research if index % 7 == 3 else datasets[index % 4 // 2]
        new = make_job(store, dataset, labels=labels, project=dataset.project)
        created.append(store.create_job(new))
    for finished in (True, False, True, False):  # the four oldest: two SUCCEEDED, two RUNNING
        claim = store.claim_job("w")
        assert claim is not None
        if finished:
            store.finish_job(claim, JobState.SUCCEEDED)
    jobs = {job.id: job for job in store.list_jobs(100, "")[0]}
    assert len(jobs) == len(created)
    newest_first = [jobs[job.id] for job in reversed(created)]
    for labels in ({"team": "a"}, {"team": "a", "rare": "yes"}, {"rare": "yes", "run": "0"}):
        for state in (None, JobState.QUEUED, JobState.RUNNING):
            for dataset_id in (None, datasets[1].id):
                for project in (None, "default", "research"):
                    expected = [
                        job.id
                        for job in newest_first
                        if labels.items() <= job.labels.items()
                        and state in (None, job.state)
                        and dataset_id in (None, job.dataset_id)
                        and project in (None, job.project)
                    ]
                    for size in (1, 3, 100):
                        filters = {"state": state, "dataset_id": dataset_id, "labels": labels}
                        seen = _every_page(store.list_jobs, size, **filters, project=project)
                        assert seen == expected, (labels, state, dataset_id, project, size)


def _statements(
    store: Store, call: Callable[[], object], matches: Callable[[str], bool]
) -> list[tuple[str, Any]]:
    """The statements (and their parameters) `call` runs that `matches` picks, in order."""
    statements: list[tuple[str, Any]] = []

    def record(_conn: object, _cursor: object, statement: str, parameters: Any, *_: object) -> None:
        if matches(statement):
            statements.append((statement, parameters))

    event.listen(store.db.engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(store.db.engine, "before_cursor_execute", record)
    return statements


def _labelled_statement(store: Store, call: Callable[[], object]) -> tuple[str, Any]:
    """The statement (and its parameters) that lists the jobs of a label filter `call` runs."""
    (found,) = _statements(store, call, lambda statement: "JOIN job_labels" in statement)
    return found


@pytest.mark.postgres
def test_a_label_filter_reads_its_labels_index_in_order_on_postgresql(
    postgres_store: Store,
) -> None:
    """A page of a label's jobs is read from ix_job_labels_listing backward from its token's
    position, in the listing's order, each job looked up by its key: nothing is sorted. (The GIN
    index of 0014 gave every job holding the label, which were fetched and sorted for each page,
    or the planner read the project's jobs newest first: 80-110 ms at 100,000 jobs for a label
    1,000 to 10,000 older jobs hold.) Sequential scans, bitmaps and sorts are off so that a
    small table's plan shows what the query lets the planner do."""
    store = postgres_store
    dataset = make_dataset(store)
    for team in ("a", "b", "a", "a"):
        store.create_job(make_job(store, dataset, labels={"team": team, "model": "m"}))
    _, token = store.list_jobs(1, "", labels={"team": "a"}, project="default")
    statement, parameters = _labelled_statement(
        store, lambda: store.list_jobs(1, token, labels={"team": "a"}, project="default")
    )
    with store.db.engine.begin() as connection:
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            connection.exec_driver_sql(f"SET LOCAL {setting} = off")
        plan = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters).scalars().all()
    shown = "\n".join(plan)
    assert "Index Only Scan Backward using ix_job_labels_listing" in shown, shown
    assert "ROW(created_at, job_id) < ROW(" in shown, shown  # from the token's position
    assert "Index Scan using pk_jobs" in shown, shown
    assert "Sort" not in shown and "disabled" not in shown.lower(), shown


_JOB_BY_ID = "SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"


def test_a_label_filter_reads_the_labels_index_with_any_other_filter_on_sqlite(
    sqlite_url: str,
) -> None:
    """With a state, a dataset or more labels, the page still reads the first label's rows in
    order and checks each job they name (its state and dataset on its row, another label by
    the job's key): SQLite, without statistics, could have read the dataset's index and sorted.
    A filter of several labels first counts each label's rows, from the index."""
    database = Database(sqlite_url)
    try:
        store = Store(database)
        dataset = make_dataset(store)
        for team in ("a", "a", "b"):
            store.create_job(make_job(store, dataset, labels={"team": team, "run": "1"}))
        queued = JobState.QUEUED
        one_label = {"team": "a"}
        calls = {
            "state": lambda: store.list_jobs(1, "", queued, labels=one_label, project="default"),
            "dataset": lambda: store.list_jobs(
                1, "", None, dataset.id, one_label, project="default"
            ),
            "both": lambda: store.list_jobs(
                1, "", queued, dataset.id, one_label, project="default"
            ),
        }
        plans = {name: _query_plans(store, call, "job_labels") for name, call in calls.items()}
        counted, labelled = _query_plans(
            store,
            lambda: store.list_jobs(1, "", labels={"team": "a", "run": "1"}, project="default"),
            "job_labels",
        )
        # A state fewer jobs are in than hold the label: the state's index leads, in order.
        claim = store.claim_job("w")
        assert claim is not None
        running = _query_plans(
            store,
            lambda: store.list_jobs(1, "", JobState.RUNNING, labels=one_label, project="default"),
            "job_labels",
        )[-1]
    finally:
        database.dispose()
    lead = "SEARCH job_labels_1 USING COVERING INDEX ix_job_labels_listing"
    in_order = f"{lead} (project=? AND key=? AND value=?); {_JOB_BY_ID}"
    # Each first counts the label's rows and the state's or dataset's jobs, from their indexes.
    assert {name: plan[-1] for name, plan in plans.items()} == {name: in_order for name in calls}
    for plan in plans.values():
        assert len(plan) == 2 and "SCAN jobs" not in plan[0] and "SCAN job_labels" not in plan[0]
    assert running.startswith("SEARCH jobs USING INDEX ix_jobs_project_state_created_at_id"), (
        running
    )
    assert "TEMP B-TREE" not in running and "CORRELATED SCALAR SUBQUERY" in running, running
    # The further labels: one count of the job's label rows, by its key (the primary key).
    assert labelled.startswith(f"{in_order}; CORRELATED SCALAR SUBQUERY"), labelled
    assert (
        "SEARCH job_labels USING INDEX sqlite_autoindex_job_labels_1 (job_id=? AND key=?)"
        in labelled
    )
    assert "SCAN job_labels" not in labelled and "TEMP B-TREE" not in labelled, labelled
    counts = "SEARCH job_labels USING COVERING INDEX ix_job_labels_listing"
    assert counted.count(counts) == 2 and "SCAN job_labels" not in counted, counted


def test_listings_page_through_rows_of_one_creation_time_once_each(store: Store) -> None:
    """The page's position is compared as a row value (created_at, id): rows created at the
    same time are told apart by id, descending, none skipped or repeated at a page's edge."""
    datasets = [make_dataset(store) for _ in range(8)]
    jobs = [store.create_job(make_job(store, datasets[0])) for _ in range(9)]
    listings = (("jobs", jobs, store.list_jobs), ("datasets", datasets, store.list_datasets))
    for name, created, listing in listings:
        table = Base.metadata.tables[name]
        with store.db.engine.begin() as connection:
            tied = table.c.id.in_([row.id for row in created[2:7]])
            connection.execute(update(table).where(tied).values(created_at=created[4].created_at))
            positions = connection.execute(select(table.c.created_at, table.c.id)).all()
        expected = [row_id for _, row_id in sorted(positions, reverse=True)]
        assert len(expected) == len(created)
        for size in (1, 2, 3, 4, 100):
            assert _every_page(listing, size, project="default") == expected, (name, size)


def _query_plans(store: Store, call: Callable[[], object], table: str) -> list[str]:
    """SQLite's EXPLAIN QUERY PLAN of each statement on `table` that `call` runs, its steps
    joined by "; "."""
    statements = _statements(
        store, call, lambda statement: f" {table} " in f" {statement} ".replace("\n", " ")
    )
    plans = []
    with store.db.engine.connect() as connection:
        for statement, parameters in statements:
            steps = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plans.append("; ".join(step[-1] for step in steps))
    return plans


def test_listing_pages_read_an_index_in_their_order_on_sqlite(sqlite_url: str) -> None:
    """No page sorts the project's rows (SQLite's "TEMP B-TREE"): each reads the index on
    (project[, state], created_at, id) backward from its position, a label filter's that on
    (project, key, value, created_at, job_id)."""
    database = Database(sqlite_url)
    try:
        store = Store(database)
        dataset = make_dataset(store)
        for _ in range(3):
            store.create_job(make_job(store, dataset, labels={"team": "a"}))
        _, token = store.list_jobs(1, "", project="default")
        _, queued = store.list_jobs(1, "", state=JobState.QUEUED, project="default")
        _, of_a = store.list_jobs(1, "", labels={"team": "a"}, project="default")
        make_dataset(store)
        _, of_datasets = store.list_datasets(1, "", project="default")
        (jobs,) = _query_plans(store, lambda: store.list_jobs(1, token, project="default"), "jobs")
        (labelled,) = _query_plans(
            store, lambda: store.list_jobs(1, of_a, labels={"team": "a"}, project="default"), "jobs"
        )
        (of_state,) = _query_plans(
            store,
            lambda: store.list_jobs(1, queued, state=JobState.QUEUED, project="default"),
            "jobs",
        )
        (datasets,) = _query_plans(
            store, lambda: store.list_datasets(1, of_datasets, project="default"), "datasets"
        )
    finally:
        database.dispose()
    after = "AND (created_at,id)<(?,?))"
    assert jobs == f"SEARCH jobs USING INDEX ix_jobs_project_created_at_id (project=? {after}"
    assert labelled == (
        "SEARCH job_labels_1 USING COVERING INDEX ix_job_labels_listing "
        f"(project=? AND key=? AND value=? AND (created_at,job_id)<(?,?)); {_JOB_BY_ID}"
    ), "the label's rows from the token's position (json_each read every job of the project)"
    assert of_state == (
        "SEARCH jobs USING INDEX ix_jobs_project_state_created_at_id "
        f"(project=? AND state=? {after}"
    )
    assert datasets == (
        f"SEARCH datasets USING INDEX ix_datasets_project_created_at_id (project=? {after}"
    )
    assert "TEMP B-TREE" not in labelled


def test_a_datasets_jobs_are_listed_from_its_own_index_on_sqlite(sqlite_url: str) -> None:
    """A page of a dataset's jobs, of one state or all, reads (dataset_id, created_at, id)
    backward from its position: SQLite, without statistics, read the project's index and
    looked up every job of the project for its dataset."""
    database = Database(sqlite_url)
    try:
        store = Store(database)
        dataset, other = make_dataset(store), make_dataset(store)
        for used in (dataset, other, dataset, dataset):
            store.create_job(make_job(store, used))

        def page(size: int, token: str, state: JobState | None = None) -> tuple[list[Job], str]:
            return store.list_jobs(size, token, state, dataset.id, project="default")

        first, token = page(1, "")
        _, queued = page(1, "", JobState.QUEUED)
        (jobs,) = _query_plans(store, lambda: page(1, token), "jobs")
        (of_one_state,) = _query_plans(store, lambda: page(1, queued, JobState.QUEUED), "jobs")
        listed = first + page(10, token)[0]
    finally:
        database.dispose()
    assert len(listed) == 3 and {job.dataset_id for job in listed} == {dataset.id}
    expected = (
        "SEARCH jobs USING INDEX ix_jobs_dataset_id_created_at_id "
        "(dataset_id=? AND (created_at,id)<(?,?))"
    )
    assert jobs == of_one_state == expected


def test_a_claim_reads_the_first_row_of_a_partial_index_on_sqlite(sqlite_url: str) -> None:
    """No claim sorts the QUEUED jobs: without statistics SQLite took ix_jobs_lease for
    `state = 'QUEUED'` and sorted all of them. A lost claim is looked for among RUNNING jobs."""
    database = Database(sqlite_url)
    try:
        store = Store(database)
        dataset = make_dataset(store)
        for queue in ("default", "gpu", "gpu"):
            store.create_job(make_job(store, dataset, queue=queue))
        claims: list[Claim | None] = []
        (any_queue,) = _query_plans(store, lambda: claims.append(store.claim_job("w")), "jobs")
        (of_one,) = _query_plans(store, lambda: store.claim_job("w", ["gpu"]), "jobs")
        (of_two,) = _query_plans(store, lambda: store.claim_job("w", ["gpu", "cpu"]), "jobs")
        assert claims[0] is not None
        (lost,) = _query_plans(store, lambda: store.claimed_with(claims[0].token), "jobs")
    finally:
        database.dispose()
    by_id = "SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?); SCALAR SUBQUERY 1; "
    assert any_queue == by_id + "SCAN jobs USING INDEX ix_jobs_queued"
    assert of_one == by_id + "SEARCH jobs USING INDEX ix_jobs_queued_by_queue (queue=?)"
    # Of several queues, SQLite sorts their QUEUED jobs (PostgreSQL reads ix_jobs_queued in
    # order, past other queues' jobs).
    assert of_two.startswith(of_one)
    assert lost == "SEARCH jobs USING INDEX ix_jobs_lease (state=?)"


def test_the_deployment_state_is_read_from_indexes_on_sqlite(sqlite_url: str) -> None:
    """Queue depth (read every 5 s by each server) is counted from ix_jobs_lease alone, not by
    looking up every job's row for its queue, and the newest failures come from ix_jobs_failed
    in order, not sorted: both read every job (or every failed one) of a year's history."""
    database = Database(sqlite_url)
    try:
        store = Store(database)
        dataset = make_dataset(store)
        for queue in ("default", "gpu", "gpu"):
            store.create_job(make_job(store, dataset, queue=queue))
        for ends_as in ("first", "second"):
            claim = store.claim_job("w", ["gpu"])
            assert claim is not None
            store.finish_job(claim, JobState.FAILED, ends_as)
        (depth,) = _query_plans(store, store.queue_depth, "jobs")
        (failures,) = _query_plans(store, store.recent_failures, "jobs")
        assert store.queue_depth() == [("FAILED", "gpu", 2), ("QUEUED", "default", 1)]
        assert [job.error for job in store.recent_failures()] == ["second", "first"]
    finally:
        database.dispose()
    assert depth == "SCAN jobs USING COVERING INDEX ix_jobs_lease; USE TEMP B-TREE FOR GROUP BY"
    assert failures == "SCAN jobs USING INDEX ix_jobs_failed"


def test_a_jobs_checkpoints_are_read_by_its_own_index_on_sqlite(sqlite_url: str) -> None:
    """A job's checkpoints, listed or its newest (a resume, a save's duplicate check), are
    read by (job_id, id): by the primary key backward, filtered on the job, a job whose
    checkpoints were old scanned past every newer one of other jobs."""
    with _claimed_on_sqlite(sqlite_url) as (store, claim):
        store.save_checkpoint(claim, 1, 10, {"val_loss": 0.5}, b"x", keep=2)
        job = claim.job.id
        (listed,) = _query_plans(store, lambda: store.list_checkpoints(job), "checkpoints")
        (newest,) = _query_plans(
            store, lambda: store.latest_resumable_checkpoint(job), "checkpoints"
        )
        saves = _query_plans(
            store,
            lambda: store.save_checkpoint(claim, 2, 20, {"val_loss": 0.4}, b"x", keep=2),
            "checkpoints",
        )
    assert listed == "SEARCH checkpoints USING INDEX ix_checkpoints_job_id_id (job_id=?)"
    assert newest == "SEARCH checkpoints USING INDEX ix_checkpoints_job_id_id (job_id=?)"
    reads = [plan for plan in saves if plan.startswith(("SEARCH", "SCAN"))]
    assert reads
    assert not [plan for plan in reads if "USING INDEX ix_checkpoints_job_id_" not in plan]


def test_expired_lease_is_rescued_then_fails_past_max_attempts(store: Store) -> None:
    dataset = make_dataset(store)
    job = store.create_job(make_job(store, dataset, max_attempts=2))
    first = store.claim_job("w1", lease_s=-1.0)  # a lease that has already run out
    assert first is not None
    assert store.rescue_expired() == [(job.id, JobState.QUEUED)]
    with pytest.raises(LeaseLost):
        store.heartbeat(first, 30.0)
    second = store.claim_job("w2", lease_s=-1.0)
    assert second is not None and second.job.attempt == 2
    assert store.rescue_expired() == [(job.id, JobState.FAILED)]
    failed = store.get_job(job.id)
    assert failed.state is JobState.FAILED and "attempt 2 of 2" in failed.error
    assert store.rescue_expired() == []


def test_live_lease_is_not_rescued_and_heartbeat_sees_cancel(store: Store) -> None:
    dataset = make_dataset(store)
    job = store.create_job(make_job(store, dataset))
    claim = store.claim_job("w", lease_s=60.0)
    assert claim is not None
    assert store.rescue_expired() == []
    assert store.heartbeat(claim, 60.0) is JobState.RUNNING
    assert store.cancel_job(job.id).state is JobState.CANCELLING
    assert store.heartbeat(claim, 60.0) is JobState.CANCELLING
    assert store.held_job_state(claim) is JobState.CANCELLING
    assert store.finish_job(claim, JobState.CANCELLED).state is JobState.CANCELLED


def test_a_job_cancelled_while_its_worker_stops_is_not_queued_again(store: Store) -> None:
    """SIGTERM can reach the worker before its next poll sees the cancel request: the handing
    back must then finish the cancel, not queue the job to run again."""
    dataset = make_dataset(store)
    job = store.create_job(make_job(store, dataset))
    claim = store.claim_job("w")
    assert claim is not None
    assert store.cancel_job(job.id).state is JobState.CANCELLING
    assert store.release_job(claim) is JobState.CANCELLED
    cancelled = store.get_job(job.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.ended_at is not None
    assert cancelled.worker_id is None and cancelled.attempt == 1
    last = store.job_events(job.id)[-1]
    assert (last.state, last.message) == (JobState.CANCELLED, "cancelled by request")
    assert store.claim_job("w") is None, "a cancelled job is never claimed"
    with pytest.raises(LeaseLost):
        store.heartbeat(claim, 30.0)


def test_release_hands_a_running_job_back_without_costing_an_attempt(store: Store) -> None:
    dataset = make_dataset(store)
    job = store.create_job(make_job(store, dataset))
    claim = store.claim_job("w")
    assert claim is not None
    assert store.release_job(claim) is JobState.QUEUED
    queued = store.get_job(job.id)
    assert queued.state is JobState.QUEUED and queued.attempt == 0 and queued.ended_at is None
    assert "handed back" in store.job_events(job.id)[-1].message


def test_cancel_rules(store: Store) -> None:
    dataset = make_dataset(store)
    queued = store.create_job(make_job(store, dataset))
    cancelled = store.cancel_job(queued.id)
    assert cancelled.state is JobState.CANCELLED
    events = store.job_events(queued.id)
    # Again (a retry whose first answer was lost): the job as it is, nothing more recorded.
    assert store.cancel_job(queued.id) == cancelled
    assert store.job_events(queued.id) == events
    finished = store.create_job(make_job(store, dataset))
    claim = store.claim_job("w")
    assert claim is not None and claim.job.id == finished.id
    store.finish_job(claim, JobState.SUCCEEDED)
    with pytest.raises(FailedPrecondition, match="already SUCCEEDED and cannot be cancelled"):
        store.cancel_job(finished.id)
    with pytest.raises(NotFound):
        store.cancel_job(new_id())
    assert store.claim_job("w") is None, "a cancelled job is never claimed"


def test_every_way_to_cancelled_records_the_same_reason(store: Store) -> None:
    """Job.error says why a job ended: a queued job cancelled at once, a cancelling one handed
    back by its stopping worker, and one rescued from a lost worker all say so alike."""
    dataset = make_dataset(store)
    queued = store.create_job(make_job(store, dataset))
    store.cancel_job(queued.id)
    store.create_job(make_job(store, dataset))
    released = store.claim_job("w")
    store.create_job(make_job(store, dataset))
    lost = store.claim_job("w", lease_s=-1.0)  # a lease that has already run out
    assert released is not None and lost is not None
    for claim in (released, lost):
        assert store.cancel_job(claim.job.id).state is JobState.CANCELLING
    assert store.release_job(released) is JobState.CANCELLED
    assert store.rescue_expired() == [(lost.job.id, JobState.CANCELLED)]
    for job_id in (queued.id, released.job.id, lost.job.id):
        cancelled = store.get_job(job_id)
        assert (cancelled.state, cancelled.error) == (JobState.CANCELLED, CANCELLED_BY_REQUEST)


def test_page_sizes_are_bounded_as_the_protos_document() -> None:
    assert page_size_of(0) == 50
    assert page_size_of(7) == 7
    assert page_size_of(1000) == page_size_of(5000) == 1000
    with pytest.raises(InvalidArgument) as refused:
        page_size_of(-1)
    assert refused.value.violations[0].field == "page_size"


def test_events_are_numbered_without_gaps(store: Store) -> None:
    dataset = make_dataset(store)
    job = store.create_job(make_job(store, dataset))
    claim = store.claim_job("w")
    assert claim is not None
    store.record_epoch(claim, {"epoch": 1}, {"loss": 1.0}, [])
    store.finish_job(claim, JobState.SUCCEEDED)
    events = store.job_events(job.id)
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    assert [e.state for e in events] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    assert events[2].metrics == {"loss": 1.0}
    assert [e.sequence for e in store.job_events(job.id, after=2)] == [3, 4]


def test_a_dataset_in_use_is_refused_naming_five_jobs_and_counting_the_rest(
    store: Store,
) -> None:
    """The refusal named 5 of 7 unfinished jobs and did not say there were more."""
    dataset = make_dataset(store)
    jobs = sorted(store.create_job(make_job(store, dataset)).id for _ in range(7))
    with pytest.raises(FailedPrecondition) as refused:
        store.delete_dataset(dataset.id)
    named = ", ".join(f"jobs/{j}" for j in jobs[:5])
    assert refused.value.message == (
        f"datasets/{dataset.id} is used by unfinished jobs ({named} and 2 more); cancel them or "
        "wait for them to finish first"
    )


def test_deleting_a_cancelling_job_is_refused_saying_to_wait(store: Store) -> None:
    """It said "cancel it", which the caller had just done."""
    store.create_job(make_job(store, make_dataset(store)))
    claim = store.claim_job("w")
    assert claim is not None
    assert store.cancel_job(claim.job.id).state is JobState.CANCELLING
    with pytest.raises(FailedPrecondition) as refused:
        store.delete_job(claim.job.id)
    assert refused.value.message == (
        f"jobs/{claim.job.id} is CANCELLING; wait for its cancel to finish (within a batch of its "
        "training) before deleting"
    )


def test_checkpoint_retention_keeps_latest_and_best(store: Store) -> None:
    dataset = make_dataset(store)
    store.create_job(make_job(store, dataset))
    claim = store.claim_job("w")
    assert claim is not None
    losses = [0.9, 0.2, 0.5, 0.6, 0.7, 0.8]
    for epoch, loss in enumerate(losses, start=1):
        store.save_checkpoint(claim, epoch, epoch * 10, {"val_loss": loss}, b"x", keep=2)
    kept = store.list_checkpoints(claim.job.id)
    assert [c.epoch for c in kept] == [2, 5, 6]


def test_retention_keeps_the_best_and_the_newest_epoch_end_past_a_partial_one(
    store: Store,
) -> None:
    """A checkpoint written mid-epoch (on a stop or cancel) holds the last epoch end's metrics:
    it must not push out the checkpoint of that epoch end, nor the best one."""
    dataset = make_dataset(store)
    store.create_job(make_job(store, dataset))
    claim = store.claim_job("w")
    assert claim is not None
    store.save_checkpoint(claim, 1, 10, {"val_loss": 0.2}, b"x", keep=1)
    store.save_checkpoint(claim, 2, 20, {"val_loss": 0.5}, b"x", keep=1)
    store.save_checkpoint(claim, 2, 25, {"val_loss": 0.5}, b"x", keep=1, is_partial=True)
    kept = [(c.epoch, c.step, c.is_partial) for c in store.list_checkpoints(claim.job.id)]
    assert kept == [(1, 10, False), (2, 20, False), (2, 25, True)]
    # The run resumes from the partial one and ends epoch 3: the partial one is outdated.
    store.save_checkpoint(claim, 3, 30, {"val_loss": 0.4}, b"x", keep=1)
    kept = [(c.epoch, c.step, c.is_partial) for c in store.list_checkpoints(claim.job.id)]
    assert kept == [(1, 10, False), (3, 30, False)]


def test_a_partial_checkpoint_tying_with_the_best_does_not_replace_it(store: Store) -> None:
    dataset = make_dataset(store)
    store.create_job(make_job(store, dataset))
    claim = store.claim_job("w")
    assert claim is not None
    store.save_checkpoint(claim, 1, 10, {"val_loss": 0.3}, b"x", keep=1)
    store.save_checkpoint(claim, 1, 15, {"val_loss": 0.3}, b"x", keep=1, is_partial=True)
    kept = [(c.step, c.is_partial) for c in store.list_checkpoints(claim.job.id)]
    assert kept == [(10, False), (15, True)]
    latest = store.latest_resumable_checkpoint(claim.job.id)
    assert latest is not None and latest.step == 15, "a resume loads the partial one"


def test_best_follows_the_early_stopping_monitor_in_retention_and_listing(store: Store) -> None:
    """A job whose early stopping watches val_accuracy asks for its most accurate model. "best"
    was the lowest val_loss whatever the job monitored: here epoch 3, while early stopping
    restored epoch 1's weights, which the job's tests scored higher."""
    dataset = make_dataset(store)
    early = {"monitor": "val_accuracy", "patience": 2, "restore_best_weights": True}
    store.create_job(make_job(store, dataset, training={"epochs": 4, "early_stopping": early}))
    claim = store.claim_job("w")
    assert claim is not None
    scores = [(0.95, 0.30), (0.90, 0.25), (0.93, 0.20), (0.91, 0.22)]
    for epoch, (accuracy, loss) in enumerate(scores, start=1):
        metrics = {"val_accuracy": accuracy, "val_loss": loss}
        store.save_checkpoint(claim, epoch, epoch * 10, metrics, b"x", keep=1)
    kept = store.list_checkpoints(claim.job.id)
    assert [c.epoch for c in kept] == [1, 4], "retention keeps the most accurate and the latest"
    _, best_id, _ = store.checkpoints_page(claim.job.id, 0, "")
    assert best_id == kept[0].id
    assert best_checkpoint(kept, best_ranking(claim.job.training)) == kept[0]
    assert best_checkpoint(kept) == kept[1], "without a monitor: the lowest val_loss"


def test_best_ranking_takes_the_monitor_and_its_way_as_early_stopping_does() -> None:
    assert best_ranking({}) is None
    assert best_ranking({"early_stopping": {"monitor": "val_loss"}}) == ("val_loss", "min")
    assert best_ranking({"early_stopping": {"monitor": "val_r2"}}) == ("val_r2", "max")
    assert best_ranking({"early_stopping": {"monitor": "loss", "mode": "max"}}) == ("loss", "max")
    ranking = ("val_accuracy", "max")
    assert checkpoint_score({"val_accuracy": 0.9, "val_loss": 0.1}, ranking) == -0.9
    # A checkpoint without the key (one stored before early stopping logged it) falls back.
    assert checkpoint_score({"val_loss": 0.1}, ranking) == 0.1
    assert checkpoint_score({"val_accuracy": float("nan")}, ranking) == float("inf")


def test_checkpoint_pages_mark_the_best_of_all_the_jobs_checkpoints(store: Store) -> None:
    """Each page, however small, flags the job's best checkpoint (of all of them, a partial one
    never), not its own; a page's token continues after its last checkpoint."""
    dataset = make_dataset(store)
    store.create_job(make_job(store, dataset))
    claim = store.claim_job("w")
    assert claim is not None
    losses = [0.9, 0.8, 0.2, 0.7, 0.6, 0.5, 0.4]
    for epoch, loss in enumerate(losses, start=1):
        store.save_checkpoint(claim, epoch, epoch * 10, {"val_loss": loss}, b"x", keep=100)
    store.save_checkpoint(claim, 7, 75, {"val_loss": 0.01}, b"x", keep=100, is_partial=True)
    whole = store.list_checkpoints(claim.job.id)
    for size in (1, 2, 3, 8, 0):
        listed, bests, token = [], set(), ""
        while True:
            page, best_id, token = store.checkpoints_page(claim.job.id, size, token)
            assert 0 < len(page) <= (size or 1002)
            listed += page
            bests.add(best_id)
            if not token:
                break
        assert listed == whole, size
        assert bests == {whole[2].id}, size
    with pytest.raises(InvalidArgument) as refused:
        store.checkpoints_page(claim.job.id, -1, "")
    assert refused.value.violations[0].field == "page_size"
    other = page_scope("checkpoints", "another job")
    mine = page_scope("checkpoints", claim.job.id)
    for token in (
        "???",
        encode_page_token(("", whole[0].id), other),
        encode_page_token(("not an id", whole[0].id), mine),
        encode_page_token(("9" * 40, whole[0].id), mine),
    ):
        with pytest.raises(InvalidArgument) as refused:
            store.checkpoints_page(claim.job.id, 1, token)
        assert refused.value.violations[0].field == "page_token"


def test_one_listing_of_checkpoints_flags_one_best_while_the_job_checkpoints(
    store: Store,
) -> None:
    """Each page judged the best when it was read: a better checkpoint saved between two pages
    of one listing (a job still training) was flagged beside the one an earlier page had
    flagged. A listing flags the best as of its first page; the next listing sees the new one."""
    store.create_job(make_job(store, make_dataset(store)))
    claim = store.claim_job("w")
    assert claim is not None
    for epoch, loss in enumerate([0.1, 0.9, 0.9, 0.9], start=1):
        store.save_checkpoint(claim, epoch, epoch * 10, {"val_loss": loss}, b"x", keep=100)
    flagged: list[int] = []
    page, best_id, token = store.checkpoints_page(claim.job.id, 2, "")
    flagged += [c.id for c in page if c.id == best_id]
    store.save_checkpoint(claim, 5, 50, {"val_loss": 0.05}, b"x", keep=100)
    while token:
        page, best_id, token = store.checkpoints_page(claim.job.id, 2, token)
        flagged += [c.id for c in page if c.id == best_id]
    whole = store.list_checkpoints(claim.job.id)
    assert len(whole) == 5 and flagged == [whole[0].id]
    assert store.checkpoints_page(claim.job.id, 0, "")[1] == whole[4].id


def test_a_checkpoint_page_is_read_by_the_jobs_index_from_its_position_on_sqlite(
    sqlite_url: str,
) -> None:
    """A later page starts at its position in the index on (job_id, id), not at an OFFSET."""
    with _claimed_on_sqlite(sqlite_url) as (store, claim):
        for epoch in (1, 2, 3):
            store.save_checkpoint(claim, epoch, epoch, {"val_loss": 0.5}, b"x", keep=5)
        _, _, token = store.checkpoints_page(claim.job.id, 1, "")
        job = claim.job.id
        plans = _query_plans(store, lambda: store.checkpoints_page(job, 1, token), "checkpoints")
    # The best was judged by the first page, whose token carries it: nothing else is read.
    assert plans == ["SEARCH checkpoints USING INDEX ix_checkpoints_job_id_id (job_id=? AND id>?)"]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'trainwire.db'}"
    upgrade(url)
    return url


@contextlib.contextmanager
def _claimed_on_sqlite(sqlite_url: str) -> Iterator[tuple[Store, Claim]]:
    """A store on the SQLite file and a job claimed in it, for tests that read its query plans;
    the engine is disposed after."""
    database = Database(sqlite_url)
    try:
        store = Store(database)
        store.create_job(make_job(store, make_dataset(store)))
        claim = store.claim_job("w")
        assert claim is not None
        yield store, claim
    finally:
        database.dispose()


def bytes_read_by_this_process() -> int:
    """Bytes this process has read through read()/pread() so far (Linux's /proc/self/io)."""
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no rchar")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
def test_listing_checkpoints_does_not_read_their_bytes_on_sqlite(sqlite_url: str) -> None:
    size = 2 * 1024 * 1024
    with _claimed_on_sqlite(sqlite_url) as (store, claim):
        for epoch in (1, 2):
            store.save_checkpoint(claim, epoch, epoch, {"loss": 1.0}, bytes([epoch]) * size)
    # A new connection has an empty page cache: every page it needs is read from the files.
    reader = Database(sqlite_url)
    try:
        store = Store(reader)
        before = bytes_read_by_this_process()
        listed = store.list_checkpoints(claim.job.id)
        listing = bytes_read_by_this_process() - before
        before = bytes_read_by_this_process()
        data = store.checkpoint_data(listed[0].id)
        loading = bytes_read_by_this_process() - before
    finally:
        reader.dispose()
    assert [c.size_bytes for c in listed] == [size, size]
    assert data == bytes([1]) * size
    assert loading >= size, "the counter sees the reads of a checkpoint's bytes"
    assert listing < size // 8, f"listing read {listing} bytes"


@pytest.fixture
def store_without_cascades(sqlite_url: str) -> Iterator[Store]:
    """A store on SQLite with foreign keys off, so ON DELETE CASCADE does nothing."""
    database = Database(sqlite_url)

    # Runs after the engine's own connect hook, which turns foreign keys on.
    @event.listens_for(database.engine, "connect")
    def _foreign_keys_off(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA foreign_keys = OFF")

    try:
        yield Store(database)
    finally:
        database.dispose()


def test_checkpoint_bytes_are_deleted_with_their_checkpoints(
    store_without_cascades: Store,
) -> None:
    store = store_without_cascades
    store.create_job(make_job(store, make_dataset(store)))
    claim = store.claim_job("w")
    assert claim is not None
    for epoch, loss in enumerate([0.5, 0.9, 0.8], start=1):
        store.save_checkpoint(claim, epoch, epoch, {"val_loss": loss}, bytes([epoch]), keep=1)

    def stored() -> tuple[list[int], list[int]]:
        with store.db.read() as session:
            checkpoints = session.scalars(select(CheckpointRow.id).order_by(CheckpointRow.id))
            blobs = session.scalars(
                select(CheckpointBlobRow.checkpoint_id).order_by(CheckpointBlobRow.checkpoint_id)
            )
            return list(checkpoints), list(blobs)

    kept = [c.id for c in store.list_checkpoints(claim.job.id)]
    assert len(kept) == 2, "retention keeps the latest and the best"
    assert stored() == (kept, kept)
    store.finish_job(claim, JobState.SUCCEEDED)
    store.delete_job(claim.job.id)
    assert stored() == ([], [])


def test_a_non_finite_score_is_never_the_best_kept(sqlite_url: str) -> None:
    """SQLite stores such values (PostgreSQL's JSON cannot): NaN compares false either way, so
    it would have won "best" whenever it was looked at first."""
    assert checkpoint_score({"val_loss": float("nan"), "loss": 0.1}) == float("inf")
    assert checkpoint_score({"val_loss": float("-inf")}) == float("inf")
    with _claimed_on_sqlite(sqlite_url) as (store, claim):
        for epoch, loss in enumerate([0.5, float("nan"), float("-inf")], start=1):
            store.save_checkpoint(claim, epoch, epoch, {"val_loss": loss}, b"x", keep=1)
        assert [c.epoch for c in store.list_checkpoints(claim.job.id)] == [1, 3]


# --- DeleteDataset against CreateJob on PostgreSQL (READ COMMITTED: each waits on a row lock) ---


@pytest.fixture
def postgres_store(postgres_server_url: str) -> Iterator[Store]:
    url = fresh_postgres_database(postgres_server_url)
    upgrade(url)
    database = Database(url)
    try:
        yield Store(database)
    finally:
        database.dispose()


def wait_for_a_lock_wait(store: Store, what: str) -> None:
    """Returns once a session of this database waits on a lock (each look is a transaction of
    its own: pg_stat_activity is read once per transaction)."""
    deadline = time.monotonic() + 60
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while True:
        with store.db.engine.connect() as connection:
            if connection.execute(waiting).scalar():
                return
        assert time.monotonic() < deadline, f"{what} never waited on a lock"
        time.sleep(0.01)


@pytest.mark.postgres
def test_a_delete_waits_for_a_job_being_created_then_refuses(
    postgres_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlocked, the delete's check missed the uncommitted job, and its DELETE then set the
    committed job's dataset to NULL: a QUEUED job with no data."""
    store = postgres_store
    dataset = make_dataset(store)
    # The job and its event are inserted; the transaction is still open.
    inserted, release = paused_after(monkeypatch, store, "_notify")
    with ThreadPoolExecutor(2) as pool:
        creating = pool.submit(store.create_job, make_job(store, dataset))
        assert inserted.wait(60)
        deleting = pool.submit(store.delete_dataset, dataset.id)
        wait_for_a_lock_wait(store, "DeleteDataset")
        release.set()
        job: Job = creating.result(60)
        with pytest.raises(FailedPrecondition, match="used by unfinished jobs"):
            deleting.result(60)
    assert store.get_job(job.id).dataset_id == dataset.id
    assert store.get_dataset(dataset.id) == dataset


@pytest.mark.postgres
def test_a_create_waits_for_a_dataset_being_deleted_then_answers_not_found(
    postgres_store: Store,
) -> None:
    """Unlocked, the create read the row, and its insert failed on the foreign key once the
    delete committed: an IntegrityError answered INTERNAL."""
    store = postgres_store
    dataset = make_dataset(store)
    with store.db.engine.connect() as deleting, ThreadPoolExecutor(1) as pool:
        # What a DeleteDataset holds after its last statement: the row deleted, not committed.
        deleting.execute(
            text("SELECT id FROM datasets WHERE id = :id FOR UPDATE"), {"id": dataset.id}
        )
        deleting.execute(text("DELETE FROM datasets WHERE id = :id"), {"id": dataset.id})
        creating = pool.submit(store.create_job, make_job(store, dataset))
        wait_for_a_lock_wait(store, "CreateJob")
        deleting.commit()
        with pytest.raises(NotFound, match=f"datasets/{dataset.id} does not exist"):
            creating.result(60)
    assert store.list_jobs(10, "")[0] == []


# --- a session that hangs holding a job's row (its process frozen or cut off mid-transaction) ---


def hold_job_row(connection: Any, job_id: str) -> None:
    """What a worker frozen inside its heartbeat holds: the job's row locked, not committed."""
    connection.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})


@pytest.mark.postgres
def test_a_hung_trainwire_session_is_ended_so_its_job_is_rescued(postgres_store: Store) -> None:
    """A frozen worker's session kept its FOR UPDATE lock for ever, and `rescue_expired`, which
    skips locked rows, never took the job; the database now ends a session left idle in a
    transaction for a lease, and a CancelJob waiting on it then goes through."""
    store = postgres_store
    lease_s = 1.0
    frozen = Database(store.db.url, idle_in_transaction_s=lease_s)  # as the worker makes it
    try:
        dataset = make_dataset(store)
        rescued = store.create_job(make_job(store, dataset))
        cancelled = store.create_job(make_job(store, dataset))
        for _ in range(2):
            assert Store(frozen).claim_job("frozen", lease_s=lease_s) is not None
        held = [frozen.engine.connect() for _ in range(2)]
        started = time.monotonic()
        hold_job_row(held[0], rescued.id)
        hold_job_row(held[1], cancelled.id)
        # Unfixed, CancelJob waits API_LOCK_WAIT_S on the hung session and raises Unavailable.
        assert store.cancel_job(cancelled.id).state is JobState.CANCELLING
        found: dict[str, JobState] = {}
        deadline = started + lease_s * 2 + 5  # the lease, the idle bound, and a loaded machine
        while len(found) < 2 and time.monotonic() < deadline:
            found.update(store.rescue_expired())
            time.sleep(0.1)
        assert found == {rescued.id: JobState.QUEUED, cancelled.id: JobState.CANCELLED}
        for connection in held:
            connection.invalidate()  # ended by the database: nothing to roll back
    finally:
        frozen.dispose()


@pytest.mark.postgres
def test_cancel_and_delete_answer_unavailable_while_a_hung_session_holds_the_job(
    postgres_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session the database does not end (another program's, or a Trainwire's older than the
    bound) held CancelJob's and DeleteJob's server thread past the call's deadline, for ever;
    they now wait `API_LOCK_WAIT_S` and answer UNAVAILABLE, which the SDK retries."""
    monkeypatch.setattr(store_module, "API_LOCK_WAIT_S", 0.5)
    store = postgres_store
    dataset = make_dataset(store)
    running = store.create_job(make_job(store, dataset))
    assert store.claim_job("w") is not None
    finished = store.create_job(make_job(store, dataset))
    store.cancel_job(finished.id)
    with store.db.engine.connect() as hung, ThreadPoolExecutor(2) as pool:
        hold_job_row(hung, running.id)
        hold_job_row(hung, finished.id)
        cancelling = pool.submit(store.cancel_job, running.id)
        deleting = pool.submit(store.delete_job, finished.id)
        try:
            for call, job_id in ((cancelling, running.id), (deleting, finished.id)):
                with pytest.raises(Unavailable, match=f"jobs/{job_id} is locked.*try again"):
                    call.result(10)
        finally:
            hung.rollback()  # releases a call that is still waiting (unfixed: for ever)
    assert store.get_job(running.id).state is JobState.RUNNING
    store.delete_job(finished.id)  # once the row is free, it goes through


# --- a checkpoint's blob being sent (a big model's: tens of MB) and its job's other writes ---


def claimed_job(store: Store) -> Claim:
    store.create_job(make_job(store, make_dataset(store)))
    claim = store.claim_job("w")
    assert claim is not None
    return claim


@pytest.mark.postgres
def test_a_cancel_does_not_wait_for_a_checkpoint_being_sent(
    postgres_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint held its job's row FOR UPDATE while its blob was sent, and its row's foreign
    key held it in KEY SHARE, which FOR UPDATE waits for too: a CancelJob meanwhile waited
    `API_LOCK_WAIT_S` and answered UNAVAILABLE."""
    monkeypatch.setattr(store_module, "API_LOCK_WAIT_S", 0.5)  # unfixed, the refusal comes sooner
    store = postgres_store
    claim = claimed_job(store)
    # The blob goes by COPY (PostgreSQL), outside SQLAlchemy's statement events.
    sending, release = paused_before_call(monkeypatch, store, "_write_blob")
    with ThreadPoolExecutor(1) as pool:
        saving = pool.submit(store.save_checkpoint, claim, 1, 10, {"loss": 1.0}, b"weights")
        assert sending.wait(60)
        assert store.cancel_job(claim.job.id).state is JobState.CANCELLING
        assert not saving.done(), "the checkpoint's transaction was open all along"
        release.set()
        checkpoint = saving.result(60)
    assert store.list_checkpoints(claim.job.id) == [checkpoint]
    assert store.held_job_state(claim) is JobState.CANCELLING


@pytest.mark.postgres
def test_a_checkpoint_whose_lease_went_while_it_was_sent_is_not_stored(
    postgres_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's row is held in KEY SHARE alone while the blob is sent, which does not stop the
    claim's own last write (the job finished here); the lease is checked again once the blob is
    sent, under the lock the job's other writes take."""
    store = postgres_store
    claim = claimed_job(store)
    sending, release = paused_before_call(monkeypatch, store, "_write_blob")
    with ThreadPoolExecutor(2) as pool:
        saving = pool.submit(store.save_checkpoint, claim, 1, 10, {"loss": 1.0}, b"weights")
        assert sending.wait(60)
        finishing = pool.submit(store.finish_job, claim, JobState.FAILED, "stopped")
        assert finishing.result(60).state is JobState.FAILED
        release.set()
        with pytest.raises(LeaseLost):
            saving.result(60)
    assert store.list_checkpoints(claim.job.id) == []


@pytest.mark.postgres
def test_a_retry_racing_its_first_try_s_commit_stores_the_checkpoint_once(
    postgres_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write's first try was still committing when its retry looked for it (the connection
    dropped at the commit). The retry no longer waits for it before sending its blob: it finds
    it once it is committed, and stores nothing more."""
    store = postgres_store
    claim = claimed_job(store)
    committing, release = paused_after(monkeypatch, store, "_apply_retention")
    write = (store.save_checkpoint, claim, 1, 10, {"loss": 1.0}, b"weights")
    with ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(*write)
            assert committing.wait(60)
            retry = pool.submit(*write)
            wait_for_a_lock_wait(store, "the retry")
        finally:
            release.set()
        stored = first.result(60)
        assert retry.result(60) == stored
    assert store.list_checkpoints(claim.job.id) == [stored]


def test_an_unreachable_database_is_reported_without_its_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Unavailable reaches clients over gRPC: the driver's text (host, port, user) goes to the
    server's log only."""
    database = Database("postgresql+psycopg://secretuser:hunter2@127.0.0.1:1/nowhere")
    try:
        with (
            caplog.at_level(logging.DEBUG, logger="trainwire.db"),
            pytest.raises(Unavailable) as caught,
        ):
            Store(database).queue_depth()
    finally:
        database.dispose()
    assert caught.value.message == "The database is unreachable; try again shortly"
    assert "127.0.0.1" in caplog.text and "port 1" in caplog.text


def test_a_listing_of_rows_refuses_a_metrics_position(store: Store) -> None:
    """One token format for every listing: a (metric name, step) token is not a row's place."""
    make_dataset(store)
    metrics_token = encode_page_token(("loss", 3), page_scope("datasets"))
    with pytest.raises(InvalidArgument) as refused:
        store.list_datasets(10, metrics_token)
    assert refused.value.message == "page_token: is not a token returned by a previous List call"


class ThrottledProxy:
    """Forwards 127.0.0.1:<port> to `target` (host, port), the client's bytes at `rate`
    bytes/s: a big write sent over a slow link."""

    def __init__(self, target: tuple[str, int], rate: float) -> None:
        self.target = target
        self.rate = rate
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, throttled: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                for start in range(0, len(data), 16384):
                    target.sendall(data[start : start + 16384])
                    if throttled:
                        time.sleep(16384 / self.rate)
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@pytest.mark.postgres
def test_a_big_write_sent_slower_than_the_idle_bound_is_not_cut(postgres_store: Store) -> None:
    """From a statement's 5th run on a connection psycopg prepared it, and its parameters then
    arrived in a message of their own, received while PostgreSQL's idle-in-transaction clock ran:
    a checkpoint sent slower than the lease was ended as a hung session (UNAVAILABLE)."""
    database = make_url(postgres_store.db.url)
    proxy = ThrottledProxy((database.host or "127.0.0.1", database.port or 5432), 2_000_000)
    url = database.set(host="127.0.0.1", port=proxy.port)
    slow = Database(url.render_as_string(hide_password=False), idle_in_transaction_s=1.0)
    try:
        with slow.write() as session:
            session.execute(text("CREATE TABLE big_writes (data bytea)"))
        payload = b"\x01" * 2_500_000  # 1.25 s at 2 MB/s: longer than the idle bound
        for _ in range(7):
            with slow.write() as session:
                session.execute(text("INSERT INTO big_writes VALUES (:data)"), {"data": payload})
        with slow.read() as session:
            assert session.scalar(text("SELECT count(*) FROM big_writes")) == 7
    finally:
        slow.dispose()
        proxy.listener.close()


def test_a_sqlite_write_lock_held_past_the_busy_timeout_is_unavailable(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process frozen inside a write held SQLite's lock: every other write waited the busy
    timeout and raised "database is locked" as it was, answered INTERNAL, and a worker's write
    failed its job for good. It is Unavailable, which clients and `with_retry` retry."""
    from trainwire.server import db as db_module

    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 50)
    database = Database(sqlite_url)
    store = Store(database)
    dataset = make_dataset(store)
    holder = sqlite3.connect(make_url(sqlite_url).database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the frozen writer
        with pytest.raises(Unavailable, match="locked by another write; try again shortly"):
            store.create_job(make_job(store, dataset))
        holder.execute("ROLLBACK")
        assert store.create_job(make_job(store, dataset)).state is JobState.QUEUED
    finally:
        holder.close()
        database.dispose()


@pytest.mark.postgres
def test_a_checkpoint_frozen_mid_send_does_not_keep_its_job_from_rescue_or_claim(
    postgres_store: Store,
) -> None:
    """A worker frozen while it sent a checkpoint held the job's row in KEY SHARE (what the
    checkpoint's foreign key takes) from a statement still arriving, which the database never
    ends as idle; the rescue and the claim, FOR UPDATE SKIP LOCKED, skipped the job for as long
    as the worker stayed frozen. They lock FOR NO KEY UPDATE now, and the frozen save, once it
    resumes, finds its lease lost."""
    store = postgres_store
    dataset = make_dataset(store)
    job = store.create_job(make_job(store, dataset))
    frozen = store.claim_job("frozen", lease_s=-1.0)  # its lease has run out
    assert frozen is not None
    with store.db.engine.connect() as sending:
        sending.execute(
            text("SELECT id FROM jobs WHERE id = :id FOR KEY SHARE"), {"id": job.id}
        )  # as the checkpoint being sent holds it
        assert dict(store.rescue_expired()) == {job.id: JobState.QUEUED}
        taken = store.claim_job("healthy", lease_s=60.0)
        assert taken is not None and taken.job.id == job.id
        sending.rollback()
    with pytest.raises(LeaseLost):
        store.save_checkpoint(frozen, 1, 1, {"loss": 1.0}, b"frozen")
    assert store.list_checkpoints(job.id) == []


@pytest.mark.postgres
def test_a_connection_lost_while_a_datasets_bytes_are_copied_is_an_outage(
    postgres_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes go by COPY, which the driver runs outside SQLAlchemy. A connection lost there
    raises psycopg's own error; the transaction's rollback then fails through SQLAlchemy, which
    invalidates the connection, so the caller is answered UNAVAILABLE, as for a statement."""
    store = postgres_store
    write = Store._write_blob

    def lost_first(self: Store, session: Any, table: Any, dataset_id: str, data: Any) -> None:
        driver = session.connection().connection.driver_connection
        with store.db.engine.connect() as other:
            other.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": driver.info.backend_pid}
            )
        write(self, session, table, dataset_id, data)

    dataset = replace(make_dataset(store), id=new_id())
    monkeypatch.setattr(Store, "_write_blob", lost_first)
    with pytest.raises(Unavailable, match="The database is unreachable"):
        store.create_dataset(dataset, b"x" * 100)
    monkeypatch.undo()
    # The pool dropped the lost connection: the next write succeeds at once.
    stored = store.create_dataset(dataset, b"x" * 100)
    assert stored == replace(dataset, created_at=stored.created_at)  # the database's time
    assert store.dataset_data(dataset.id) == b"x" * 100


def test_every_event_shows_the_jobs_progress_with_its_total_epochs(store: Store) -> None:
    """Events no epoch end wrote (queued, claimed, a cancel request) showed a progress of all
    zeros: a watcher read 0 of 0 epochs until the first epoch ended, and its progress fell back
    to 0 at a cancel request (the SDK hid it by taking the total from GetJob)."""
    dataset = make_dataset(store)
    job = store.create_job(make_job(store, dataset, training={"epochs": 5}))
    claim = store.claim_job("w", lease_s=60.0)
    assert claim is not None
    progress = {"epoch": 2, "total_epochs": 5, "step": 4, "total_steps": 10}
    store.record_epoch(claim, progress, {"loss": 0.5}, [])
    store.cancel_job(job.id)
    events = store.job_events(job.id)
    assert [e.message for e in events] == [
        "queued",
        "running on w (attempt 1)",
        "epoch 2 done",
        "cancel requested; stopping at the next batch",
    ]
    assert [(e.progress.get("epoch", 0), e.progress["total_epochs"]) for e in events] == [
        (0, 5),
        (0, 5),
        (2, 5),
        (2, 5),
    ]
    # A job that ends before its first epoch (failed, cancelled while queued or claimed): its
    # last event, what a watch ends on, showed no progress at all.
    failing = store.create_job(make_job(store, dataset, training={"epochs": 7}))
    claim = store.claim_job("w", lease_s=60.0)
    assert claim is not None and claim.job.id == failing.id
    store.finish_job(claim, JobState.FAILED, error="the dataset is gone")
    last = store.job_events(failing.id)[-1]
    assert last.message == "the dataset is gone" and last.progress["total_epochs"] == 7


@pytest.mark.postgres
def test_a_connection_lost_while_a_blob_is_read_is_an_outage(postgres_store: Store) -> None:
    """A blob is read by COPY, outside SQLAlchemy, as it is written: a connection lost partway
    is answered UNAVAILABLE (which the worker retries), and the pool drops it."""
    store = postgres_store
    dataset = replace(make_dataset(store), id=new_id())
    data = bytes(range(256)) * 20000  # 5 MB: several pieces
    store.create_dataset(dataset, data)

    def lost_midway(pieces: Iterable[bytes], size: int) -> bytes:
        iterator = iter(pieces)
        first = next(iterator)
        with store.db.engine.connect() as other:
            other.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'COPY (SELECT piece, data%'"
                )
            )
        return first + b"".join(iterator)

    with pytest.raises(Unavailable, match="The database is unreachable"):
        store._read_blob(DatasetBlobRow, dataset.id, lost_midway)
    assert store.dataset_data(dataset.id) == data


def test_blobs_are_stored_in_pieces_of_a_mebibyte_and_read_back_whole(store: Store) -> None:
    """A dataset's and a checkpoint's bytes are rows of 1 MiB pieces, not one value: pg_dump
    writes a bytea as hex text, twice its size, which PostgreSQL builds only up to 1 GB, so one
    value over 512 MiB failed the whole dump (a 45M-parameter model with Adam checkpoints 539
    MB). Both read back byte for byte; an empty value is one empty piece."""
    mib = 1024 * 1024
    data = np.random.default_rng(1).bytes(2 * mib + 1000)
    dataset = store.create_dataset(replace(make_dataset(store), id=new_id()), data)
    claim = claimed_job(store)
    checkpoint = store.save_checkpoint(claim, 1, 10, {"loss": 0.5}, data[::-1], keep=3)
    empty = store.create_dataset(replace(make_dataset(store), id=new_id()), b"")

    def pieces(table: type[DatasetBlobRow] | type[CheckpointBlobRow], key: object) -> list[Any]:
        column = table.dataset_id if table is DatasetBlobRow else table.checkpoint_id  # type: ignore[union-attr]
        with store.db.read() as session:
            rows = session.execute(
                select(table.piece, func.length(table.data))
                .where(column == key)
                .order_by(table.piece)
            )
            return [tuple(row) for row in rows]

    assert pieces(DatasetBlobRow, dataset.id) == [(0, mib), (1, mib), (2, 1000)]
    assert pieces(CheckpointBlobRow, checkpoint.id) == [(0, mib), (1, mib), (2, 1000)]
    assert pieces(DatasetBlobRow, empty.id) == [(0, 0)]
    assert store.dataset_data(dataset.id) == data
    assert store.checkpoint_data(checkpoint.id) == data[::-1]
    assert store.dataset_data(empty.id) == b""
