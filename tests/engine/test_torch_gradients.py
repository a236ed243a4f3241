"""Forward values and gradients of activations, layers, losses and a whole model vs torch."""

from __future__ import annotations

import numpy as np
import pytest
from trainwire.engine import Model, activations, layers, losses

pytestmark = pytest.mark.torch

TOL = 1e-9
ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "softmax"]


def torch_activation(torch, name):
    return {
        "linear": lambda t: t,
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softmax": lambda t: torch.softmax(t, dim=-1),
    }[name]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_forward_backward(rel_err, torch, name: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3.0, size=(7, 5))
    g = rng.normal(size=(7, 5))
    act = activations.get(name)
    y = act.forward(x)
    dx = act.backward(x, y, g)

    xt = torch.tensor(x, requires_grad=True)
    yt = torch_activation(torch, name)(xt)
    yt.backward(torch.tensor(g))
    assert rel_err(y, yt.detach().numpy()) < TOL
    assert rel_err(dx, xt.grad.numpy()) < TOL


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_layer(rel_err, torch, name: str, use_bias: bool) -> None:
    rng = np.random.default_rng(1)
    layer = layers.Dense(4, activation=name, use_bias=use_bias, bias_initializer="he_normal")
    layer.build(6, np.dtype("float64"), rng)
    x = rng.normal(size=(9, 6))
    g = rng.normal(size=(9, 4))
    y = layer.forward(x).copy()
    dx = layer.backward(g)
    assert dx is not None

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params["kernel"], requires_grad=True)
    zt = xt @ wt
    if use_bias:
        bt = torch.tensor(layer.params["bias"], requires_grad=True)
        zt = zt + bt
    yt = torch_activation(torch, name)(zt)
    yt.backward(torch.tensor(g))
    assert rel_err(y, yt.detach().numpy()) < TOL
    assert rel_err(dx, xt.grad.numpy()) < TOL
    assert rel_err(layer.grads["kernel"], wt.grad.numpy()) < TOL
    if use_bias:
        assert rel_err(layer.grads["bias"], bt.grad.numpy()) < TOL
    else:
        assert "bias" not in layer.params


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "softmax"])
def test_activation_layer(rel_err, torch, name: str) -> None:
    rng = np.random.default_rng(2)
    layer = layers.ActivationLayer(name)
    layer.build(5, np.dtype("float64"), rng)
    x = rng.normal(size=(3, 5))
    g = rng.normal(size=(3, 5))
    y = layer.forward(x).copy()
    dx = layer.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_activation(torch, name)(xt)
    yt.backward(torch.tensor(g))
    assert rel_err(y, yt.detach().numpy()) < TOL
    assert rel_err(dx, xt.grad.numpy()) < TOL


def test_dropout_matches_masked_torch(rel_err, torch) -> None:
    rng = np.random.default_rng(3)
    layer = layers.Dropout(0.4)
    layer.build(8, np.dtype("float64"), rng)
    x = rng.normal(size=(50, 8))
    g = rng.normal(size=(50, 8))
    y = layer.forward(x, training=True, rng=np.random.default_rng(4)).copy()
    dx = layer.backward(g)
    # Inverted dropout: the same Bernoulli draw, scaled by 1 / (1 - rate).
    keep = np.random.default_rng(4).random((50, 8)) >= 0.4
    mask = torch.tensor(keep / 0.6)
    xt = torch.tensor(x, requires_grad=True)
    (xt * mask).backward(torch.tensor(g))
    assert rel_err(y, (xt * mask).detach().numpy()) < TOL
    assert rel_err(dx, xt.grad.numpy()) < TOL


