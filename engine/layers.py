"""Layers: the forward/backward building blocks a Model stacks.

A layer is configured from a spec dict (``from_config`` validates it and raises SpecError with
the field path), then ``build`` allocates its parameters for a given input width, dtype and
Generator. ``forward`` caches what ``backward`` needs; ``backward`` writes parameter gradients
into preallocated arrays (``grads``) and returns dL/d(input). Activations and intermediate
buffers are reused across batches of the same size, so returned arrays are only valid until the
next call. Adding a layer type is one subclass plus one ``REGISTRY`` entry.

Spec entries (``type`` plus fields; defaults in brackets):
    {"type": "dense", "units": n, "activation": ["linear"], "use_bias": [true],
     "kernel_initializer": ["glorot_uniform"], "bias_initializer": ["zeros"]}
    {"type": "activation", "activation": "relu" | {"name": "leaky_relu", "negative_slope": 0.01}}
    {"type": "dropout", "rate": r}                                 (inverted, off at inference)
    {"type": "batch_norm", "momentum": [0.1], "epsilon": [1e-5]}    (torch.nn.BatchNorm1d)
    {"type": "prelu", "init": [0.25]}                               (one learned slope per unit)
PReLU is a layer because it has a parameter; ``{"type": "activation", "activation": "prelu"}``
(or ``{"name": "prelu", "init": 0.1}``) is accepted too and builds the same PReLU layer, whose
normalised spec is the ``prelu`` form. Non-trainable state (BatchNorm's running statistics)
lives in ``Layer.buffers`` and is part of ``Model.state_dict()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from . import activations as activations_mod
from . import initializers as initializers_mod
from ._registry import check_number, serialize
from ._types import Array
from .errors import SpecError, quoted

_MAX_BUFFERS = 16


class Layer:
    """Base class for layers."""

    type_name: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = ()
    # Buffers no run makes negative (a variance): a loaded state must not hold a negative one.
    nonnegative_buffers: ClassVar[tuple[str, ...]] = ()

    # Attributes a forward pass sets for the backward pass (`release_scratch` drops them).
    _saved_for_backward: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}  # non-trainable state saved with the model
        self.input_dim = 0
        self.output_dim = 0
        self.dtype: np.dtype[Any] = np.dtype("float32")
        self._buffers: dict[tuple[str, tuple[int, ...]], Array] = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str) -> Layer:
        """Validate ``config`` (without its "type" key) and build an unbuilt layer."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The normalised spec entry of this layer (JSON types, defaults filled in)."""
        raise NotImplementedError

    def build(self, input_dim: int, dtype: np.dtype[Any], rng: np.random.Generator) -> int:
        """Allocate parameters for ``input_dim`` inputs; returns the output width."""
        self.input_dim = input_dim
        self.output_dim = self.output_width(input_dim)
        self.dtype = dtype
        return self.output_dim

    def output_width(self, input_dim: int) -> int:
        """The width ``build(input_dim, ...)`` returns, without building anything."""
        return input_dim

    def parameter_count(self, input_dim: int) -> int:
        """The trainable parameters ``build(input_dim, ...)`` allocates, without allocating."""
        return 0

    # -- computation --------------------------------------------------------------------------
    def forward(
        self, x: Array, training: bool = False, rng: np.random.Generator | None = None
    ) -> Array:
        raise NotImplementedError

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        raise NotImplementedError

    def _buffer(self, key: str, shape: tuple[int, ...]) -> Array:
        """A reusable scratch array for ``key`` of ``shape`` (one per distinct batch size)."""
        buf = self._buffers.get((key, shape))
        if buf is None:
            if len(self._buffers) >= _MAX_BUFFERS:
                self._buffers.clear()
            buf = np.empty(shape, dtype=self.dtype)
            self._buffers[(key, shape)] = buf
        return buf

    def release_scratch(self) -> None:
        """Drops the scratch arrays kept for reuse and what the last forward pass saved for a
        backward pass (training keeps them; a served model would hold a pass's arrays per batch
        size it has seen)."""
        self._buffers.clear()
        for name in self._saved_for_backward:
            setattr(self, name, None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config()})"


