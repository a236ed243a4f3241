"""Evaluation metrics computed from raw model outputs and prepared targets.

Each metric is ``metric(y_pred, y_true) -> float`` on one batch or a whole data set, where
``y_pred`` are the model's raw outputs (logits for classification) and ``y_true`` the targets as
converted by the loss's ``prepare_targets``. ``get(identifier)`` accepts a name,
``{"name": ...}`` or an instance.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ._registry import resolve
from ._types import Array


class Metric:
    """Base class for metrics."""

    name: ClassVar[str] = ""
    # Whether it scores class labels against logits (classification) or real-valued targets
    # against the outputs as they are (regression): on the other kind of target its value means
    # nothing, or it cannot be computed at all (mae of three logits against one label).
    classification: ClassVar[bool] = False

    def __call__(self, y_pred: Array, y_true: Array) -> float:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Accuracy(Metric):
    """Fraction of correct predictions.

    Several outputs: argmax of the logits against integer labels. One output: logit > 0 (i.e.
    sigmoid > 0.5) against target > 0.5.
    """

    name = "accuracy"
    classification = True

    def __call__(self, y_pred: Array, y_true: Array) -> float:
        if y_pred.ndim == 2 and y_pred.shape[1] > 1:
            labels = y_true if y_true.ndim == 1 else np.argmax(y_true, axis=1)
            return float(np.mean(np.argmax(y_pred, axis=1) == labels))
        pred = y_pred.reshape(-1) > 0
        return float(np.mean(pred == (np.reshape(y_true, -1) > 0.5)))


class MeanAbsoluteError(Metric):
    """mean(|p - y|) over all elements."""

    name = "mae"

    def __call__(self, y_pred: Array, y_true: Array) -> float:
        return float(np.mean(np.abs(y_pred - np.reshape(y_true, y_pred.shape))))


class R2Score(Metric):
    """Coefficient of determination 1 - SS_res / SS_tot per output column, averaged uniformly
    (as sklearn's r2_score); a constant column scores 1 if predicted exactly, else 0.
    """

    name = "r2"

    def __call__(self, y_pred: Array, y_true: Array) -> float:
        pred = y_pred.reshape(y_pred.shape[0], -1).astype(np.float64)
        true = np.reshape(y_true, pred.shape).astype(np.float64)
        ss_res = np.sum(np.square(true - pred), axis=0)
        ss_tot = np.sum(np.square(true - true.mean(axis=0)), axis=0)
        safe = ss_tot > 0
        scores = np.where(safe, 1.0 - ss_res / np.where(safe, ss_tot, 1.0), 0.0)
        scores = np.where(~safe & (ss_res == 0), 1.0, scores)
        return float(np.mean(scores))


REGISTRY: dict[str, type[Metric]] = {
    cls.name: cls for cls in (Accuracy, MeanAbsoluteError, R2Score)
}


def names_for(classification: bool) -> tuple[str, ...]:
    """The metrics whose value means something on classification targets, or on regression
    ones (see `Metric.classification`)."""
    return tuple(name for name, cls in REGISTRY.items() if cls.classification == classification)


def get(identifier: object) -> Metric:
    """A metric from a name, a ``{"name": ...}`` dict or an instance."""
    return resolve("metric", REGISTRY, identifier, Metric)
