"""Model spec validation, normalisation, round-trip, state dicts, predict and dtype flow."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from trainwire.engine import Model, SpecError

SPEC = {
    "input_dim": 4,
    "layers": [
        {"type": "dense", "units": 16, "activation": "relu"},
        {"type": "dropout", "rate": 0.1},
        {"type": "dense", "units": 3},
    ],
}


def test_from_spec_basics() -> None:
    model = Model.from_spec(SPEC, dtype="float32", seed=0)
    assert (model.input_dim, model.output_dim) == (4, 3)
    assert model.num_parameters == 4 * 16 + 16 + 16 * 3 + 3
    assert model.dtype == np.float32
    assert all(p.dtype == np.float32 for p in model.state_dict().values())
    # Default initializers: glorot_uniform kernel within its limit, zero bias.
    kernel = model.state_dict()["layers.0.kernel"]
    assert np.abs(kernel).max() <= np.sqrt(6 / (4 + 16))
    assert not model.state_dict()["layers.0.bias"].any()


def test_to_spec_normalised_and_round_trips() -> None:
    model = Model.from_spec(SPEC, seed=0)
    spec = model.to_spec()
    assert json.loads(json.dumps(spec)) == spec
    assert spec["layers"][2] == {
        "type": "dense",
        "units": 3,
        "activation": "linear",
        "use_bias": True,
        "kernel_initializer": "glorot_uniform",
        "bias_initializer": "zeros",
    }
    assert spec["layers"][1] == {"type": "dropout", "rate": 0.1}
    again = Model.from_spec(spec, seed=0)
    assert again.to_spec() == spec
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_seed_controls_initialisation() -> None:
    a = Model.from_spec(SPEC, seed=1).state_dict()["layers.0.kernel"]
    b = Model.from_spec(SPEC, seed=1).state_dict()["layers.0.kernel"]
    c = Model.from_spec(SPEC, seed=2).state_dict()["layers.0.kernel"]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(
    "name", ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "zeros", "ones"]
)
def test_initializer_options(name: str) -> None:
    spec = {
        "input_dim": 50,
        "layers": [
            {
                "type": "dense",
                "units": 40,
                "kernel_initializer": name,
                "bias_initializer": {"name": "ones"},
            }
        ],
    }
    model = Model.from_spec(spec, dtype="float64", seed=0)
    kernel = model.state_dict()["layers.0.kernel"]
    if name in ("zeros", "ones"):
        assert np.all(kernel == (name == "ones"))
    else:
        # Glorot's fan is fan_in + fan_out (50 + 40), He's fan_in (50); 2,000 draws.
        std = np.sqrt(2 / (90 if name.startswith("glorot") else 50))
        inside_one_std = np.mean(np.abs(kernel) <= std)
        assert kernel.std() == pytest.approx(std, rel=0.1)
        if name.endswith("uniform"):  # U(-limit, limit), limit = sqrt(3) std
            limit = np.sqrt(3) * std
            assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.95 * limit
            assert inside_one_std == pytest.approx(1 / np.sqrt(3), abs=0.05)
        else:  # N(0, std^2), not truncated: about 68.3% within one std, some past sqrt(3) std
            assert inside_one_std == pytest.approx(0.6827, abs=0.05)
            assert np.abs(kernel).max() > np.sqrt(3) * std
    assert np.all(model.state_dict()["layers.0.bias"] == 1.0)
    assert model.to_spec()["layers"][0]["kernel_initializer"] == name


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ([1, 2], "spec must be a dict. Received: spec=[1, 2]"),
        ({"layers": []}, "input_dim is required"),
        (
            {"input_dim": 0, "layers": [{"type": "dense", "units": 1}]},
            "input_dim must be a positive integer. Received: input_dim=0",
        ),
        (
            {"input_dim": True, "layers": [{"type": "dense", "units": 1}]},
            "input_dim must be a positive integer. Received: input_dim=True",
        ),
        ({"input_dim": 3, "layers": []}, "layers must be a non-empty list"),
        ({"input_dim": 3, "layers": "dense"}, "layers must be a non-empty list"),
        ({"input_dim": 3}, "layers must be a non-empty list. Received: layers=None"),
        (
            {"input_dim": 3, "layers": [{"type": "dense", "units": 2}], "extra": 1},
            "spec has unknown field 'extra'",
        ),
        (
            {
                "input_dim": 4,
                "layers": [{"type": "dense", "units": 2}, {"type": "dense", "units": -3}],
            },
            "layers[1].units must be a positive integer. Received: units=-3",
        ),
        (
            {"input_dim": 4, "layers": [{"type": "dense", "units": 2.5}]},
            "layers[0].units must be a positive integer. Received: units=2.5",
        ),
        ({"input_dim": 4, "layers": [{"type": "dense"}]}, "layers[0].units is required"),
        (
            {"input_dim": 4, "layers": [{"type": "conv", "units": 2}]},
            "layers[0].type must be one of: activation, batch_norm, dense, dropout, prelu. "
            "Received: type='conv'",
        ),
        ({"input_dim": 4, "layers": ["dense"]}, "layers[0] must be a dict"),
        (
            {"input_dim": 4, "layers": [{"type": "dense", "units": 2, "activation": "relux"}]},
            "layers[0].activation is invalid: Unknown activation 'relux'; expected one of: "
            "elu, gelu, identity, leaky_relu, linear, relu, sigmoid, softmax, softplus, tanh. "
            "Received: name='relux'",
        ),
        (
            {"input_dim": 4, "layers": [{"type": "dense", "units": 2, "use_bias": "yes"}]},
            "layers[0].use_bias must be a boolean. Received: use_bias='yes'",
        ),
        (
            {"input_dim": 4, "layers": [{"type": "dense", "units": 2, "kernel_initializer": "x"}]},
            "layers[0].kernel_initializer is invalid: Unknown initializer 'x'",
        ),
        (
            {"input_dim": 4, "layers": [{"type": "dense", "units": 2, "unit": 3}]},
            "layers[0] has unknown field 'unit'",
        ),
        (
            {
                "input_dim": 4,
                "layers": [{"type": "dense", "units": 2}, {"type": "dropout", "rate": 1.0}],
            },
            "layers[1].rate must be a number in [0, 1). Received: rate=1.0",
        ),
        ({"input_dim": 4, "layers": [{"type": "dropout"}]}, "layers[0].rate is required"),
        ({"input_dim": 4, "layers": [{"type": "activation"}]}, "layers[0].activation is required"),
    ],
)
def test_spec_errors_name_field_and_value(spec: object, pattern: str) -> None:
    with pytest.raises(SpecError, match=re.escape(pattern)):
        Model.from_spec(spec)  # type: ignore[arg-type]


def test_spec_error_is_value_error_and_dtype_checked() -> None:
    assert issubclass(SpecError, ValueError)
    expected = "dtype must be one of: float32, float64. Received: dtype='int8'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        Model.from_spec(SPEC, dtype="int8")


def test_state_dict_checks_names_shapes_dtypes() -> None:
    model = Model.from_spec(SPEC, seed=0)
    state = model.state_dict()
    other = Model.from_spec(SPEC, seed=5)
    other.load_state_dict(state)
    assert all(np.array_equal(v, other.state_dict()[k]) for k, v in state.items())

    with pytest.raises(ValueError, match=r"missing=\['layers.2.bias'\]"):
        other.load_state_dict({k: v for k, v in state.items() if k != "layers.2.bias"})
    with pytest.raises(ValueError, match=r"unexpected=\['junk'\]"):
        other.load_state_dict({**state, "junk": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match=r"'layers.0.kernel' must have shape \(4, 16\)"):
        other.load_state_dict({**state, "layers.0.kernel": np.zeros((16, 4), np.float32)})
    expected = "must have dtype float32. Received: dtype=float64"
    with pytest.raises(ValueError, match=re.escape(expected)):
        other.load_state_dict({**state, "layers.0.bias": np.zeros(16)})


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("layers.0.kernel", np.nan, r"'layers\.0\.kernel' must be finite"),
        ("layers.2.bias", -np.inf, r"'layers\.2\.bias' must be finite.* Received: -inf"),
        ("layers.1.running_var", np.nan, r"'layers\.1\.running_var' must be finite"),
        ("layers.1.running_var", -2.0, r"'layers\.1\.running_var' is a running variance"),
        ("layers.1.running_mean", np.inf, r"'layers\.1\.running_mean' must be finite"),
    ],
)
def test_load_state_dict_refuses_non_finite_values_and_negative_variances(
    key: str, value: float, match: str
) -> None:
    """Checked before anything is copied: the model keeps every one of its values."""
    spec = {
        "input_dim": 4,
        "layers": [*SPEC["layers"][:1], {"type": "batch_norm"}, SPEC["layers"][2]],
    }
    model = Model.from_spec(spec, seed=0)
    state = Model.from_spec(spec, seed=1).state_dict()
    state[key].reshape(-1)[-1] = value
    before = model.state_dict()
    with pytest.raises(ValueError, match=match):
        model.load_state_dict(state)
    for name, array in model.state_dict().items():
        assert array.tobytes() == before[name].tobytes(), name


def test_predict_batched_matches_full_and_is_eval_mode() -> None:
    model = Model.from_spec(SPEC, seed=0)
    x = np.random.default_rng(0).normal(size=(103, 4))
    full = model.predict(x)
    assert full.dtype == np.float32 and full.shape == (103, 3)
    np.testing.assert_allclose(model.predict(x, batch_size=10), full, rtol=1e-6, atol=1e-6)
    assert np.array_equal(model.predict(x), full)  # dropout is off: deterministic
    first = model.predict(x[:5])
    kept = first.copy()
    model.predict(x[5:10])
    # Results are fresh arrays, not reused buffers. (Compared with a copy, not with `full[:5]`:
    # rows alone may differ from the same rows in a larger product in their last bits.)
    assert np.array_equal(first, kept)
    with pytest.raises(ValueError, match=r"X must have shape \(n, 4\). Received: shape=\(3, 5\)"):
        model.predict(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(x, batch_size=0)


def test_float64_flows_everywhere() -> None:
    model = Model.from_spec(SPEC, dtype="float64", seed=0)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    assert model.predict(x).dtype == np.float64
    out = model.forward(model.check_input(x), training=True, rng=np.random.default_rng(0))
    assert out.dtype == np.float64
    model.backward(np.ones_like(out))
    assert all(g.dtype == np.float64 for g in model.gradients().values())


def test_softmax_activation_is_stable() -> None:
    from trainwire.engine import activations

    x = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -1000.0]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = activations.get("softmax")(x)
        s = activations.get("sigmoid")(x)
    assert np.all(np.isfinite(y)) and np.allclose(y.sum(axis=1), 1.0)
    assert np.allclose(y[0], [1.0, 0.0, 0.0]) and np.allclose(y[1], 1 / 3)
    assert np.array_equal(s[0], np.array([1.0, 0.0, 0.5], dtype=np.float32))