# -- spec validation helpers ---------------------------------------------------------------------
def _check_fields(config: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise SpecError(
            f"{path} has unknown field {quoted(unknown[0])}; allowed fields: "
            f"{', '.join(('type', *allowed))}. Received: {quoted(config[unknown[0]])}"
        )


def _positive_int(config: Mapping[str, Any], path: str, key: str) -> int:
    if key not in config:
        raise SpecError(f"{path}.{key} is required (a positive integer).")
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise SpecError(f"{path}.{key} must be a positive integer. Received: {key}={quoted(value)}")
    return int(value)


def _bool(config: Mapping[str, Any], path: str, key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool | np.bool_):
        raise SpecError(f"{path}.{key} must be a boolean. Received: {key}={quoted(value)}")
    return bool(value)


def _number(
    config: Mapping[str, Any],
    path: str,
    key: str,
    default: float,
    low: float = -np.inf,
    high: float = np.inf,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    value = config.get(key, default)
    try:
        return check_number(key, value, low, high, low_inclusive, high_inclusive)
    except ValueError as exc:
        raise SpecError(f"{path}.{exc}") from exc


def _component(config: Mapping[str, Any], path: str, key: str, default: str, getter: Any) -> Any:
    value = config.get(key, default)
    try:
        return getter(value)
    except ValueError as exc:
        raise SpecError(f"{path}.{key} is invalid: {exc}") from exc


# -- layers --------------------------------------------------------------------------------------
class Dense(Layer):
    """y = f(x W + b) with W of shape (in, out).

    Backward, with g = dL/dy and dz = f'(z) * g:
        dL/dW = x^T dz,   dL/db = sum over the batch of dz,   dL/dx = dz W^T.
    """

    _saved_for_backward = ("_x", "_z", "_y")
    type_name = "dense"
    fields = ("units", "activation", "use_bias", "kernel_initializer", "bias_initializer")

    def __init__(
        self,
        units: int,
        activation: object = "linear",
        use_bias: bool = True,
        kernel_initializer: object = "glorot_uniform",
        bias_initializer: object = "zeros",
    ) -> None:
        super().__init__()
        self.units = int(units)
        self.activation = activations_mod.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers_mod.get(kernel_initializer)
        self.bias_initializer = initializers_mod.get(bias_initializer)
        self._x: Array | None = None
        self._z: Array | None = None
        self._y: Array | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str) -> Dense:
        _check_fields(config, path, cls.fields)
        return cls(
            units=_positive_int(config, path, "units"),
            activation=_component(config, path, "activation", "linear", activations_mod.get),
            use_bias=_bool(config, path, "use_bias", True),
            kernel_initializer=_component(
                config, path, "kernel_initializer", "glorot_uniform", initializers_mod.get
            ),
            bias_initializer=_component(
                config, path, "bias_initializer", "zeros", initializers_mod.get
            ),
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "units": self.units,
            "activation": serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": serialize(self.kernel_initializer),
            "bias_initializer": serialize(self.bias_initializer),
        }

    def output_width(self, input_dim: int) -> int:
        return self.units

    def parameter_count(self, input_dim: int) -> int:
        return input_dim * self.units + (self.units if self.use_bias else 0)

    def build(self, input_dim: int, dtype: np.dtype[Any], rng: np.random.Generator) -> int:
        super().build(input_dim, dtype, rng)
        self.params = {"kernel": self.kernel_initializer((input_dim, self.units), dtype, rng)}
        if self.use_bias:
            self.params["bias"] = self.bias_initializer((self.units,), dtype, rng)
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        return self.output_dim

    def forward(
        self, x: Array, training: bool = False, rng: np.random.Generator | None = None
    ) -> Array:
        shape = (x.shape[0], self.units)
        z = np.matmul(x, self.params["kernel"], out=self._buffer("z", shape))
        if self.use_bias:
            z += self.params["bias"]
        self._x, self._z = x, z
        if self.activation.is_identity:
            self._y = z
            return z
        self._y = self.activation.forward(z, out=self._buffer("y", shape))
        return self._y

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        if self._x is None or self._z is None or self._y is None:
            raise RuntimeError("Dense.backward called before forward")
        if self.activation.is_identity:
            dz = grad_out
        else:
            dz = self.activation.backward(
                self._z, self._y, grad_out, out=self._buffer("dz", grad_out.shape)
            )
        np.matmul(self._x.T, dz, out=self.grads["kernel"])
        if self.use_bias:
            np.add.reduce(dz, axis=0, out=self.grads["bias"])
        if not need_input_grad:
            return None
        return np.matmul(
            dz, self.params["kernel"].T, out=self._buffer("dx", (dz.shape[0], self.input_dim))
        )


class ActivationLayer(Layer):
    """y = f(x) as a separate layer; dL/dx = f'(x) * dL/dy."""

    _saved_for_backward = ("_x", "_y")
    type_name = "activation"
    fields = ("activation",)

    def __init__(self, activation: object) -> None:
        super().__init__()
        self.activation = activations_mod.get(activation)
        self._x: Array | None = None
        self._y: Array | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str) -> Layer:
        _check_fields(config, path, cls.fields)
        if "activation" not in config:
            raise SpecError(f"{path}.activation is required (an activation name).")
        act = config["activation"]
        name = act.get("name") if isinstance(act, Mapping) else act
        if isinstance(name, str) and name.lower() == PReLU.type_name:
            # PReLU has a parameter, so it is a layer of its own (see the module docstring).
            rest = {k: v for k, v in act.items() if k != "name"} if isinstance(act, Mapping) else {}
            return PReLU.from_config(rest, f"{path}.activation")
        return cls(_component(config, path, "activation", "linear", activations_mod.get))

    def get_config(self) -> dict[str, Any]:
        return {"type": self.type_name, "activation": serialize(self.activation)}

    def forward(
        self, x: Array, training: bool = False, rng: np.random.Generator | None = None
    ) -> Array:
        self._x = x
        self._y = self.activation.forward(x, out=self._buffer("y", x.shape))
        return self._y

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        if self._x is None or self._y is None:
            raise RuntimeError("Activation.backward called before forward")
        if not need_input_grad:
            return None
        return self.activation.backward(
            self._x, self._y, grad_out, out=self._buffer("dx", grad_out.shape)
        )


