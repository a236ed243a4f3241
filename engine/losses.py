"""Loss functions (mean reduction, optional per-sample weights) with fused gradients.

``value_and_grad(y_pred, y_true, sample_weight=None)`` returns the scalar loss and
dL/d(y_pred) (a reused buffer); ``value`` returns only the loss. ``prepare_targets`` validates
and converts user targets to the form the loss expects. ``get(identifier)`` accepts a name,
``{"name": ..., **params}`` or an instance.

Every loss is a mean of per-sample losses l_i (element-wise losses average over the output
columns first, so the unweighted loss is the mean over all elements, as torch's
``reduction="mean"``). With per-sample weights w_i >= 0 the loss is the weighted mean

    L = sum_i w_i l_i / sum_i w_i,    dL/dz_i = (w_i / sum_j w_j) dl_i/dz_i,

which is what torch's ``cross_entropy(..., weight=...)`` computes when the weight of a sample
is the weight of its class. A batch whose weights are all zero has loss 0 and zero gradient.

Registered: mse, mae, huber(delta=1.0), binary_cross_entropy (from logits, targets in [0, 1]),
softmax_cross_entropy (from logits; integer labels of shape (n,) or one-hot/soft targets of
shape (n, k), rows of non-negative weights such as probabilities).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ._registry import check_number, resolve
from ._types import Array
from .activations import sigmoid


def prepare_sample_weight(sample_weight: object, n: int, dtype: np.dtype[Any]) -> Array:
    """``sample_weight`` as a (n,) array of finite non-negative weights in ``dtype``."""
    arr = np.asarray(sample_weight)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"sample_weight must be numeric. Received: dtype={arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},). Received: shape={arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0):
        raise ValueError(
            "sample_weight must be finite and non-negative. "
            f"Received: min={float(np.min(arr))}, max={float(np.max(arr))}"
        )
    return arr


class Loss:
    """Base class. Subclasses give per-sample losses and their per-sample gradients."""

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self._grad: Array | None = None

    def prepare_targets(self, y: object, output_dim: int, dtype: np.dtype[Any]) -> Array:
        """Validate ``y`` against the model output width and convert it for this loss."""
        raise NotImplementedError

    def per_sample(self, y_pred: Array, y_true: Array) -> Array:
        """The per-sample losses l_i, shape (n,)."""
        raise NotImplementedError

    def _per_sample_and_grad(self, y_pred: Array, y_true: Array, grad: Array) -> Array:
        """l_i, and dl_i/dz written into ``grad``."""
        raise NotImplementedError

    def value(self, y_pred: Array, y_true: Array, sample_weight: Array | None = None) -> float:
        per = self.per_sample(y_pred, y_true)
        if sample_weight is None:
            return float(np.mean(per))
        total = float(np.sum(sample_weight, dtype=np.float64))
        return float(np.dot(sample_weight, per)) / total if total > 0 else 0.0

    def value_and_grad(
        self, y_pred: Array, y_true: Array, sample_weight: Array | None = None
    ) -> tuple[float, Array]:
        grad = self._grad_buffer(y_pred)
        per = self._per_sample_and_grad(y_pred, y_true, grad)
        if sample_weight is None:
            grad *= 1.0 / grad.shape[0]
            return float(np.mean(per)), grad
        total = float(np.sum(sample_weight, dtype=np.float64))
        if total <= 0:
            grad[...] = 0.0
            return 0.0, grad
        grad *= (sample_weight * (1.0 / total))[:, None]
        return float(np.dot(sample_weight, per)) / total, grad

    def get_config(self) -> dict[str, Any]:
        return {}

    def _grad_buffer(self, like: Array) -> Array:
        if self._grad is None or self._grad.shape != like.shape or self._grad.dtype != like.dtype:
            self._grad = np.empty_like(like)
        return self._grad

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config()})"


def _float_targets(y: object, output_dim: int, dtype: np.dtype[Any], name: str) -> Array:
    arr = np.asarray(y)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} targets must be numeric. Received: dtype={arr.dtype}")
    if arr.ndim == 1 and output_dim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != output_dim:
        raise ValueError(
            f"{name} targets must have shape (n, {output_dim})"
            + (" or (n,)" if output_dim == 1 else "")
            + f". Received: shape={arr.shape}"
        )
    return np.ascontiguousarray(arr, dtype=dtype)


class MeanSquaredError(Loss):
    """l_i = mean_j (p_ij - y_ij)^2 over the k outputs;  dl_i/dp_ij = 2 (p_ij - y_ij) / k."""

    name = "mse"

    def prepare_targets(self, y: object, output_dim: int, dtype: np.dtype[Any]) -> Array:
        return _float_targets(y, output_dim, dtype, self.name)

    def per_sample(self, y_pred: Array, y_true: Array) -> Array:
        d = y_pred - y_true
        return np.einsum("ij,ij->i", d, d) / d.shape[1]

    def _per_sample_and_grad(self, y_pred: Array, y_true: Array, grad: Array) -> Array:
        np.subtract(y_pred, y_true, out=grad)
        per = np.einsum("ij,ij->i", grad, grad) / grad.shape[1]
        grad *= 2.0 / grad.shape[1]
        return per


class MeanAbsoluteError(Loss):
    """l_i = mean_j |p_ij - y_ij|;  dl_i/dp_ij = sign(p_ij - y_ij) / k (0 at 0, as torch)."""

    name = "mae"

    def prepare_targets(self, y: object, output_dim: int, dtype: np.dtype[Any]) -> Array:
        return _float_targets(y, output_dim, dtype, self.name)

    def per_sample(self, y_pred: Array, y_true: Array) -> Array:
        return np.mean(np.abs(y_pred - y_true), axis=1)

    def _per_sample_and_grad(self, y_pred: Array, y_true: Array, grad: Array) -> Array:
        np.subtract(y_pred, y_true, out=grad)
        per = np.mean(np.abs(grad), axis=1)
        np.sign(grad, out=grad)
        grad *= 1.0 / grad.shape[1]
        return per


class Huber(Loss):
    """With d = p - y and delta > 0 (torch.nn.functional.huber_loss):
    l = d^2 / 2 for |d| < delta, delta (|d| - delta / 2) otherwise, averaged over the outputs;
    dl/dd = clip(d, -delta, delta) / k.
    """

    name = "huber"

    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        self.delta = check_number("delta", delta, 0.0, low_inclusive=False)

    def prepare_targets(self, y: object, output_dim: int, dtype: np.dtype[Any]) -> Array:
        return _float_targets(y, output_dim, dtype, self.name)

    def _elementwise(self, d: Array) -> Array:
        a = np.abs(d)
        quad = 0.5 * d * d
        lin = self.delta * (a - 0.5 * self.delta)
        return np.where(a < self.delta, quad, lin)

    def per_sample(self, y_pred: Array, y_true: Array) -> Array:
        return np.mean(self._elementwise(y_pred - y_true), axis=1)

    def _per_sample_and_grad(self, y_pred: Array, y_true: Array, grad: Array) -> Array:
        np.subtract(y_pred, y_true, out=grad)
        per = np.mean(self._elementwise(grad), axis=1)
        np.clip(grad, -self.delta, self.delta, out=grad)
        grad *= 1.0 / grad.shape[1]
        return per

    def get_config(self) -> dict[str, Any]:
        return {"delta": self.delta}


class SoftmaxCrossEntropy(Loss):
    """From logits z (n, k), with s = softmax(z) and lse = logsumexp(z):
    integer labels t:   l_i = lse_i - z_i[t_i],           dl_i/dz_i = s_i - onehot(t_i);
    soft targets q:     l_i = sum_j q_ij (lse_i - z_ij),   dl_i/dz_i = s_i sum_j q_ij - q_i
    (softmax and cross-entropy fused; the logits are shifted by their row max first).
    """

    name = "softmax_cross_entropy"

    def __init__(self) -> None:
        super().__init__()
        self._rows: Array = np.arange(0)

    def prepare_targets(self, y: object, output_dim: int, dtype: np.dtype[Any]) -> Array:
        arr = np.asarray(y)
        if arr.ndim == 2 and arr.shape[1] == output_dim and output_dim > 1:
            if arr.dtype.kind not in "biuf":
                raise ValueError(
                    f"softmax_cross_entropy soft targets must be numeric. Received: "
                    f"dtype={arr.dtype}"
                )
            soft = np.ascontiguousarray(arr, dtype=dtype)
            if soft.size and (not np.all(np.isfinite(soft)) or soft.min() < 0):
                raise ValueError(
                    "softmax_cross_entropy soft targets must be finite and non-negative. "
                    f"Received: min={float(np.min(soft))}"
                )
            return soft
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(
                f"softmax_cross_entropy targets must be integer labels of shape (n,) or "
                f"one-hot/soft targets of shape (n, {output_dim}). Received: shape={arr.shape}"
            )
        if arr.dtype.kind == "f" and arr.size and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        if arr.dtype.kind not in "iu" and arr.size:
            raise ValueError(
                f"softmax_cross_entropy targets must be integer labels. Received: dtype={arr.dtype}"
            )
        arr = arr.astype(np.intp, copy=False)
        if arr.size and (arr.min() < 0 or arr.max() >= output_dim):
            raise ValueError(
                f"softmax_cross_entropy labels must lie in [0, {output_dim}). "
                f"Received: min={int(arr.min())}, max={int(arr.max())}"
            )
        return arr

    def _row_index(self, n: int) -> Array:
        if self._rows.shape[0] != n:
            self._rows = np.arange(n)
        return self._rows

    def per_sample(self, y_pred: Array, y_true: Array) -> Array:
        shifted = y_pred - np.max(y_pred, axis=1, keepdims=True)  # z - m
        log_total = np.log(np.sum(np.exp(shifted), axis=1))  # lse - m
        if y_true.ndim == 1:
            return log_total - shifted[self._row_index(y_pred.shape[0]), y_true]
        return log_total * np.sum(y_true, axis=1) - np.einsum("ij,ij->i", y_true, shifted)

    def _per_sample_and_grad(self, y_pred: Array, y_true: Array, grad: Array) -> Array:
        np.subtract(y_pred, np.max(y_pred, axis=1, keepdims=True), out=grad)  # z - m
        if y_true.ndim == 1:
            rows = self._row_index(y_pred.shape[0])
            picked = grad[rows, y_true]
            np.exp(grad, out=grad)
            total = np.add.reduce(grad, axis=1, keepdims=True)
            per = np.log(total[:, 0])
            per -= picked
            grad /= total
            grad[rows, y_true] -= 1.0
            return per
        q_sum = np.add.reduce(y_true, axis=1)
        dot = np.einsum("ij,ij->i", y_true, grad)
        np.exp(grad, out=grad)
        total = np.add.reduce(grad, axis=1, keepdims=True)
        per = np.log(total[:, 0]) * q_sum - dot
        grad *= (q_sum / total[:, 0])[:, None]
        grad -= y_true
        return per


class BinaryCrossEntropy(Loss):
    """From logits z and targets y in [0, 1], averaged over the outputs:
    l = max(z, 0) - z y + log(1 + e^-|z|)  (= -y log s(z) - (1-y) log(1-s(z)), stable);
    dl/dz = (sigmoid(z) - y) / k.
    """

    name = "binary_cross_entropy"

    def prepare_targets(self, y: object, output_dim: int, dtype: np.dtype[Any]) -> Array:
        if output_dim != 1:
            raise ValueError(
                f"binary_cross_entropy needs a model with one output. Received: "
                f"output_dim={output_dim}"
            )
        arr = _float_targets(y, 1, dtype, "binary_cross_entropy")
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(
                f"binary_cross_entropy targets must lie in [0, 1]. "
                f"Received: min={float(arr.min())}, max={float(arr.max())}"
            )
        return arr

    def per_sample(self, y_pred: Array, y_true: Array) -> Array:
        terms = np.maximum(y_pred, 0) - y_pred * y_true + np.log1p(np.exp(-np.abs(y_pred)))
        return np.mean(terms, axis=1)

    def _per_sample_and_grad(self, y_pred: Array, y_true: Array, grad: Array) -> Array:
        per = self.per_sample(y_pred, y_true)
        sigmoid(y_pred, out=grad)
        grad -= y_true
        grad *= 1.0 / grad.shape[1]
        return per


REGISTRY: dict[str, type[Loss]] = {
    cls.name: cls
    for cls in (MeanSquaredError, MeanAbsoluteError, Huber, SoftmaxCrossEntropy, BinaryCrossEntropy)
}


def get(identifier: object) -> Loss:
    """A loss from a name, a ``{"name": ..., **params}`` dict or an instance."""
    return resolve("loss", REGISTRY, identifier, Loss)
