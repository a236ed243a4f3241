"""Batch-invariant inference: one forward pass over many inputs, each answered as if alone.

A serving batcher puts several requests' rows into one forward pass. With a tuned BLAS that is not
free of side effects on the numbers: a row's result depends on the matrix product it took part in.
Measured here with OpenBLAS, one thread: with Haswell kernels a row of ``x @ W`` changes in its
last bits with the number of rows M unless M is a multiple of 12, and with its position modulo 12
(SkylakeX kernels: 4); a single row goes through ``gemv``, which agrees with no ``gemm`` result at
all. So ``predict_stacked`` gives every row a computation that does not depend on its neighbours:

- each input's leading ``tile * k`` rows go through one ``gemm`` with every input's block starting
  at a multiple of ``tile`` — a layout in which this BLAS gives each row the same bits whatever
  else is in the product;
- the remaining ``r = n mod tile`` rows of each input either fill a block of their own, padded
  with zero rows (when r is large and the block not small), or go through a stacked
  matrix-vector product (``(r, 1, K) @ (K, N)``), one ``gemv`` per row, which is what a single
  row gets anyway. Which of the two depends on r only, never on the other inputs.

``layer_tiles`` finds each dense layer's tile by trying the BLAS on random data of its shape (None
when no tile up to 64 works: that layer then takes the matrix-vector path for every row). The
probe's answer holds for the BLAS thread count it ran under, so call both with the same count (a
server keeps one).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence

import numpy as np

from ._types import Array
from .layers import Dense
from .model import Model

# Row counts tried as the gemm tile, smallest first (the kernel's register tile divides one).
_TILE_CANDIDATES = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# Leftover rows go one matrix-vector product each unless padding them to a whole block is clearly
# cheaper. Measured here (784x512, float32, one thread): a gemv costs 22 µs, and a gemm of m rows
# 114 µs at m = 4 (packing the weights dominates), 168 at 12, 265 at 24, 469 at 48 — about m / 2
# gemvs once m >= 12, far more below. So a remainder is padded only when it is at least half a
# block and the block has at least MIN_PADDED_BLOCK rows.
ROWS_PER_GEMV = 2
MIN_PADDED_BLOCK = 12
_probe_cache: dict[tuple[int, int, str, int, int], int | None] = {}
_probe_lock = threading.Lock()


def _tile_holds(kernel_shape: tuple[int, int], dtype: np.dtype, tile: int, max_rows: int) -> bool:
    """Whether blocks of `tile` rows get the same bits at every tile-aligned place and size."""
    rng = np.random.default_rng(tile)
    k, n = kernel_shape
    kernel = rng.standard_normal((k, n)).astype(dtype)
    # Enough tiles to cross the BLAS's row blocking; the reference is the largest product.
    tiles = max(8, -(-max_rows // tile))
    x = rng.standard_normal((tiles * tile, k)).astype(dtype)
    reference = x @ kernel
    for start, count in ((0, 1), (tile, 1), (0, 2), (tile * 3, 2), (tile, 5), (0, tiles - 1)):
        rows = slice(start, start + count * tile)
        if not np.array_equal(x[rows] @ kernel, reference[rows]):
            return False
    return True


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    counts = [int(i.get("num_threads") or 1) for i in threadpool_info() if i["user_api"] == "blas"]
    return max(counts or [1])


def layer_tiles(model: Model, max_rows: int = 1024) -> list[int | None]:
    """Per layer: the smallest row tile in which this BLAS computes its rows independently.

    None for a dense layer with no such tile (it then takes the matrix-vector path for every
    row) and for layers without a matrix product.
    """
    threads = _blas_threads()
    tiles: list[int | None] = []
    for layer in model.layers:
        if not isinstance(layer, Dense):
            tiles.append(None)
            continue
        shape = layer.params["kernel"].shape
        # The probe's answer holds for passes up to max_rows rows, so that is part of the key.
        key = (shape[0], shape[1], model.dtype.str, threads, max_rows)
        with _probe_lock:
            if key not in _probe_cache:
                _probe_cache[key] = next(
                    (t for t in _TILE_CANDIDATES if _tile_holds(shape, model.dtype, t, max_rows)),
                    None,
                )
            tiles.append(_probe_cache[key])
    return tiles


def row_tile(tiles: Sequence[int | None]) -> int:
    """The row block shared by all tiled layers: the least common multiple of their tiles."""
    return _row_tile(tuple(tiles))


@functools.cache
def _row_tile(tiles: tuple[int | None, ...]) -> int:
    used = [t for t in tiles if t is not None]
    return math.lcm(*used) if used else 1


def _dense(layer: Dense, x: Array, rowwise: bool) -> Array:
    """The layer's eval-mode output; `rowwise` does one matrix-vector product per row."""
    kernel = layer.params["kernel"]
    # One row is a matrix-vector product either way (NumPy's matmul runs the same 2-D kernel for
    # each item of a stack), so it skips the stacked form's extra views.
    if rowwise and len(x) > 1:
        z = np.matmul(x[:, None, :], kernel)[:, 0, :]
    else:
        z = np.matmul(x, kernel)
    if layer.use_bias:
        z += layer.params["bias"]
    return z if layer.activation.is_identity else layer.activation.forward(z)


