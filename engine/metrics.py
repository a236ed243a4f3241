"""Evaluation metrics computed from raw model outputs and prepared targets.

Each metric is ``metric(y_pred, y_true) -> float`` on one batch or a whole data set, where
``y_pred`` are the model's raw outputs (logits for classification) and ``y_true`` the targets as
converted by the loss's ``prepare_targets``. ``get(identifier)`` accepts a name,
``{"name": ...}`` or an instance.

Over an epoch of batches a metric keeps epoch statistics instead (as Keras's stateful metrics
and torchmetrics do): ``accumulate(stats, y_pred, y_true)`` adds a batch to a preallocated float
array of ``epoch_stats_size(columns)`` zeros, and ``epoch_value(stats, rows)`` is the metric of
all the batches so far, as if called once on their outputs and targets put together. For a mean
over elements (accuracy, mae) the one statistic is the sum of batch values times batch rows,
which is exact: every row has the same number of elements. R² is not a mean: it keeps, per
output column, the sums that give SS_res and SS_tot over all the rows (see `R2Score`).
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

    # -- epoch statistics (the default: a mean over elements) ----------------------------------
    def epoch_stats_size(self, columns: int) -> int:
        """How many floats the epoch statistics take for outputs of ``columns`` columns."""
        return 1

    def accumulate(self, stats: Array, y_pred: Array, y_true: Array) -> None:
        """Add one batch to ``stats`` (zeros at the epoch's start), in place."""
        # [sum of value * rows]: a batch's mean over its elements times its rows, each row the
        # same number of elements, is its sum over them (up to the common row width).
        stats[0] += self(y_pred, y_true) * y_pred.shape[0]

    def epoch_value(self, stats: Array, rows: float) -> float:
        """The metric over the ``rows`` rows (> 0) the epoch's batches added to ``stats``."""
        return float(stats[0] / rows)

    def epoch_stats_problem(self, stats: Array, rows: int | None) -> str | None:
        """Why ``stats`` could not be this metric's statistics of ``rows`` rows (None: unknown,
        an epoch not in progress), or None if they could. Used to check a restored state."""
        return None

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

    Epoch statistics, per column j of c: ``[n, k_j..., mean_j..., m2_j..., ss_res_j...]``
    (1 + 4c floats): the rows added, a shift k (the epoch's first target), the running mean of
    the shifted targets y - k, their sum of squared deviations from it (m2 = SS_tot) and the sum
    of squared errors (SS_res). Batches merge by Chan et al.'s pairwise update on the shifted
    targets: SS_tot = sum(y^2) - n mean^2 would cancel away for targets with a large mean (1e6
    + noise); the shift keeps the means and their differences small, so nothing cancels. A
    whole set is one batch (``__call__``).
    """

    name = "r2"

    def __init__(self) -> None:
        # accumulate's scratch, by batch shape: reused as a layer's buffers are, so one instance
        # serves one training run at a time.
        self._work: dict[tuple[int, int], Array] = {}

    def __call__(self, y_pred: Array, y_true: Array) -> float:
        pred = y_pred.reshape(y_pred.shape[0], -1)
        stats = np.zeros(self.epoch_stats_size(pred.shape[1]), dtype=np.float64)
        _add_r2_batch(stats, pred, y_true, np.empty(pred.shape, dtype=np.float64))
        return self.epoch_value(stats, pred.shape[0])

    def epoch_stats_size(self, columns: int) -> int:
        return 1 + 4 * columns

    def accumulate(self, stats: Array, y_pred: Array, y_true: Array) -> None:
        pred = y_pred.reshape(y_pred.shape[0], -1)
        work = self._work.get(pred.shape)
        if work is None:
            work = self._work[pred.shape] = np.empty(pred.shape, dtype=np.float64)
        _add_r2_batch(stats, pred, y_true, work)

    def epoch_value(self, stats: Array, rows: float) -> float:
        count, _, _, ss_tot, ss_res = _r2_parts(stats)
        if count[0] == 0:
            # No row added: a call on no rows, or an epoch resumed, at its end, from a state
            # saved before these statistics existed (see `Trainer`). 0, as the loss of no weight.
            return 0.0
        # A constant column has m2 exactly 0: its shifted targets are all exactly 0.
        safe = ss_tot > 0
        scores = np.where(safe, 1.0 - ss_res / np.where(safe, ss_tot, 1.0), 0.0)
        scores = np.where(~safe & (ss_res == 0), 1.0, scores)
        return float(np.mean(scores))

    def epoch_stats_problem(self, stats: Array, rows: int | None) -> str | None:
        count, _, _, ss_tot, ss_res = _r2_parts(stats)
        # Fewer rows than the batches took is an epoch resumed from a state saved before these
        # statistics existed (they start empty at the resume, see `Trainer`), and saved again.
        if rows is not None and not 0 <= count[0] <= rows:
            return f"its r2 statistics count {count[0]:g} rows, but the batches took {rows}"
        if np.any(ss_tot < 0) or np.any(ss_res < 0):  # NaN passes: a diverging run's sums
            return "its r2 statistics hold a negative sum of squares"
        return None


def _r2_parts(stats: Array) -> tuple[Array, Array, Array, Array, Array]:
    """Views of R2Score's epoch statistics: count (1 float); shift, mean, m2, ss_res (c each)."""
    c = (stats.shape[0] - 1) // 4
    return (
        stats[:1],
        stats[1 : 1 + c],
        stats[1 + c : 1 + 2 * c],
        stats[1 + 2 * c : 1 + 3 * c],
        stats[1 + 3 * c :],
    )


def _add_r2_batch(stats: Array, pred: Array, y_true: Array, work: Array) -> None:
    """Merge one batch of b rows into R2Score's statistics, in float64; ``work`` is a (b, c)
    float64 scratch array.

    On the shifted targets z = y - k, with the batch's own mean m_b and m2_b = sum((z - m_b)^2),
    and delta = m_b - mean:
        n'    = n + b
        mean' = mean + delta * b / n'
        m2'   = m2 + m2_b + delta^2 * n * b / n'
        ss_res' = ss_res + sum((y - p)^2)
    (Chan, Golub and LeVeque's update; m2 does not depend on the shift.)
    """
    count, shift, mean, m2, ss_res = _r2_parts(stats)
    if pred.shape[1] != mean.shape[0]:
        raise ValueError(
            f"r2 statistics are for {mean.shape[0]} output columns; the outputs have "
            f"{pred.shape[1]}"
        )
    true = np.reshape(y_true, pred.shape)
    b = pred.shape[0]
    if b == 0:
        return
    n = count[0]
    if n == 0:
        shift[:] = true[0]
    np.subtract(true, pred, out=work, dtype=np.float64)
    ss_res += np.einsum("ij,ij->j", work, work)
    np.subtract(true, shift, out=work, dtype=np.float64)
    batch_mean = work.mean(axis=0)
    work -= batch_mean
    batch_m2 = np.einsum("ij,ij->j", work, work)
    total = n + b
    delta = batch_mean - mean
    mean += delta * (b / total)
    m2 += batch_m2 + np.square(delta) * (n * b / total)
    count[0] = total


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
