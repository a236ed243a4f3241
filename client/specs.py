"""Model specs as plain dicts (the engine's format) <-> `trainwire.v1.ModelSpec` messages.

A spec is `{"input_dim": 4, "layers": [{"type": "dense", "units": 16, "activation": "relu"},
{"type": "dropout", "rate": 0.1}, {"type": "dense", "units": 3}]}`; `input_dim` may be left out
to take the dataset's width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainwire.v1 import models_pb2


def name_of(value: Any) -> str:
    """Registry entries are given as a name or as {"name": ..., **params}. A dense layer's
    activation and initializers travel as names only (local validation refuses parameters)."""
    if isinstance(value, Mapping):
        return str(value.get("name", ""))
    return str(value or "")


def model_spec_to_proto(spec: Mapping[str, Any]) -> models_pb2.ModelSpec:
    """A ModelSpec message for a spec dict; unknown layer types raise ValueError."""
    message = models_pb2.ModelSpec(input_dim=int(spec.get("input_dim", 0) or 0))
    for index, layer in enumerate(spec.get("layers", [])):
        kind = layer.get("type")
        if kind == "dense":
            message.layers.add(
                dense=models_pb2.DenseLayer(
                    units=int(layer["units"]),
                    activation=name_of(layer.get("activation", "")),
                    no_bias=not layer.get("use_bias", True),
                    kernel_initializer=name_of(layer.get("kernel_initializer", "")),
                    bias_initializer=name_of(layer.get("bias_initializer", "")),
                )
            )
        elif kind == "dropout":
            message.layers.add(dropout=models_pb2.DropoutLayer(rate=float(layer["rate"])))
        elif kind == "batch_norm":
            # Only the values given are set (the fields have presence: 0 is a value, not unset).
            values = {key: float(layer[key]) for key in ("momentum", "epsilon") if key in layer}
            message.layers.add(batch_norm=models_pb2.BatchNormLayer(**values))
        elif kind == "prelu":
            # PReLU has no LayerSpec of its own: the wire form is the activation layer that the
            # engine normalises to `{"type": "prelu", ...}`, so what it stored can be shown.
            params = {k: float(v) for k, v in layer.items() if k != "type"}
            message.layers.add(activation=models_pb2.ActivationLayer(name="prelu", params=params))
        elif kind == "activation":
            activation = layer.get("activation", "linear")
            params = dict(activation) if isinstance(activation, Mapping) else {}
            params.pop("name", None)
            message.layers.add(
                activation=models_pb2.ActivationLayer(
                    name=name_of(activation), params={k: float(v) for k, v in params.items()}
                )
            )
        else:
            raise ValueError(
                f"layers[{index}].type must be one of: dense, dropout, batch_norm, activation, "
                f"prelu. Received: type={kind!r}"
            )
    return message


def model_spec_from_proto(spec: models_pb2.ModelSpec, input_dim: int) -> dict[str, Any]:
    """The spec dict (the engine's format, which `create_job` takes) of a ModelSpec message;
    `input_dim` fills an unset width. The server reads `CreateJob`'s model with it, and the SDK
    the model of `GetModelMetadata`'s answer."""
    layers: list[dict[str, Any]] = []
    for layer in spec.layers:
        kind = layer.WhichOneof("kind")
        if kind == "dense":
            dense: dict[str, Any] = {
                "type": "dense",
                "units": layer.dense.units,
                "activation": layer.dense.activation or "linear",
                "use_bias": not layer.dense.no_bias,
            }
            if layer.dense.kernel_initializer:
                dense["kernel_initializer"] = layer.dense.kernel_initializer
            if layer.dense.bias_initializer:
                dense["bias_initializer"] = layer.dense.bias_initializer
            layers.append(dense)
        elif kind == "dropout":
            layers.append({"type": "dropout", "rate": layer.dropout.rate})
        elif kind == "batch_norm":
            # Presence, not truth: a momentum of 0 is a value; an unset field takes the default.
            norm: dict[str, Any] = {"type": "batch_norm"}
            for key in ("momentum", "epsilon"):
                if layer.batch_norm.HasField(key):
                    norm[key] = getattr(layer.batch_norm, key)
            layers.append(norm)
        elif kind == "activation":
            activation = {"name": layer.activation.name, **dict(layer.activation.params)}
            layers.append({"type": "activation", "activation": activation})
        else:
            layers.append({"type": None})  # an empty LayerSpec: the engine names the problem
    return {"input_dim": spec.input_dim or input_dim, "layers": layers}
