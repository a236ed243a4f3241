"""Numerical gradient checking of a Model against its backward pass.

``gradcheck`` compares analytic parameter gradients with central differences
(dL/dp ~ (L(p + eps) - L(p - eps)) / (2 eps)) in float64. In evaluation mode by default;
``training=True`` checks the training-mode graph (BatchNorm batch statistics, and Dropout with
the same mask for every evaluation, drawn from a Generator re-seeded with ``seed``). Buffers
(running statistics) and parameters are restored exactly afterwards.
"""

from __future__ import annotations

import numpy as np

from . import losses as losses_mod
from .model import Model


def gradcheck(
    model: Model,
    X: np.ndarray,
    y: np.ndarray,
    loss: object = "mse",
    eps: float = 1e-6,
    atol: float = 1e-8,
    training: bool = False,
    sample_weight: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Worst relative error per parameter between backprop and central differences.

    For each element, error = |analytic - numeric| / max(|analytic|, |numeric|, atol), so
    gradients that are both (near) zero do not count as failures. The model must be float64.
    """
    if model.dtype != np.float64:
        raise ValueError(f"gradcheck needs a float64 model. Received: dtype={model.dtype.name}")
    loss_fn = losses_mod.get(loss)
    x = model.check_input(X)
    targets = loss_fn.prepare_targets(y, model.output_dim, model.dtype)
    weights = (
        None
        if sample_weight is None
        else losses_mod.prepare_sample_weight(sample_weight, x.shape[0], model.dtype)
    )
    saved_buffers = {name: b.copy() for name, b in model.buffers().items()}

    def outputs() -> np.ndarray:
        return model.forward(x, training=training, rng=np.random.default_rng(seed))

    def loss_at() -> float:
        return loss_fn.value(outputs(), targets, weights)

    try:
        _, grad = loss_fn.value_and_grad(outputs(), targets, weights)
        model.backward(grad)
        analytic = {name: g.copy() for name, g in model.gradients().items()}

        worst: dict[str, float] = {}
        for name, param in model.parameters().items():
            flat = param.reshape(-1)  # a view: writing it perturbs the parameter
            numeric = np.empty(flat.size, dtype=np.float64)
            for i in range(flat.size):
                original = flat[i]
                flat[i] = original + eps
                plus = loss_at()
                flat[i] = original - eps
                minus = loss_at()
                flat[i] = original
                numeric[i] = (plus - minus) / (2.0 * eps)
            a = analytic[name].reshape(-1)
            scale = np.maximum(np.maximum(np.abs(a), np.abs(numeric)), atol)
            worst[name] = float(np.max(np.abs(a - numeric) / scale)) if flat.size else 0.0
    finally:
        for name, buf in model.buffers().items():
            np.copyto(buf, saved_buffers[name])
    return worst
