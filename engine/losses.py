"""Loss functions (mean reduction) with fused gradients with respect to the model outputs.

``value_and_grad(y_pred, y_true)`` returns the scalar loss and dL/d(y_pred) (a reused buffer);
``value`` returns only the loss. ``prepare_targets`` validates and converts user targets to the
form the loss expects. ``get(identifier)`` accepts a name, ``{"name": ...}`` or an instance.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ._registry import resolve
from ._types import Array
from .activations import sigmoid


class Loss:
    """Base class for losses."""

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self._grad: Array | None = None

    def prepare_targets(self, y: object, output_dim: int, dtype: np.dtype[Any]) -> Array:
        """Validate ``y`` against the model output width and convert it for this loss."""
        raise NotImplementedError

    def value(self, y_pred: Array, y_true: Array) -> float:
        raise NotImplementedError

    def value_and_grad(self, y_pred: Array, y_true: Array) -> tuple[float, Array]:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {}

    def _grad_buffer(self, like: Array) -> Array:
        if self._grad is None or self._grad.shape != like.shape or self._grad.dtype != like.dtype:
            self._grad = np.empty_like(like)
        return self._grad

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


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
    """L = mean((p - y)^2) over all N elements; dL/dp = 2 (p - y) / N."""

    name = "mse"

    def prepare_targets(self, y: object, output_dim: int, dtype: np.dtype[Any]) -> Array:
        return _float_targets(y, output_dim, dtype, "mse")

    def value(self, y_pred: Array, y_true: Array) -> float:
        diff = y_pred - y_true
        return float(np.mean(np.square(diff, out=diff)))

    def value_and_grad(self, y_pred: Array, y_true: Array) -> tuple[float, Array]:
        grad = np.subtract(y_pred, y_true, out=self._grad_buffer(y_pred))
        loss = float(np.vdot(grad, grad)) / grad.size
        grad *= 2.0 / grad.size
        return loss, grad


class SoftmaxCrossEntropy(Loss):
    """From logits z (n, k) and integer labels t:
    L = mean_i(logsumexp(z_i) - z_i[t_i]);  dL/dz = (softmax(z) - onehot(t)) / n.
    """

    name = "softmax_cross_entropy"

    def prepare_targets(self, y: object, output_dim: int, dtype: np.dtype[Any]) -> Array:
        arr = np.asarray(y)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(
                f"softmax_cross_entropy targets must be integer labels of shape (n,). "
                f"Received: shape={arr.shape}"
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

    def value(self, y_pred: Array, y_true: Array) -> float:
        # logsumexp(z) - z_t = log(sum exp(z - m)) - (z_t - m), with the shift m = max(z).
        shifted = y_pred - np.max(y_pred, axis=1, keepdims=True)
        total = np.sum(np.exp(shifted), axis=1)
        return float(np.mean(np.log(total) - shifted[np.arange(y_pred.shape[0]), y_true]))

    def value_and_grad(self, y_pred: Array, y_true: Array) -> tuple[float, Array]:
        n = y_pred.shape[0]
        rows = np.arange(n)
        grad = self._grad_buffer(y_pred)
        np.subtract(y_pred, np.max(y_pred, axis=1, keepdims=True), out=grad)
        picked = grad[rows, y_true]  # z_t - m
        np.exp(grad, out=grad)
        total = np.sum(grad, axis=1, keepdims=True)
        loss = float(np.mean(np.log(total[:, 0]) - picked))
        grad /= total  # softmax(z)
        grad[rows, y_true] -= 1.0
        grad *= 1.0 / n
        return loss, grad


class BinaryCrossEntropy(Loss):
    """From logits z and targets y in [0, 1], over all N elements:
    L = mean(max(z, 0) - z y + log(1 + e^-|z|))  (= -y log s(z) - (1-y) log(1-s(z)), stable);
    dL/dz = (sigmoid(z) - y) / N.
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

    def value(self, y_pred: Array, y_true: Array) -> float:
        terms = np.maximum(y_pred, 0) - y_pred * y_true + np.log1p(np.exp(-np.abs(y_pred)))
        return float(np.mean(terms))

    def value_and_grad(self, y_pred: Array, y_true: Array) -> tuple[float, Array]:
        loss = self.value(y_pred, y_true)
        grad = sigmoid(y_pred, out=self._grad_buffer(y_pred))
        grad -= y_true
        grad *= 1.0 / grad.size
        return loss, grad


REGISTRY: dict[str, type[Loss]] = {
    cls.name: cls for cls in (MeanSquaredError, SoftmaxCrossEntropy, BinaryCrossEntropy)
}


def get(identifier: object) -> Loss:
    """A loss from a name, a ``{"name": ...}`` dict or an instance."""
    return resolve("loss", REGISTRY, identifier, Loss)
