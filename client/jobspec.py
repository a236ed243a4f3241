"""Job spec files: a training job described in YAML (or JSON), for `trainwire jobs submit`.

    display_name: iris-mlp
    dataset:                      # a stored dataset ("datasets/…") or a file to upload
      path: data/iris.csv         # relative to the spec file; CSV, NPZ or NPY (+ targets)
      target_column: species
    model:
      layers:
        - {type: dense, units: 16, activation: relu}
        - {type: dense, units: 3}
    training:                     # the keyword arguments of Client.create_job
      epochs: 50
      optimizer: {name: adam, learning_rate: 0.01}
    labels: {team: research}

Top-level keys besides `dataset`, `model` and `training` are `display_name`, `labels`, `queue`,
`priority`, `max_attempts` and `request_id`. Unknown keys are refused with their path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError
from .validation import check_model

TOP_KEYS = frozenset(
    {"dataset", "model", "training", "display_name", "labels", "queue", "priority",
     "max_attempts", "request_id"}
)  # fmt: skip
TRAINING_KEYS = frozenset(
    {"epochs", "batch_size", "optimizer", "learning_rate", "loss", "metrics",
     "validation_fraction", "seed", "checkpoint_every_epochs", "schedule", "early_stopping",
     "dtype", "log_every_steps", "keep_checkpoints"}
)  # fmt: skip
DATASET_KEYS = frozenset(
    {"path", "targets", "target_column", "task", "name", "num_classes", "labels"}
)


@dataclass(frozen=True)
class DatasetSource:
    """A dataset to upload from a file before the job is submitted."""

    path: Path
    targets: Path | None = None
    target_column: str | int | None = None
    task: str | None = None
    name: str = ""
    num_classes: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobSpec:
    """A parsed job spec: where the data comes from, the model, and `create_job` arguments."""

    dataset: str | DatasetSource
    model: dict[str, Any]
    options: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> JobSpec:
        """Reads and checks a spec file; relative dataset paths are resolved against it."""
        file = Path(path)
        try:
            document = yaml.safe_load(file.read_text())
        except yaml.YAMLError as error:
            raise SpecError([("spec", f"{file} is not valid YAML: {error}")]) from None
        return cls.from_dict(document, base=file.parent)

    @classmethod
    def from_dict(cls, document: object, base: Path = Path()) -> JobSpec:
        """Checks a spec document (the parsed YAML); raises SpecError naming every bad key."""
        if not isinstance(document, Mapping):
            raise SpecError([("spec", "must be a mapping with dataset, model and training")])
        violations: list[tuple[str, str]] = []
        for key in sorted(set(document) - TOP_KEYS, key=str):
            violations.append(
                (key, f"is not a job spec key; expected: {', '.join(sorted(TOP_KEYS))}")
            )
        for key in ("dataset", "model"):
            if key not in document:
                violations.append((key, "is required"))
        training = document.get("training") or {}
        if not isinstance(training, Mapping):
            violations.append(("training", "must be a mapping"))
            training = {}
        for key in sorted(set(training) - TRAINING_KEYS, key=str):
            allowed = ", ".join(sorted(TRAINING_KEYS))
            violations.append(
                (f"training.{key}", f"is not a training setting; expected: {allowed}")
            )
        dataset = document.get("dataset")
        source: str | DatasetSource = ""
        if isinstance(dataset, str):
            source = dataset
        elif isinstance(dataset, Mapping):
            for key in sorted(set(dataset) - DATASET_KEYS, key=str):
                allowed = ", ".join(sorted(DATASET_KEYS))
                violations.append((f"dataset.{key}", f"is not a dataset key; expected: {allowed}"))
            num_classes = dataset.get("num_classes", 0)
            if isinstance(num_classes, bool) or not isinstance(num_classes, int):
                violations.append(
                    ("dataset.num_classes", f"must be an integer. Received: {num_classes!r}")
                )
            _check_labels(violations, "dataset.labels", dataset.get("labels"))
            if dataset.get("path") is None:
                violations.append(("dataset.path", "is required for a dataset to upload"))
            elif not violations:
                source = DatasetSource(
                    path=base / str(dataset["path"]),
                    targets=base / str(dataset["targets"]) if dataset.get("targets") else None,
                    target_column=dataset.get("target_column"),
                    task=dataset.get("task"),
                    name=str(dataset.get("name", "")),
                    num_classes=int(num_classes),
                    labels={str(k): str(v) for k, v in (dataset.get("labels") or {}).items()},
                )
        elif "dataset" in document:
            violations.append(("dataset", "must be a dataset name or a mapping with a path"))
        _check_labels(violations, "labels", document.get("labels"))
        if violations:
            raise SpecError(violations)
        model = document["model"]
        check_model(model)
        options: dict[str, Any] = dict(training)
        for key in TOP_KEYS - {"dataset", "model", "training"}:
            if key in document:
                options[key] = document[key]
        if "labels" in options:
            options["labels"] = {str(k): str(v) for k, v in options["labels"].items()}
        return cls(source, dict(model), options)


def _check_labels(violations: list[tuple[str, str]], field: str, labels: object) -> None:
    """Labels are a mapping of names to values (absent or empty: none)."""
    if labels is not None and not isinstance(labels, Mapping):
        violations.append((field, f"must be a mapping of names to values. Received: {labels!r}"))
