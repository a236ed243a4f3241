"""Element-wise (and row-wise softmax) activation functions with their backward passes.

``forward(x, out)`` computes y = f(x); ``backward(x, y, grad_y, out)`` returns dL/dx given
dL/dy, using whichever of x or y makes the derivative cheapest. ``get(identifier)`` accepts a
name, ``{"name": ..., **params}`` or an instance; parameterised activations serialise as dicts,
e.g. ``{"name": "leaky_relu", "negative_slope": 0.01}``.

Registered: linear (= identity), relu, leaky_relu(negative_slope=0.01), elu(alpha=1.0),
gelu (exact erf form, as torch's default), sigmoid, tanh, softplus(beta=1.0, threshold=20.0,
as torch), softmax. Every form is numerically stable: no overflow for any finite input.

PReLU has a learned slope per unit, so it is a *layer* (``{"type": "prelu", "init": 0.25}``,
see ``layers.PReLU``), not an entry here; ``{"type": "activation", "activation": "prelu"}``
(or ``{"name": "prelu", "init": ...}``) in a model spec builds that same layer.

NumPy has no erf, so ``erf``/``erfc`` below are vectorised Chebyshev approximations accurate
to a few float64 ulps: relative error below ~2e-15 for |x| < 6; in erfc's far tail it grows
like x^2 * 1e-16 (the rounding of x^2 inside e^(-x^2)), e.g. 6e-14 at x = 25.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ._registry import check_number, resolve
from ._types import Array

# Chebyshev coefficients, fitted once by interpolation at 400 Chebyshev nodes against mpmath at
# 40 digits:
#   _ERF_SMALL:  erf(x) / x         as a series in s = 2 x^2 - 1,  for |x| < 1    (degree 11);
#   _ERFC_LARGE: x e^(x^2) erfc(x)  as a series in s = 2 / x - 1,  for x >= 1    (degree 30;
#                u = 1/x in [0, 1], the value at u = 0 being 1 / sqrt(pi)).
_ERF_SMALL = np.array(
    [
        0.9754769393826545,
        -0.1422612051037136,
        0.010035582187599782,
        -0.0005768764699767209,
        2.7419931252260435e-05,
        -1.1043175507036378e-06,
        3.8488755460461813e-08,
        -1.1808581872862289e-09,
        3.2334254686315845e-11,
        -7.990875335312654e-13,
        1.802152985382704e-14,
        -2.686182867837452e-16,
    ]
)
_ERFC_LARGE = np.array(
    [
        0.5039781175024712,
        -0.07211219804839039,
        -0.007495316026857761,
        0.0038380518956880137,
        -0.0006410126699713324,
        -1.5540548808119128e-05,
        4.323024310176732e-05,
        -1.37693744578857e-05,
        1.8747983545125655e-06,
        3.6072578619300523e-07,
        -3.034436904067287e-07,
        9.587247012068222e-08,
        -1.3583267541194153e-08,
        -3.219157106248039e-09,
        2.8746760970493424e-09,
        -1.0331200435342741e-09,
        1.9246413048009947e-10,
        1.9607097574857883e-11,
        -3.219550760825029e-11,
        1.442404685004187e-11,
        -3.732051699125714e-12,
        2.1942717086541058e-13,
        3.531307160496857e-13,
        -2.243095343593464e-13,
        7.968107686844845e-14,
        -1.5265736969100206e-14,
        -2.051555332457599e-15,
        3.360458128426567e-15,
        -1.677556596556487e-15,
        5.636424728038693e-16,
        -5.900717405128006e-17,
    ]
)


def _chebval(s: Array, coeffs: Array) -> Array:
    """sum_k c_k T_k(s) by Clenshaw's recurrence b_k = c_k + 2 s b_(k+1) - b_(k+2)."""
    two_s = 2.0 * s
    b1 = np.zeros_like(s)
    b2 = np.zeros_like(s)
    for c in coeffs[:0:-1]:
        b0 = two_s * b1
        b0 -= b2
        b0 += c
        b1, b2 = b0, b1
    return s * b1 - b2 + coeffs[0]


def erfc(x: Array) -> Array:
    """Complementary error function 1 - erf(x), accurate in float64 (also deep in the tail)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    out = np.empty_like(x)
    small = a < 1.0
    xs = x[small]
    out[small] = 1.0 - xs * _chebval(2.0 * xs * xs - 1.0, _ERF_SMALL)
    big = ~small & ~np.isnan(x)
    ab = a[big]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = 1.0 / ab  # 0 for |x| = inf
    # erfc(|x|) = e^(-x^2) u h(u) with h(u) = x e^(x^2) erfc(x).
    tail = np.exp(-ab * ab) * u * _chebval(2.0 * u - 1.0, _ERFC_LARGE)
    out[big] = np.where(x[big] > 0, tail, 2.0 - tail)
    out[np.isnan(x)] = np.nan
    return out


def erf(x: Array) -> Array:
    """Error function, vectorised and accurate in float64 (see ``erfc``)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    out = np.empty_like(x)
    small = a < 1.0
    xs = x[small]
    out[small] = xs * _chebval(2.0 * xs * xs - 1.0, _ERF_SMALL)
    big = ~small
    out[big] = np.copysign(1.0 - erfc(a[big]), x[big])
    return out


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
        return f"{type(self).__name__}({self.get_config()})"


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


