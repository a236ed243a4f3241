"""Forward values and gradients of activations, layers, losses and a whole model vs torch."""

from __future__ import annotations

import numpy as np
import pytest

from trainwire.engine import Model, activations, layers, losses

pytestmark = pytest.mark.torch

TOL = 1e-9
ACTIVATIONS = [
    "linear",
    "relu",
    "sigmoid",
    "tanh",
    "softmax",
    "leaky_relu",
    {"name": "leaky_relu", "negative_slope": 0.2},
    {"name": "leaky_relu", "negative_slope": -1.5},
    "elu",
    {"name": "elu", "alpha": 0.7},
    "gelu",
    "softplus",
    {"name": "softplus", "beta": 2.0, "threshold": 5.0},
]


def _id(value: object) -> str:
    return str(value) if isinstance(value, str) else "-".join(str(v) for v in value.values())


def torch_activation(torch, spec):
    F = torch.nn.functional
    name = spec if isinstance(spec, str) else spec["name"]
    params = {} if isinstance(spec, str) else {k: v for k, v in spec.items() if k != "name"}
    return {
        "linear": lambda t: t,
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softmax": lambda t: torch.softmax(t, dim=-1),
        "leaky_relu": lambda t: F.leaky_relu(t, params.get("negative_slope", 0.01)),
        "elu": lambda t: F.elu(t, params.get("alpha", 1.0)),
        "gelu": F.gelu,
        "softplus": lambda t: F.softplus(t, params.get("beta", 1.0), params.get("threshold", 20)),
    }[name]


@pytest.mark.parametrize("name", ACTIVATIONS, ids=_id)
def test_activation_forward_backward(rel_err, torch, name: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3.0, size=(7, 5))
    x[0] = [-40.0, -12.0, 0.5, 12.0, 40.0]  # tails: the stable forms must match there too
    g = rng.normal(size=(7, 5))
    act = activations.get(name)
    y = act.forward(x)
    dx = act.backward(x, y, g)

    xt = torch.tensor(x, requires_grad=True)
    yt = torch_activation(torch, name)(xt)
    yt.backward(torch.tensor(g))
    assert rel_err(y, yt.detach().numpy()) < TOL
    assert rel_err(dx, xt.grad.numpy()) < TOL


@pytest.mark.parametrize("name", ACTIVATIONS, ids=_id)
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


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "softmax", "gelu", "elu"])
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


def test_activation_tails_elementwise(torch) -> None:
    """GELU, softplus and ELU far in the tails, where cancellation would show, element by
    element."""
    x = np.array([-40.0, -30.0, -9.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 9.0, 30.0, 500.0, -500.0])
    # torch evaluates GELU as x (1 + erf(x / sqrt 2)) / 2, which cancels for x << 0 (its value
    # at -5 is off by 4e-11 relative); ours goes through erfc, hence GELU's atol.
    for name, ref, atol in (
        ("gelu", torch.nn.functional.gelu, 1e-15),
        ("softplus", torch.nn.functional.softplus, 0.0),
        ("elu", torch.nn.functional.elu, 0.0),
    ):
        act = activations.get(name)
        xt = torch.tensor(x, requires_grad=True)
        yt = ref(xt)
        yt.backward(torch.ones_like(xt))
        y = act.forward(x)
        dx = act.backward(x, y, np.ones_like(x))
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=atol, err_msg=name)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=atol, err_msg=name)


def test_erf_matches_math_erf() -> None:
    import math

    x = np.concatenate([np.linspace(-7, 7, 20001), [0.0, -0.0, 1.0, -1.0, 1e-300, -3e-8]])
    ref = np.array([math.erf(v) for v in x])
    refc = np.array([math.erfc(v) for v in x])
    assert np.max(np.abs(activations.erf(x) - ref) / np.maximum(np.abs(ref), 1e-300)) < 4e-15
    assert np.max(np.abs(activations.erfc(x) - refc) / refc) < 1e-14
    assert activations.erf(np.array([np.inf, -np.inf])).tolist() == [1.0, -1.0]
    assert activations.erfc(np.array([np.inf, -np.inf])).tolist() == [0.0, 2.0]
    assert np.isnan(activations.erf(np.array([np.nan]))[0])