class Dropout(Layer):
    """Inverted dropout: in training y = x * m / (1 - rate) with m ~ Bernoulli(1 - rate),
    so dL/dx = dL/dy * m / (1 - rate); in evaluation y = x.
    """

    _saved_for_backward = ("_mask",)
    type_name = "dropout"
    fields = ("rate",)

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = float(rate)
        self._mask: Array | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str) -> Dropout:
        _check_fields(config, path, cls.fields)
        if "rate" not in config:
            raise SpecError(f"{path}.rate is required (a number in [0, 1)).")
        rate = config["rate"]
        if (
            isinstance(rate, bool)
            or not isinstance(rate, int | float | np.floating | np.integer)
            or not 0 <= rate < 1
        ):
            raise SpecError(
                f"{path}.rate must be a number in [0, 1). Received: rate={quoted(rate)}"
            )
        return cls(float(rate))

    def get_config(self) -> dict[str, Any]:
        return {"type": self.type_name, "rate": self.rate}

    def forward(
        self, x: Array, training: bool = False, rng: np.random.Generator | None = None
    ) -> Array:
        if not training or self.rate == 0.0:
            self._mask = None
            return x
        if rng is None:
            raise ValueError("Dropout in training mode needs a numpy Generator (rng=...)")
        mask = self._buffer("mask", x.shape)
        rng.random(dtype=self.dtype, out=mask)
        # mask <- 1[u >= rate] / (1 - rate), in place.
        np.greater_equal(mask, self.rate, out=mask, casting="unsafe")
        mask *= 1.0 / (1.0 - self.rate)
        self._mask = mask
        return np.multiply(x, mask, out=self._buffer("y", x.shape))

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        if not need_input_grad:
            return None
        if self._mask is None:
            return grad_out
        return np.multiply(grad_out, self._mask, out=self._buffer("dx", grad_out.shape))


