"""The public gradcheck, and the metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, r2_score

from trainwire.engine import Model, gradcheck, layers, metrics


def _model(activation: str, out: int, dtype: str = "float64") -> Model:
    spec = {
        "input_dim": 3,
        "layers": [
            {"type": "dense", "units": 5, "activation": activation},
            {"type": "dropout", "rate": 0.5},
            {"type": "activation", "activation": "tanh"},
            {"type": "dense", "units": out, "use_bias": False},
        ],
    }
    return Model.from_spec(spec, dtype=dtype, seed=0)


@pytest.mark.parametrize(
    ("loss", "out"), [("mse", 2), ("softmax_cross_entropy", 3), ("binary_cross_entropy", 1)]
)
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "softmax", "linear"])
def test_gradcheck_passes(loss: str, out: int, activation: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3))
    y = {
        "mse": rng.normal(size=(6, 2)),
        "softmax_cross_entropy": rng.integers(0, 3, size=6),
        "binary_cross_entropy": rng.integers(0, 2, size=6).astype(float),
    }[loss]
    model = _model(activation, out)
    before = model.state_dict()
    errors = gradcheck(model, x, y, loss=loss)
    assert set(errors) == {"layers.0.kernel", "layers.0.bias", "layers.3.kernel"}
    assert max(errors.values()) < 1e-5, errors
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_gradcheck_detects_wrong_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    original = layers.Dense.backward

    def broken(self, grad_out, need_input_grad=True):  # type: ignore[no-untyped-def]
        result = original(self, grad_out, need_input_grad)
        self.grads["kernel"] *= 1.01
        return result

    monkeypatch.setattr(layers.Dense, "backward", broken)
    rng = np.random.default_rng(1)
    errors = gradcheck(_model("tanh", 2), rng.normal(size=(4, 3)), rng.normal(size=(4, 2)))
    assert errors["layers.0.kernel"] > 1e-3 and errors["layers.0.bias"] < 1e-5


def test_gradcheck_needs_float64() -> None:
    with pytest.raises(ValueError, match="float64"):
        gradcheck(_model("tanh", 2, "float32"), np.zeros((2, 3)), np.zeros((2, 2)))


def test_accuracy() -> None:
    acc = metrics.get("accuracy")
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    assert acc(logits, np.array([0, 1, 0, 0])) == 0.75
    binary = np.array([[2.0], [-1.0], [0.5], [-3.0]])
    assert acc(binary, np.array([[1.0], [0.0], [0.0], [0.0]])) == 0.75


def test_mae_and_r2_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(size=(40, 3))
    p = y + rng.normal(scale=0.3, size=(40, 3))
    assert metrics.get("mae")(p, y) == pytest.approx(mean_absolute_error(y, p))
    assert metrics.get("r2")(p, y) == pytest.approx(r2_score(y, p))
    assert metrics.get("r2")(p[:, :1], y[:, 0]) == pytest.approx(r2_score(y[:, 0], p[:, 0]))
    const = np.ones((5, 1))
    assert metrics.get("r2")(const, const) == 1.0
    assert metrics.get("r2")(const * 2, const) == 0.0


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_new_layers_and_detects_bad_batchnorm(
    monkeypatch: pytest.MonkeyPatch, training: bool
) -> None:
    spec = {
        "input_dim": 3,
        "layers": [
            {"type": "dense", "units": 4, "activation": "gelu", "bias_initializer": "ones"},
            {"type": "batch_norm"},
            {"type": "prelu", "init": 0.1},
            {"type": "dense", "units": 2},
        ],
    }
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    model = Model.from_spec(spec, dtype="float64", seed=1)
    running = model.buffers()["layers.1.running_mean"].copy()
    errors = gradcheck(model, x, y, training=training, loss="huber")
    assert max(errors.values()) < 1e-6, errors
    assert np.array_equal(model.buffers()["layers.1.running_mean"], running)  # restored

    original = layers.BatchNorm1d.backward

    def broken(self, grad_out, need_input_grad=True):  # type: ignore[no-untyped-def]
        result = original(self, grad_out, need_input_grad)
        self.grads["gamma"] *= 1.05
        return result

    monkeypatch.setattr(layers.BatchNorm1d, "backward", broken)
    errors = gradcheck(model, x, y, training=training, loss="huber")
    assert errors["layers.1.gamma"] > 1e-3 and errors["layers.3.kernel"] < 1e-6
