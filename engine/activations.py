"""Element-wise (and row-wise softmax) activation functions with their backward passes.

``forward(x, out)`` computes y = f(x); ``backward(x, y, grad_y, out)`` returns dL/dx given
dL/dy, using whichever of x or y makes the derivative cheapest. ``get(identifier)`` accepts a
name, ``{"name": ...}`` or an instance.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ._registry import resolve
from ._types import Array


class Activation:
    """Base class. Subclasses write into ``out`` when given (it may not alias ``grad_y``)."""

    name: ClassVar[str] = ""
    is_identity: ClassVar[bool] = False

    def forward(self, x: Array, out: Array | None = None) -> Array:
        raise NotImplementedError

    def backward(self, x: Array, y: Array, grad_y: Array, out: Array | None = None) -> Array:
        raise NotImplementedError

    def __call__(self, x: Array) -> Array:
        return self.forward(x)

    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(Activation):
    """y = x; dy/dx = 1."""

    name = "linear"
    is_identity = True

    def forward(self, x: Array, out: Array | None = None) -> Array:
        if out is None:
            return x.copy()
        np.copyto(out, x)
        return out

    def backward(self, x: Array, y: Array, grad_y: Array, out: Array | None = None) -> Array:
        if out is None:
            return grad_y.copy()
        np.copyto(out, grad_y)
        return out


class ReLU(Activation):
    """y = max(x, 0); dy/dx = 1[x > 0] (0 at the kink, as torch)."""

    name = "relu"

    def forward(self, x: Array, out: Array | None = None) -> Array:
        return np.maximum(x, 0, out=out)

    def backward(self, x: Array, y: Array, grad_y: Array, out: Array | None = None) -> Array:
        return np.multiply(grad_y, x > 0, out=out)


class Sigmoid(Activation):
    """y = 1 / (1 + e^-x); dy/dx = y (1 - y).

    Evaluated as 1 / (1 + e^-|x|) for x >= 0 and e^-|x| / (1 + e^-|x|) for x < 0, so exp
    never overflows.
    """

    name = "sigmoid"

    def forward(self, x: Array, out: Array | None = None) -> Array:
        return sigmoid(x, out=out)

    def backward(self, x: Array, y: Array, grad_y: Array, out: Array | None = None) -> Array:
        out = np.subtract(1, y, out=out)
        out *= y
        out *= grad_y
        return out


class Tanh(Activation):
    """y = tanh(x); dy/dx = 1 - y^2."""

    name = "tanh"

    def forward(self, x: Array, out: Array | None = None) -> Array:
        return np.tanh(x, out=out)

    def backward(self, x: Array, y: Array, grad_y: Array, out: Array | None = None) -> Array:
        out = np.multiply(y, y, out=out)
        np.subtract(1, out, out=out)
        out *= grad_y
        return out


class Softmax(Activation):
    """y_i = e^(x_i - max x) / sum_j e^(x_j - max x) over the last axis.

    Jacobian dy_i/dx_j = y_i (delta_ij - y_j), so dL/dx = y * (g - sum_j g_j y_j).
    """

    name = "softmax"

    def forward(self, x: Array, out: Array | None = None) -> Array:
        return softmax(x, out=out)

    def backward(self, x: Array, y: Array, grad_y: Array, out: Array | None = None) -> Array:
        dot = np.sum(grad_y * y, axis=-1, keepdims=True)
        out = np.subtract(grad_y, dot, out=out)
        out *= y
        return out


def sigmoid(x: Array, out: Array | None = None) -> Array:
    """Numerically stable logistic function (no overflow for any finite x)."""
    z = np.exp(-np.abs(x))  # in (0, 1]
    denom = 1 + z
    out = np.divide(1, denom, out=out)
    # For x < 0: sigmoid(x) = e^x / (1 + e^x) = z / (1 + z).
    np.divide(z, denom, out=out, where=x < 0)
    return out


def softmax(x: Array, out: Array | None = None) -> Array:
    """Softmax over the last axis, shifted by the row max so exp never overflows."""
    out = np.subtract(x, np.max(x, axis=-1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= np.sum(out, axis=-1, keepdims=True)
    return out


REGISTRY: dict[str, type[Activation]] = {
    "linear": Identity,
    "identity": Identity,
    "relu": ReLU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "softmax": Softmax,
}


def get(identifier: object) -> Activation:
    """An activation from a name, a ``{"name": ...}`` dict or an instance."""
    if identifier is None:
        return Identity()
    return resolve("activation", REGISTRY, identifier, Activation)