class PReLU(Layer):
    """y = x for x > 0, a_j x otherwise, with one learned slope a_j per unit (as
    torch.nn.PReLU(num_parameters=units, init=init)):
        dL/dx = g (1[x > 0] + a 1[x <= 0]),   dL/da_j = sum over the batch of g_ij min(x_ij, 0).
    """

    _saved_for_backward = ("_x", "_neg")
    type_name = "prelu"
    fields = ("init",)

    def __init__(self, init: float = 0.25) -> None:
        super().__init__()
        self.init = float(init)
        self._x: Array | None = None
        self._neg: Array | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str) -> PReLU:
        _check_fields(config, path, cls.fields)
        return cls(_number(config, path, "init", 0.25))

    def get_config(self) -> dict[str, Any]:
        return {"type": self.type_name, "init": self.init}

    def parameter_count(self, input_dim: int) -> int:
        return input_dim

    def build(self, input_dim: int, dtype: np.dtype[Any], rng: np.random.Generator) -> int:
        super().build(input_dim, dtype, rng)
        self.params = {"alpha": np.full((input_dim,), self.init, dtype=dtype)}
        self.grads = {"alpha": np.zeros((input_dim,), dtype=dtype)}
        return self.output_dim

    def forward(
        self, x: Array, training: bool = False, rng: np.random.Generator | None = None
    ) -> Array:
        neg = np.minimum(x, 0, out=self._buffer("neg", x.shape))
        y = np.multiply(neg, self.params["alpha"], out=self._buffer("y", x.shape))
        y += np.maximum(x, 0, out=self._buffer("pos", x.shape))
        self._x, self._neg = x, neg
        return y

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        if self._x is None or self._neg is None:
            raise RuntimeError("PReLU.backward called before forward")
        np.einsum("ij,ij->j", grad_out, self._neg, out=self.grads["alpha"])
        if not need_input_grad:
            return None
        slope = np.where(self._x > 0, 1.0, self.params["alpha"]).astype(self.dtype, copy=False)
        return np.multiply(grad_out, slope, out=self._buffer("dx", grad_out.shape))