class LeakyReLU(Activation):
    """y = x for x > 0, a x otherwise; dy/dx = 1[x > 0] + a 1[x <= 0] (as torch)."""

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        self.negative_slope = check_number("negative_slope", negative_slope)

    def forward(self, x: Array, out: Array | None = None) -> Array:
        a = self.negative_slope
        if 0.0 <= a <= 1.0:  # then max(x, a x) is the same function, in two passes
            out = np.multiply(x, a, out=out)
            return np.maximum(x, out, out=out)
        return np.where(x > 0, x, x * a) if out is None else _where(x > 0, x, x * a, out)

    def backward(self, x: Array, y: Array, grad_y: Array, out: Array | None = None) -> Array:
        slope = np.where(x > 0, 1.0, self.negative_slope).astype(grad_y.dtype, copy=False)
        return np.multiply(grad_y, slope, out=out)

    def get_config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}


class ELU(Activation):
    """y = x for x > 0, a (e^x - 1) otherwise; dy/dx = 1 for x > 0, a e^x otherwise.

    e^x - 1 is evaluated as expm1(min(x, 0)), which never overflows. The slope is a e^(min(x, 0)),
    not y + a: that sum cancels as y nears -a (relative error 2e-4 at x = -30, and 0 instead
    of e^x from x = -37).
    """

    name = "elu"

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = check_number("alpha", alpha, 0.0)

    def forward(self, x: Array, out: Array | None = None) -> Array:
        neg = np.minimum(x, 0)
        np.expm1(neg, out=neg)
        neg *= self.alpha
        return _where(x > 0, x, neg, out)

    def backward(self, x: Array, y: Array, grad_y: Array, out: Array | None = None) -> Array:
        slope = np.exp(np.minimum(x, 0))
        slope *= self.alpha
        slope = np.where(x > 0, 1.0, slope).astype(grad_y.dtype, copy=False)
        return np.multiply(grad_y, slope, out=out)

    def get_config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class GELU(Activation):
    """y = x Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2 (exact form, torch's default);
    dy/dx = Phi(x) + x phi(x), phi(x) = e^(-x^2 / 2) / sqrt(2 pi).

    Phi is computed in float64 through erfc (no cancellation for x << 0) and cast back.
    """

    name = "gelu"

    def forward(self, x: Array, out: Array | None = None) -> Array:
        cdf = erfc(np.asarray(x, dtype=np.float64) * -_SQRT1_2)
        cdf *= 0.5
        return (
            np.multiply(x, cdf, out=out, casting="same_kind")
            if out is not None
            else ((x * cdf).astype(x.dtype, copy=False))
        )

    def backward(self, x: Array, y: Array, grad_y: Array, out: Array | None = None) -> Array:
        x64 = np.asarray(x, dtype=np.float64)
        deriv = erfc(x64 * -_SQRT1_2)
        deriv *= 0.5
        deriv += x64 * np.exp(-0.5 * x64 * x64) * _INV_SQRT_2PI
        if out is None:
            return (grad_y * deriv).astype(grad_y.dtype, copy=False)
        return np.multiply(grad_y, deriv, out=out, casting="same_kind")


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


class Softplus(Activation):
    """y = log(1 + e^(b x)) / b, and y = x where b x > threshold (as torch);
    dy/dx = sigmoid(b x) (1 above the threshold).

    Evaluated as max(x, 0) + log1p(e^(-|b x|)) / b, which never overflows.
    """

    name = "softplus"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        self.beta = check_number("beta", beta, 0.0, low_inclusive=False)
        self.threshold = check_number("threshold", threshold, 0.0)

    def forward(self, x: Array, out: Array | None = None) -> Array:
        bx = x * self.beta
        soft = np.exp(-np.abs(bx))
        np.log1p(soft, out=soft)
        soft *= 1.0 / self.beta
        soft += np.maximum(x, 0)
        return _where(bx > self.threshold, x, soft, out)

    def backward(self, x: Array, y: Array, grad_y: Array, out: Array | None = None) -> Array:
        bx = x * self.beta
        slope = sigmoid(bx)
        slope[bx > self.threshold] = 1.0
        return np.multiply(grad_y, slope, out=out)

    def get_config(self) -> dict[str, Any]:
        return {"beta": self.beta, "threshold": self.threshold}


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


def _where(cond: Array, a: Array, b: Array, out: Array | None) -> Array:
    if out is None:
        return np.where(cond, a, b)
    np.copyto(out, b)
    np.copyto(out, a, where=cond)
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
    # The ufuncs' own reduce: np.max/np.sum add several µs of argument handling per call, which
    # is most of the cost for the few rows of a prediction.
    out = np.subtract(x, np.maximum.reduce(x, axis=-1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= np.add.reduce(out, axis=-1, keepdims=True)
    return out


REGISTRY: dict[str, type[Activation]] = {
    "linear": Identity,
    "identity": Identity,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "elu": ELU,
    "gelu": GELU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "softplus": Softplus,
    "softmax": Softmax,
}


def get(identifier: object) -> Activation:
    """An activation from a name, a ``{"name": ..., **params}`` dict or an instance."""
    if identifier is None:
        return Identity()
    return resolve("activation", REGISTRY, identifier, Activation)
