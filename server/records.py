"""Domain records: what the store returns and the services work with (plain dataclasses).

ORM rows are turned into these inside the store, so no SQLAlchemy object leaves a session.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class TaskKind(enum.StrEnum):
    REGRESSION = "REGRESSION"
    BINARY_CLASSIFICATION = "BINARY_CLASSIFICATION"
    MULTICLASS_CLASSIFICATION = "MULTICLASS_CLASSIFICATION"

    @property
    def is_classification(self) -> bool:
        return self is not TaskKind.REGRESSION


@dataclass(frozen=True)
class Dataset:
    id: str
    project: str
    display_name: str
    task: TaskKind
    num_classes: int
    num_examples: int
    feature_dtype: str
    feature_shape: tuple[int, ...]
    target_dtype: str
    target_shape: tuple[int, ...]
    size_bytes: int
    sha256: str
    labels: dict[str, str]
    feature_names: list[str]
    class_names: list[str]
    created_at: datetime
    # The upload's idempotency key (`DatasetHeader.request_id`), None if it gave none.
    request_id: str | None = None

    @property
    def num_features(self) -> int:
        return self.feature_shape[1]

    @property
    def target_width(self) -> int:
        return 1 if len(self.target_shape) == 1 else self.target_shape[1]

    def target(self) -> dict[str, Any]:
        """What a job trained on this dataset keeps of it, for predictions."""
        return {
            "task": self.task.value,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "feature_names": list(self.feature_names),
            "num_features": self.num_features,
            "target_width": self.target_width,
        }


@dataclass(frozen=True)
class Job:
    id: str
    project: str
    display_name: str
    dataset_id: str | None
    target: dict[str, Any]
    model_spec: dict[str, Any]
    training: dict[str, Any]
    state: JobState
    queue: str
    priority: int
    attempt: int
    max_attempts: int
    labels: dict[str, str]
    request_id: str | None
    progress: dict[str, float]
    metrics: dict[str, float]
    error: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    worker_id: str | None = None


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    sequence: int
    state: JobState
    attempt: int
    progress: dict[str, float]
    metrics: dict[str, float]
    message: str
    created_at: datetime


@dataclass(frozen=True)
class Claim:
    """A job a worker has claimed, with the fencing token every later write must present."""

    job: Job
    token: str


@dataclass(frozen=True)
class Checkpoint:
    id: int
    job_id: str
    epoch: int
    step: int
    metrics: dict[str, float]
    is_final: bool
    size_bytes: int
    created_at: datetime
    # Written partway through an epoch: `epoch` and `metrics` are the last whole epoch's.
    is_partial: bool = False


@dataclass(frozen=True, slots=True)  # slots: a ListJobMetrics page holds up to 190,000
class MetricValue:
    name: str
    step: int
    epoch: int
    value: float


@dataclass
class NewJob:
    """What CreateJob asks for, validated and normalised by the job service."""

    dataset_id: str
    model_spec: dict[str, Any]
    training: dict[str, Any]
    project: str = "default"
    target: dict[str, Any] = field(default_factory=dict)
    display_name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3
    request_id: str | None = None


def shown_progress(
    training: Mapping[str, Any] | None, progress: Mapping[str, float] | None
) -> dict[str, float]:
    """A job's progress as answers and events show it: the stored progress, with the job's
    total epochs (its training's), which the stored progress holds only once an epoch has
    ended. Without them a watcher read 0 of 0 epochs until then, and at the last event of a job
    ending before its first epoch."""
    return {"total_epochs": (training or {}).get("epochs", 0), **(progress or {})}
