"""Conversions between `trainwire.v1` messages and the server's records and plain specs.

Only shapes change here; validation lives in the services.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from trainwire.client.specs import model_spec_to_proto
from trainwire.client.tensors import dtype_code
from trainwire.v1 import datasets_pb2, jobs_pb2, models_pb2, predictions_pb2, tensor_pb2

from .records import Checkpoint, Dataset, Job, JobState, TaskKind, shown_progress

# The most bytes a repeated message field puts before each item: a tag and a length.
ITEM_FRAMING_BYTES = 6
# A listed record and the message an answer shows it as.
Listed = TypeVar("Listed", Dataset, Job, Checkpoint)
Shown = TypeVar("Shown", bound=Message)

TASKS_TO_PROTO = {
    TaskKind.REGRESSION: datasets_pb2.TASK_KIND_REGRESSION,
    TaskKind.BINARY_CLASSIFICATION: datasets_pb2.TASK_KIND_BINARY_CLASSIFICATION,
    TaskKind.MULTICLASS_CLASSIFICATION: datasets_pb2.TASK_KIND_MULTICLASS_CLASSIFICATION,
}
TASKS_FROM_PROTO = {code: task for task, code in TASKS_TO_PROTO.items()}

STATES_TO_PROTO = {state: jobs_pb2.JobState.Value(f"JOB_STATE_{state.value}") for state in JobState}
STATES_FROM_PROTO = {code: state for state, code in STATES_TO_PROTO.items()}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def dataset_to_proto(dataset: Dataset) -> datasets_pb2.Dataset:
    return datasets_pb2.Dataset(
        name=f"datasets/{dataset.id}",
        display_name=dataset.display_name,
        task=TASKS_TO_PROTO[dataset.task],
        num_classes=dataset.num_classes,
        num_examples=dataset.num_examples,
        features=tensor_pb2.TensorInfo(
            dtype=dtype_code(dataset.feature_dtype), shape=dataset.feature_shape
        ),
        targets=tensor_pb2.TensorInfo(
            dtype=dtype_code(dataset.target_dtype), shape=dataset.target_shape
        ),
        size_bytes=dataset.size_bytes,
        sha256=dataset.sha256,
        create_time=timestamp(dataset.created_at),
        labels=dataset.labels,
        feature_names=dataset.feature_names,
        class_names=dataset.class_names,
    )


class ListAnswer(Generic[Listed, Shown]):
    """A List call's answer, made of its page's items each converted once: the store's `fits`
    sizes the page by the messages the answer then carries (ListJobs converted every job of a
    page twice, once to size the page and once to answer). One per call."""

    def __init__(self, convert: Callable[[Listed], Shown], max_bytes: int) -> None:
        self._convert: Callable[[Listed], Shown] = convert
        self._max_bytes = max_bytes
        self._shown: dict[str | int, Shown] = {}  # by the item's id, unique in a listing

    def message(self, item: Listed) -> Shown:
        shown = self._shown.get(item.id)
        if shown is None:
            shown = self._shown[item.id] = self._convert(item)
        return shown

    def fits(self, items: Sequence[Listed]) -> int:
        """How many of `items`, in order, one answer of `max_bytes` carries as a repeated field
        (the store's `fits`: the page ends after them, with a token)."""
        used = 0
        count = 0
        for item in items:
            used += self.message(item).ByteSize() + ITEM_FRAMING_BYTES
            if used > self._max_bytes:
                break
            count += 1
        return count

    def messages(self, items: Sequence[Listed]) -> list[Shown]:
        """The answer's messages for the page's `items`."""
        return [self.message(item) for item in items]


def training_to_proto(training: dict[str, Any]) -> models_pb2.TrainingConfig:
    optimizer = dict(training.get("optimizer", {}))
    early = training.get("early_stopping") or {}
    schedule = dict(training.get("schedule") or {})
    return models_pb2.TrainingConfig(
        epochs=int(training["epochs"]),
        batch_size=int(training["batch_size"]),
        loss=str(training["loss"]),
        optimizer=models_pb2.OptimizerSpec(
            name=str(optimizer.pop("name", "")),
            learning_rate=float(optimizer.pop("learning_rate", 0.0)),
            params={k: float(v) for k, v in optimizer.items()},
        ),
        schedule=models_pb2.ScheduleSpec(
            name=str(schedule.pop("name", "")),
            params={k: float(v) for k, v in schedule.items() if not isinstance(v, str)},
            options={k: v for k, v in schedule.items() if isinstance(v, str)},
        ),
        validation_fraction=float(training.get("validation_fraction", 0.0)),
        seed=int(training.get("seed", 0)),
        metrics=list(training.get("metrics", [])),
        early_stopping=models_pb2.EarlyStopping(
            monitor=str(early.get("monitor", "")),
            patience=int(early.get("patience", 0)),
            min_delta=float(early.get("min_delta", 0.0)),
            restore_best_weights=bool(early.get("restore_best_weights", False)),
        ),
        checkpoint_every_epochs=int(training.get("checkpoint_every_epochs", 0)),
        dtype=dtype_code(training.get("dtype", "float32")),
        log_every_steps=int(training.get("log_every_steps", 0)),
        keep_checkpoints=int(training.get("keep_checkpoints", 0)),
    )


def progress_to_proto(progress: dict[str, float]) -> jobs_pb2.Progress:
    return jobs_pb2.Progress(
        epoch=int(progress.get("epoch", 0)),
        total_epochs=int(progress.get("total_epochs", 0)),
        step=int(progress.get("step", 0)),
        total_steps=int(progress.get("total_steps", 0)),
        examples_per_second=float(progress.get("examples_per_second", 0.0)),
        eta_seconds=float(progress.get("eta_seconds", 0.0)),
    )


def checkpoint_to_proto(checkpoint: Checkpoint, is_best: bool) -> jobs_pb2.Checkpoint:
    return jobs_pb2.Checkpoint(
        name=checkpoint_name(checkpoint),
        epoch=checkpoint.epoch,
        step=checkpoint.step,
        metrics=checkpoint.metrics,
        size_bytes=checkpoint.size_bytes,
        create_time=timestamp(checkpoint.created_at),
        is_best=is_best,
        is_final=checkpoint.is_final,
        is_partial=checkpoint.is_partial,
    )


def job_to_proto(job: Job, max_bytes: int | None = None) -> jobs_pb2.Job:
    """The job as answers show it; with `max_bytes`, within it (`without_layers_past`)."""
    return without_layers_past(_job_to_proto(job), max_bytes)


# An answer that shows a job's model (in its `model` field).
ShowsModel = TypeVar("ShowsModel", jobs_pb2.Job, predictions_pb2.ModelMetadata)


def without_layers_past(shown: ShowsModel, max_bytes: int | None) -> ShowsModel:
    """`shown`, without its model's layers if it is larger than `max_bytes` (a model has at
    least one, so none says they were left out): CreateJob bounds the model by the message
    limit, but a job stored before, or under a larger limit, would otherwise make every answer
    that shows it fail (GetJob, CancelJob, ListJobs pages, GetModelMetadata)."""
    if max_bytes is not None and shown.ByteSize() > max_bytes:
        del shown.model.layers[:]
    return shown


def _job_to_proto(job: Job) -> jobs_pb2.Job:
    progress = shown_progress(job.training, job.progress)
    return jobs_pb2.Job(
        name=f"jobs/{job.id}",
        display_name=job.display_name,
        dataset=f"datasets/{job.dataset_id}" if job.dataset_id else "",
        model=model_spec_to_proto(job.model_spec),
        training=training_to_proto(job.training),
        state=STATES_TO_PROTO[job.state],
        progress=progress_to_proto(progress),
        metrics=job.metrics,
        error=job.error,
        create_time=timestamp(job.created_at),
        start_time=timestamp(job.started_at),
        end_time=timestamp(job.ended_at),
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        queue=job.queue,
        priority=job.priority,
        labels=job.labels,
        request_id=job.request_id or "",
    )


def checkpoint_name(checkpoint: Checkpoint) -> str:
    return f"jobs/{checkpoint.job_id}/checkpoints/{checkpoint.id}"