def _loss_case(torch, name: str):
    rng = np.random.default_rng(5)
    z = rng.normal(scale=2.0, size=(11, 3 if name == "softmax_cross_entropy" else 1))
    if name == "softmax_cross_entropy":
        y = rng.integers(0, 3, size=11)
        ref = lambda t: torch.nn.functional.cross_entropy(t, torch.tensor(y))  # noqa: E731
    elif name == "binary_cross_entropy":
        y = rng.random(11)  # soft targets exercise the y-weighted terms too
        ref = lambda t: torch.nn.functional.binary_cross_entropy_with_logits(  # noqa: E731
            t, torch.tensor(y).reshape(-1, 1)
        )
    else:
        z = rng.normal(size=(11, 3))
        y = rng.normal(size=(11, 3))
        ref = lambda t: torch.nn.functional.mse_loss(t, torch.tensor(y))  # noqa: E731
    return z, y, ref


@pytest.mark.parametrize("name", ["mse", "softmax_cross_entropy", "binary_cross_entropy"])
def test_loss_value_and_grad(rel_err, torch, name: str) -> None:
    z, y, ref = _loss_case(torch, name)
    loss = losses.get(name)
    targets = loss.prepare_targets(y, z.shape[1], np.dtype("float64"))
    value, grad = loss.value_and_grad(z, targets)
    zt = torch.tensor(z, requires_grad=True)
    lt = ref(zt)
    lt.backward()
    assert abs(value - lt.item()) / abs(lt.item()) < TOL
    assert abs(loss.value(z, targets) - lt.item()) / abs(lt.item()) < TOL
    assert rel_err(grad, zt.grad.numpy()) < TOL


def test_losses_stable_for_huge_logits(rel_err, torch) -> None:
    z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 999.0, 1000.0]])
    y = np.array([1, 2])
    sce = losses.get("softmax_cross_entropy")
    value, grad = sce.value_and_grad(z, y)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(y))
    lt.backward()
    assert np.isfinite(value) and abs(value - lt.item()) / lt.item() < TOL
    assert rel_err(grad, zt.grad.numpy()) < TOL

    zb = np.array([[1000.0], [-1000.0], [30.0]])
    yb = np.array([[0.0], [1.0], [1.0]])
    bce = losses.get("binary_cross_entropy")
    value, grad = bce.value_and_grad(zb, yb)
    zt = torch.tensor(zb, requires_grad=True)
    lt = torch.nn.functional.binary_cross_entropy_with_logits(zt, torch.tensor(yb))
    lt.backward()
    assert abs(value - lt.item()) / lt.item() < TOL
    assert rel_err(grad, zt.grad.numpy()) < TOL


def test_whole_model_gradients_match_torch(rel_err, torch) -> None:
    spec = {
        "input_dim": 5,
        "layers": [
            {"type": "dense", "units": 8, "activation": "tanh"},
            {"type": "dense", "units": 6, "activation": "sigmoid", "use_bias": False},
            {"type": "activation", "activation": "relu"},
            {"type": "dense", "units": 4},
        ],
    }
    model = Model.from_spec(spec, dtype="float64", seed=3)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 5))
    y = rng.integers(0, 4, size=16)
    loss = losses.get("softmax_cross_entropy")
    value, grad = loss.value_and_grad(model.forward(x, training=True), y)
    dx = model.backward(grad, need_input_grad=True)
    assert dx is not None

    p = {k: torch.tensor(v, requires_grad=True) for k, v in model.parameters().items()}
    xt = torch.tensor(x, requires_grad=True)
    h = torch.tanh(xt @ p["layers.0.kernel"] + p["layers.0.bias"])
    h = torch.relu(torch.sigmoid(h @ p["layers.1.kernel"]))
    out = h @ p["layers.3.kernel"] + p["layers.3.bias"]
    lt = torch.nn.functional.cross_entropy(out, torch.tensor(y))
    lt.backward()
    assert abs(value - lt.item()) / lt.item() < TOL
    assert rel_err(dx, xt.grad.numpy()) < TOL
    for name, g in model.gradients().items():
        assert rel_err(g, p[name].grad.numpy()) < TOL, name