@pytest.mark.parametrize("init", [0.25, -0.5])
@pytest.mark.parametrize("dtype", ["float64"])
def test_prelu_layer(rel_err, torch, init: float, dtype: str) -> None:
    rng = np.random.default_rng(7)
    layer = layers.PReLU(init)
    layer.build(6, np.dtype(dtype), rng)
    layer.params["alpha"][:] = rng.normal(scale=0.5, size=6)  # distinct slope per unit
    x = rng.normal(size=(9, 6))
    g = rng.normal(size=(9, 6))
    y = layer.forward(x, training=True).copy()
    dx = layer.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    at = torch.tensor(layer.params["alpha"].copy(), requires_grad=True)
    yt = torch.nn.functional.prelu(xt, at)
    yt.backward(torch.tensor(g))
    assert rel_err(y, yt.detach().numpy()) < TOL
    assert rel_err(dx, xt.grad.numpy()) < TOL
    assert rel_err(layer.grads["alpha"], at.grad.numpy()) < TOL


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(("momentum", "eps"), [(0.1, 1e-5), (0.3, 1e-3)])
def test_batch_norm_layer(rel_err, torch, training: bool, momentum: float, eps: float) -> None:
    rng = np.random.default_rng(8)
    layer = layers.BatchNorm1d(momentum=momentum, epsilon=eps)
    layer.build(5, np.dtype("float64"), rng)
    layer.params["gamma"][:] = rng.normal(1.0, 0.3, size=5)
    layer.params["beta"][:] = rng.normal(size=5)
    layer.buffers["running_mean"][:] = rng.normal(size=5)
    layer.buffers["running_var"][:] = rng.uniform(0.5, 2.0, size=5)
    rm_t = torch.tensor(layer.buffers["running_mean"].copy())
    rv_t = torch.tensor(layer.buffers["running_var"].copy())
    x = rng.normal(2.0, 3.0, size=(12, 5))
    g = rng.normal(size=(12, 5))
    y = layer.forward(x, training=training).copy()
    dx = layer.backward(g)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params["gamma"].copy(), requires_grad=True)
    bt = torch.tensor(layer.params["beta"].copy(), requires_grad=True)
    yt = torch.nn.functional.batch_norm(
        xt, rm_t, rv_t, wt, bt, training=training, momentum=momentum, eps=eps
    )
    yt.backward(torch.tensor(g))
    assert rel_err(y, yt.detach().numpy()) < TOL
    assert rel_err(dx, xt.grad.numpy()) < TOL
    assert rel_err(layer.grads["gamma"], wt.grad.numpy()) < TOL
    assert rel_err(layer.grads["beta"], bt.grad.numpy()) < TOL
    assert rel_err(layer.buffers["running_mean"], rm_t.numpy()) < TOL
    assert rel_err(layer.buffers["running_var"], rv_t.numpy()) < TOL


def test_batch_norm_one_row_batch_leaves_running_statistics_alone() -> None:
    """A trainer's last batch has one row when the rows leave a remainder of one: its variance
    is 0 and its mean one row, which must not drag the statistics evaluation uses."""
    rng = np.random.default_rng(9)
    layer = layers.BatchNorm1d(momentum=0.3)
    layer.build(4, np.dtype("float64"), rng)
    before = {name: buffer.copy() for name, buffer in layer.buffers.items()}
    layer.forward(rng.normal(5.0, 2.0, size=(1, 4)), training=True)
    for name, buffer in layer.buffers.items():
        np.testing.assert_array_equal(buffer, before[name], err_msg=name)
    layer.forward(rng.normal(5.0, 2.0, size=(2, 4)), training=True)
    assert not np.array_equal(layer.buffers["running_mean"], before["running_mean"])


def _weighted(torch, per_sample, w):
    if w is None:
        return per_sample.mean()
    wt = torch.tensor(w)
    return (wt * per_sample).sum() / wt.sum()


LOSS_CASES = [
    "mse",
    "mae",
    "huber",
    {"name": "huber", "delta": 0.3},
    "binary_cross_entropy",
    "softmax_cross_entropy",
    "soft_cross_entropy",
    "onehot_cross_entropy",
]


def _loss_case2(torch, case):
    """(loss identifier, logits, targets, torch per-sample loss function)."""
    F = torch.nn.functional
    rng = np.random.default_rng(9)
    name = case if isinstance(case, str) else case["name"]
    z = rng.normal(scale=2.0, size=(13, 4))
    if name in ("mse", "mae", "huber"):
        y = rng.normal(scale=2.0, size=(13, 4))
        fn = {
            "mse": lambda t, yt: F.mse_loss(t, yt, reduction="none"),
            "mae": lambda t, yt: F.l1_loss(t, yt, reduction="none"),
            "huber": lambda t, yt: F.huber_loss(
                t, yt, reduction="none", delta=1.0 if isinstance(case, str) else case["delta"]
            ),
        }[name]
        return case, z, y, lambda t: fn(t, torch.tensor(y)).mean(dim=1)
    if name == "binary_cross_entropy":
        z, y = z[:, :1], rng.random((13, 1))
        return (
            case,
            z,
            y,
            lambda t: F.binary_cross_entropy_with_logits(t, torch.tensor(y), reduction="none").mean(
                dim=1
            ),
        )
    if name == "softmax_cross_entropy":
        y = rng.integers(0, 4, size=13)
        return case, z, y, lambda t: F.cross_entropy(t, torch.tensor(y), reduction="none")
    if name == "soft_cross_entropy":
        y = rng.dirichlet(np.ones(4), size=13) * rng.uniform(0.5, 1.5, size=(13, 1))
    else:
        y = np.eye(4)[rng.integers(0, 4, size=13)]
    return (
        "softmax_cross_entropy",
        z,
        y,
        lambda t: F.cross_entropy(t, torch.tensor(y), reduction="none"),
    )


