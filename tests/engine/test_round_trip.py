"""Every layer, activation, loss, optimizer and schedule config round-trips through plain JSON."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from trainwire.engine import (
    EarlyStopping,
    Model,
    SpecError,
    Trainer,
    activations,
    losses,
    optimizers,
    schedules,
)
from trainwire.engine._registry import serialize

ACTIVATION_CONFIGS = [
    "linear",
    "relu",
    "sigmoid",
    "tanh",
    "softmax",
    "gelu",
    {"name": "leaky_relu", "negative_slope": 0.2},
    {"name": "elu", "alpha": 0.5},
    {"name": "softplus", "beta": 2.0, "threshold": 10.0},
]
LOSS_CONFIGS = [
    "mse",
    "mae",
    {"name": "huber", "delta": 0.5},
    "binary_cross_entropy",
    "softmax_cross_entropy",
]
OPTIMIZER_CONFIGS = [
    {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    {"name": "adam", "learning_rate": 0.002, "beta_1": 0.8, "clip_norm": 1.0},
    {"name": "adamw", "weight_decay": 0.05},
    {"name": "adagrad", "lr_decay": 0.01, "initial_accumulator_value": 0.1},
    {"name": "rmsprop", "alpha": 0.9, "momentum": 0.5, "centered": True, "clip_norm": 2.0},
]
SCHEDULE_CONFIGS = [
    "constant",
    {"name": "step", "step_size": 5, "gamma": 0.5},
    {"name": "exponential", "gamma": 0.95, "interval": "step"},
    {"name": "cosine", "total": 1000, "warmup": 100, "min_lr": 1e-5},
    {"name": "reduce_on_plateau", "monitor": "val_accuracy", "factor": 0.5, "patience": 2},
]


def _json(obj: object) -> object:
    return json.loads(json.dumps(obj))


@pytest.mark.parametrize(
    ("module", "config"),
    [(activations, c) for c in ACTIVATION_CONFIGS]
    + [(losses, c) for c in LOSS_CONFIGS]
    + [(optimizers, c) for c in OPTIMIZER_CONFIGS]
    + [(schedules, c) for c in SCHEDULE_CONFIGS],
    ids=lambda v: v if isinstance(v, str) else (v.get("name") if isinstance(v, dict) else None),
)
def test_component_round_trip(module, config) -> None:
    obj = module.get(config)
    data = _json(serialize(obj))
    again = module.get(data)
    assert type(again) is type(obj)
    assert again.get_config() == obj.get_config()
    assert serialize(again) == data
    given = config if isinstance(config, dict) else {"name": config}
    for key, value in given.items():  # what was asked for is what is kept
        if key != "name":
            assert obj.get_config()[key] == value, key


ALL_LAYERS_SPEC = {
    "input_dim": 6,
    "layers": [
        {"type": "dense", "units": 8, "activation": {"name": "leaky_relu", "negative_slope": 0.1}},
        {"type": "batch_norm", "momentum": 0.05, "epsilon": 1e-3},
        {"type": "prelu", "init": 0.2},
        {"type": "activation", "activation": "gelu"},
        {"type": "activation", "activation": {"name": "elu", "alpha": 0.3}},
        {"type": "dropout", "rate": 0.25},
        {"type": "dense", "units": 3, "use_bias": False, "kernel_initializer": "he_normal"},
    ],
}


def test_model_spec_with_every_layer_round_trips() -> None:
    model = Model.from_spec(ALL_LAYERS_SPEC, seed=0)
    spec = _json(model.to_spec())
    assert spec == model.to_spec()
    assert spec["layers"][1] == {"type": "batch_norm", "momentum": 0.05, "epsilon": 0.001}
    assert spec["layers"][2] == {"type": "prelu", "init": 0.2}
    assert spec["layers"][4] == {"type": "activation", "activation": {"name": "elu", "alpha": 0.3}}
    again = Model.from_spec(spec, seed=0)
    assert again.to_spec() == spec
    described = Model.describe_spec(ALL_LAYERS_SPEC)  # the same, without building anything
    assert described.spec == spec and described.num_parameters == model.num_parameters
    assert described.widths == (6, 8, 8, 8, 8, 8, 8, 3) and described.output_dim == 3
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert model.num_parameters == 6 * 8 + 8 + 2 * 8 + 8 + 8 * 3  # running stats excluded
    assert set(model.buffers()) == {"layers.1.running_mean", "layers.1.running_var"}


def test_defaults_filled_in() -> None:
    spec = {"input_dim": 2, "layers": [{"type": "batch_norm"}, {"type": "prelu"}]}
    layers = Model.from_spec(spec).to_spec()["layers"]
    assert layers == [
        {"type": "batch_norm", "momentum": 0.1, "epsilon": 1e-5},
        {"type": "prelu", "init": 0.25},
    ]


@pytest.mark.parametrize("activation", ["prelu", {"name": "prelu"}, {"name": "PReLU", "init": 0.1}])
def test_prelu_reachable_as_activation_layer(activation) -> None:
    spec = {"input_dim": 3, "layers": [{"type": "activation", "activation": activation}]}
    model = Model.from_spec(spec, dtype="float64")
    init = activation.get("init", 0.25) if isinstance(activation, dict) else 0.25
    assert model.to_spec()["layers"] == [{"type": "prelu", "init": init}]
    assert np.array_equal(model.parameters()["layers.0.alpha"], np.full(3, init))
    out = model.predict(np.array([[-2.0, 0.0, 3.0]]))
    assert np.allclose(out, [[-2.0 * init, 0.0, 3.0]])


@pytest.mark.parametrize(
    ("layer", "pattern"),
    [
        (
            {"type": "batch_norm", "momentum": 1.5},
            "layers[0].momentum must be a number in [0.0, 1.0]",
        ),
        ({"type": "batch_norm", "epsilon": 0}, "layers[0].epsilon must be a number in (0.0"),
        ({"type": "batch_norm", "eps": 1e-3}, "layers[0] has unknown field 'eps'"),
        ({"type": "prelu", "init": "x"}, "layers[0].init must be a number"),
        (
            {"type": "activation", "activation": {"name": "prelu", "slope": 1}},
            "layers[0].activation has unknown field 'slope'",
        ),
        (
            {"type": "activation", "activation": {"name": "leaky_relu", "slope": 1}},
            "layers[0].activation is invalid: Invalid arguments for activation 'leaky_relu'",
        ),
        (
            {"type": "dense", "units": 2, "activation": {"name": "elu", "alpha": -1}},
            "alpha must be a number in [0.0, inf). Received: alpha=-1",
        ),
    ],
)
def test_new_layer_spec_errors(layer: dict, pattern: str) -> None:
    with pytest.raises(SpecError, match=re.escape(pattern)):
        Model.from_spec({"input_dim": 3, "layers": [layer]})


def test_trainer_options_are_plain_data() -> None:
    model = Model.from_spec(ALL_LAYERS_SPEC, seed=0)
    options = {
        "schedule": {"name": "cosine", "total": 50, "warmup": 5},
        "early_stopping": {
            "monitor": "val_loss",
            "patience": 3,
            "min_delta": 0.0,
            "restore_best_weights": True,
        },
        "clip_norm": 1.0,
        "num_threads": 1,
    }
    trainer = Trainer(model, loss="softmax_cross_entropy", **_json(options))  # type: ignore[arg-type]
    assert trainer.optimizer.clip_norm == 1.0
    assert serialize(trainer.schedule) == {"name": "cosine", **trainer.schedule.get_config()}
    assert isinstance(trainer.early_stopping, EarlyStopping)
    assert trainer.early_stopping.get_config() == {**options["early_stopping"], "mode": "auto"}
    with pytest.raises(ValueError, match="clip_norm"):
        Trainer(model, clip_norm=-1.0)
    with pytest.raises(ValueError, match="num_threads"):
        Trainer(model, num_threads=0)
