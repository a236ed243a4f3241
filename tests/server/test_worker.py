"""The worker in this process against a real store (SQLite, and PostgreSQL when configured): a
job stopped or cancelled at a chosen batch, what it writes, and how a resumed run ends.

A stop or cancel is injected when the trainer finishes a given step (`at_step`), where SIGTERM or
the lease keeper's poll would land; the lease keeper can be kept from polling (`keeper_asleep`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, cast

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sqlalchemy import text, update
from sqlalchemy.exc import OperationalError

from trainwire.engine import Trainer, load_state, save_state
from trainwire.server import app, worker
from trainwire.server.config import Settings
from trainwire.server.errors import Unavailable
from trainwire.server.logs import JsonFormatter
from trainwire.server.metrics import WORKER_METRICS
from trainwire.server.models import CheckpointBlobRow, JobRow
from trainwire.server.predictions import PredictionService
from trainwire.server.records import Claim, Dataset, Job, JobState, NewJob, TaskKind
from trainwire.server.status import collect_status
from trainwire.server.store import CANCELLED_BY_REQUEST, Store, new_id, utcnow
from trainwire.server.training import MAX_KEEP_CHECKPOINTS, build_model, build_trainer
from trainwire.server.wakeup import Wakeup
from trainwire.server.worker import (
    JobRecorder,
    LeaseKeeper,
    PersistWriter,
    TrainingDiverged,
    Worker,
    run_job,
    split_validation,
)

EXAMPLES = 40
BATCH_SIZE = 4
STEPS_PER_EPOCH = EXAMPLES // BATCH_SIZE
EPOCHS = 3
MODEL = {"input_dim": 3, "layers": [{"type": "dense", "units": 1}]}


def regression_dataset(store: Store, huge_rows: Sequence[int] = ()) -> Dataset:
    """40 examples of 3 features and a linear target, stored as an upload would store them.
    The features of `huge_rows` are 3e38: finite, so an upload accepts them, but a float32
    forward pass over them overflows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(EXAMPLES, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5])).astype(np.float32)
    x[list(huge_rows)] = 3e38
    dataset = Dataset(
        id=new_id(),
        project="default",
        display_name="linear",
        task=TaskKind.REGRESSION,
        num_classes=0,
        num_examples=EXAMPLES,
        feature_dtype="float32",
        feature_shape=(EXAMPLES, 3),
        target_dtype="float32",
        target_shape=(EXAMPLES,),
        size_bytes=x.nbytes + y.nbytes,
        sha256="0" * 64,
        labels={},
        feature_names=[],
        class_names=[],
        created_at=utcnow(),
    )
    return store.create_dataset(dataset, save_state({"features": x, "targets": y}))


def submit(store: Store, dataset: Dataset, **training: Any) -> Job:
    """A job as the job service would store it (every training default filled in)."""
    config = {
        "epochs": EPOCHS,
        "batch_size": BATCH_SIZE,
        "loss": "mse",
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "validation_fraction": 0.0,
        "seed": 7,
        "metrics": ["mae"],
        "checkpoint_every_epochs": 0,
        "log_every_steps": 0,
        "keep_checkpoints": 0,
        "dtype": "float32",
        **training,
    }
    new = NewJob(dataset_id=dataset.id, model_spec=MODEL, training=config)
    return store.create_job(new)


def run_next(store: Store, stop: threading.Event | None = None, lease_s: float = 30.0) -> JobState:
    """Claims the next job and runs it as a worker would; returns the state it left."""
    claim = store.claim_job("test-worker", lease_s=lease_s)
    assert claim is not None, "a job is queued"
    return run_job(store, Settings(lease_s=lease_s), claim, stop or threading.Event())


def at_step(
    monkeypatch: pytest.MonkeyPatch, step: int, action: Callable[[JobRecorder], None]
) -> None:
    """Runs `action` when the trainer has finished `step`, before the recorder looks at it."""
    original = JobRecorder.on_batch_end

    def on_batch_end(self: JobRecorder, trainer: Trainer, at: int, logs: dict[str, float]) -> None:
        if at == step:
            action(self)
        original(self, trainer, at, logs)

    monkeypatch.setattr(JobRecorder, "on_batch_end", on_batch_end)


@pytest.fixture
def keeper_asleep(monkeypatch: pytest.MonkeyPatch) -> float:
    """A lease (returned) so long, and a cancel poll so rare, that the lease keeper never reads
    the job while a test's run lasts: a cancel is then seen only where the test makes it seen."""
    monkeypatch.setattr(worker, "CANCEL_POLL_S", 3600.0)
    return 3600.0


