"""Typed builders for model specs: `Sequential([Dense(16, activation="relu"), Dense(3)])`.

Each builder turns into the plain-dict format the engine and the wire use (`to_dict()`), so a
spec can equally be written as a dict, as YAML, or with these classes:

    from trainwire.client import Sequential, Dense, Dropout
    model = Sequential([Dense(128, activation="relu"), Dropout(0.1), Dense(10)])
    model.to_dict()  # {"layers": [{"type": "dense", "units": 128, ...}, ...]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import yaml

from .errors import SpecError


@dataclass(frozen=True)
class Dense:
    """A fully connected layer of `units` outputs, optionally followed by an activation.

    `activation` and the initializers are names (a mapping may hold only its `name`): an
    activation with parameters is a layer of its own, `Activation("leaky_relu",
    negative_slope=0.3)`.
    """

    units: int
    activation: str | Mapping[str, Any] | None = None
    use_bias: bool = True
    kernel_initializer: str | None = None
    bias_initializer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The layer in the engine's dict format."""
        spec: dict[str, Any] = {"type": "dense", "units": self.units}
        if self.activation is not None:
            spec["activation"] = (
                dict(self.activation) if isinstance(self.activation, Mapping) else self.activation
            )
        if not self.use_bias:
            spec["use_bias"] = False
        if self.kernel_initializer:
            spec["kernel_initializer"] = self.kernel_initializer
        if self.bias_initializer:
            spec["bias_initializer"] = self.bias_initializer
        return spec


@dataclass(frozen=True)
class Dropout:
    """Zeroes a fraction `rate` of activations while training (inverted dropout)."""

    rate: float

    def to_dict(self) -> dict[str, Any]:
        """The layer in the engine's dict format."""
        return {"type": "dropout", "rate": self.rate}


@dataclass(frozen=True)
class BatchNorm:
    """Batch normalisation over the features (running statistics for inference)."""

    momentum: float = 0.1
    epsilon: float = 1e-5

    def to_dict(self) -> dict[str, Any]:
        """The layer in the engine's dict format."""
        return {"type": "batch_norm", "momentum": self.momentum, "epsilon": self.epsilon}


@dataclass(frozen=True)
class Activation:
    """An activation on its own, e.g. `Activation("leaky_relu", negative_slope=0.01)`."""

    name: str
    params: Mapping[str, float] = field(default_factory=dict)

    def __init__(self, name: str, **params: float) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "params", dict(params))

    def to_dict(self) -> dict[str, Any]:
        """The layer in the engine's dict format."""
        activation: str | dict[str, Any] = (
            {"name": self.name, **self.params} if self.params else self.name
        )
        return {"type": "activation", "activation": activation}


Layer: TypeAlias = Dense | Dropout | BatchNorm | Activation
LayerLike: TypeAlias = Layer | Mapping[str, Any]


@dataclass(frozen=True)
class Sequential:
    """A feed-forward model: `layers` applied in order. `input_dim=None` takes the dataset's
    width."""

    layers: Sequence[LayerLike]
    input_dim: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The model in the engine's dict format."""
        spec: dict[str, Any] = {"layers": [layer_to_dict(layer) for layer in self.layers]}
        if self.input_dim is not None:
            spec["input_dim"] = self.input_dim
        return spec

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Sequential:
        """A model from the dict format (layers are kept as dicts)."""
        return cls(list(spec.get("layers", [])), spec.get("input_dim"))


ModelLike: TypeAlias = Sequential | Mapping[str, Any] | Sequence[LayerLike] | str | Path


def layer_to_dict(layer: LayerLike) -> dict[str, Any]:
    """One layer as a dict, from a builder or a dict."""
    if isinstance(layer, Mapping):
        return dict(layer)
    return layer.to_dict()


def model_to_dict(model: ModelLike) -> dict[str, Any]:
    """A model spec dict from a `Sequential`, a dict, a list of layers, YAML text or a YAML path.

    A YAML document may be the model itself or a job spec with a `model:` key.
    """
    if isinstance(model, Sequential):
        return model.to_dict()
    if isinstance(model, Path) or (isinstance(model, str) and "\n" not in model):
        path = Path(model)
        try:
            is_file = path.is_file()
        except OSError:  # a name too long for a path (one line of YAML may be)
            is_file = False
        if is_file:
            return model_to_dict(path.read_text())
        # Not a file: one line of YAML text ("layers: [...]") or a path that does not exist.
        loaded = None if isinstance(model, Path) else yaml.safe_load(model)
        if not isinstance(loaded, Mapping):
            raise ValueError(
                f"model must be a spec, a YAML file or YAML text; no file exists at {model!r}"
            )
        return model_to_dict(loaded.get("model", loaded))
    if isinstance(model, str):
        loaded = yaml.safe_load(model)
        if not isinstance(loaded, Mapping):
            raise ValueError("a YAML model spec must be a mapping with a 'layers' list")
        return model_to_dict(loaded.get("model", loaded))
    if isinstance(model, Mapping):
        spec = dict(model)
        if isinstance(spec.get("layers"), Iterable) and not isinstance(spec["layers"], str):
            spec["layers"] = [
                layer_to_dict(item) if isinstance(item, Mapping | Layer) else item
                for item in spec["layers"]
            ]
        return spec
    if not isinstance(model, Iterable):
        raise SpecError(
            [("model", f"must be a Sequential, a list of layers, a spec dict, YAML text or a "
                       f"YAML path. Received: {model!r}")]
        )  # fmt: skip
    return {"layers": [layer_to_dict(layer) for layer in model]}


__all__ = [
    "Activation",
    "BatchNorm",
    "Dense",
    "Dropout",
    "Layer",
    "LayerLike",
    "ModelLike",
    "Sequential",
    "layer_to_dict",
    "model_to_dict",
]
