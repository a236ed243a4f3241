"""Property-based checks of the numerically delicate pieces."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from trainwire.engine import activations, losses

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)
logits = st.integers(1, 6).flatmap(
    lambda k: arrays(np.float32, st.tuples(st.integers(1, 8), st.just(k)), elements=finite)
)


@settings(max_examples=60, deadline=None, database=None)
@given(logits, st.sampled_from(["float32", "float64"]))
def test_softmax_and_cross_entropy_are_stable(z: np.ndarray, dtype: str) -> None:
    z = z.astype(dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = activations.get("softmax")(z)
        labels = np.arange(z.shape[0]) % z.shape[1]
        value, grad = losses.get("softmax_cross_entropy").value_and_grad(z, labels)
    assert y.dtype == dtype and grad.dtype == dtype
    assert np.all(np.isfinite(y)) and np.allclose(y.sum(axis=1), 1.0, atol=1e-5)
    assert np.isfinite(value) and value >= 0
    # Each row of (softmax - onehot) / n sums to zero.
    assert np.allclose(grad.sum(axis=1), 0.0, atol=1e-6)


@settings(max_examples=60, deadline=None, database=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 10), st.just(1)), elements=finite))
def test_sigmoid_and_bce_are_stable(z: np.ndarray) -> None:
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = activations.get("sigmoid")(z)
        value, grad = losses.get("binary_cross_entropy").value_and_grad(z, (z > 0).astype(float))
    assert np.all((s >= 0) & (s <= 1))
    assert np.isfinite(value) and value >= 0 and np.all(np.isfinite(grad))
