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


ACTIVATION_CHOICES = [
    "linear",
    "tanh",
    "sigmoid",
    "gelu",
    "softplus",
    "elu",
    {"name": "leaky_relu", "negative_slope": 0.3},
    "relu",
]
layer_spec = st.one_of(
    st.builds(
        lambda units, act, bias: {
            "type": "dense",
            "units": units,
            "activation": act,
            "use_bias": bias,
        },
        st.integers(1, 5),
        st.sampled_from(ACTIVATION_CHOICES),
        st.booleans(),
    ),
    st.builds(lambda m: {"type": "batch_norm", "momentum": m}, st.sampled_from([0.1, 0.5])),
    st.builds(lambda init: {"type": "prelu", "init": init}, st.sampled_from([0.25, -0.3])),
    st.builds(lambda r: {"type": "dropout", "rate": r}, st.sampled_from([0.0, 0.3])),
    st.builds(
        lambda act: {"type": "activation", "activation": act},
        st.sampled_from(ACTIVATION_CHOICES),
    ),
)


@settings(max_examples=60, deadline=None, database=None)
@given(
    input_dim=st.integers(1, 4),
    hidden=st.lists(layer_spec, min_size=0, max_size=3),
    batch=st.integers(1, 7),
    loss=st.sampled_from(
        ["mse", "mae_smooth", "huber", "softmax_cross_entropy", "soft_ce", "binary_cross_entropy"]
    ),
    training=st.booleans(),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_gradcheck_random_architectures(
    input_dim, hidden, batch, loss, training, weighted, seed
) -> None:
    from trainwire.engine import Model, gradcheck

    if training:
        batch = max(batch, 2)  # BatchNorm over one row is degenerate (torch refuses to train it)
    rng = np.random.default_rng(seed)
    out = {"binary_cross_entropy": 1, "softmax_cross_entropy": 3, "soft_ce": 3}.get(loss, 2)
    spec = {"input_dim": input_dim, "layers": [*hidden, {"type": "dense", "units": out}]}
    model = Model.from_spec(spec, dtype="float64", seed=seed)
    # Zero biases/betas/running means would put exact zeros on the kinks of relu-like units
    # (where no derivative exists); generic values keep every unit off its kink.
    for p in model.parameters().values():
        p += rng.normal(scale=0.3, size=p.shape)
    for name, b in model.buffers().items():
        b += (
            rng.uniform(0.1, 0.5, size=b.shape)
            if name.endswith("var")
            else rng.normal(size=b.shape)
        )
    x = rng.normal(size=(batch, input_dim))
    if loss == "softmax_cross_entropy":
        y = rng.integers(0, 3, size=batch)
    elif loss == "soft_ce":
        y, loss = rng.dirichlet(np.ones(3), size=batch), "softmax_cross_entropy"
    elif loss == "binary_cross_entropy":
        y = rng.random(batch)
    else:
        y = rng.normal(size=(batch, 2))
    if loss == "mae_smooth":  # |d| has a kink at 0: keep the residuals far from it
        loss, y = "mae", y + 4.0
    w = rng.uniform(0.2, 2.0, size=batch) if weighted else None
    before = model.state_dict()
    # atol 1e-5: central differences carry ~1e-10 of round-off (loss / eps * 1e-16), which
    # would dominate gradients that are zero in theory (e.g. the scale of a layer that a
    # BatchNorm re-normalises); the real gradients here are ~0.01-1.
    errors = gradcheck(
        model, x, y, loss=loss, training=training, sample_weight=w, seed=seed, eps=1e-5, atol=1e-5
    )
    assert set(errors) == set(model.parameters())
    assert max(errors.values(), default=0.0) < 1e-4, (spec, errors)
    after = model.state_dict()  # parameters and running statistics restored exactly
    assert all(np.array_equal(before[k], after[k]) for k in before)