def _forward(model: Model, x: Array, tiles: list[int | None], rowwise: bool) -> Array:
    for layer, tile in zip(model.layers, tiles, strict=True):
        if isinstance(layer, Dense):
            x = _dense(layer, x, rowwise or tile is None)
        else:
            x = layer.forward(x, training=False)
            # Nothing of the pass is kept: a cached model would otherwise hold up to 16 scratch
            # arrays per layer, sized by the largest requests it has served, beyond the bytes the
            # model cache counts (allocating them again costs far less than the pass). Released,
            # the output is this pass's own: no copy needed.
            layer.release_scratch()
    return x


def _pads(rest: int, block: int) -> bool:
    """Whether `rest` leftover rows are padded to a whole block rather than done row by row."""
    return block >= MIN_PADDED_BLOCK and rest * ROWS_PER_GEMV >= block


def blocked_rows(rows: int, tiles: Sequence[int | None]) -> int:
    """The rows of blocked matrix products an input of `rows` rows adds to a pass (padding
    included): what a batcher counts against the size the tiles were probed for."""
    block = row_tile(tiles)
    whole = rows - rows % block
    return whole + (block if _pads(rows - whole, block) else 0)


def predict_stacked(model: Model, inputs: Sequence[Array], tiles: list[int | None]) -> Array:
    """Raw outputs of all inputs in one pass, stacked in input order (input i's rows follow
    input i-1's); each input's rows equal ``predict_stacked(model, [x], tiles)``.

    ``tiles`` comes from ``layer_tiles`` under the BLAS thread count in force now. Inputs are
    C-contiguous 2-D arrays of the model's dtype and input width. Dense layers allocate their
    outputs; other layers use their scratch buffers, so run one pass per model at a time.
    """
    block = row_tile(tiles)
    if inputs and all(len(x) < block and not _pads(len(x), block) for x in inputs):
        # The common serving case, small requests (one alone, or a few one-row ones): every row
        # goes row by row, as below, and in input order, so there is nothing to rearrange.
        packed = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
        return _forward(model, packed, tiles, rowwise=True)
    stacked = np.empty((sum(len(x) for x in inputs), model.output_dim), dtype=model.dtype)
    # (where its outputs go, its rows): products in whole blocks, and rows one at a time.
    blocks: list[tuple[Array, Array]] = []
    single: list[tuple[Array, Array]] = []
    start = 0
    for x in inputs:
        out = stacked[start : start + len(x)]
        start += len(x)
        whole = len(x) - len(x) % block
        if whole:
            blocks.append((out[:whole], x[:whole]))
        rest = x[whole:]
        if not _pads(len(rest), block):
            if len(rest):
                single.append((out[whole:], rest))
        else:
            # Zero rows fill the input's last block; their outputs are dropped.
            padded = np.zeros((block, x.shape[1]), dtype=x.dtype)
            padded[: len(rest)] = rest
            blocks.append((out[whole:], padded))
    for rowwise, pieces in ((False, blocks), (True, single)):
        if not pieces:
            continue
        packed = pieces[0][1] if len(pieces) == 1 else np.concatenate([p[1] for p in pieces])
        result = _forward(model, packed, tiles, rowwise)
        if len(pieces) == 1 and len(pieces[0][0]) == len(stacked):
            return result[: len(stacked)]  # one piece holds every row: nothing to rearrange
        offset = 0
        for out, part in pieces:
            out[:] = result[offset : offset + len(out)]
            offset += len(part)
    return stacked


def predict_many(model: Model, inputs: Sequence[Array], tiles: list[int | None]) -> list[Array]:
    """``predict_stacked`` split per input: each equals ``predict_many(model, [x], tiles)[0]``."""
    if not inputs:
        return []
    ends = np.cumsum([len(x) for x in inputs])
    return np.split(predict_stacked(model, inputs, tiles), ends[:-1])
