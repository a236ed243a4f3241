"""Layers: the forward/backward building blocks a Model stacks.

A layer is configured from a spec dict (``from_config`` validates it and raises SpecError with
the field path), then ``build`` allocates its parameters for a given input width, dtype and
Generator. ``forward`` caches what ``backward`` needs; ``backward`` writes parameter gradients
into preallocated arrays (``grads``) and returns dL/d(input). Activations and intermediate
buffers are reused across batches of the same size, so returned arrays are only valid until the
next call. Adding a layer type is one subclass plus one ``REGISTRY`` entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from . import activations as activations_mod
from . import initializers as initializers_mod
from ._registry import serialize
from ._types import Array
from .errors import SpecError

_MAX_BUFFERS = 16


class Layer:
    """Base class for layers."""

    type_name: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
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
        self.output_dim = input_dim
        self.dtype = dtype
        return self.output_dim

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config()})"


# -- spec validation helpers ---------------------------------------------------------------------
def _check_fields(config: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise SpecError(
            f"{path} has unknown field {unknown[0]!r}; allowed fields: "
            f"{', '.join(('type', *allowed))}. Received: {unknown[0]}={config[unknown[0]]!r}"
        )


def _positive_int(config: Mapping[str, Any], path: str, key: str) -> int:
    if key not in config:
        raise SpecError(f"{path}.{key} is required (a positive integer).")
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise SpecError(f"{path}.{key} must be a positive integer. Received: {key}={value!r}")
    return int(value)


def _bool(config: Mapping[str, Any], path: str, key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool | np.bool_):
        raise SpecError(f"{path}.{key} must be a boolean. Received: {key}={value!r}")
    return bool(value)


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

    def build(self, input_dim: int, dtype: np.dtype[Any], rng: np.random.Generator) -> int:
        super().build(input_dim, dtype, rng)
        self.output_dim = self.units
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
            np.sum(dz, axis=0, out=self.grads["bias"])
        if not need_input_grad:
            return None
        return np.matmul(
            dz, self.params["kernel"].T, out=self._buffer("dx", (dz.shape[0], self.input_dim))
        )


class ActivationLayer(Layer):
    """y = f(x) as a separate layer; dL/dx = f'(x) * dL/dy."""

    type_name = "activation"
    fields = ("activation",)

    def __init__(self, activation: object) -> None:
        super().__init__()
        self.activation = activations_mod.get(activation)
        self._x: Array | None = None
        self._y: Array | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str) -> ActivationLayer:
        _check_fields(config, path, cls.fields)
        if "activation" not in config:
            raise SpecError(f"{path}.activation is required (an activation name).")
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
            raise SpecError(f"{path}.rate must be a number in [0, 1). Received: rate={rate!r}")
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


REGISTRY: dict[str, type[Layer]] = {cls.type_name: cls for cls in (Dense, ActivationLayer, Dropout)}


def from_config(config: object, path: str) -> Layer:
    """Build an unbuilt layer from one spec entry; SpecError names ``path`` on any problem."""
    if not isinstance(config, Mapping):
        raise SpecError(f"{path} must be a dict with a 'type' key. Received: {config!r}")
    layer_type = config.get("type")
    if not isinstance(layer_type, str) or layer_type.lower() not in REGISTRY:
        raise SpecError(
            f"{path}.type must be one of: {', '.join(sorted(REGISTRY))}. "
            f"Received: type={layer_type!r}"
        )
    rest = {k: v for k, v in config.items() if k != "type"}
    return REGISTRY[layer_type.lower()].from_config(rest, path)
