"""The worker: claims jobs from the database queue, trains them with the engine, records results.

A worker process runs one job at a time. Between batches it notices a stop request (SIGTERM) and
between epochs a cancel request; either way it checkpoints first, so nothing trained is lost. Every
write for a job carries the claim's fencing token.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from trainwire.engine import Callback, Trainer, load_state, save_state

from .config import Settings
from .datasets import DatasetService
from .db import Database
from .errors import Unavailable
from .records import Claim, JobState, MetricValue
from .store import LeaseLost, Store
from .training import build_model, build_trainer

log = logging.getLogger("trainwire.worker")

LEASE_S = 60.0


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def split_validation(
    features: np.ndarray, targets: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """A seeded random hold-out (the same on every worker and every attempt)."""
    count = int(len(features) * fraction)
    if count == 0:
        return features, targets, None
    order = np.random.default_rng(seed).permutation(len(features))
    held, kept = np.sort(order[:count]), np.sort(order[count:])
    return features[kept], targets[kept], (features[held], targets[held])


class JobRecorder(Callback):
    """Writes progress, metrics and checkpoints of one claimed job as the trainer runs."""

    def __init__(
        self,
        store: Store,
        claim: Claim,
        stop: threading.Event,
        examples_per_epoch: int,
    ) -> None:
        training = claim.job.training
        self.store = store
        self.claim = claim
        self.stop = stop
        self.epochs = int(training["epochs"])
        self.steps_per_epoch = math.ceil(examples_per_epoch / int(training["batch_size"]))
        self.examples_per_epoch = examples_per_epoch
        self.checkpoint_every = int(training.get("checkpoint_every_epochs", 0))
        self.log_every = int(training.get("log_every_steps", 0))
        self.cancel_requested = False
        self.pending: list[MetricValue] = []
        self.epoch_started = time.perf_counter()
        self.progress: dict[str, float] = {}

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self.epoch_started = time.perf_counter()

    def on_batch_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        if self.log_every and step % self.log_every == 0:
            self.pending.append(MetricValue("batch_loss", step, trainer.epoch, logs["loss"]))
        if self.stop.is_set():
            trainer.stop_training = True

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        loss = logs.get("loss", 0.0)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss} in epoch {epoch + 1}; lower the learning rate "
                "or scale the features"
            )
        elapsed = max(time.perf_counter() - self.epoch_started, 1e-9)
        rate = self.examples_per_epoch / elapsed
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
        state = self.store.record_epoch(self.claim, self.progress, logs, values, LEASE_S)
        if state is JobState.CANCELLING:
            self.cancel_requested = True
            trainer.stop_training = True
        if self.checkpoint_every and done % self.checkpoint_every == 0 and done < self.epochs:
            save_checkpoint(self.store, self.claim, trainer, logs)


def save_checkpoint(
    store: Store, claim: Claim, trainer: Trainer, metrics: dict[str, float], final: bool = False
) -> None:
    data = save_state(trainer.state_dict(), {"job": claim.job.id, "kind": "trainer"})
    store.save_checkpoint(claim, trainer.epoch, trainer.step, metrics, data, is_final=final)


def run_job(store: Store, settings: Settings, claim: Claim, stop: threading.Event) -> JobState:
    """Trains a claimed job to its end (or to a stop or cancel); returns the state it leaves."""
    job = claim.job
    training = job.training
    features, targets = DatasetService(store, settings).arrays(job.dataset_id)
    train_x, train_y, validation = split_validation(
        features, targets, float(training.get("validation_fraction", 0.0)), int(training["seed"])
    )
    model = build_model(job.model_spec, training)
    trainer = build_trainer(model, training)
    latest = store.latest_checkpoint(job.id)
    if latest is not None:
        state, _ = load_state(store.checkpoint_data(latest.id))
        trainer.load_state_dict(state)
        log.info("jobs/%s resumes from epoch %d step %d", job.id, latest.epoch, latest.step)
    recorder = JobRecorder(store, claim, stop, len(train_x))
    trainer.fit(
        train_x,
        train_y,
        epochs=int(training["epochs"]),
        validation_data=validation,
        callbacks=[recorder],
    )
    metrics = dict(job.metrics)
    for name, values in trainer.history.history.items():
        if values:
            metrics[name] = float(values[-1])
    if recorder.cancel_requested:
        save_checkpoint(store, claim, trainer, metrics)
        store.finish_job(claim, JobState.CANCELLED, "cancelled by request")
        return JobState.CANCELLED
    if stop.is_set() and trainer.epoch < int(training["epochs"]):
        save_checkpoint(store, claim, trainer, metrics)
        store.release_job(claim)
        return JobState.QUEUED
    save_checkpoint(store, claim, trainer, metrics, final=True)
    store.finish_job(claim, JobState.SUCCEEDED, progress=recorder.progress or None)
    return JobState.SUCCEEDED


class Worker:
    """Claims and runs jobs until `stop` is set."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        worker_id: str,
        stop: threading.Event,
        queues: Sequence[str] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.worker_id = worker_id
        self.stop = stop
        self.queues = list(queues) if queues else None

    def run_forever(self) -> None:
        log.info("worker %s started (queues: %s)", self.worker_id, self.queues or "all")
        backoff = self.settings.poll_interval_s
        while not self.stop.is_set():
            try:
                ran = self.run_once()
                backoff = self.settings.poll_interval_s
            except Unavailable as error:
                log.warning("database unavailable (%s); retrying in %.1fs", error, backoff)
                ran = False
                backoff = min(backoff * 2, 10.0)
            if not ran:
                self.stop.wait(backoff)
        log.info("worker %s stopped", self.worker_id)

    def run_once(self) -> bool:
        """Claims and runs one job; False when the queue was empty."""
        claim = self.store.claim_job(self.worker_id, self.queues, LEASE_S)
        if claim is None:
            return False
        log.info(
            "worker %s runs jobs/%s (attempt %d)", self.worker_id, claim.job.id, claim.job.attempt
        )
        try:
            state = run_job(self.store, self.settings, claim, self.stop)
            log.info("jobs/%s is %s", claim.job.id, state.value)
        except LeaseLost as error:
            log.warning("%s; dropping it", error)
        except Unavailable:
            raise
        except Exception as error:  # the job failed, the worker lives on
            log.exception("jobs/%s failed", claim.job.id)
            reason = str(error) or type(error).__name__
            try:
                self.store.finish_job(claim, JobState.FAILED, reason)
            except LeaseLost as lost:
                log.warning("%s; cannot record the failure", lost)
        return True


def worker_id(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


def run_worker_process(
    settings: Settings, index: int = 0, queues: Sequence[str] | None = None
) -> None:
    """Entry point of a worker OS process: its own database engine, signals and BLAS threads."""
    from .logs import configure_logging

    configure_logging()
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info(
            "worker received %s; stopping after the current batch", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    database = Database(settings.database_url)
    try:
        with threadpool_limits(limits=settings.blas_threads_per_worker()):
            Worker(Store(database), settings, worker_id(index), stop, queues).run_forever()
    finally:
        database.dispose()
