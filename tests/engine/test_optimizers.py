"""Optimizer trajectories vs torch.optim, state round-trips and validation."""

from __future__ import annotations

import numpy as np
import pytest

from trainwire.engine import optimizers

CASES = [
    ({"name": "sgd", "learning_rate": 0.05}, ("SGD", {"lr": 0.05})),
    (
        {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ),
    (
        {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "nesterov": True},
        ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ),
    (
        {
            "name": "sgd",
            "learning_rate": 0.05,
            "momentum": 0.8,
            "nesterov": True,
            "weight_decay": 0.1,
        },
        ("SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
    ),
    ({"name": "adam", "learning_rate": 0.01}, ("Adam", {"lr": 0.01})),
    (
        {
            "name": "adam",
            "learning_rate": 0.02,
            "beta_1": 0.8,
            "beta_2": 0.99,
            "epsilon": 1e-6,
            "weight_decay": 0.05,
        },
        ("Adam", {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05}),
    ),
    ({"name": "adamw", "learning_rate": 0.01}, ("AdamW", {"lr": 0.01})),
    (
        {"name": "adamw", "learning_rate": 0.02, "beta_1": 0.85, "weight_decay": 0.3},
        ("AdamW", {"lr": 0.02, "betas": (0.85, 0.999), "weight_decay": 0.3}),
    ),
    ({"name": "adagrad", "learning_rate": 0.1}, ("Adagrad", {"lr": 0.1})),
    (
        {
            "name": "adagrad",
            "learning_rate": 0.2,
            "lr_decay": 0.01,
            "initial_accumulator_value": 0.1,
            "weight_decay": 0.05,
        },
        (
            "Adagrad",
            {"lr": 0.2, "lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.05},
        ),
    ),
    ({"name": "rmsprop", "learning_rate": 0.01}, ("RMSprop", {"lr": 0.01})),
    (
        {"name": "rmsprop", "learning_rate": 0.005, "momentum": 0.9},
        ("RMSprop", {"lr": 0.005, "momentum": 0.9}),
    ),
    (
        {"name": "rmsprop", "learning_rate": 0.01, "centered": True, "alpha": 0.9},
        ("RMSprop", {"lr": 0.01, "centered": True, "alpha": 0.9}),
    ),
    (
        {
            "name": "rmsprop",
            "learning_rate": 0.005,
            "centered": True,
            "momentum": 0.5,
            "weight_decay": 0.1,
            "epsilon": 1e-6,
        },
        (
            "RMSprop",
            {"lr": 0.005, "centered": True, "momentum": 0.5, "weight_decay": 0.1, "eps": 1e-6},
        ),
    ),
    # Clipping by global norm (clip_grad_norm_ before every step); the gradient norms of this
    # problem range over ~0.3-20, so these limits clip some steps but not all.
    ({"name": "sgd", "learning_rate": 0.05, "clip_norm": 3.0}, ("SGD", {"lr": 0.05})),
    (
        {"name": "adam", "learning_rate": 0.05, "clip_norm": 5.0, "weight_decay": 0.01},
        ("Adam", {"lr": 0.05, "weight_decay": 0.01}),
    ),
    (
        {"name": "rmsprop", "learning_rate": 0.01, "momentum": 0.9, "clip_norm": 8.0},
        ("RMSprop", {"lr": 0.01, "momentum": 0.9}),
    ),
]


def _problem(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=(3,))}
    a = rng.uniform(0.5, 2.0, size=(4, 3))
    target = rng.normal(size=(4, 3))
    return params, a, target


def _grads(
    params: dict[str, np.ndarray], a: np.ndarray, target: np.ndarray
) -> dict[str, np.ndarray]:
    # f = sum(a (w - t)^2 / 2 + sin w) + sum(b^2 cos b): df/dw = a (w - t) + cos w,
    # df/db = 2 b cos b - b^2 sin b.
    w, b = params["w"], params["b"]
    return {"w": a * (w - target) + np.cos(w), "b": 2 * b * np.cos(b) - b**2 * np.sin(b)}


def _flat_problem(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """The same problem with parameters as views of one flat buffer (padding included)."""
    params, _, _ = _problem(seed)
    flat = np.zeros(32)
    views = {"w": flat[0:12].reshape(4, 3), "b": flat[16:19]}
    for k, v in views.items():
        v[...] = params[k]
    return flat, views, np.zeros(32)


@pytest.mark.torch
@pytest.mark.parametrize("path", ["dict", "flat"])
@pytest.mark.parametrize(("config", "torch_case"), CASES)
def test_trajectory_matches_torch(
    rel_err, torch, config: dict, torch_case: tuple, path: str
) -> None:
    params, a, target = _problem()
    opt = optimizers.get(config)
    if path == "flat":
        flat, params, flat_grads = _flat_problem()
        grad_views = {"w": flat_grads[0:12].reshape(4, 3), "b": flat_grads[16:19]}
        opt.build(params, flat_params=flat)
    else:
        opt.build(params)
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    cls_name, kwargs = torch_case
    topt = getattr(torch.optim, cls_name)(list(tp.values()), **kwargs)
    at, tt = torch.tensor(a), torch.tensor(target)
    clipped = 0
    for _ in range(50):
        grads = _grads(params, a, target)
        if path == "flat":
            for k, g in grads.items():
                grad_views[k][...] = g
            opt.step_flat(flat, flat_grads)
        else:
            opt.step(params, grads)
        topt.zero_grad()
        w, b = tp["w"], tp["b"]
        f = (at * (w - tt) ** 2 / 2 + torch.sin(w)).sum() + (b**2 * torch.cos(b)).sum()
        f.backward()
        if "clip_norm" in config:
            norm = torch.nn.utils.clip_grad_norm_(list(tp.values()), config["clip_norm"])
            assert opt.last_grad_norm == pytest.approx(norm.item(), rel=1e-9)
            clipped += norm.item() > config["clip_norm"]
        topt.step()
        for k in params:
            assert rel_err(params[k], tp[k].detach().numpy()) < 1e-6, k
    assert opt.iterations == 50
    if "clip_norm" in config:
        assert 0 < clipped < 50  # both regimes were exercised
    if path == "flat":
        assert not flat[12:16].any() and not flat[19:].any()  # padding stays zero


@pytest.mark.torch
@pytest.mark.parametrize("path", ["dict", "flat"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clipping_a_non_finite_norm_matches_torch(torch, path: str, bad: float, dtype: str) -> None:
    """A NaN gradient makes the norm NaN, and torch's clamp(coef, max=1) then makes every
    gradient NaN; the coefficient was skipped (NaN < 1 is False), so the finite gradients took
    an unclipped step, here 100 times the limit. An infinite norm gives a coefficient of 0."""
    grads = {"w": np.array([bad, 1.0], dtype), "b": np.array([100.0, 0.0], dtype)}
    opt = optimizers.get({"name": "sgd", "learning_rate": 1.0, "clip_norm": 1.0})
    ours = {k: g.copy() for k, g in grads.items()}
    if path == "flat":
        flat, flat_grads = np.zeros(4, dtype), np.concatenate(list(grads.values()))
        opt.build({"w": flat[:2], "b": flat[2:]}, flat_params=flat)
        opt.step_flat(flat, flat_grads)
        ours = {"w": flat_grads[:2], "b": flat_grads[2:]}
        params = {"w": flat[:2], "b": flat[2:]}
    else:
        params = {k: np.zeros(2, dtype) for k in grads}
        opt.build(params)
        opt.step(params, ours)
    tp = [torch.zeros(2, dtype=getattr(torch, dtype), requires_grad=True) for _ in grads]
    for t, g in zip(tp, grads.values(), strict=True):
        t.grad = torch.tensor(g)
    norm = torch.nn.utils.clip_grad_norm_(tp, 1.0)
    assert np.isnan(opt.last_grad_norm) == np.isnan(norm.item())
    for t, name in zip(tp, grads, strict=True):  # clipping scales the gradients in place
        np.testing.assert_array_equal(ours[name], t.grad.numpy(), err_msg=name)
        np.testing.assert_array_equal(params[name], -t.grad.numpy(), err_msg=name)


@pytest.mark.parametrize("config", [c for c, _ in CASES if "clip_norm" not in c])
def test_flat_threaded_equals_per_parameter(monkeypatch: pytest.MonkeyPatch, config: dict) -> None:
    """The blocked, threaded flat update is bit-identical to the per-parameter update.

    (Not with clipping: the global norm is summed in a different order on the two paths.)
    """
    monkeypatch.setattr(optimizers, "_MIN_PER_THREAD", 4)
    monkeypatch.setattr(optimizers, "_BLOCK", 5)
    params, a, target = _problem(1)
    flat, views, flat_grads = _flat_problem(1)
    grad_views = {"w": flat_grads[0:12].reshape(4, 3), "b": flat_grads[16:19]}
    ref = optimizers.get(config)
    ref.build(params)
    opt = optimizers.get(config)
    opt.build(views, flat_params=flat)
    opt.num_threads = 3
    for _ in range(70):  # past one flush (every 64 steps)
        grads = _grads(params, a, target)
        ref.step(params, grads)
        for k, g in _grads(views, a, target).items():
            grad_views[k][...] = g
        opt.step_flat(flat, flat_grads)
        for k in params:
            assert np.array_equal(params[k], views[k]), k
    sa, sb = ref.state_dict(), opt.state_dict()
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_tiny_moments_are_flushed(name: str) -> None:
    """After a burst of tiny gradients and then exact zeros, no slot is left subnormal."""
    config: dict = {"name": name, "learning_rate": 1e-3}
    if name in ("sgd", "rmsprop"):
        config["momentum"] = 0.9
    opt = optimizers.get(config)
    p = {"w": np.ones(64, dtype=np.float32)}
    opt.build(p)
    opt.step(p, {"w": np.full(64, 1e-12, dtype=np.float32)})
    zero = {"w": np.zeros(64, dtype=np.float32)}
    for _ in range(64 * 12):
        opt.step(p, zero)
    tiny = np.finfo(np.float32).tiny
    for slot in opt.slots["w"].values():
        assert not np.any((slot != 0) & (np.abs(slot) < tiny)), name
    assert np.all(np.isfinite(p["w"]))


def test_step_flat_requires_the_built_buffer() -> None:
    flat, views, flat_grads = _flat_problem()
    opt = optimizers.get("adam")
    opt.build(views)
    with pytest.raises(ValueError, match="step_flat"):
        opt.step_flat(flat, flat_grads)
    with pytest.raises(ValueError, match="not a view"):
        opt.build({"x": np.zeros(3)}, flat_params=flat)


@pytest.mark.parametrize("config", [c for c, _ in CASES])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_state_round_trip_and_inplace(config: dict, dtype: str) -> None:
    params, a, target = _problem()
    params = {k: v.astype(dtype) for k, v in params.items()}
    ids = {k: id(v) for k, v in params.items()}
    opt = optimizers.get(config)
    opt.build(params)
    for _ in range(3):
        opt.step(params, {k: v.astype(dtype) for k, v in _grads(params, a, target).items()})
    assert {k: id(v) for k, v in params.items()} == ids  # updated in place
    assert all(v.dtype == dtype for v in params.values())
    assert all(s.dtype == dtype for slots in opt.slots.values() for s in slots.values())

    clone = {k: v.copy() for k, v in params.items()}
    other = optimizers.get(config)
    other.build(clone)
    other.load_state_dict(opt.state_dict())
    g = {k: v.astype(dtype) for k, v in _grads(params, a, target).items()}
    opt.step(params, {k: v.copy() for k, v in g.items()})  # clipping scales grads in place
    other.step(clone, g)
    for k in params:
        assert np.array_equal(params[k], clone[k])


def test_load_state_dict_rejects_mismatch() -> None:
    params, _, _ = _problem()
    opt = optimizers.get("adam")
    opt.build(params)
    state = opt.state_dict()
    state["w.m"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"w\.m"):
        opt.load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        opt.load_state_dict({"iterations": np.array(1)})


@pytest.mark.parametrize(
    ("name", "slot", "value", "match"),
    [
        # NaN < 0 is False: the sign check let a NaN second moment through.
        ("adam", "v", np.nan, r"w\.v must not be NaN.* Received: nan"),
        ("adam", "m", np.nan, r"w\.m must not be NaN"),
        ("adam", "v", -1.0, r"w\.v sums squares, so it cannot be negative"),
        ("adagrad", "sum", np.nan, r"w\.sum must not be NaN"),
        ("adagrad", "sum", -1.0, r"w\.sum sums squares"),
        ("rmsprop", "square_avg", -np.inf, r"w\.square_avg sums squares"),
        ({"name": "sgd", "momentum": 0.9}, "momentum", np.nan, r"w\.momentum must not be NaN"),
    ],
)
def test_load_state_dict_refuses_slots_no_run_reaches(
    name: object, slot: str, value: float, match: str
) -> None:
    """Refused before any slot is copied, the optimizer keeping its own."""
    params, a, target = _problem()
    source = optimizers.get(name)
    source.build({k: v.copy() for k, v in params.items()})
    source.step({k: v.copy() for k, v in params.items()}, _grads(params, a, target))
    state = source.state_dict()
    state[f"w.{slot}"].reshape(-1)[-1] = value
    opt = optimizers.get(name)
    opt.build(params)
    before = opt.state_dict()
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(state)
    for key, array in opt.state_dict().items():
        assert array.tobytes() == before[key].tobytes(), key


def test_an_infinite_second_moment_a_run_reaches_loads() -> None:
    """float32 Adam squares a gradient of 1e20 to an infinite v while its weight stays finite
    (the step m / sqrt(v) is 0): such a checkpoint must resume, not be refused as damaged."""
    w = {"w": np.ones(3, dtype=np.float32)}
    source = optimizers.get("adam")
    source.build({k: v.copy() for k, v in w.items()})
    source.step(w, {"w": np.array([1e20, 1.0, 1.0], dtype=np.float32)})
    state = source.state_dict()
    assert np.isinf(state["w.v"][0]) and np.isfinite(w["w"]).all()
    opt = optimizers.get("adam")
    opt.build({k: np.ones(3, dtype=np.float32) for k in w})
    opt.load_state_dict(state)
    assert opt.state_dict()["w.v"].tobytes() == state["w.v"].tobytes()


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"name": "sgd", "learning_rate": -1.0}, "learning_rate"),
        ({"name": "sgd", "momentum": 1.5}, "momentum"),
        ({"name": "sgd", "nesterov": True}, "nesterov"),
        ({"name": "adam", "beta_1": 1.0}, "beta_1"),
        ({"name": "adam", "learning_rate": "fast"}, "learning_rate"),
        ({"name": "adam", "lr": 0.1}, "lr"),
        ({"name": "adam", "clip_norm": 0.0}, "clip_norm"),
        ({"name": "rmsprop", "alpha": 1.5}, "alpha"),
        ({"name": "rmsprop", "centered": "yes"}, "centered"),
        ({"name": "rmsprop", "centered": 0.5}, "centered"),
        ({"name": "sgd", "momentum": 0.9, "nesterov": 2.0}, "nesterov"),
        ({"name": "adagrad", "initial_accumulator_value": -1}, "initial_accumulator_value"),
        ({"name": "adamw", "weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_hyperparameter_validation(config: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        optimizers.get(config)


def test_flags_are_true_or_false_or_one_or_zero_as_a_job_carries_them() -> None:
    """A job's optimizer parameters travel as numbers: its flags arrive as 1.0 and 0.0."""
    for given, expected in ((1.0, True), (0.0, False), (True, True), (np.bool_(False), False)):
        assert optimizers.get({"name": "rmsprop", "centered": given}).centered is expected
        sgd = optimizers.get({"name": "sgd", "momentum": 0.5, "nesterov": given})
        assert sgd.nesterov is expected
    assert optimizers.flags("sgd") == {"nesterov"} and optimizers.flags("RMSprop") == {"centered"}
    assert optimizers.flags("adam") == frozenset() and optimizers.flags("nope") == frozenset()
