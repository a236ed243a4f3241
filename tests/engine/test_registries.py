"""Keras-style registries: name, dict or instance; clear errors naming the allowed values."""

from __future__ import annotations

import re

import numpy as np
import pytest

from trainwire.engine import activations, initializers, losses, metrics, optimizers
from trainwire.engine.errors import quoted

REGISTRIES = [
    (activations, "activation", activations.Activation, "tanh"),
    (losses, "loss", losses.Loss, "mse"),
    (optimizers, "optimizer", optimizers.Optimizer, "sgd"),
    (initializers, "initializer", initializers.Initializer, "he_normal"),
    (metrics, "metric", metrics.Metric, "r2"),
]


@pytest.mark.parametrize(("module", "kind", "base", "name"), REGISTRIES)
def test_get_accepts_name_dict_instance(module, kind, base, name) -> None:
    by_name = module.get(name)
    assert isinstance(by_name, base) and by_name.name == name
    assert type(module.get({"name": name})) is type(by_name)
    assert module.get(by_name) is by_name
    assert type(module.get(name.upper())) is type(by_name)


@pytest.mark.parametrize(("module", "kind", "base", "name"), REGISTRIES)
def test_unknown_name_lists_allowed(module, kind, base, name) -> None:
    allowed = ", ".join(sorted(module.REGISTRY))
    expected = f"Unknown {kind} 'nope'; expected one of: {allowed}. Received: name='nope'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        module.get("nope")
    with pytest.raises(ValueError, match="needs a 'name' key"):
        module.get({"learning_rate": 1})
    with pytest.raises(ValueError, match="Could not interpret"):
        module.get(3.5)


def test_optimizer_error_message_exact() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Unknown optimizer 'adm'; expected one of: adagrad, adam, adamw, rmsprop, sgd. "
            "Received: name='adm'"
        ),
    ):
        optimizers.get("adm")


def test_dict_kwargs_and_bad_kwargs() -> None:
    opt = optimizers.get({"name": "sgd", "learning_rate": 0.3, "momentum": 0.5})
    assert opt.get_config() == {
        "learning_rate": 0.3,
        "momentum": 0.5,
        "nesterov": False,
        "weight_decay": 0.0,
    }
    with pytest.raises(ValueError, match="Invalid arguments for optimizer 'adam'"):
        optimizers.get({"name": "adam", "momentum": 0.9})


def test_linear_and_identity_are_the_same() -> None:
    x = np.arange(6.0).reshape(2, 3)
    for name in ("identity", "linear", None):
        activation = activations.get(name)
        assert activation.name == "linear" and activation.is_identity
        assert np.array_equal(activation(x), x)


def test_a_value_is_quoted_bounded_in_errors() -> None:
    """A 10,000-character argument name was quoted whole, twice (Python's TypeError and the
    arguments received): the server's status then exceeded the client's metadata limit."""
    assert quoted("adam") == "'adam'" and quoted(0.5) == "0.5"
    assert quoted("x" * 65) == repr("x" * 64) + "…(65 characters)"
    assert quoted({"x" * 100: 1.0}) == "{'" + "x" * 62 + "…(109 characters)"
    with pytest.raises(ValueError) as refused:
        optimizers.get({"name": "adam", "y" * 10_000: 0.9})
    message = str(refused.value)
    assert message.startswith("Invalid arguments for optimizer 'adam': 'yyyy")
    assert "is not one of its parameters (learning_rate, " in message
    assert len(message) < 400