def test_lease_keeper_outlives_an_unexpected_database_error(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's "database is locked" is no connection error (not Unavailable): the keeper must
    still go on watching and renewing, or the job would lose its lease while it trains."""
    job = submit(store, regression_dataset(store))
    claim = store.claim_job("test-worker", lease_s=60.0)
    assert claim is not None
    polls: list[str] = []
    read_state = store.held_job_state

    def flaky_read(held: Claim) -> JobState:
        polls.append("poll")
        if len(polls) == 1:
            raise OperationalError("SELECT jobs.state", {}, Exception("database is locked"))
        return read_state(held)

    monkeypatch.setattr(store, "held_job_state", flaky_read)
    monkeypatch.setattr(worker, "CANCEL_POLL_S", 0.01)
    store.cancel_job(job.id)
    keeper = LeaseKeeper(store, claim, 60.0)
    keeper.start()
    try:
        seen = keeper.cancel_requested.wait(30)
    finally:
        keeper.done.set()
        keeper.join()
    assert len(polls) >= 2, "the keeper polled again after the error"
    assert seen, "the cancel request was seen after the error"
    assert not keeper.lost.is_set()


def test_a_cancel_the_worker_has_not_seen_when_it_stops_still_cancels(
    store: Store, monkeypatch: pytest.MonkeyPatch, keeper_asleep: float
) -> None:
    job = submit(store, regression_dataset(store))

    def cancel_then_sigterm(recorder: JobRecorder) -> None:
        assert store.cancel_job(job.id).state is JobState.CANCELLING
        recorder.stop.set()

    at_step(monkeypatch, 3, cancel_then_sigterm)
    assert run_next(store, lease_s=keeper_asleep) is JobState.CANCELLED
    cancelled = store.get_job(job.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.ended_at is not None
    assert store.list_checkpoints(job.id), "the job checkpointed before it stopped"
    assert store.claim_job("another-worker") is None, "the job does not run again"


def test_batch_losses_carry_the_epoch_their_step_belongs_to(store: Store) -> None:
    """Numbered from 1, as the epoch metrics are: steps 1-10 are epoch 1's."""
    job = submit(store, regression_dataset(store), log_every_steps=1)
    assert run_next(store) is JobState.SUCCEEDED
    values = store.metric_values(job.id)
    batches = [(v.step, v.epoch) for v in values if v.name == "batch_loss"]
    steps = range(1, EPOCHS * STEPS_PER_EPOCH + 1)
    assert batches == [(step, (step - 1) // STEPS_PER_EPOCH + 1) for step in steps]
    epochs = [(v.step, v.epoch) for v in values if v.name == "loss"]
    assert epochs == [(epoch * STEPS_PER_EPOCH, epoch) for epoch in range(1, EPOCHS + 1)]


def metric_rows(store: Store, job: Job) -> list[tuple[str, int, int, float]]:
    return [(v.name, v.step, v.epoch, v.value) for v in store.metric_values(job.id)]


def test_a_run_stopped_mid_epoch_ends_with_the_metrics_of_an_uninterrupted_one(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-batch values logged before the stop are written before the job is handed back:
    the resumed run starts after them and never logs them again."""
    dataset = regression_dataset(store)
    reference = submit(store, dataset, log_every_steps=1)
    assert run_next(store) is JobState.SUCCEEDED
    job = submit(store, dataset, log_every_steps=1)
    at_step(monkeypatch, STEPS_PER_EPOCH + 5, lambda recorder: recorder.stop.set())
    assert run_next(store) is JobState.QUEUED
    batches = [step for name, step, _, _ in metric_rows(store, job) if name == "batch_loss"]
    assert batches == list(range(1, STEPS_PER_EPOCH + 6))
    monkeypatch.undo()
    assert run_next(store) is JobState.SUCCEEDED
    assert metric_rows(store, job) == metric_rows(store, reference)


def test_a_run_cancelled_mid_epoch_keeps_its_batch_losses(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = submit(store, regression_dataset(store), log_every_steps=1)

    def cancel(recorder: JobRecorder) -> None:
        store.cancel_job(job.id)
        recorder.keeper.cancel_requested.set()  # as the keeper's next poll would

    at_step(monkeypatch, STEPS_PER_EPOCH + 5, cancel)
    assert run_next(store) is JobState.CANCELLED
    assert store.get_job(job.id).error == CANCELLED_BY_REQUEST
    rows = metric_rows(store, job)
    assert [step for name, step, _, _ in rows if name == "batch_loss"] == list(
        range(1, STEPS_PER_EPOCH + 6)
    )
    assert [step for name, step, _, _ in rows if name == "loss"] == [STEPS_PER_EPOCH]


@pytest.mark.parametrize(
    ("rows", "fraction", "seed"), [(150, 0.2, 0), (100, 0.29, 7), (569, 0.25, 2**40)]
)
def test_the_validation_rows_are_the_ones_the_readme_says(
    rows: int, fraction: float, seed: int
) -> None:
    """README "Validation rows" (and the proto's validation_fraction): a user recomputing the
    val_ metrics selects the rows by this recipe, which must stay the worker's split."""
    features = np.arange(rows, dtype=np.float64)[:, None]
    train_x, train_y, held = split_validation(features, np.arange(rows), fraction, seed)
    val = np.sort(np.random.default_rng(seed).permutation(rows)[: int(rows * fraction)])
    train = np.setdiff1d(np.arange(rows), val)
    assert held is not None
    assert held[1].tolist() == val.tolist()
    assert held[0][:, 0].tolist() == val.tolist()
    assert train_y.tolist() == train.tolist()
    assert train_x[:, 0].tolist() == train.tolist()


def test_a_jobs_validation_metrics_are_scikit_learns_on_the_readme_rows(store: Store) -> None:
    """What a user recomputing them does: the final model's outputs on the rows the README's
    recipe holds out, scored by scikit-learn, give the job's val_ metrics."""
    job = submit(store, regression_dataset(store), validation_fraction=0.3, metrics=["mae", "r2"])
    assert run_next(store) is JobState.SUCCEEDED
    rng = np.random.default_rng(0)  # regression_dataset's rows
    x = rng.normal(size=(EXAMPLES, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5])).astype(np.float32)
    val = np.sort(np.random.default_rng(7).permutation(EXAMPLES)[: int(EXAMPLES * 0.3)])
    model = build_model(MODEL, job.training)
    model.load_state_dict(
        {k.removeprefix("model."): v for k, v in final_weights(store, job).items()}
    )
    outputs = model.predict(x[val]).astype(np.float64)[:, 0]
    reported = store.get_job(job.id).metrics
    assert reported["val_mae"] == pytest.approx(mean_absolute_error(y[val], outputs), rel=1e-6)
    assert reported["val_r2"] == pytest.approx(r2_score(y[val], outputs), rel=1e-6)
    assert reported["val_loss"] == pytest.approx(mean_squared_error(y[val], outputs), rel=1e-6)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_non_finite_validation_metric_fails_the_job_with_a_readable_reason(
    store: Store,
) -> None:
    """Training stays finite while a held-out example makes val_loss overflow: the job fails
    naming the metric, not with the database's refusal of the value (SQLite stores NaN as NULL,
    PostgreSQL's JSON has no NaN)."""
    rows = np.arange(EXAMPLES)
    _, _, held = split_validation(rows, rows.copy(), 0.25, seed=7)
    assert held is not None
    job = submit(store, regression_dataset(store, huge_rows=held[0][:1]), validation_fraction=0.25)
    assert Worker(store, Settings(), "test-worker", threading.Event()).run_once()
    failed = store.get_job(job.id)
    assert failed.state is JobState.FAILED
    assert failed.error == (
        "the metric val_loss became inf in epoch 1; lower the learning rate or scale the features"
    )
    assert store.metric_values(job.id) == [], "no value of the epoch was written"


def test_a_nan_metric_is_refused_before_the_epoch_is_written(store: Store) -> None:
    """NaN, which SQLite would store as NULL in a NOT NULL column."""
    job = submit(store, regression_dataset(store))
    claim = store.claim_job("test-worker")
    assert claim is not None
    trainer = build_trainer(build_model(MODEL, job.training), job.training)
    writer = PersistWriter(retry_s=1.0)
    keeper = LeaseKeeper(store, claim, 30.0)  # never started: nothing here polls
    recorder = JobRecorder(store, Settings(), claim, threading.Event(), keeper, writer, EXAMPLES)
    try:
        with pytest.raises(TrainingDiverged, match=r"^the metric val_mae became nan in epoch 2;"):
            recorder.on_epoch_end(trainer, 1, {"loss": 0.5, "val_mae": float("nan")})
        writer.flush()
    finally:
        writer.close()
    assert store.metric_values(job.id) == []
    assert store.get_job(job.id).metrics == {}


def test_a_checkpoint_written_mid_epoch_is_partial_and_a_resume_loads_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its epoch and metrics are those of the last epoch end; its weights are not."""
    job = submit(store, regression_dataset(store), checkpoint_every_epochs=1)
    at_step(monkeypatch, STEPS_PER_EPOCH + 5, lambda recorder: recorder.stop.set())
    assert run_next(store) is JobState.QUEUED
    checkpoints = store.list_checkpoints(job.id)
    assert [(c.epoch, c.step, c.is_partial) for c in checkpoints] == [
        (1, STEPS_PER_EPOCH, False),
        (1, STEPS_PER_EPOCH + 5, True),
    ]
    assert checkpoints[0].metrics == checkpoints[1].metrics
    service = PredictionService(store, cast(Any, None), 0)
    served = store.get_job(job.id)
    assert service.resolve(served, "epoch/1", checkpoints) == checkpoints[0]
    assert service.resolve(served, "best", checkpoints) == checkpoints[0]
    assert service.resolve(served, "latest", checkpoints) == checkpoints[1]
    monkeypatch.undo()
    assert run_next(store) is JobState.SUCCEEDED
    ends = [(c.epoch, c.is_partial, c.is_final) for c in store.list_checkpoints(job.id)]
    assert ends[-2:] == [(2, False, False), (3, False, True)]


class WorkerKilled(BaseException):
    """The worker process dying where a test makes it die: no handler of the worker's sees it."""


# Stops after epoch 2 of 3 (nothing improves by 1e9) and restores epoch 1's weights.
EARLY_STOPPING = {
    "validation_fraction": 0.25,
    "early_stopping": {
        "monitor": "val_loss",
        "patience": 1,
        "min_delta": 1e9,
        "restore_best_weights": True,
    },
}


def lapse_lease(store: Store, job: Job) -> None:
    """Lets the job's lease run out now, as a lost worker's would."""
    with store.db.write() as session:
        past = utcnow() - timedelta(minutes=1)
        session.execute(update(JobRow).where(JobRow.id == job.id).values(lease_expires_at=past))


def final_weights(store: Store, job: Job) -> dict[str, np.ndarray]:
    (final,) = [c for c in store.list_checkpoints(job.id) if c.is_final]
    weights, _ = load_state(store.checkpoint_data(final.id))
    return weights


def assert_same_run(store: Store, job: Job, reference: Job) -> None:
    """The job ended as the reference, run without interruption, did: checkpoints (one final,
    with the same weights bit for bit), metrics, the state and values it finished with, and one
    event per epoch."""
    finished, expected = store.get_job(job.id), store.get_job(reference.id)
    assert finished.state is expected.state is JobState.SUCCEEDED
    assert finished.metrics == expected.metrics
    timing = {"examples_per_second", "eta_seconds"}  # measured: differs between runs
    assert {k: v for k, v in finished.progress.items() if k not in timing} == {
        k: v for k, v in expected.progress.items() if k not in timing
    }

    def kept(of: Job) -> list[tuple[int, int, bool, bool, dict[str, float]]]:
        return [
            (c.epoch, c.step, c.is_final, c.is_partial, c.metrics)
            for c in store.list_checkpoints(of.id)
        ]

    assert kept(job) == kept(reference)
    weights, reference_weights = final_weights(store, job), final_weights(store, reference)
    assert weights.keys() == reference_weights.keys()
    for name, value in weights.items():
        assert np.array_equal(value, reference_weights[name]), f"{name} differs"
    assert metric_rows(store, job) == metric_rows(store, reference)

    def epochs_done(of: Job) -> list[str]:
        return [e.message for e in store.job_events(of.id) if e.message.startswith("epoch ")]

    assert epochs_done(job) == epochs_done(reference)
    last, expected_last = store.job_events(job.id)[-1], store.job_events(reference.id)[-1]
    assert (last.state, last.message, last.metrics) == (
        expected_last.state,
        expected_last.message,
        expected_last.metrics,
    )


def test_a_job_stored_keeping_more_checkpoints_than_now_allowed_still_runs(store: Store) -> None:
    """CreateJob bounds keep_checkpoints now (MAX_KEEP_CHECKPOINTS); a job an older server
    stored above it trains as stored, its checkpoints kept as it asked, not failed."""
    job = submit(
        store,
        regression_dataset(store),
        keep_checkpoints=MAX_KEEP_CHECKPOINTS + 4000,
        checkpoint_every_epochs=1,
    )
    assert run_next(store) is JobState.SUCCEEDED
    kept = [(c.epoch, c.is_final) for c in store.list_checkpoints(job.id)]
    assert kept == [(epoch, epoch == EPOCHS) for epoch in range(1, EPOCHS + 1)], "none dropped"


def test_a_job_stored_with_a_flag_other_than_one_or_zero_trains_as_it_did(store: Store) -> None:
    """CreateJob takes an optimizer flag as 1 or 0 alone now, and the engine checks it so; a
    job an older server stored with another number (which the engine read as bool() does)
    trains as then, with the flag on, not failed."""
    optimizer = {"name": "sgd", "learning_rate": 0.01, "momentum": 0.9, "nesterov": 2.0}
    job = submit(store, regression_dataset(store), optimizer=optimizer)
    assert run_next(store) is JobState.SUCCEEDED, store.get_job(job.id).error
    same = submit(store, regression_dataset(store), optimizer={**optimizer, "nesterov": 1.0})
    assert run_next(store) is JobState.SUCCEEDED
    stored, flagged = final_weights(store, job), final_weights(store, same)
    assert stored.keys() == flagged.keys()
    assert all(np.array_equal(stored[name], flagged[name]) for name in stored)


def test_a_job_whose_early_stopping_restored_the_best_weights_ends_with_that_epochs_metrics(
    store: Store,
) -> None:
    """The final checkpoint holds epoch 1's weights, restored when epoch 2 did not improve,
    but was stored with epoch 2's metrics, and so was the job: "best" then judged the model the
    job ends with by another model's score (seen in the README's example, where the final
    checkpoint's weights scored better than "best"). Its metrics are now epoch 1's."""
    dataset = regression_dataset(store)
    job = submit(store, dataset, checkpoint_every_epochs=1, **EARLY_STOPPING)
    assert run_next(store) is JobState.SUCCEEDED
    logged: dict[int, dict[str, float]] = {}
    for name, _, epoch, value in metric_rows(store, job):
        logged.setdefault(epoch, {})[name] = value
    assert sorted(logged) == [1, 2], "stopped after epoch 2"
    assert logged[1] != logged[2]
    first, second, final = store.list_checkpoints(job.id)
    assert [(c.epoch, c.is_final) for c in (first, second, final)] == [
        (1, False),
        (2, False),
        (2, True),
    ]
    # Epoch 2's end checkpoint was taken once the weights were restored, as was the final one.
    assert final.metrics == second.metrics == first.metrics == logged[1]
    assert store.get_job(job.id).metrics == logged[1]
    kernel = "layers.0.kernel"
    weights = [load_state(store.checkpoint_data(c.id))[0] for c in (first, second, final)]
    assert np.array_equal(weights[1][f"model.{kernel}"], weights[0][f"model.{kernel}"])
    assert np.array_equal(weights[2][f"model.{kernel}"], weights[0][f"model.{kernel}"])


@pytest.mark.parametrize("training", [{}, EARLY_STOPPING], ids=["all-epochs", "early-stopping"])
def test_a_job_whose_final_checkpoint_is_stored_is_concluded_not_trained_again(
    store: Store, monkeypatch: pytest.MonkeyPatch, training: dict[str, Any]
) -> None:
    """The worker was killed between storing the final checkpoint and marking the job
    SUCCEEDED. The next attempt found no checkpoint to resume from (a final one holds weights
    only), trained the job again and stored a second final checkpoint (seen in a chaos run: a
    job killed right after its last epoch). It now finishes the job as the first would have."""
    dataset = regression_dataset(store)
    reference = submit(store, dataset, **training)
    assert run_next(store) is JobState.SUCCEEDED
    if training:
        assert [c.epoch for c in store.list_checkpoints(reference.id)] == [2], "stopped early"
    job = submit(store, dataset, **training)
    finish_job = store.finish_job

    def killed_before_success(claim: Claim, state: JobState, *args: Any) -> Job:
        if state is JobState.SUCCEEDED and claim.job.attempt == 1:
            raise WorkerKilled
        return finish_job(claim, state, *args)

    monkeypatch.setattr(store, "finish_job", killed_before_success)
    with pytest.raises(WorkerKilled):
        run_next(store)
    monkeypatch.undo()
    recorded = store.get_job(job.id)
    assert recorded.state is JobState.RUNNING
    lapse_lease(store, job)
    assert store.rescue_expired() == [(job.id, JobState.QUEUED)]
    fits: list[Trainer] = []
    monkeypatch.setattr(Trainer, "fit", lambda trainer, *args, **kwargs: fits.append(trainer))
    assert run_next(store) is JobState.SUCCEEDED
    assert fits == [], "nothing was trained again"
    finished = store.get_job(job.id)
    assert finished.attempt == 2
    assert finished.progress == recorded.progress, "as the first attempt recorded it"
    assert_same_run(store, job, reference)


@pytest.mark.parametrize("write", ["save_checkpoint", "record_epoch"])
def test_a_write_whose_commit_answer_was_lost_is_not_stored_twice(
    store: Store, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    """Each write's transaction commits, then its connection drops before the answer comes
    (Unavailable): the background writer tries it again. A checkpoint was stored twice (a
    chaos run ended with three final checkpoints) and an epoch's event appended twice; the
    retry now finds the write done."""
    dataset = regression_dataset(store)
    reference = submit(store, dataset, checkpoint_every_epochs=1)
    assert run_next(store) is JobState.SUCCEEDED
    job = submit(store, dataset, checkpoint_every_epochs=1)
    original = getattr(store, write)
    calls: list[str] = []

    def commit_then_lose_the_answer(*args: Any, **kwargs: Any) -> Any:
        calls.append(write)
        answer = original(*args, **kwargs)
        if len(calls) % 2 == 1:  # every write's first try; its retry gets the answer
            raise Unavailable("The database is unreachable; try again shortly")
        return answer

    monkeypatch.setattr(store, write, commit_then_lose_the_answer)
    assert run_next(store) is JobState.SUCCEEDED
    assert len(calls) == 2 * EPOCHS, "each write was tried twice"
    assert store.get_job(job.id).attempt == 1
    assert_same_run(store, job, reference)


def _permutation_repeating_a_row(data: bytes) -> bytes:
    state, metadata = load_state(data)
    state["trainer.permutation"][1] = state["trainer.permutation"][0]
    return save_state(state, metadata)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (
            _permutation_repeating_a_row,
            "Trainer state entry 'trainer.permutation' must be a permutation of range(40). "
            "Received: row ",
        ),
        (lambda data: data[: len(data) // 2], "Not a safetensors state or truncated: "),
    ],
)
def test_a_job_resuming_from_a_damaged_checkpoint_fails_naming_it(
    store: Store, monkeypatch: pytest.MonkeyPatch, damage: Callable[[bytes], bytes], reason: str
) -> None:
    """A repeated row would have trained on wrong rows silently. The job fails (it is not
    retried: the checkpoint stays damaged), with a reason naming the checkpoint, and the
    worker goes on."""
    job = submit(store, regression_dataset(store))
    at_step(monkeypatch, STEPS_PER_EPOCH + 5, lambda recorder: recorder.stop.set())
    assert run_next(store) is JobState.QUEUED
    monkeypatch.undo()
    (checkpoint,) = store.list_checkpoints(job.id)
    damaged = damage(store.checkpoint_data(checkpoint.id))
    with store.db.write() as session:
        session.execute(
            update(CheckpointBlobRow)
            .where(CheckpointBlobRow.checkpoint_id == checkpoint.id)
            .values(data=damaged)
        )
    assert Worker(store, Settings(), "test-worker", threading.Event()).run_once()
    failed = store.get_job(job.id)
    assert failed.state is JobState.FAILED
    assert failed.error.startswith(
        f"cannot resume from jobs/{job.id}/checkpoints/{checkpoint.id} "
        f"(epoch 1, step {STEPS_PER_EPOCH + 5}): {reason}"
    )


def test_a_worker_outlives_an_unexpected_database_error_and_claims_again(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "database is locked" (not Unavailable) while claiming must not end the worker process:
    it backs off and the next round claims and runs the job."""
    job = submit(store, regression_dataset(store))
    stop = threading.Event()
    claims: list[str] = []
    claim_job = store.claim_job

    def flaky_claim(*args: Any, **kwargs: Any) -> Claim | None:
        claims.append("claim")
        if len(claims) == 1:
            raise OperationalError("UPDATE jobs", {}, Exception("database is locked"))
        if len(claims) == 3:
            stop.set()  # the job ran; nothing more to do
        return claim_job(*args, **kwargs)

    monkeypatch.setattr(store, "claim_job", flaky_claim)
    settings = Settings(database_url=database_url, poll_interval_s=0.01)
    Worker(store, settings, "test-worker", stop).run_forever()
    assert len(claims) == 3
    assert store.get_job(job.id).state is JobState.SUCCEEDED


def test_a_claim_whose_answer_was_lost_runs_its_job_in_the_same_attempt(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database took the job, then the connection dropped before the worker heard: the job
    stayed RUNNING under a lease nobody renewed, until it was rescued as a lost worker's and run
    again as attempt 2 (seen in CI: a worker's first claim met a database outage)."""
    job = submit(store, regression_dataset(store))
    claim_job = store.claim_job
    answers_lost = []

    def claim_then_lose_the_answer(*args: Any, **kwargs: Any) -> Claim | None:
        claim = claim_job(*args, **kwargs)
        if not answers_lost:
            answers_lost.append(claim)
            raise Unavailable("The database is unreachable; try again shortly")
        return claim

    monkeypatch.setattr(store, "claim_job", claim_then_lose_the_answer)
    worker_ = Worker(store, Settings(database_url=database_url), "test-worker", threading.Event())
    with pytest.raises(Unavailable):
        worker_.run_once()
    assert answers_lost[0] is not None and store.get_job(job.id).state is JobState.RUNNING
    assert worker_.run_once()  # the job it had taken, not a claim of another
    finished = store.get_job(job.id)
    assert (finished.state, finished.attempt) == (JobState.SUCCEEDED, 1)
    assert len(answers_lost) == 1  # the second round claimed nothing new


def test_a_worker_whose_supervisor_is_gone_stops_instead_of_claiming(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent watch looks once a second: a supervisor killed outright (SIGKILL) since its
    last look left the worker free to claim a job only to hand it back. A supervised worker
    looks itself right before it claims: re-parented, it stops, and the job stays queued."""
    job = submit(store, regression_dataset(store))
    supervisor = os.getppid()
    stop = threading.Event()
    monkeypatch.setattr(worker.os, "getppid", lambda: supervisor + 1)  # re-parented
    assert not Worker(store, Settings(), "test-worker", stop, parent_pid=supervisor).run_once()
    assert stop.is_set()
    assert store.get_job(job.id).state is JobState.QUEUED
    monkeypatch.undo()  # still its parent: a worker claims and runs the job
    stop.clear()
    assert Worker(store, Settings(), "test-worker", stop, parent_pid=supervisor).run_once()
    assert store.get_job(job.id).state is JobState.SUCCEEDED


def test_a_worker_busy_with_a_long_job_is_not_reported_lost(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that trains longer than 2 * lease_s (where a worker not seen counts as lost) keeps
    its worker alive in `trainwire status`: the lease keeper marks the worker seen as it renews."""
    submit(store, regression_dataset(store))
    settings = Settings(database_url=database_url, lease_s=1.0)
    renewals: list[str] = []
    heartbeat = store.heartbeat

    def counted_heartbeat(claim: Claim, lease_s: float) -> JobState:
        renewals.append("renewal")
        return heartbeat(claim, lease_s)

    monkeypatch.setattr(store, "heartbeat", counted_heartbeat)
    seen: dict[str, Any] = {}

    def outlast_the_alive_window(_recorder: JobRecorder) -> None:
        # The job trains on past 2 * lease_s after its start was reported, and past two more
        # renewals (the second's report has then been written: the keeper does one at a time).
        (started,) = store.workers()
        renewed = len(renewals)
        deadline = time.monotonic() + 60
        while (
            len(renewals) < renewed + 2
            or (utcnow() - started["last_seen_at"]).total_seconds() <= 2 * settings.lease_s
        ):
            assert time.monotonic() < deadline, "the lease keeper stopped renewing"
            time.sleep(0.05)
        seen["started"] = started["last_seen_at"]
        (seen["now"],) = store.workers()
        seen["status"] = collect_status(settings)

    at_step(monkeypatch, 2, outlast_the_alive_window)
    busy = Worker(store, settings, "busy-worker", threading.Event())
    assert busy.run_once()
    assert seen["now"]["last_seen_at"] > seen["started"]
    assert seen["status"]["workers_alive"] == 1
    assert [w["state"] for w in seen["status"]["workers"]] == ["alive"]


class FakeListenConnection:
    """A psycopg connection whose LISTEN or notifies() raises `error`."""

    def __init__(self, listen_error: Exception | None, notifies_error: Exception | None) -> None:
        self.listen_error = listen_error
        self.notifies_error = notifies_error
        self.closed = False

    def execute(self, query: str) -> None:
        if self.listen_error is not None:
            raise self.listen_error

    def notifies(self, **kwargs: Any) -> list[object]:
        if self.notifies_error is not None:
            raise self.notifies_error
        return []

    def close(self) -> None:
        self.closed = True


def fake_listen(
    monkeypatch: pytest.MonkeyPatch,
    listen_error: Exception | None = None,
    notifies_error: Exception | None = None,
) -> list[FakeListenConnection]:
    import psycopg

    made: list[FakeListenConnection] = []

    def connect(*args: Any, **kwargs: Any) -> FakeListenConnection:
        made.append(FakeListenConnection(listen_error, notifies_error))
        return made[-1]

    monkeypatch.setattr(psycopg, "connect", connect)
    return made


def test_a_failed_listen_closes_its_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    made = fake_listen(monkeypatch, listen_error=psycopg.OperationalError("permission denied"))
    wakeup = Wakeup("postgresql://trainwire@db.invalid/trainwire")
    assert wakeup.wait(0.01, threading.Event()) is False
    assert made and all(connection.closed for connection in made)
    assert wakeup.connection is None


def test_a_programming_error_in_listening_is_not_taken_for_a_lost_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """psycopg 3.1 has no notifies(timeout=, stop_after=): that TypeError was swallowed as a lost
    connection, at debug level, and the worker reconnected every 0.25 s forever."""
    fake_listen(monkeypatch, notifies_error=TypeError("unexpected keyword argument 'timeout'"))
    wakeup = Wakeup("postgresql://trainwire@db.invalid/trainwire")
    with pytest.raises(TypeError):
        wakeup.wait(0.01, threading.Event())


@pytest.fixture
def worker_log() -> Iterator[io.StringIO]:
    """The worker's log lines (INFO and up) as JSON, formatted in the thread that logs them, as
    the process's handler formats them."""
    yield from _json_log("trainwire.worker")


@pytest.fixture
def server_log() -> Iterator[io.StringIO]:
    """The server's log lines (INFO and up) as JSON, as `worker_log`."""
    yield from _json_log("trainwire.server")


def _json_log(name: str) -> Iterator[io.StringIO]:
    logger = logging.getLogger(name)
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(JsonFormatter())
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield written
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def log_entries(written: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in written.getvalue().splitlines()]


def test_worker_lines_about_a_job_carry_its_id(
    store: Store, monkeypatch: pytest.MonkeyPatch, worker_log: io.StringIO
) -> None:
    """The lease keeper and the persist writer are threads of their own, and a new thread does
    not inherit context variables: "heartbeat failed" and the writer's "database unavailable"
    during an outage had no job_id (the second names no job in its text either), nor had "runs
    jobs/X" (logged before the job was set) and "rescued jobs/X"."""
    dataset = regression_dataset(store)
    lost = submit(store, dataset)
    assert store.claim_job("lost-worker") is not None
    lapse_lease(store, lost)
    settings = Settings(lease_s=2.0, db_retry_s=60.0)
    worker_ = Worker(store, settings, "test-worker", threading.Event())
    worker_.rescue_if_due()  # the lost worker's job is queued again, then run here
    failures = iter(
        [
            Unavailable("The database is unreachable; try again shortly"),
            OperationalError("UPDATE jobs", {}, Exception("database is locked")),
        ]
    )
    heartbeat, record_epoch = store.heartbeat, store.record_epoch
    failed = threading.Event()

    def failing_heartbeat(claim: Claim, lease_s: float) -> JobState:
        error = next(failures, None)
        if error is None:
            failed.set()
            return heartbeat(claim, lease_s)
        raise error

    epoch_failures = [Unavailable("The database is unreachable; try again shortly")]

    def failing_record_epoch(*args: Any, **kwargs: Any) -> JobState | None:
        if epoch_failures:
            raise epoch_failures.pop()
        return record_epoch(*args, **kwargs)

    monkeypatch.setattr(store, "heartbeat", failing_heartbeat)
    monkeypatch.setattr(store, "record_epoch", failing_record_epoch)
    # Training waits (at most a minute) until both failed heartbeats have been logged.
    at_step(monkeypatch, 2, lambda _recorder: failed.wait(60))
    assert worker_.run_once()
    assert store.get_job(lost.id).state is JobState.SUCCEEDED
    entries = log_entries(worker_log)
    messages = [e["message"] for e in entries]
    wanted = [
        f"rescued jobs/{lost.id}",
        f"runs jobs/{lost.id}",
        f"jobs/{lost.id}: heartbeat failed (The database",
        f"jobs/{lost.id}: heartbeat failed (OperationalError",
        "database unavailable (The database is unreachable",
        f"jobs/{lost.id} is SUCCEEDED",
    ]
    for part in wanted:
        assert any(part in m for m in messages), (part, messages)
    about_the_job = [e for e in entries if any(part in e["message"] for part in wanted)]
    assert [(e["message"], e.get("job_id")) for e in about_the_job] == [
        (e["message"], lost.id) for e in about_the_job
    ]


def test_a_servers_rescue_line_carries_the_jobs_id(store: Store, server_log: io.StringIO) -> None:
    """The server's housekeeping rescues lost jobs as workers do; its line had no job_id."""
    lost = submit(store, regression_dataset(store))
    assert store.claim_job("lost-worker") is not None
    lapse_lease(store, lost)
    app.rescue_lost_jobs(store)
    [entry] = [e for e in log_entries(server_log) if "rescued" in e["message"]]
    assert entry["message"].startswith(f"rescued jobs/{lost.id}")
    assert entry.get("job_id") == lost.id


def test_an_unexpected_worker_error_fails_the_job_with_a_reference_not_its_text(
    store: Store, monkeypatch: pytest.MonkeyPatch, worker_log: io.StringIO
) -> None:
    """A table renamed under a running job: the job's error held SQLAlchemy's text (the SQL, its
    parameters, the driver's message), shown to its user by GetJob and `trainwire status`. The
    job now fails with a reference to the worker's log line, which has the traceback."""
    job = submit(store, regression_dataset(store))

    def rename(table: str, to: str) -> None:
        with store.db.write() as session:
            session.execute(text(f"ALTER TABLE {table} RENAME TO {to}"))

    at_step(monkeypatch, 2, lambda _recorder: rename("job_metrics", "job_metrics_x"))
    try:
        assert Worker(store, Settings(db_retry_s=1.0), "test-worker", threading.Event()).run_once()
    finally:
        rename("job_metrics_x", "job_metrics")
    failed = store.get_job(job.id)
    assert failed.state is JobState.FAILED
    assert failed.error == (
        f"the worker hit an unexpected error (reference {job.id}/attempt 1); the worker log "
        "has the details"
    )
    (logged,) = [e for e in log_entries(worker_log) if e["level"] == "ERROR"]
    assert f"reference {job.id}/attempt 1" in logged["message"]
    assert logged["job_id"] == job.id
    assert "job_metrics" in logged["exception"], "the log has the database's own words"


def test_the_worker_row_says_what_it_has_done_as_soon_as_a_job_ends(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`jobs_done` was counted after the job's last report, and `worker_stopped` did not write
    it: a worker that ran 3 jobs showed "2 jobs" after a graceful stop, and a finished job stayed
    its current job until the next report (up to lease_s / 4). A job handed back by a stop
    mid-run is not done (it resumes later, maybe on another worker, which counts it then)."""
    dataset = regression_dataset(store)
    first, second = submit(store, dataset), submit(store, dataset)
    stop = threading.Event()
    settings = Settings(database_url=database_url, poll_interval_s=0.01)
    worker_ = Worker(store, settings, "test-worker", stop)
    rows: list[tuple[str | None, int]] = []

    def seen() -> tuple[str | None, int]:
        (row,) = store.workers()
        return row["current_job"], row["jobs_done"]

    for _ in (first, second):
        assert worker_.run_once()
        rows.append(seen())
    assert rows == [(None, 1), (None, 2)]
    assert [store.get_job(j.id).state for j in (first, second)] == [JobState.SUCCEEDED] * 2
    handed_back = submit(store, dataset)
    at_step(monkeypatch, 2, lambda recorder: recorder.stop.set())  # SIGTERM mid-run
    worker_.run_forever()
    assert store.get_job(handed_back.id).state is JobState.QUEUED
    (row,) = store.workers()
    assert (row["current_job"], row["jobs_done"], row["stopped_at"] is not None) == (
        None,
        2,
        True,
    )
    store.worker_stopped("test-worker", 5)
    assert seen() == (None, 5), "worker_stopped writes the count it is given"


def test_examples_per_second_is_zero_while_the_worker_is_idle(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gauge kept the last job's rate after the job ended."""
    submit(store, regression_dataset(store))
    during: list[float | None] = []
    at_step(
        monkeypatch,
        STEPS_PER_EPOCH + 1,
        lambda _recorder: during.append(
            WORKER_METRICS.get_sample_value("trainwire_worker_examples_per_second")
        ),
    )
    assert Worker(store, Settings(), "test-worker", threading.Event()).run_once()
    assert during[0] is not None and during[0] > 0, "the rate of the epoch just ended"
    assert WORKER_METRICS.get_sample_value("trainwire_worker_examples_per_second") == 0


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.97])
def test_the_validation_split_is_the_copies_it_was_made_of_in_place(
    fraction: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training rows are moved up within the dataset's own arrays (copied out, they kept
    the worker holding the dataset twice): the split must stay bit for bit the one the copies
    made, or a job resumed across the change would train on other rows."""
    monkeypatch.setattr(worker, "_COMPACT_BYTES", 200)  # many blocks, some rows each
    rng = np.random.default_rng(3)
    features = rng.standard_normal((1000, 6)).astype(np.float32)
    targets = rng.integers(0, 4, (1000, 2))
    count = int(len(features) * fraction)
    order = np.random.default_rng(11).permutation(len(features))
    held, kept = np.sort(order[:count]), np.sort(order[count:])
    train_x, train_y, validation = split_validation(features.copy(), targets.copy(), fraction, 11)
    assert np.array_equal(train_x, features[kept]) and np.array_equal(train_y, targets[kept])
    assert train_x.flags.c_contiguous and train_y.flags.c_contiguous
    if count == 0:
        assert validation is None
    else:
        assert validation is not None
        assert np.array_equal(validation[0], features[held])
        assert np.array_equal(validation[1], targets[held])


def test_the_validation_split_copies_the_held_out_rows_alone() -> None:
    """The split copied every row (the training rows and the held-out ones), and the worker
    kept the dataset it was made from: twice the dataset for the whole training."""
    features = np.ones((4096, 512), np.float32)  # 8 MiB
    targets = np.zeros(4096)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        train_x, _, validation = split_validation(features, targets, 0.25, seed=5)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert validation is not None and np.shares_memory(train_x, features)
    held_out = validation[0].nbytes + validation[1].nbytes
    assert peak < held_out + 2 * 1024 * 1024, f"the split took {peak / 2**20:.1f} MiB"


class _HeldWrites:
    """A PersistWriter's stand-in that keeps the writes submitted, running none."""

    def __init__(self) -> None:
        self.actions: list[Any] = []

    def submit(self, action: Any) -> None:
        self.actions.append(action)


def test_a_checkpoint_is_serialised_holding_the_state_once(store: Store) -> None:
    """A checkpoint was the trainer's state_dict (copies of the weights and Adam's moments) made
    into bytes by save_state (which held them twice at its peak): three times the state on top
    of the trainer. It is one buffer now, filled from the live arrays."""
    job = submit(store, regression_dataset(store))
    claim = store.claim_job("test-worker")
    assert claim is not None
    wide = {
        "input_dim": 3,
        "layers": [{"type": "dense", "units": 2**18}, {"type": "dense", "units": 1}],
    }
    trainer = build_trainer(build_model(wide, job.training), job.training)
    state_bytes = sum(array.nbytes for array in trainer.state_dict().values())  # about 15 MiB
    keeper = LeaseKeeper(store, claim, 30.0)  # never started: nothing here polls
    writes = _HeldWrites()
    recorder = JobRecorder(store, Settings(), claim, threading.Event(), keeper, writes, EXAMPLES)  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        recorder.checkpoint(trainer, {"loss": 1.0})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(writes.actions) == 1
    assert peak < state_bytes * 11 // 10, f"{peak / 2**20:.1f} MiB for {state_bytes / 2**20:.1f}"
    writes.actions[0]()  # stored, and resumable as the trainer was
    stored = store.latest_resumable_checkpoint(job.id)
    assert stored is not None
    saved, _ = store.checkpoint_state(stored.id)
    expected = trainer.state_dict()
    assert saved.keys() == expected.keys()
    for name, array in expected.items():
        assert np.array_equal(saved[name], array), name
