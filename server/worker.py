"""The worker: claims jobs from the database queue, trains them with the engine, records results.

A worker process runs one job at a time. Between batches it notices a stop request (SIGTERM) or a
cancel request; either way it checkpoints first, so nothing trained is lost. Every write for a job
carries the claim's fencing token.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from trainwire.engine import Callback, Trainer, state_buffer

from .config import Settings
from .convert import checkpoint_name
from .datasets import DatasetService
from .db import Database
from .errors import TrainwireError, Unavailable
from .logs import JOB_ID, job_logged
from .metrics import (
    EXAMPLES_PER_SECOND,
    JOB_SECONDS,
    WORKER_HEARTBEAT,
    WORKER_METRICS,
    serve_metrics,
)
from .records import Checkpoint, Claim, JobState, MetricValue
from .store import (
    CANCELLED_BY_REQUEST,
    DEFAULT_KEEP_CHECKPOINTS,
    LeaseLost,
    Store,
    new_claim_token,
)
from .training import build_model, build_trainer, validation_rows
from .wakeup import Wakeup

log = logging.getLogger("trainwire.worker")

T = TypeVar("T")

# How often a running job's worker looks for a cancel request.
CANCEL_POLL_S = 0.5


class JobFault(RuntimeError):
    """A reason a job fails that is its user's to act on: its message becomes the job's error."""


class TrainingDiverged(JobFault):
    """The loss or another logged value became NaN or infinite."""


# What fails a job with its own message, written for the job's user: the job's fault, not the
# worker's. ValueError: the engine's refusals of a spec or of the data (SpecError among them), a
# checkpoint that cannot be resumed; TrainwireError: e.g. the job's dataset gone (NotFound). Any
# other error (a database error, a bug) is the operator's: its text (SQL, parameters, a driver's
# message) stays in the worker's log, and the job's error gives a reference to it.
JOB_FAULTS = (JobFault, ValueError, TrainwireError)


def with_retry(action: Callable[[], T], retry_s: float) -> T:
    """Runs a database action, retrying for up to `retry_s` while the database is unreachable."""
    deadline = time.monotonic() + retry_s
    delay = 0.1
    while True:
        try:
            return action()
        except Unavailable as error:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unavailable (%s); retrying in %.1fs", error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class JobThread(threading.Thread):
    """A thread that runs in a copy of the context of the thread that made it: a new thread
    does not inherit context variables, and its log lines would lack the job they are about
    (JOB_ID)."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.context = contextvars.copy_context()

    def run(self) -> None:
        self.context.run(self.work)

    def work(self) -> None:
        raise NotImplementedError


class LeaseKeeper(JobThread):
    """Watches a claimed job while it trains: every `CANCEL_POLL_S` it reads the job's state (a
    cancel request is seen within that time) and every lease_s / 4 it renews the lease and calls
    `alive` (the worker marks itself seen: a job may train far longer than the 2 * lease_s after
    which a worker not seen counts as lost). A failed read or renewal is logged and tried again at
    the next poll; only a lost lease ends it."""

    def __init__(
        self,
        store: Store,
        claim: Claim,
        lease_s: float,
        alive: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name=f"lease-{claim.job.id[:8]}")
        self.store = store
        self.claim = claim
        self.lease_s = lease_s
        self.alive = alive
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()
        self.done = threading.Event()

    def work(self) -> None:
        renewed = time.monotonic()
        while not self.done.wait(min(CANCEL_POLL_S, self.lease_s / 4)):
            try:
                renewing = time.monotonic() - renewed >= self.lease_s / 4
                if renewing:
                    state = self.store.heartbeat(self.claim, self.lease_s)
                    renewed = time.monotonic()
                else:
                    state = self.store.held_job_state(self.claim)
                if state is JobState.CANCELLING:
                    self.cancel_requested.set()
                if renewing and self.alive is not None:
                    self.alive()
            except LeaseLost:
                log.warning("jobs/%s: lease lost; stopping without writing", self.claim.job.id)
                self.lost.set()
                return
            except Unavailable as error:
                log.warning("jobs/%s: heartbeat failed (%s)", self.claim.job.id, error)
            except Exception as error:
                # E.g. SQLite's "database is locked": ending the thread would stop the renewals
                # and let another worker run the job again. If the database stays broken, the
                # lease runs out, the job is rescued, and the next poll that gets through
                # reports the lease lost.
                log.warning(
                    "jobs/%s: heartbeat failed (%s: %s); still trying",
                    self.claim.job.id,
                    type(error).__name__,
                    error,
                )


