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
`priority`, `max_attempts` and `request_id`. Every mistake is refused at once, each with its path:
unknown keys, dataset keys and labels, and what `create_job` would refuse of the model and the
training settings (so `trainwire jobs submit` uploads nothing for a spec that cannot be run).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .client import Client
from .errors import SpecError
from .validation import check_model
from .wire import create_job_request

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
    {"path", "targets", "target_column", "header", "task", "name", "num_classes", "class_names",
     "feature_names", "labels"}
)  # fmt: skip


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
    header: bool | None = None
    class_names: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobSpec:
    """A parsed job spec: where the data comes from, the model, and `create_job` arguments."""

    dataset: str | DatasetSource
    model: dict[str, Any]
    options: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path, dataset: str | None = None) -> JobSpec:
        """Reads and checks a spec file; relative dataset paths are resolved against it. A
        `dataset` (a stored dataset's name) replaces the spec's, which may then be left out."""
        file = Path(path)
        try:
            document = yaml.safe_load(file.read_text())
        except yaml.YAMLError as error:
            raise SpecError([("spec", f"{file} is not valid YAML: {error}")]) from None
        return cls.from_dict(document, base=file.parent, dataset=dataset)

    @classmethod
    def from_dict(
        cls, document: object, base: Path = Path(), dataset: str | None = None
    ) -> JobSpec:
        """Checks a spec document (the parsed YAML); raises SpecError naming every bad key. A
        `dataset` (a stored dataset's name, `jobs submit --dataset`) replaces the spec's, which
        may then be left out; a spec's dataset given is checked all the same."""
        if not isinstance(document, Mapping):
            raise SpecError([("spec", "must be a mapping with dataset, model and training")])
        violations: list[tuple[str, str]] = []
        for key in sorted(set(document) - TOP_KEYS, key=str):
            violations.append(
                (key, f"is not a job spec key; expected: {', '.join(sorted(TOP_KEYS))}")
            )
        if "dataset" not in document and dataset is None:
            violations.append(
                ("dataset", "is required: a stored dataset's name or a mapping with the path of "
                 "a file to upload, unless `trainwire jobs submit --dataset ID` names one")
            )  # fmt: skip
        if "model" not in document:
            violations.append(("model", "is required"))
        training = document.get("training") or {}
        if not isinstance(training, Mapping):
            violations.append(("training", "must be a mapping"))
            training = {}
        for key in sorted(set(training) - TRAINING_KEYS, key=str):
            allowed = ", ".join(sorted(TRAINING_KEYS))
            violations.append(
                (f"training.{key}", f"is not a training setting; expected: {allowed}")
            )
        given = document.get("dataset")
        source: str | DatasetSource = ""
        if isinstance(given, str):
            source = given
        elif isinstance(given, Mapping):
            for key in sorted(set(given) - DATASET_KEYS, key=str):
                allowed = ", ".join(sorted(DATASET_KEYS))
                violations.append((f"dataset.{key}", f"is not a dataset key; expected: {allowed}"))
            num_classes = given.get("num_classes", 0)
            if isinstance(num_classes, bool) or not isinstance(num_classes, int):
                violations.append(
                    ("dataset.num_classes", f"must be an integer. Received: {num_classes!r}")
                )
            _check_labels(violations, "dataset.labels", given.get("labels"))
            if given.get("header") is not None and not isinstance(given["header"], bool):
                violations.append(
                    ("dataset.header", f"must be true or false. Received: {given['header']!r}")
                )
            for key in ("class_names", "feature_names"):
                names = given.get(key, [])
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    violations.append(
                        (f"dataset.{key}", f"must be a list of names. Received: {names!r}")
                    )
            if given.get("path") is None:
                violations.append(("dataset.path", "is required for a dataset to upload"))
            elif not violations:
                source = DatasetSource(
                    path=base / str(given["path"]),
                    targets=base / str(given["targets"]) if given.get("targets") else None,
                    target_column=given.get("target_column"),
                    task=given.get("task"),
                    name=str(given.get("name", "")),
                    num_classes=int(num_classes),
                    labels={str(k): str(v) for k, v in (given.get("labels") or {}).items()},
                    header=given.get("header"),
                    class_names=tuple(given.get("class_names", [])),
                    feature_names=tuple(given.get("feature_names", [])),
                )
        elif "dataset" in document:
            violations.append(("dataset", "must be a dataset name or a mapping with a path"))
        _check_labels(violations, "labels", document.get("labels"))
        if "model" in document:
            settings = {k: v for k, v in training.items() if k in TRAINING_KEYS}
            # The top-level settings create_job checks too (labels are checked above and sent
            # as text).
            for key in ("display_name", "queue", "priority", "max_attempts", "request_id"):
                if key in document:
                    settings[key] = document[key]
            violations += _create_job_violations(document["model"], settings)
        if violations:
            raise SpecError(violations)
        if dataset is not None:
            source = dataset
        model = document["model"]
        options: dict[str, Any] = dict(training)
        for key in TOP_KEYS - {"dataset", "model", "training"}:
            if key in document:
                options[key] = document[key]
        if "labels" in options:
            options["labels"] = {str(k): str(v) for k, v in options["labels"].items()}
        return cls(source, dict(model), options)


def _create_job_violations(model: object, settings: dict[str, Any]) -> list[tuple[str, str]]:
    """What `create_job` would refuse of the model and the training `settings`: its own checks
    (`create_job_request` reports model and training mistakes together), with its defaults for
    the settings the spec leaves out read from `Client.create_job`'s signature, not copied."""
    parameters = inspect.signature(Client.create_job).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    try:
        if isinstance(model, Mapping):
            create_job_request("", model, **{**defaults, **settings})
        else:
            # create_job_request would read a list or YAML text as a model, but a spec file's
            # model is a mapping: check_model says so. The settings are checked once it is one.
            check_model(model)
    except SpecError as error:
        return error.field_violations
    except (TypeError, ValueError) as error:
        # Anything check_training lets through that the request cannot carry: a violation
        # beside the others, not a traceback hiding them, and before the dataset is uploaded.
        return [("training", f"cannot be sent: {error}")]
    return []


def _check_labels(violations: list[tuple[str, str]], field: str, labels: object) -> None:
    """Labels are a mapping of names to values (absent or empty: none)."""
    if labels is not None and not isinstance(labels, Mapping):
        violations.append((field, f"must be a mapping of names to values. Received: {labels!r}"))
