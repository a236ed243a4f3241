"""Model: a validated stack of layers built from a JSON-able spec.

``Model.from_spec(spec, dtype, seed)`` validates the spec (SpecError names the field path and the
received value) and initialises all parameters from one Generator seeded with ``seed``;
``Model.describe_spec(spec)`` runs the same checks and tells the normalised spec, the layer widths
and the parameter count without allocating anything.
``forward``/``backward`` run the stack on one batch (returning reused buffers); ``predict``
runs in evaluation mode and returns fresh arrays. Parameters are named
``"layers.<index>.<name>"`` in ``parameters()``, ``gradients()`` and ``state_dict()``;
``state_dict()`` also holds the layers' non-trainable buffers (BatchNorm running statistics).

All parameters are views into one contiguous 1-D buffer (``flat_parameters()``), and all
gradients into another of the same layout (``flat_gradients()``), each view starting on a
64-byte boundary (padding elements stay zero). Optimizers update the flat buffers in a few
large ufunc calls instead of a few calls per parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import layers as layers_mod
from ._state import check_finite
from ._types import Array, as_float_dtype
from .errors import SpecError, quoted
from .layers import Layer

_SPEC_FIELDS = ("input_dim", "layers")
_ALIGN_BYTES = 64


def _aligned_zeros(size: int, dtype: np.dtype[Any]) -> Array:
    """A zeroed 1-D array whose data starts on a 64-byte boundary."""
    pad = _ALIGN_BYTES // dtype.itemsize
    raw = np.zeros(size + pad, dtype=dtype)
    shift = (-raw.ctypes.data % _ALIGN_BYTES) // dtype.itemsize
    return raw[shift : shift + size]


@dataclass(frozen=True)
class SpecSummary:
    """What a spec builds, found without building it (``Model.describe_spec``)."""

    spec: dict[str, Any]  # normalised, as ``Model.to_spec()`` gives it
    widths: tuple[int, ...]  # the input's width, then each layer's output width
    num_parameters: int  # as ``Model.num_parameters``

    @property
    def input_dim(self) -> int:
        return self.widths[0]

    @property
    def output_dim(self) -> int:
        return self.widths[-1]


def _check_input_dim(input_dim: object) -> int:
    if isinstance(input_dim, bool) or not isinstance(input_dim, int | np.integer) or input_dim <= 0:
        raise SpecError(
            f"input_dim must be a positive integer. Received: input_dim={quoted(input_dim)}"
        )
    return int(input_dim)


def _unbuilt_layers(spec: object) -> list[Layer]:
    """The layers of a spec, each validated and configured but not built (no parameters)."""
    if not isinstance(spec, Mapping):
        raise SpecError(f"spec must be a dict. Received: spec={quoted(spec)}")
    unknown = sorted(set(spec) - set(_SPEC_FIELDS))
    if unknown:
        raise SpecError(
            f"spec has unknown field {quoted(unknown[0])}; allowed fields: "
            f"{', '.join(_SPEC_FIELDS)}. Received: {quoted(spec[unknown[0]])}"
        )
    if "input_dim" not in spec:
        raise SpecError("input_dim is required (a positive integer).")
    layer_specs = spec.get("layers")
    if not isinstance(layer_specs, Sequence) or isinstance(layer_specs, str | bytes):
        raise SpecError(f"layers must be a non-empty list. Received: layers={quoted(layer_specs)}")
    return [layers_mod.from_config(entry, f"layers[{i}]") for i, entry in enumerate(layer_specs)]


class Model:
    """A feed-forward stack of layers with parameters in one dtype."""

    def __init__(
        self,
        input_dim: int,
        layers: Sequence[Layer],
        dtype: object = "float32",
        seed: int | None = None,
    ) -> None:
        try:
            self.dtype: np.dtype[Any] = as_float_dtype(dtype)
        except ValueError as exc:
            raise SpecError(str(exc)) from exc
        self.input_dim = _check_input_dim(input_dim)
        if not layers:
            raise SpecError("layers must be a non-empty list. Received: layers=[]")
        self.layers: list[Layer] = list(layers)
        rng = np.random.default_rng(seed)
        width = self.input_dim
        for layer in self.layers:
            width = layer.build(width, self.dtype, rng)
        self.output_dim = width
        self._params: dict[str, Array] = {}
        self._grads: dict[str, Array] = {}
        self._buffers: dict[str, Array] = {}
        self._state_names: list[str] = []
        self._nonnegative: set[str] = set()  # buffers no run makes negative (variances)
        self._flatten()

    def _flatten(self) -> None:
        """Move every parameter (and gradient) into a view of one aligned flat buffer."""
        align = _ALIGN_BYTES // self.dtype.itemsize
        offsets: list[int] = []
        total = 0
        for layer in self.layers:
            for p in layer.params.values():
                offsets.append(total)
                total += -(-p.size // align) * align
        self._flat_params = _aligned_zeros(total, self.dtype)
        self._flat_grads = _aligned_zeros(total, self.dtype)
        k = 0
        for i, layer in enumerate(self.layers):
            for name, p in list(layer.params.items()):
                off = offsets[k]
                k += 1
                view = self._flat_params[off : off + p.size].reshape(p.shape)
                view[...] = p
                grad = self._flat_grads[off : off + p.size].reshape(p.shape)
                layer.params[name], layer.grads[name] = view, grad
                self._params[f"layers.{i}.{name}"] = view
                self._grads[f"layers.{i}.{name}"] = grad
                self._state_names.append(f"layers.{i}.{name}")
            for name, buf in layer.buffers.items():
                self._buffers[f"layers.{i}.{name}"] = buf
                self._state_names.append(f"layers.{i}.{name}")
                if name in layer.nonnegative_buffers:
                    self._nonnegative.add(f"layers.{i}.{name}")

    # -- spec ---------------------------------------------------------------------------------
    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any], dtype: object = "float32", seed: int | None = 0
    ) -> Model:
        """Validate ``spec`` and build the model; raises SpecError (a ValueError) on bad input."""
        layers = _unbuilt_layers(spec)
        return cls(spec["input_dim"], layers, dtype=dtype, seed=seed)

    @staticmethod
    def describe_spec(spec: Mapping[str, Any]) -> SpecSummary:
        """What ``Model.from_spec(spec)`` would build, without building it: the same checks of
        the spec (SpecError), and no parameter allocated."""
        layers = _unbuilt_layers(spec)
        input_dim = _check_input_dim(spec["input_dim"])
        if not layers:
            raise SpecError("layers must be a non-empty list. Received: layers=[]")
        widths = [input_dim]
        count = 0
        for layer in layers:
            count += layer.parameter_count(widths[-1])
            widths.append(layer.output_width(widths[-1]))
        return SpecSummary(
            spec={"input_dim": input_dim, "layers": [layer.get_config() for layer in layers]},
            widths=tuple(widths),
            num_parameters=count,
        )

    def to_spec(self) -> dict[str, Any]:
        """The normalised spec (plain JSON types, defaults filled in)."""
        return {
            "input_dim": self.input_dim,
            "layers": [layer.get_config() for layer in self.layers],
        }

    # -- parameters ---------------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        return int(sum(p.size for p in self._params.values()))

    def parameters(self) -> dict[str, Array]:
        """The live parameter arrays (updating them in place updates the model)."""
        return dict(self._params)

    def gradients(self) -> dict[str, Array]:
        """The live gradient arrays filled by the last ``backward``."""
        return dict(self._grads)

    def buffers(self) -> dict[str, Array]:
        """The live non-trainable state arrays (BatchNorm running statistics)."""
        return dict(self._buffers)

    def flat_parameters(self) -> Array:
        """The contiguous 1-D buffer every parameter is a view of (padding elements are 0)."""
        return self._flat_params

    def flat_gradients(self) -> Array:
        """The contiguous 1-D gradient buffer, laid out like ``flat_parameters()``."""
        return self._flat_grads

    def _state_arrays(self) -> dict[str, Array]:
        return {
            name: self._params[name] if name in self._params else self._buffers[name]
            for name in self._state_names
        }

    @property
    def nbytes(self) -> int:
        """The bytes of all parameters and buffers (what ``state_dict`` would copy)."""
        return sum(array.nbytes for array in self._state_arrays().values())

    def state_dict(self, copy: bool = True) -> dict[str, Array]:
        """Copies of all parameters and buffers, keyed ``"layers.<i>.<name>"``; not ``copy``,
        the live arrays themselves (the next step changes them), for a caller that serialises
        them at once and need not hold the model twice."""
        return {name: p.copy() if copy else p for name, p in self._state_arrays().items()}

    def check_state_dict(self, state: Mapping[str, Array], prefix: str = "") -> None:
        """Raise ValueError naming the entry unless ``load_state_dict(state)`` would succeed;
        changes nothing. ``prefix`` is how the entries are named in an enclosing state (a
        trainer's ``"model."``), for the messages.

        Besides names, shapes and dtypes, the values must be ones a run reaches: finite (the
        server fails a job whose loss turns NaN before it checkpoints), and no negative running
        variance."""
        arrays = self._state_arrays()
        missing = sorted(prefix + name for name in set(arrays) - set(state))
        unexpected = sorted(prefix + name for name in set(state) - set(arrays))
        if missing or unexpected:
            raise ValueError(
                f"Model state does not match the architecture: missing={missing}, "
                f"unexpected={unexpected}"
            )
        for name, p in arrays.items():
            src = np.asarray(state[name])
            if src.shape != p.shape:
                raise ValueError(
                    f"Parameter {prefix + name!r} must have shape {p.shape}. "
                    f"Received: shape={src.shape}"
                )
            if src.dtype != p.dtype:
                raise ValueError(
                    f"Parameter {prefix + name!r} must have dtype {p.dtype}. "
                    f"Received: dtype={src.dtype}"
                )
            self._check_values(src, prefix + name, name in self._nonnegative)

    @staticmethod
    def _check_values(src: Array, label: str, nonnegative: bool) -> None:
        check_finite(
            src,
            f"Parameter {label!r}",
            "a NaN or infinity there makes every later output and loss NaN",
        )
        if nonnegative and src.size and src.min() < 0:
            raise ValueError(
                f"Parameter {label!r} is a running variance, so it cannot be negative "
                f"(evaluation takes its square root). Received: a minimum of {float(src.min())}"
            )

    def load_state_dict(self, state: Mapping[str, Array]) -> None:
        """Copy ``state`` into parameters and buffers; names, shapes, dtypes must match (checked
        before anything is copied)."""
        self.check_state_dict(state)
        for name, p in self._state_arrays().items():
            np.copyto(p, state[name])

    # -- computation --------------------------------------------------------------------------
    def check_input(self, x: object) -> Array:
        """``x`` as a C-contiguous (n, input_dim) array of the model dtype."""
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"X must be numeric. Received: dtype={arr.dtype}")
        if arr.ndim != 2 or arr.shape[1] != self.input_dim:
            raise ValueError(
                f"X must have shape (n, {self.input_dim}). Received: shape={arr.shape}"
            )
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def forward(
        self, x: Array, training: bool = False, rng: np.random.Generator | None = None
    ) -> Array:
        """Outputs for one batch. The result is a reused buffer: copy it to keep it."""
        for layer in self.layers:
            x = layer.forward(x, training=training, rng=rng)
        return x

    def backward(self, grad: Array, need_input_grad: bool = False) -> Array | None:
        """Back-propagate dL/d(outputs) through the last ``forward``; fills ``gradients()``."""
        g: Array | None = grad
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            assert g is not None
            g = self.layers[i].backward(g, need_input_grad=need_input_grad or i > 0)
        return g

    def predict(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Raw outputs (logits for classification) in evaluation mode, as a new array."""
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0
        ):
            raise ValueError(f"batch_size must be a positive integer. Received: {batch_size!r}")
        x = self.check_input(X)
        n = x.shape[0]
        if batch_size is None or batch_size >= n:
            return self.forward(x, training=False).copy()
        out = np.empty((n, self.output_dim), dtype=self.dtype)
        for start in range(0, n, batch_size):
            out[start : start + batch_size] = self.forward(x[start : start + batch_size])
        return out

    def __repr__(self) -> str:
        return (
            f"Model(input_dim={self.input_dim}, output_dim={self.output_dim}, "
            f"dtype={self.dtype.name}, layers={[layer.get_config() for layer in self.layers]})"
        )