class PersistWriter(JobThread):
    """Writes a running job's metrics and checkpoints in order, in the background, so training
    does not wait on the database. At most `max_pending` writes queue up (then training waits:
    checkpoints are large). A failed write is raised in the training thread at the next `submit`
    or at `flush`; writes after a failure are skipped."""

    def __init__(self, retry_s: float, max_pending: int = 2) -> None:
        super().__init__(name="persist")
        self.retry_s = retry_s
        self.actions: queue.Queue[Callable[[], object] | None] = queue.Queue(max_pending)
        self.error: BaseException | None = None
        self.start()

    def work(self) -> None:
        while True:
            action = self.actions.get()
            try:
                if action is None:
                    return
                if self.error is None:
                    with_retry(action, self.retry_s)
            except BaseException as error:
                self.error = error
            finally:
                self.actions.task_done()

    def _raise_failure(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, action: Callable[[], object]) -> None:
        self._raise_failure()
        self.actions.put(action)

    def flush(self) -> None:
        """Waits until every submitted write is done; raises the first failure."""
        self.actions.join()
        self._raise_failure()

    def close(self) -> None:
        self.actions.put(None)
        self.join()


def split_validation(
    features: np.ndarray, targets: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """A seeded random hold-out (the same on every worker and every attempt): the training rows
    in their order, the held-out rows in theirs. The training rows are `features` and `targets`
    themselves, their kept rows moved up in place (`_compacted`), so both are overwritten and
    must not share memory: copied out, as they were, they made the worker hold the dataset
    twice for the whole training."""
    count = validation_rows(len(features), fraction)
    if count == 0:
        return features, targets, None
    order = np.random.default_rng(seed).permutation(len(features))
    held, kept = np.sort(order[:count]), np.sort(order[count:])
    validation = (features[held], targets[held])  # before the kept rows move over them
    return _compacted(features, kept), _compacted(targets, kept), validation


# `_compacted` moves rows a block of about this many bytes at a time.
_COMPACT_BYTES = 1024 * 1024


def _compacted(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`array[rows]` (`rows` ascending, no repeats) in `array`'s own memory: its first
    len(rows) rows, the same values as the copy fancy indexing makes. Row i comes from row
    rows[i] >= i, so no row is written over before it has moved; each block is read whole
    (fancy indexing copies it) before it is written."""
    block = max(1, _COMPACT_BYTES // max(1, array[:1].nbytes))
    for start in range(0, len(rows), block):
        moving = rows[start : start + block]
        array[start : start + len(moving)] = array[moving]
    return array[: len(rows)]


class JobRecorder(Callback):
    """Writes progress, metrics and checkpoints of one claimed job as the trainer runs."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        claim: Claim,
        stop: threading.Event,
        keeper: LeaseKeeper,
        writer: PersistWriter,
        examples_per_epoch: int,
    ) -> None:
        training = claim.job.training
        self.store = store
        self.settings = settings
        self.claim = claim
        self.stop = stop
        self.keeper = keeper
        self.writer = writer
        self.epochs = int(training["epochs"])
        self.steps_per_epoch = math.ceil(examples_per_epoch / int(training["batch_size"]))
        self.examples_per_epoch = examples_per_epoch
        self.checkpoint_every = int(training.get("checkpoint_every_epochs", 0))
        self.log_every = int(training.get("log_every_steps", 0))
        self.keep = int(training.get("keep_checkpoints", 0)) or DEFAULT_KEEP_CHECKPOINTS
        self.pending: list[MetricValue] = []
        self.epoch_started = time.perf_counter()
        self.progress: dict[str, float] = {}

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self.epoch_started = time.perf_counter()

    @property
    def cancel_requested(self) -> bool:
        return self.keeper.cancel_requested.is_set()

    def on_batch_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        loss = logs["loss"]
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss} at step {step} (epoch {trainer.epoch + 1}); "
                "lower the learning rate or scale the features"
            )
        if self.log_every and step % self.log_every == 0:
            # Numbered from 1 like the epoch metrics: the epoch this step belongs to.
            epoch = trainer.epoch + 1
            self.pending.append(MetricValue("batch_loss", step, epoch, loss))
        # Checked between batches: a stop or cancel takes effect within one batch.
        if self.stop.is_set() or self.keeper.cancel_requested.is_set() or self.keeper.lost.is_set():
            trainer.stop_training = True

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        # Every value, not the loss alone: a validation metric can overflow while training does
        # not, and the database cannot store it (SQLite turns NaN into NULL, PostgreSQL's JSON
        # has no NaN or infinity).
        for name, value in logs.items():
            if not math.isfinite(value):
                what = "the training loss" if name == "loss" else f"the metric {name}"
                raise TrainingDiverged(
                    f"{what} became {value} in epoch {epoch + 1}; lower the learning rate or "
                    "scale the features"
                )
        elapsed = max(time.perf_counter() - self.epoch_started, 1e-9)
        rate = self.examples_per_epoch / elapsed
        EXAMPLES_PER_SECOND.set(rate)
        done = epoch + 1
        self.progress = {
            "epoch": done,
            "total_epochs": self.epochs,
            "step": trainer.step,
            "total_steps": self.epochs * self.steps_per_epoch,
            "examples_per_second": rate,
            "eta_seconds": (self.epochs - done) * self.examples_per_epoch / rate,
        }
        values = [
            *self.pending,
            *(MetricValue(name, trainer.step, done, float(v)) for name, v in logs.items()),
        ]
        self.pending = []
        progress, latest = self.progress, dict(logs)
        lease_s = self.settings.lease_s

        def record() -> None:
            state = self.store.record_epoch(self.claim, progress, latest, values, lease_s)
            if state is JobState.CANCELLING:
                self.keeper.cancel_requested.set()

        self.writer.submit(record)
        if self.checkpoint_every and done % self.checkpoint_every == 0 and done < self.epochs:
            self.checkpoint(trainer, trainer.model_logs())

    def write_pending(self) -> None:
        """Writes the per-batch values logged since the last epoch end: a run stopped mid-epoch
        resumes after them and would never log them again."""
        if not self.pending:
            return
        values, self.pending = self.pending, []
        self.writer.submit(lambda: self.store.record_metrics(self.claim, values))

    def checkpoint(self, trainer: Trainer, metrics: dict[str, float], final: bool = False) -> None:
        """Serialises the state now; the database write happens in the background. A final
        checkpoint serves predictions only, so it holds the weights (a third of Adam's state).
        One taken partway through an epoch (a stop or cancel) is marked partial: its epoch and
        metrics are the last epoch end's, its weights are not. `metrics` are the weights' own
        (`Trainer.model_logs`): once early stopping has restored the best weights, the best
        epoch's, not the last epoch's, which scored another model ("best" passed over the
        model the job ended with, and judged it by a worse score)."""
        # One buffer (`state_buffer`), filled from the live arrays: `save_state` held the state
        # twice more at its peak, and the state_dict copies once more.
        if final:
            weights = {f"model.{k}": v for k, v in trainer.model.state_dict(copy=False).items()}
            data = state_buffer(weights, {"job": self.claim.job.id, "kind": "model"})
        else:
            state = trainer.state_dict(copy=False)  # live arrays: copied into the buffer now
            data = state_buffer(state, {"job": self.claim.job.id, "kind": "trainer"})
        epoch, step, values = trainer.epoch, trainer.step, dict(metrics)
        partial = not final and trainer.in_epoch
        self.writer.submit(
            lambda: self.store.save_checkpoint(
                self.claim, epoch, step, values, data, final, self.keep, is_partial=partial
            )
        )


