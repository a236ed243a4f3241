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


@pytest.mark.torch
@pytest.mark.parametrize(("config", "torch_case"), CASES)
def test_trajectory_matches_torch(rel_err, torch, config: dict, torch_case: tuple) -> None:
    params, a, target = _problem()
    opt = optimizers.get(config)
    opt.build(params)
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    cls_name, kwargs = torch_case
    topt = getattr(torch.optim, cls_name)(list(tp.values()), **kwargs)
    at, tt = torch.tensor(a), torch.tensor(target)
    for _ in range(50):
        opt.step(params, _grads(params, a, target))
        topt.zero_grad()
        w, b = tp["w"], tp["b"]
        f = (at * (w - tt) ** 2 / 2 + torch.sin(w)).sum() + (b**2 * torch.cos(b)).sum()
        f.backward()
        topt.step()
        for k in params:
            assert rel_err(params[k], tp[k].detach().numpy()) < 1e-6, k
    assert opt.iterations == 50


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
    opt.step(params, g)
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
    ("config", "field"),
    [
        ({"name": "sgd", "learning_rate": -1.0}, "learning_rate"),
        ({"name": "sgd", "momentum": 1.5}, "momentum"),
        ({"name": "sgd", "nesterov": True}, "nesterov"),
        ({"name": "adam", "beta_1": 1.0}, "beta_1"),
        ({"name": "adam", "learning_rate": "fast"}, "learning_rate"),
        ({"name": "adam", "lr": 0.1}, "lr"),
    ],
)
def test_hyperparameter_validation(config: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        optimizers.get(config)
