"""Batch-invariant inference: a row's outputs do not depend on what it is batched with."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainwire.engine import Model, inference
from trainwire.engine.inference import layer_tiles, predict_many, predict_stacked, row_tile

WIDE = {
    "input_dim": 784,
    "layers": [
        {"type": "dense", "units": 512, "activation": "relu"},
        {"type": "dense", "units": 512, "activation": "relu"},
        {"type": "dense", "units": 10},
    ],
}
MIXED = {
    "input_dim": 20,
    "layers": [
        {"type": "dense", "units": 64, "activation": "gelu"},
        {"type": "batch_norm"},
        {"type": "prelu", "init": 0.1},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 3, "use_bias": False},
    ],
}


def _inputs(rows: list[int], width: int, dtype: str, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, width)).astype(dtype) for n in rows]


@pytest.mark.parametrize("spec", [WIDE, MIXED], ids=["784-512-512-10", "mixed-layers"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_each_input_gets_the_bits_it_gets_alone(spec: dict[str, object], dtype: str) -> None:
    model = Model.from_spec(spec, dtype=dtype, seed=2)
    tiles = layer_tiles(model, max_rows=256)
    # Sizes around the tiles seen on these machines (4, 12, 48) and single rows.
    rows = [1, 3, 1, 12, 13, 47, 48, 49, 100, 1, 7]
    inputs = _inputs(rows, model.input_dim, dtype, seed=5)
    together = predict_many(model, inputs, tiles)
    for x, batched in zip(inputs, together, strict=True):
        alone = predict_many(model, [x], tiles)[0]
        assert batched.dtype == model.dtype and batched.shape == (len(x), model.output_dim)
        assert np.array_equal(batched, alone)
        # Same numbers as the training engine's predict, up to rounding order.
        tolerance = 1e-4 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(alone, model.predict(x), rtol=tolerance, atol=tolerance)


def test_small_requests_only_get_the_bits_they_get_alone() -> None:
    # The serving case under load: a pass of one-row (and other small) requests, all row by row.
    model = Model.from_spec(WIDE, seed=3)
    tiles = layer_tiles(model, max_rows=256)
    inputs = _inputs([1] * 16 + [3, 2], model.input_dim, "float32", seed=6)
    together = predict_many(model, inputs, tiles)
    for x, batched in zip(inputs, together, strict=True):
        assert np.array_equal(batched, predict_many(model, [x], tiles)[0])


def test_no_inputs_give_an_empty_stack() -> None:
    model = Model.from_spec(MIXED, seed=0)
    assert predict_stacked(model, [], layer_tiles(model)).shape == (0, model.output_dim)


@settings(max_examples=25, deadline=None, database=None)
@given(
    rows=st.lists(st.integers(1, 70), min_size=1, max_size=8),
    order_seed=st.integers(0, 1000),
)
def test_batch_composition_and_order_never_change_an_answer(
    rows: list[int], order_seed: int
) -> None:
    model = Model.from_spec(WIDE, seed=4)
    tiles = layer_tiles(model, max_rows=256)
    inputs = _inputs(rows, 784, "float32", seed=order_seed)
    expected = [predict_many(model, [x], tiles)[0] for x in inputs]
    order = np.random.default_rng(order_seed).permutation(len(inputs))
    shuffled = predict_many(model, [inputs[i] for i in order], tiles)
    for position, index in enumerate(order):
        assert np.array_equal(shuffled[position], expected[index])


def test_remainders_padded_to_a_block_get_the_bits_they_get_alone() -> None:
    # A multiple of a tile that holds also holds; at 12 rows or more a block is large enough for
    # leftovers of at least half a block to be padded rather than done row by row.
    model = Model.from_spec(WIDE, seed=3)
    tiles = [None if t is None else math.lcm(t, 12) for t in layer_tiles(model, max_rows=256)]
    block = row_tile(tiles)
    assert block >= inference.MIN_PADDED_BLOCK
    rows = [block - 1, 1, block // 2, 2 * block + block // 2 + 1, block // 2 - 1]
    assert 5 * block <= 256, "a pass of 5 blocks stays within the rows the tiles were probed for"
    assert inference.blocked_rows(block - 1, tiles) == block, "the padded path is taken"
    inputs = _inputs(rows, 784, "float32", seed=11)
    together = predict_many(model, inputs, tiles)
    for x, batched in zip(inputs, together, strict=True):
        assert np.array_equal(batched, predict_many(model, [x], tiles)[0])
        np.testing.assert_allclose(batched, model.predict(x), rtol=1e-4, atol=1e-4)


def test_without_a_tile_every_row_takes_the_matrix_vector_path() -> None:
    model = Model.from_spec(WIDE, seed=1)
    no_tiles: list[int | None] = [None, None, None]
    assert row_tile(no_tiles) == 1
    inputs = _inputs([5, 1, 30], 784, "float32", seed=9)
    together = predict_many(model, inputs, no_tiles)
    for x, batched in zip(inputs, together, strict=True):
        # One row at a time is what a single-row request gets in any case.
        rows = np.concatenate([model.forward(x[i : i + 1]).copy() for i in range(len(x))])
        assert np.array_equal(batched, rows)


def test_tiles_come_from_the_blas_and_are_probed_once_per_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probes: list[tuple[int, int]] = []
    real = inference._tile_holds

    def counting(shape: tuple[int, int], *rest: object) -> bool:
        probes.append(shape)
        return real(shape, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(inference, "_tile_holds", counting)
    monkeypatch.setattr(inference, "_probe_cache", {})
    model = Model.from_spec(WIDE, seed=1)
    tiles = layer_tiles(model, max_rows=256)
    assert len(tiles) == 3
    for tile in tiles:
        assert tile is None or 1 <= tile <= 64
    assert {(784, 512), (512, 512), (512, 10)} == set(probes)
    probed = len(probes)
    assert layer_tiles(Model.from_spec(WIDE, seed=2), max_rows=256) == tiles
    assert len(probes) == probed, "the same shapes are not probed again"
    layer_tiles(model, max_rows=1024)
    assert len(probes) > probed, "a tile that held up to 256 rows is probed again for 1,024"


def test_a_served_model_keeps_no_scratch_per_batch_size() -> None:
    """Non-dense layers keep scratch arrays per batch size for training; between inference passes
    they would pile up, outside the bytes a model cache counts."""
    import tracemalloc

    model = Model.from_spec(MIXED, seed=0)
    tiles = layer_tiles(model, 256)
    predict_stacked(model, _inputs([5], 20, "float32", 0), tiles)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for rows in range(20_000, 28_000, 1_000):  # eight batch sizes, 5 MB of scratch each
            predict_stacked(model, _inputs([rows], 20, "float32", rows), tiles)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    one_array = 27_000 * 64 * 4  # the largest pass's widest array
    assert kept < one_array, f"{kept / 1e6:.1f} MB kept after the passes"