def run_job(
    store: Store,
    settings: Settings,
    claim: Claim,
    stop: threading.Event,
    alive: Callable[[], None] | None = None,
) -> JobState:
    """Trains a claimed job to its end (or to a stop or cancel); returns the state it leaves.
    `alive` is called with each lease renewal (LeaseKeeper)."""
    keeper = LeaseKeeper(store, claim, settings.lease_s, alive)
    keeper.start()
    try:
        return _train(store, settings, claim, stop, keeper)
    finally:
        keeper.done.set()
        keeper.join()


def _train(
    store: Store, settings: Settings, claim: Claim, stop: threading.Event, keeper: LeaseKeeper
) -> JobState:
    job = claim.job
    training = job.training
    retry_s = settings.db_retry_s
    final = with_retry(lambda: store.final_checkpoint(job.id), retry_s)
    if final is not None:
        return _conclude_trained(store, claim, keeper, final, retry_s)
    dataset_id = job.dataset_id
    if dataset_id is None:
        raise JobFault("its dataset was deleted before the job could finish")
    # In the model's dtype (the engine's check_input converts to it, and a copy would be made
    # then, with the stored one still held): the same values, converted as they are read.
    features, targets = with_retry(
        lambda: DatasetService(store, settings).arrays(dataset_id, training["dtype"]), retry_s
    )
    train_x, train_y, validation = split_validation(
        features, targets, float(training.get("validation_fraction", 0.0)), int(training["seed"])
    )
    model = build_model(job.model_spec, training)
    trainer = build_trainer(model, training)
    latest = with_retry(lambda: store.latest_resumable_checkpoint(job.id), retry_s)
    if latest is not None:
        _resume(
            trainer, latest, lambda: with_retry(lambda: store.checkpoint_state(latest.id), retry_s)
        )
        log.info("jobs/%s resumes from epoch %d step %d", job.id, latest.epoch, latest.step)
    writer = PersistWriter(retry_s)
    try:
        recorder = JobRecorder(store, settings, claim, stop, keeper, writer, len(train_x))
        trainer.fit(
            train_x,
            train_y,
            epochs=int(training["epochs"]),
            validation_data=validation,
            callbacks=[recorder],
        )
        state = _conclude(claim, trainer, recorder, stop, keeper)
        writer.flush()
    finally:
        writer.close()
    if state is JobState.QUEUED:
        _stop_watching(keeper)
        # CANCELLED if a cancel request came after the keeper's last poll.
        return with_retry(lambda: store.release_job(claim), retry_s)
    return _finish(store, claim, keeper, state, recorder.progress or None, retry_s)