@pytest.mark.parametrize("case", LOSS_CASES, ids=_id)
@pytest.mark.parametrize("weighted", [False, True])
def test_losses_with_weights_and_soft_targets(rel_err, torch, case, weighted: bool) -> None:
    ident, z, y, per_sample = _loss_case2(torch, case)
    w = np.random.default_rng(10).uniform(0.0, 3.0, size=z.shape[0]) if weighted else None
    if weighted:
        w[3] = 0.0
    loss = losses.get(ident)
    targets = loss.prepare_targets(y, z.shape[1], np.dtype("float64"))
    value, grad = loss.value_and_grad(z, targets, w)
    zt = torch.tensor(z, requires_grad=True)
    lt = _weighted(torch, per_sample(zt), w)
    lt.backward()
    assert abs(value - lt.item()) / abs(lt.item()) < TOL
    assert abs(loss.value(z, targets, w) - lt.item()) / abs(lt.item()) < TOL
    assert rel_err(grad, zt.grad.numpy()) < TOL
    if weighted:
        assert not grad[3].any()  # a zero-weight sample contributes nothing


def test_zero_total_weight_gives_zero_loss() -> None:
    loss = losses.get("mse")
    value, grad = loss.value_and_grad(np.ones((3, 2)), np.zeros((3, 2)), np.zeros(3))
    assert value == 0.0 and not grad.any()


def test_model_with_new_layers_matches_torch(rel_err, torch) -> None:
    spec = {
        "input_dim": 5,
        "layers": [
            {"type": "dense", "units": 8, "activation": "gelu"},
            {"type": "batch_norm", "momentum": 0.2},
            {"type": "prelu", "init": 0.1},
            {"type": "dense", "units": 6, "activation": {"name": "elu", "alpha": 0.5}},
            {"type": "activation", "activation": {"name": "leaky_relu", "negative_slope": 0.2}},
            {"type": "dense", "units": 3, "activation": "softplus", "use_bias": False},
            {"type": "dense", "units": 4},
        ],
    }
    model = Model.from_spec(spec, dtype="float64", seed=4)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(16, 5))
    y = rng.dirichlet(np.ones(4), size=16)
    w = rng.uniform(0.1, 2.0, size=16)
    loss = losses.get("softmax_cross_entropy")
    value, grad = loss.value_and_grad(model.forward(x, training=True), y, w)
    dx = model.backward(grad, need_input_grad=True)
    assert dx is not None

    F = torch.nn.functional
    p = {k: torch.tensor(v, requires_grad=True) for k, v in model.parameters().items()}
    xt = torch.tensor(x, requires_grad=True)
    h = F.gelu(xt @ p["layers.0.kernel"] + p["layers.0.bias"])
    rm, rv = torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)
    h = F.batch_norm(h, rm, rv, p["layers.1.gamma"], p["layers.1.beta"], True, 0.2, 1e-5)
    h = F.prelu(h, p["layers.2.alpha"])
    h = F.leaky_relu(F.elu(h @ p["layers.3.kernel"] + p["layers.3.bias"], 0.5), 0.2)
    h = F.softplus(h @ p["layers.5.kernel"])
    out = h @ p["layers.6.kernel"] + p["layers.6.bias"]
    per = F.cross_entropy(out, torch.tensor(y), reduction="none")
    wt = torch.tensor(w)
    lt = (wt * per).sum() / wt.sum()
    lt.backward()
    assert abs(value - lt.item()) / lt.item() < TOL
    assert rel_err(dx, xt.grad.numpy()) < TOL
    for name, g in model.gradients().items():
        assert rel_err(g, p[name].grad.numpy()) < TOL, name
    state = model.state_dict()
    assert rel_err(state["layers.1.running_mean"], rm.numpy()) < TOL
    assert rel_err(state["layers.1.running_var"], rv.numpy()) < TOL
