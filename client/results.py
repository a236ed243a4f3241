"""What SDK calls return: small typed snapshots of datasets, jobs, metrics, checkpoints, models
and predictions."""

from __future__ import annotations

import copy
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from trainwire.v1 import datasets_pb2, jobs_pb2, predictions_pb2

from .specs import model_spec_from_proto
from .tensors import dtype_name

TASKS = {
    "regression": datasets_pb2.TASK_KIND_REGRESSION,
    "binary": datasets_pb2.TASK_KIND_BINARY_CLASSIFICATION,
    "multiclass": datasets_pb2.TASK_KIND_MULTICLASS_CLASSIFICATION,
}
TASK_NAMES = {code: name for name, code in TASKS.items()}
#: States a job does not leave.
FINISHED = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
#: Every job state, in lifecycle order.
STATES = ("QUEUED", "RUNNING", "CANCELLING", "SUCCEEDED", "FAILED", "CANCELLED")


def terminal_text(text: str) -> str:
    """`text` from a server, made safe to print for people: each character that is not
    printable (C0 and C1 controls such as ESC and CR, DEL, newlines, format characters such as
    bidirectional overrides) is shown as its Python escape (`\\x1b`, `\\n`, `\\u202e`). A
    terminal runs the escape sequences it is given: a name holding one could retitle the
    window, clear the screen, overwrite lines or set the clipboard (OSC 52). Older stored data,
    or a hostile server, may still send them; JSON output needs no such care (`json.dumps`
    escapes them)."""
    if text.isprintable():
        return text
    # The repr of one unprintable character is its escape between quotes. Spaces other than
    # ASCII's (no-break, ideographic: category Zs) are not printable to Python but harmless, and
    # names hold them.
    return "".join(
        c if c.isprintable() or unicodedata.category(c) == "Zs" else repr(c)[1:-1] for c in text
    )


def state_name(code: int) -> str:
    """`JOB_STATE_RUNNING` (or its number) as `RUNNING`."""
    return str(jobs_pb2.JobState.Name(code)).removeprefix("JOB_STATE_")


def state_code(name: str) -> jobs_pb2.JobState.ValueType:
    """`running` or `RUNNING` as the `JobState` number; ValueError for unknown names."""
    try:
        return jobs_pb2.JobState.Value(f"JOB_STATE_{name.upper()}")
    except ValueError:
        raise ValueError(f"state must be one of {', '.join(STATES)}. Received: {name!r}") from None


def _utc_time(stamp: Timestamp) -> datetime | None:
    """A `Timestamp` as a timezone-aware `datetime` in UTC; None when unset (zero). Every time the
    SDK returns is made here: `ToDatetime()` alone is naive, easily taken for local time."""
    return stamp.ToDatetime(tzinfo=UTC) if stamp.seconds or stamp.nanos else None


def _iso(moment: datetime | None) -> str | None:
    """A time as every `to_dict()` writes it: ISO 8601 without an offset, UTC being implied
    ("2026-01-01T00:00:00.123456"), as the JSON was before the SDK's times were aware: the CLI's
    `--json` output is an interface. The SDK's times are all UTC, so dropping the zone is exact."""
    return moment.replace(tzinfo=None).isoformat() if moment else None