class BatchNorm1d(Layer):
    """Batch normalisation over the batch axis, per feature (torch.nn.BatchNorm1d, affine).

    Training, over the n rows of the batch:
        mu = mean x,  var = mean (x - mu)^2 (biased),  xhat = (x - mu) / sqrt(var + eps),
        y = gamma xhat + beta;
        running_mean <- (1 - m) running_mean + m mu,
        running_var  <- (1 - m) running_var + m var n / (n - 1)   (unbiased, as torch).
    A batch of one row (where torch refuses to train: a trainer's last batch when the rows leave
    a remainder of one) moves neither running statistic: its variance is 0 and its mean one row,
    which would drag the statistics that evaluation uses every epoch.
    Evaluation: xhat = (x - running_mean) / sqrt(running_var + eps).
    Backward with g = dL/dy:  dL/dbeta = sum g,  dL/dgamma = sum g xhat, and
        training:    dL/dx = gamma / (n sqrt(var + eps)) (n g - dL/dbeta - xhat dL/dgamma)
        evaluation:  dL/dx = g gamma / sqrt(running_var + eps).
    """

    _saved_for_backward = ("_xhat", "_inv_std")
    type_name = "batch_norm"
    fields = ("momentum", "epsilon")
    nonnegative_buffers = ("running_var",)  # sqrt(running_var + eps) in evaluation

    def __init__(self, momentum: float = 0.1, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self._xhat: Array | None = None
        self._inv_std: Array | None = None
        self._training = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str) -> BatchNorm1d:
        _check_fields(config, path, cls.fields)
        return cls(
            momentum=_number(config, path, "momentum", 0.1, 0.0, 1.0),
            epsilon=_number(config, path, "epsilon", 1e-5, 0.0, low_inclusive=False),
        )

    def get_config(self) -> dict[str, Any]:
        return {"type": self.type_name, "momentum": self.momentum, "epsilon": self.epsilon}

    def parameter_count(self, input_dim: int) -> int:
        return 2 * input_dim  # gamma and beta; the running statistics are buffers

    def build(self, input_dim: int, dtype: np.dtype[Any], rng: np.random.Generator) -> int:
        super().build(input_dim, dtype, rng)
        self.params = {
            "gamma": np.ones((input_dim,), dtype=dtype),
            "beta": np.zeros((input_dim,), dtype=dtype),
        }
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.buffers = {
            "running_mean": np.zeros((input_dim,), dtype=dtype),
            "running_var": np.ones((input_dim,), dtype=dtype),
        }
        return self.output_dim

    def forward(
        self, x: Array, training: bool = False, rng: np.random.Generator | None = None
    ) -> Array:
        gamma, beta = self.params["gamma"], self.params["beta"]
        xhat = self._buffer("xhat", x.shape)
        if training:
            n = x.shape[0]
            mu = np.add.reduce(x, axis=0) / n
            np.subtract(x, mu, out=xhat)
            var = np.einsum("ij,ij->j", xhat, xhat) / n
            if n > 1:
                m = self.momentum
                running_mean = self.buffers["running_mean"]
                running_var = self.buffers["running_var"]
                running_mean *= 1.0 - m
                running_mean += m * mu
                running_var *= 1.0 - m
                running_var += (m * n / (n - 1)) * var
        else:
            np.subtract(x, self.buffers["running_mean"], out=xhat)
            var = self.buffers["running_var"]
        inv_std = 1.0 / np.sqrt(var + self.epsilon)
        xhat *= inv_std
        y = np.multiply(xhat, gamma, out=self._buffer("y", x.shape))
        y += beta
        self._xhat, self._inv_std, self._training = xhat, inv_std, training
        return y

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        if self._xhat is None or self._inv_std is None:
            raise RuntimeError("BatchNorm1d.backward called before forward")
        xhat = self._xhat
        dbeta = np.add.reduce(grad_out, axis=0, out=self.grads["beta"])
        dgamma = np.einsum("ij,ij->j", grad_out, xhat, out=self.grads["gamma"])
        if not need_input_grad:
            return None
        dx = self._buffer("dx", grad_out.shape)
        if self._training:
            n = grad_out.shape[0]
            np.multiply(xhat, dgamma, out=dx)
            dx += dbeta
            np.subtract(grad_out * n, dx, out=dx)
            dx *= self.params["gamma"] * self._inv_std / n
        else:
            np.multiply(grad_out, self.params["gamma"] * self._inv_std, out=dx)
        return dx


REGISTRY: dict[str, type[Layer]] = {
    cls.type_name: cls for cls in (Dense, ActivationLayer, Dropout, BatchNorm1d, PReLU)
}


def from_config(config: object, path: str) -> Layer:
    """Build an unbuilt layer from one spec entry; SpecError names ``path`` on any problem."""
    if not isinstance(config, Mapping):
        raise SpecError(f"{path} must be a dict with a 'type' key. Received: {quoted(config)}")
    layer_type = config.get("type")
    if not isinstance(layer_type, str) or layer_type.lower() not in REGISTRY:
        raise SpecError(
            f"{path}.type must be one of: {', '.join(sorted(REGISTRY))}. "
            f"Received: type={quoted(layer_type)}"
        )
    rest = {k: v for k, v in config.items() if k != "type"}
    return REGISTRY[layer_type.lower()].from_config(rest, path)