def _stop_watching(keeper: LeaseKeeper) -> None:
    """The lease is good for lease_s yet: the keeper stops watching it before the job's last
    change clears it, or a poll in between would report a lease lost."""
    keeper.done.set()
    keeper.join()


def _finish(
    store: Store,
    claim: Claim,
    keeper: LeaseKeeper,
    state: JobState,
    progress: dict[str, float] | None,
    retry_s: float,
) -> JobState:
    """Moves the job to its final `state` (None `progress` keeps the stored one)."""
    _stop_watching(keeper)
    reason = CANCELLED_BY_REQUEST if state is JobState.CANCELLED else ""
    with_retry(lambda: store.finish_job(claim, state, reason, progress), retry_s)
    return state


def _conclude_trained(
    store: Store, claim: Claim, keeper: LeaseKeeper, final: Checkpoint, retry_s: float
) -> JobState:
    """Finishes a job an earlier attempt trained to its end: that worker was lost after its
    final checkpoint was stored and before the job was marked SUCCEEDED. Training it again
    would store a second final checkpoint (a resume never loads one: it holds weights only).
    Nothing is left to write: the final checkpoint is the run's result (with early stopping, the
    restored best weights), and every epoch's metrics, progress and event were written before
    it (the writes keep their order), so the stored progress and metrics are those the first
    attempt would have finished with."""
    log.info(
        "jobs/%s was trained to its end before (%s); concluding it",
        claim.job.id,
        checkpoint_name(final),
    )
    return _finish(store, claim, keeper, JobState.SUCCEEDED, None, retry_s)


def _resume(
    trainer: Trainer,
    checkpoint: Checkpoint,
    read: Callable[[], tuple[dict[str, np.ndarray], dict[str, str]]],
) -> None:
    """Loads a checkpoint's state (`read`) into a freshly built trainer. A checkpoint that cannot
    be resumed (damaged, or not what this job's trainer saves) fails the job, the reason naming
    it: the engine's message alone names an entry, not where it came from."""
    try:
        saved, _ = read()
        trainer.load_state_dict(saved)
    except ValueError as error:
        raise ValueError(
            f"cannot resume from {checkpoint_name(checkpoint)} (epoch {checkpoint.epoch}, step "
            f"{checkpoint.step}): {error}"
        ) from error