@dataclass(frozen=True)
class DatasetInfo:
    """A stored dataset. `name` (`datasets/…`) is what jobs refer to; `create_time` is a
    timezone-aware `datetime` in UTC; `feature_names` and `class_names` are empty when the
    upload named none."""

    name: str
    display_name: str
    task: str
    num_examples: int
    num_features: int
    num_classes: int
    size_bytes: int
    sha256: str
    feature_shape: tuple[int, ...] = ()
    target_shape: tuple[int, ...] = ()
    create_time: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    feature_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, message: datasets_pb2.Dataset) -> DatasetInfo:
        """The snapshot of a `Dataset` message."""
        return cls(
            name=message.name,
            display_name=message.display_name,
            task=TASK_NAMES.get(message.task, "unspecified"),
            num_examples=message.num_examples,
            num_features=int(message.features.shape[1]) if len(message.features.shape) > 1 else 0,
            num_classes=message.num_classes,
            size_bytes=message.size_bytes,
            sha256=message.sha256,
            feature_shape=tuple(int(s) for s in message.features.shape),
            target_shape=tuple(int(s) for s in message.targets.shape),
            create_time=_utc_time(message.create_time),
            labels=dict(message.labels),
            feature_names=tuple(message.feature_names),
            class_names=tuple(message.class_names),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "display_name": self.display_name,
            "task": self.task,
            "num_examples": self.num_examples,
            "num_features": self.num_features,
            "num_classes": self.num_classes,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "feature_shape": list(self.feature_shape),
            "target_shape": list(self.target_shape),
            "create_time": _iso(self.create_time),
            "labels": dict(self.labels),
            "feature_names": list(self.feature_names),
            "class_names": list(self.class_names),
        }


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of a job.

    `state` is QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING or CANCELLED. `create_time`,
    `start_time` (its first run's) and `end_time` are timezone-aware `datetime`s in UTC, None
    until they happen. `labels`, `queue` and `priority` are as the job was created with them
    (`queue` "default" unless named). `model` is a spec equivalent to the one the server stored,
    in the dict form `create_job` takes (the width and the engine's defaults written out; an
    activation layer as `{"name": ...}`), so it trains the same model again; `training` its
    training settings. `raw` is the `Job` message itself.
    """

    name: str
    state: str
    epoch: int
    total_epochs: int
    metrics: dict[str, float]
    error: str
    attempt: int
    examples_per_second: float
    eta_seconds: float
    create_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    labels: dict[str, str]
    queue: str
    priority: int
    raw: jobs_pb2.Job = field(repr=False)

    @classmethod
    def from_proto(cls, message: jobs_pb2.Job) -> JobStatus:
        """The snapshot of a `Job` message."""
        return cls(
            name=message.name,
            state=state_name(message.state),
            epoch=message.progress.epoch,
            total_epochs=message.progress.total_epochs,
            metrics=dict(sorted(message.metrics.items())),  # a protobuf map has no order
            error=message.error,
            attempt=message.attempt,
            examples_per_second=message.progress.examples_per_second,
            eta_seconds=message.progress.eta_seconds,
            create_time=_utc_time(message.create_time),
            start_time=_utc_time(message.start_time),
            end_time=_utc_time(message.end_time),
            labels=dict(message.labels),
            queue=message.queue,
            priority=message.priority,
            raw=message,
        )

    @property
    def finished(self) -> bool:
        """Whether the job reached SUCCEEDED, FAILED or CANCELLED."""
        return self.state in FINISHED

    @property
    def display_name(self) -> str:
        """The job's display name."""
        return str(self.raw.display_name)

    @property
    def dataset(self) -> str:
        """The name of the job's dataset."""
        return str(self.raw.dataset)

    @property
    def model(self) -> dict[str, Any]:
        """The job's model spec (see the class docstring), converted when asked for: a status is
        polled far more often than its spec is read. Without layers when the server cannot
        show them under its message limit (a job stored under a larger one)."""
        # The server stores the spec with its width, so there is no unset one to fill.
        return model_spec_from_proto(self.raw.model, 0)

    @property
    def training(self) -> dict[str, Any]:
        """The job's training settings as the server stored them (its defaults written out), in
        the `TrainingConfig` message's field names: `{"epochs": 60, "optimizer": {"name":
        "adam", "learning_rate": 0.01}, ...}`; a field left unset is left out."""
        training = self.raw.training
        # Zeros and false included (patience 0 or restore_best_weights false is a setting too),
        # of the parts given: the server sends an empty early_stopping for none.
        settings = {
            key: value
            for key, value in MessageToDict(
                training,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            ).items()
            if not isinstance(value, dict) or getattr(training, key).ByteSize()
        }
        if "seed" in settings:
            settings["seed"] = int(settings["seed"])  # a uint64, which JSON mapping writes as text
        if "dtype" in settings:  # as create_job takes it: "float32", not "DATA_TYPE_FLOAT32"
            settings["dtype"] = settings["dtype"].removeprefix("DATA_TYPE_").lower()
        return _without_empty_maps(settings)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's `jobs ... --json`), without `model`, as it always was."""
        return {
            "name": self.name,
            "display_name": self.raw.display_name,
            "dataset": self.raw.dataset,
            "state": self.state,
            "epoch": self.epoch,
            "total_epochs": self.total_epochs,
            "metrics": dict(self.metrics),
            "error": self.error,
            "attempt": self.attempt,
            "examples_per_second": self.examples_per_second,
            "eta_seconds": self.eta_seconds,
            "create_time": _iso(self.create_time),
            "start_time": _iso(self.start_time),
            "end_time": _iso(self.end_time),
            "labels": dict(self.labels),
            "queue": self.queue,
            "priority": self.priority,
        }


def _without_empty_maps(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` less the empty maps at any depth (an optimizer's `params` none were given
    for), which say nothing."""
    kept = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            value = _without_empty_maps(value)
            if not value:
                continue
        kept[key] = value
    return kept


@dataclass(frozen=True)
class JobEvent:
    """One numbered event of a job, as `watch()` yields them: a state change, an epoch's end
    with its metrics, or a message (a worker claiming the job, why it failed).

    `sequence` counts a job's events from 1, strictly increasing: `watch(after_sequence=N)`
    resumes after event N. `time` is when it happened, a timezone-aware `datetime` in UTC (None
    if the server sent none). `state` is the job's state after it (as `JobStatus.state`); the
    progress fields (`epoch`, `total_epochs`, `step`, `total_steps`, `examples_per_second`,
    `eta_seconds`) are the job's at that moment. `metrics` are the values the event reports (an
    epoch's end and the job's end carry the latest; the events before training none), by name in
    name order, and `message` says what happened in words ("epoch 3 done", "running on …",
    why it failed). `raw` is the `JobEvent` message itself (each metric point's own step and
    epoch are there).
    """

    sequence: int
    time: datetime | None
    state: str
    epoch: int
    total_epochs: int
    step: int
    total_steps: int
    examples_per_second: float
    eta_seconds: float
    metrics: dict[str, float]
    message: str
    raw: jobs_pb2.JobEvent = field(repr=False)

    @classmethod
    def from_proto(cls, message: jobs_pb2.JobEvent) -> JobEvent:
        """The snapshot of a `JobEvent` message."""
        progress = message.progress
        # By name, as `JobStatus.metrics`; a name sent twice keeps its last value, as before.
        metrics = {point.name: point.value for point in message.metrics}
        return cls(
            sequence=message.sequence,
            time=_utc_time(message.time),
            state=state_name(message.state),
            epoch=progress.epoch,
            total_epochs=progress.total_epochs,
            step=progress.step,
            total_steps=progress.total_steps,
            examples_per_second=progress.examples_per_second,
            eta_seconds=progress.eta_seconds,
            metrics=dict(sorted(metrics.items())),
            message=message.message,
            raw=message,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields the CLI's `jobs watch --json` lines have always had (it
        adds "job"), which are not all of them (no step, total_steps, examples_per_second)."""
        return {
            "sequence": self.sequence,
            "time": _iso(self.time),
            "state": self.state,
            "epoch": self.epoch,
            "total_epochs": self.total_epochs,
            "eta_seconds": self.eta_seconds,
            "metrics": dict(self.metrics),
            "message": self.message,
        }


@dataclass(frozen=True)
class Prediction:
    """Model outputs; for classifiers also class probabilities and labels (None when asked for
    `outputs_only`)."""

    outputs: np.ndarray
    probabilities: np.ndarray | None
    labels: np.ndarray | None
    checkpoint: str


class Metrics(dict[str, np.ndarray]):
    """A job's metrics: each name maps to an array of shape (points, 3) of step, epoch, value.

    `Metrics` is a plain dict with helpers: `values_of("loss")`, `epochs("loss")`, `steps("loss")`
    and `to_pandas()` (a long DataFrame: metric, step, epoch, value; needs pandas).
    """

    def values_of(self, name: str) -> np.ndarray:
        """The values of one metric, in step order."""
        return self[name][:, 2]

    def epochs(self, name: str) -> np.ndarray:
        """The epoch of each point of one metric."""
        return self[name][:, 1].astype(np.int64)

    def steps(self, name: str) -> np.ndarray:
        """The optimizer step of each point of one metric."""
        return self[name][:, 0].astype(np.int64)

    def to_pandas(self) -> Any:
        """A pandas DataFrame with columns metric, step, epoch, value (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError(
                "Metrics.to_pandas() needs pandas: pip install pandas (the arrays of this dict "
                "work without it)"
            ) from error
        rows = [
            {"metric": name, "step": int(s), "epoch": int(e), "value": float(v)}
            for name, points in self.items()
            for s, e, v in points
        ]
        return pd.DataFrame(rows, columns=["metric", "step", "epoch", "value"])

    def to_dict(self) -> dict[str, dict[str, list[float] | list[int]]]:
        """A JSON-ready dict: {name: {"step": [...], "epoch": [...], "value": [...]}}."""
        return {
            name: {
                "step": self.steps(name).tolist(),
                "epoch": self.epochs(name).tolist(),
                "value": self.values_of(name).tolist(),
            }
            for name in self
        }


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint a job left, as `Job.checkpoints()` lists them.

    The attributes are the `Checkpoint` message's fields, with Python types where the message's
    are protobuf's: `metrics` is a plain dict and `create_time` a timezone-aware `datetime` in UTC
    (a `google.protobuf.Timestamp` in the message; None only if the server sent none). `number`
    is the last part of `name` (`jobs/{job_id}/checkpoints/{number}`).

    `is_partial` marks a checkpoint written when a run stopped or was cancelled partway through an
    epoch: `epoch` and `metrics` are the last epoch end's, the weights are further on. It may be
    the latest, never the best, and never answers `checkpoint="epoch/N"`.
    """

    name: str
    epoch: int
    step: int
    metrics: dict[str, float]
    size_bytes: int
    create_time: datetime | None
    is_best: bool
    is_final: bool
    is_partial: bool

    @classmethod
    def from_proto(cls, message: jobs_pb2.Checkpoint) -> Checkpoint:
        """The snapshot of a `Checkpoint` message."""
        return cls(
            name=message.name,
            epoch=message.epoch,
            step=message.step,
            metrics=dict(sorted(message.metrics.items())),  # a protobuf map has no order
            size_bytes=message.size_bytes,
            create_time=_utc_time(message.create_time),
            is_best=message.is_best,
            is_final=message.is_final,
            is_partial=message.is_partial,
        )

    @property
    def number(self) -> int:
        """The checkpoint's number, the last part of its name."""
        return int(self.name.rsplit("/", 1)[-1])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's `jobs show --json`)."""
        return {
            "name": self.name,
            "epoch": self.epoch,
            "step": self.step,
            "metrics": dict(self.metrics),
            "size_bytes": self.size_bytes,
            "create_time": _iso(self.create_time),
            "is_best": self.is_best,
            "is_final": self.is_final,
            "is_partial": self.is_partial,
        }


@dataclass(frozen=True)
class ModelInfo:
    """A job's trained model, as `model_metadata()` describes it (the `ModelMetadata` message).

    `job` and `checkpoint` name the job and the checkpoint whose model this is (the latest unless
    another was asked for). `input_dtype` and `output_dtype` are NumPy dtypes, float32 or float64
    (the model's precision), so that `x.astype(info.input_dtype)` and `info.output_dtype.itemsize`
    work as they are; a dtype equals its name (`info.input_dtype == "float32"`), which is what
    `to_dict()` writes. `input_shape` and `output_shape` are tuples whose first size, -1, stands
    for any number of rows: `(-1, 4)` takes rows of 4 features. `num_classes` is 0 for a
    regression; `class_names` and `feature_names` are empty when the training dataset named none.
    `num_parameters` counts the trainable parameters. `model` is a spec equivalent to the one
    the server stored, in the dict form `create_job` takes (the engine's defaults written out:
    activation, bias, initializers), so it trains the same model again. `max_message_bytes` is
    the answering server's message limit (its TRAINWIRE_MAX_MESSAGE_BYTES), by which a
    prediction stream sizes its messages when it is below the client's; 0 from a server that
    does not say it (one older than the field).
    """

    job: str
    checkpoint: str
    input_dtype: np.dtype
    input_shape: tuple[int, ...]
    output_dtype: np.dtype
    output_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    num_parameters: int
    model: dict[str, Any]
    max_message_bytes: int = 0

    @classmethod
    def from_proto(cls, message: predictions_pb2.ModelMetadata) -> ModelInfo:
        """The snapshot of a `ModelMetadata` message."""
        input_shape = tuple(int(s) for s in message.inputs.shape)
        return cls(
            job=message.job,
            checkpoint=message.checkpoint,
            # By name: the wire's dtypes are little-endian, the arrays the SDK returns native.
            input_dtype=np.dtype(dtype_name(message.inputs.dtype)),
            input_shape=input_shape,
            output_dtype=np.dtype(dtype_name(message.outputs.dtype)),
            output_shape=tuple(int(s) for s in message.outputs.shape),
            num_classes=message.num_classes,
            class_names=tuple(message.class_names),
            feature_names=tuple(message.feature_names),
            num_parameters=message.num_parameters,
            model=model_spec_from_proto(message.model, input_shape[-1] if input_shape else 0),
            max_message_bytes=message.max_message_bytes,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; dtypes by name ("float32")."""
        return {
            "job": self.job,
            "checkpoint": self.checkpoint,
            "input_dtype": str(self.input_dtype),
            "input_shape": list(self.input_shape),
            "output_dtype": str(self.output_dtype),
            "output_shape": list(self.output_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "feature_names": list(self.feature_names),
            "num_parameters": self.num_parameters,
            "model": copy.deepcopy(self.model),  # nested: the snapshot's own stays as it is
            "max_message_bytes": self.max_message_bytes,
        }


def checkpoint_to_dict(checkpoint: Checkpoint) -> dict[str, Any]:
    """A JSON-ready dict of a `Checkpoint` (kept for callers of this name: `Checkpoint.to_dict`)."""
    return checkpoint.to_dict()


def event_to_dict(event: jobs_pb2.JobEvent) -> dict[str, Any]:
    """A JSON-ready dict of a `JobEvent` message (kept for callers of this name, from before
    watches yielded `JobEvent` snapshots: `JobEvent.to_dict`)."""
    return JobEvent.from_proto(event).to_dict()