def _conclude(
    claim: Claim,
    trainer: Trainer,
    recorder: JobRecorder,
    stop: threading.Event,
    keeper: LeaseKeeper,
) -> JobState:
    """Checkpoints the end of a run and says what the job becomes."""
    job = claim.job
    training = job.training
    if keeper.lost.is_set():
        raise LeaseLost(f"jobs/{job.id} was taken away from this worker")
    metrics = {**job.metrics, **trainer.model_logs()}
    # Before the checkpoint (writes keep their order): once it exists a run resumes after them.
    recorder.write_pending()
    if recorder.cancel_requested:
        recorder.checkpoint(trainer, metrics)
        return JobState.CANCELLED
    if stop.is_set() and trainer.epoch < int(training["epochs"]):
        recorder.checkpoint(trainer, metrics)
        return JobState.QUEUED
    recorder.checkpoint(trainer, metrics, final=True)
    return JobState.SUCCEEDED


class Worker:
    """Claims and runs jobs until `stop` is set; rescues jobs of lost workers on the way."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        worker_id: str,
        stop: threading.Event,
        queues: Sequence[str] | None = None,
        parent_pid: int | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.worker_id = worker_id
        self.stop = stop
        self.queues = list(queues) if queues else None
        # A supervised worker's supervisor (see `run_worker_process`).
        self.parent_pid = parent_pid
        self.last_rescue = 0.0
        self.current_job: str | None = None
        # Jobs this worker brought to their end (SUCCEEDED, FAILED, CANCELLED); a job handed back
        # by a stop, or taken away (a lost lease), is not done: it runs on, here or elsewhere.
        self.jobs_done = 0
        # The token of a claim that failed unanswered: it may have taken a job (see `run_once`).
        self.unanswered_claim: str | None = None

    def run_forever(self) -> None:
        log.info("worker %s started (queues: %s)", self.worker_id, self.queues or "all")
        wakeup = Wakeup(self.settings.database_url)
        backoff = self.settings.poll_interval_s
        try:
            while not self.stop.is_set():
                try:
                    self.rescue_if_due()
                    ran = self.run_once()
                    backoff = self.settings.poll_interval_s
                except Unavailable as error:
                    log.warning("database unavailable (%s); retrying in %.1fs", error, backoff)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                except Exception as error:
                    # E.g. SQLite's "database is locked" or a PostgreSQL lock timeout while
                    # claiming or rescuing: the worker process must outlive it, not exit.
                    log.warning(
                        "worker round failed (%s: %s); retrying in %.1fs",
                        type(error).__name__,
                        error,
                        backoff,
                    )
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                if not ran:
                    wakeup.wait(self.settings.poll_interval_s, self.stop)
        finally:
            wakeup.close()
            with contextlib.suppress(Unavailable):
                self.store.worker_stopped(self.worker_id, self.jobs_done)
        log.info("worker %s stopped", self.worker_id)

    def _claim(self) -> Claim | None:
        """A claimed job, or None. A claim whose connection dropped may have committed all the
        same (the database took the job; its answer was lost): its job would stay RUNNING under
        a lease nobody renews, then be rescued as a lost worker's, an attempt spent. So the
        claim's token is kept until an answer comes, and the next round first takes back the
        job that holds it, if one does."""
        if self.unanswered_claim is not None:
            claim = self.store.claimed_with(self.unanswered_claim)
            self.unanswered_claim = None
            if claim is not None:
                with job_logged(claim.job.id):
                    log.info("jobs/%s was claimed before the database went away", claim.job.id)
                return claim
        # The parent watch looks once a second: a supervisor killed outright (SIGKILL) since then
        # must not leave this worker a new job to hand back.
        if self.parent_pid is not None and _orphaned(self.parent_pid):
            self.stop.set()
            return None
        self.unanswered_claim = new_claim_token()
        claim = self.store.claim_job(
            self.worker_id, self.queues, self.settings.lease_s, self.unanswered_claim
        )
        self.unanswered_claim = None
        return claim

    def report_quietly(self) -> None:
        """`report`, logging a failure instead of raising it: bookkeeping, which no database
        error may keep a job from running or ending (the next round's report tries again)."""
        try:
            self.report()
        except Exception as error:
            log.warning("cannot report this worker (%s: %s)", type(error).__name__, error)

    def report(self) -> None:
        """Tells the database this worker is alive and what it is doing."""
        self.store.worker_seen(
            self.worker_id,
            socket.gethostname(),
            os.getpid(),
            self.queues or [],
            self.current_job,
            self.jobs_done,
        )
        WORKER_HEARTBEAT.set_to_current_time()

    def rescue_if_due(self) -> None:
        now = time.monotonic()
        if now - self.last_rescue < self.settings.lease_s / 4:
            return
        self.last_rescue = now
        self.report()
        for job_id, state in self.store.rescue_expired():
            with job_logged(job_id):
                log.warning("rescued jobs/%s from a lost worker: now %s", job_id, state.value)

    def run_once(self) -> bool:
        """Claims and runs one job; False when the queue was empty."""
        claim = self._claim()
        if claim is None:
            return False
        job_id = claim.job.id
        job_token = JOB_ID.set(job_id)
        log.info("worker %s runs jobs/%s (attempt %d)", self.worker_id, job_id, claim.job.attempt)
        self.current_job = job_id
        started = time.perf_counter()
        ended = False  # brought to its end by this worker (see `jobs_done`)
        self.report_quietly()
        try:
            state = run_job(self.store, self.settings, claim, self.stop, self.report)
            log.info("jobs/%s is %s", job_id, state.value)
            JOB_SECONDS.labels(state=state.value).observe(time.perf_counter() - started)
            ended = state is not JobState.QUEUED
        except LeaseLost as error:
            log.warning("%s; dropping it", error)
        except Unavailable:
            log.exception("jobs/%s: the database stayed unreachable; its lease will lapse", job_id)
        except Exception as error:  # the job failed, the worker lives on
            if isinstance(error, JOB_FAULTS):
                log.warning("jobs/%s failed: %s", job_id, error)  # the job's fault, not ours
                reason = str(error) or type(error).__name__
            else:
                reference = f"{job_id}/attempt {claim.job.attempt}"
                log.exception("jobs/%s failed: unexpected error (reference %s)", job_id, reference)
                reason = (
                    f"the worker hit an unexpected error (reference {reference}); the worker log "
                    "has the details"
                )
            try:
                with_retry(
                    lambda: self.store.finish_job(claim, JobState.FAILED, reason),
                    self.settings.db_retry_s,
                )
                ended = True
            except (LeaseLost, Unavailable) as lost:
                log.warning("jobs/%s: cannot record the failure (%s)", job_id, lost)
            JOB_SECONDS.labels(state=JobState.FAILED.value).observe(time.perf_counter() - started)
        finally:
            # At once, not at the next round's report: `trainwire status` would show the job as
            # this worker's current one meanwhile, and a worker stopping now one job short.
            self.current_job = None
            if ended:
                self.jobs_done += 1
            EXAMPLES_PER_SECOND.set(0)  # idle, not still at the last epoch's rate
            self.report_quietly()
            JOB_ID.reset(job_token)
        return True


def _orphaned(parent_pid: int) -> bool:
    """Whether the process that started this worker (`parent_pid`) is gone, logged when it is:
    this one was then re-parented, so its parent pid changed."""
    if os.getppid() == parent_pid:
        return False
    log.warning(
        "the process that started this worker (pid %d) is gone; stopping after the current batch",
        parent_pid,
    )
    return True


def _stop_when_orphaned(parent_pid: int, stop: threading.Event, every_s: float = 1.0) -> None:
    while not stop.wait(every_s):
        if _orphaned(parent_pid):
            stop.set()


def worker_id(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


def run_worker_process(
    settings: Settings,
    index: int = 0,
    queues: Sequence[str] | None = None,
    parent_pid: int | None = None,
) -> None:
    """Entry point of a worker OS process: its own database engine, signals and BLAS threads.

    A supervised worker gets its supervisor's `parent_pid` and stops, as on SIGTERM, once that
    process is gone (it is then re-parented, so its parent pid changes).
    """
    from .logs import configure_logging

    configure_logging()
    stop = threading.Event()
    if parent_pid is not None:
        threading.Thread(
            target=_stop_when_orphaned, args=(parent_pid, stop), name="parent-watch", daemon=True
        ).start()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info(
            "worker received %s; stopping after the current batch", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if settings.metrics_port:
        serve_metrics(settings.metrics_port + index, settings.metrics_host, WORKER_METRICS)
    database = Database(settings.database_url, idle_in_transaction_s=settings.lease_s)
    try:
        with threadpool_limits(limits=settings.blas_threads_per_worker()):
            chosen = list(queues or []) or settings.queue_list()
            worker = Worker(Store(database), settings, worker_id(index), stop, chosen, parent_pid)
            worker.run_forever()
    finally:
        database.dispose()
