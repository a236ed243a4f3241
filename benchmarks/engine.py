"""Training throughput of the NumPy engine next to PyTorch (CPU) and scikit-learn's MLPClassifier.

Two cases, each on the same data and network for all three:
    large: MLP 784-512-512-10, ReLU, softmax cross-entropy, Adam, batch 128, synthetic
           51,200 x 784: one epoch of 400 batches, the first 20 untimed (--quick: 60 batches);
    small: MLP 64-128-10 on scikit-learn's digits data (1,792 rows), batch 32, 25 epochs, the
           first untimed (--quick: 3 epochs); per-batch overhead dominates.
Also measured: the GEMM-only bound, i.e. the samples/s one would get if a training step cost
only the float32 matrix products of its forward and backward pass (timed with NumPy's BLAS at
the same thread count); ``gemm_fraction`` is Trainwire's rate over that bound.

All three time the same steps, every batch of every epoch but the first ``warmup``, which run
untimed. scikit-learn has no per-step hook: its warm-up is a ``partial_fit`` over the first
``warmup`` batches, and its timed steps run in one call per case (large: ``partial_fit`` over the
rest of the epoch; small: ``fit`` continuing over the other epochs), which checks its input inside
the clock: about 15 ms on the large case's rows, a check the others make before their warm-up.

Each engine's trained network is then scored, untimed, on the data's first rows (the mean
softmax cross-entropy, ``final_loss``): a run whose loss is not finite or not below chance
(ln 10: it learnt nothing) stops the benchmark, as a step that skipped its work would otherwise
pass for a fast one.

PyTorch gets as many threads as NumPy's BLAS (read with threadpoolctl). Prints a table and,
last, one JSON line: {"benchmark": "engine", "large": {...}, "small": {...}}.

    .venv/bin/python benchmarks/engine.py            # full run (~2 minutes on 2 cores)
    .venv/bin/python benchmarks/engine.py --quick    # smoke run (a few seconds)

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE change OpenBLAS's kernel choice; to measure what NumPy
picks by itself, run with both unset (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE ...``).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder is sys.path[0]; sibling benchmark modules (e.g. a queue.py) must
# not shadow the standard library for the imports below.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

from trainwire.engine import Callback, Model, Trainer  # noqa: E402

# The rows each trained network is scored on (untimed), and the loss of a guess at chance.
SCORED_ROWS = 1024
CHANCE_LOSS = math.log(10)


def blas_info() -> dict[str, Any]:
    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    lib = libs[0] if libs else {}
    return {
        "library": lib.get("internal_api"),
        "version": lib.get("version"),
        "kernel": lib.get("architecture"),
        "threads": int(lib.get("num_threads") or 1),
    }


def mlp_spec(sizes: list[int]) -> dict[str, Any]:
    layers: list[dict[str, Any]] = [
        {"type": "dense", "units": units, "activation": "relu"} for units in sizes[1:-1]
    ]
    layers.append({"type": "dense", "units": sizes[-1]})
    return {"input_dim": sizes[0], "layers": layers}


# -- Trainwire ---------------------------------------------------------------------------------
class _Clock(Callback):
    """Starts the clock after ``warmup`` steps and stops it at the end of training."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.stop = 0.0
        self.steps = 0

    def on_batch_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        if step == self.warmup:
            self.start = time.perf_counter()
        self.steps = step

    def on_train_end(self, trainer: Trainer) -> None:
        self.stop = time.perf_counter()


def trainwire_sps(
    sizes: list[int], x: np.ndarray, y: np.ndarray, batch: int, epochs: int, warmup: int
) -> tuple[float, float]:
    trainer = Trainer(
        Model.from_spec(mlp_spec(sizes), seed=0),
        loss="softmax_cross_entropy",
        optimizer={"name": "adam", "learning_rate": 1e-3},
        batch_size=batch,
        seed=0,
    )
    clock = _Clock(warmup)
    trainer.fit(x, y, epochs=epochs, callbacks=[clock])
    timed_samples = (clock.steps - warmup) * batch  # full batches: run_case checks
    loss = trainer.evaluate(x[:SCORED_ROWS], y[:SCORED_ROWS])["loss"]
    return timed_samples / (clock.stop - clock.start), loss


# -- PyTorch -------------------------------------------------------------------------------------
def torch_sps(
    sizes: list[int], x: np.ndarray, y: np.ndarray, batch: int, epochs: int, warmup: int
) -> tuple[float, float]:
    import torch

    torch.manual_seed(0)
    mods: list[Any] = []
    for i in range(len(sizes) - 1):
        mods.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            mods.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*mods)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    n = x.shape[0]
    step, start = 0, 0.0
    for _ in range(epochs):
        perm = torch.randperm(n)
        for s in range(0, n, batch):
            idx = perm[s : s + batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            step += 1
            if step == warmup:
                start = time.perf_counter()
    rate = (step - warmup) * batch / (time.perf_counter() - start)
    with torch.no_grad():
        loss = float(loss_fn(net(xt[:SCORED_ROWS]), yt[:SCORED_ROWS]))
    return rate, loss


# -- scikit-learn ----------------------------------------------------------------------------------
def sklearn_sps(
    sizes: list[int], x: np.ndarray, y: np.ndarray, batch: int, epochs: int, warmup: int
) -> tuple[float, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=tuple(sizes[1:-1]),
        activation="relu",
        solver="adam",
        learning_rate_init=1e-3,
        batch_size=batch,
        alpha=0.0,
        shuffle=True,
        random_state=0,
    )
    n, warm_rows = x.shape[0], warmup * batch
    assert warm_rows <= n, "the warm-up must lie within the first epoch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # partial_fit runs one epoch of mini-batches over the rows it is given: the warm-up is
        # the first `warmup` batches, untimed; then the same steps as the others, in one call
        # each (every call checks its input): the rest of the first epoch, the other epochs.
        clf.partial_fit(x[:warm_rows], y[:warm_rows], classes=np.arange(sizes[-1]))
        start = time.perf_counter()
        if warm_rows < n:
            clf.partial_fit(x[warm_rows:], y[warm_rows:])
        if epochs > 1:
            # fit continues from the weights (warm_start), with a fresh Adam state, and must not
            # stop early when the loss stalls.
            clf.set_params(max_iter=epochs - 1, warm_start=True, n_iter_no_change=epochs)
            clf.fit(x, y)
        elapsed = time.perf_counter() - start
    assert clf.t_ == epochs * n, (clf.t_, epochs * n)  # the samples it trained on
    probabilities = clf.predict_proba(x[:SCORED_ROWS])
    picked = probabilities[np.arange(len(probabilities)), y[:SCORED_ROWS]]
    loss = float(-np.mean(np.log(np.maximum(picked, 1e-12))))
    return (epochs * n - warm_rows) / elapsed, loss


# -- GEMM-only bound -----------------------------------------------------------------------------
def gemm_bound_sps(sizes: list[int], batch: int, reps: int) -> float:
    """Samples/s if a step cost only its matmuls: forward h_i W_i, backward h_i^T dz_i (every
    layer) and dz_i W_i^T (every layer but the first)."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    acts = [rng.random((batch, k), dtype=f32) for k in sizes]
    weights = [rng.random((sizes[i], sizes[i + 1]), dtype=f32) for i in range(len(sizes) - 1)]
    outs = [np.empty((batch, k), f32) for k in sizes]
    wgrads = [np.empty_like(w) for w in weights]
    products: list[Callable[[], object]] = []
    for i, w in enumerate(weights):
        products.append(lambda i=i, w=w: np.matmul(acts[i], w, out=outs[i + 1]))
    for i in reversed(range(len(weights))):
        products.append(lambda i=i: np.matmul(acts[i].T, acts[i + 1], out=wgrads[i]))
        if i > 0:
            products.append(lambda i=i: np.matmul(acts[i + 1], weights[i].T, out=outs[i]))
    for _ in range(max(3, reps // 10)):
        for p in products:
            p()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            for p in products:
                p()
        best = min(best, (time.perf_counter() - start) / reps)
    return batch / best


# -- driver ----------------------------------------------------------------------------------------
def run_case(
    name: str,
    sizes: list[int],
    x: np.ndarray,
    y: np.ndarray,
    batch: int,
    epochs: int,
    warmup: int,
    repeats: int,
    gemm_reps: int,
) -> dict[str, Any]:
    # The rates count `batch` samples a step, and a clock started after `warmup` steps.
    steps, leftover = divmod(x.shape[0], batch)
    assert leftover == 0, f"{name}: {x.shape[0]} rows are no whole number of batches of {batch}"
    assert 1 <= warmup < epochs * steps, f"{name}: {warmup} warm-up steps of {epochs * steps}"
    results: dict[str, list[float]] = {"trainwire": [], "torch": [], "sklearn": []}
    losses: dict[str, float] = {}
    runners = {"trainwire": trainwire_sps, "torch": torch_sps, "sklearn": sklearn_sps}
    for _ in range(repeats):  # interleaved, best of: the machine may be shared
        for key, runner in runners.items():
            rate, loss = runner(sizes, x, y, batch, epochs, warmup)
            if not loss < CHANCE_LOSS:  # NaN too
                raise RuntimeError(
                    f"{name}: {key} ended at a loss of {loss} on the first {SCORED_ROWS} rows, "
                    f"not below chance ({CHANCE_LOSS:.3f}): its training did not run as timed"
                )
            results[key].append(rate)
            losses[key] = round(loss, 4)
    tw, th, sk = (max(results[k]) for k in ("trainwire", "torch", "sklearn"))
    gemm = gemm_bound_sps(sizes, batch, gemm_reps)
    return {
        "network": "-".join(map(str, sizes)),
        "batch_size": batch,
        "trainwire_sps": round(tw, 1),
        "torch_sps": round(th, 1),
        "sklearn_sps": round(sk, 1),
        "gemm_bound_sps": round(gemm, 1),
        "ratio_vs_torch": round(tw / th, 3),
        "ratio_vs_sklearn": round(tw / sk, 3),
        "gemm_fraction": round(tw / gemm, 3),
        "final_loss": losses,
        "us_per_batch": {
            "trainwire": round(batch / tw * 1e6, 1),
            "torch": round(batch / th * 1e6, 1),
            "sklearn": round(batch / sk * 1e6, 1),
            "gemm_only": round(batch / gemm * 1e6, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()

    import torch

    info = blas_info()
    torch.set_num_threads(info["threads"])
    print(
        f"numpy {np.__version__} ({info['library']} {info['version']}, kernel {info['kernel']}, "
        f"{info['threads']} threads); torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads); {platform.processor() or platform.machine()}, {os.cpu_count()} cpus"
    )
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"note: {var}={os.environ[var]} is set")

    rng = np.random.default_rng(0)
    # Large: one epoch of synthetic rows with labels from a random linear teacher.
    large_steps = 60 if args.quick else 400
    x_large = rng.standard_normal((large_steps * 128, 784), dtype=np.float32)
    teacher = rng.standard_normal((784, 10), dtype=np.float32)
    y_large = np.argmax(x_large @ teacher, axis=1)
    # Small: the digits data, the 1,792 first rows (56 batches of 32).
    from sklearn.datasets import load_digits

    digits = load_digits()
    x_small = (digits.data[:1792] / 16.0).astype(np.float32)
    y_small = digits.target[:1792]

    cases = {
        "large": run_case(
            "large",
            [784, 512, 512, 10],
            x_large,
            y_large,
            batch=128,
            epochs=1,
            warmup=20,
            repeats=1 if args.quick else 2,
            gemm_reps=10 if args.quick else 60,
        ),
        "small": run_case(
            "small",
            [64, 128, 10],
            x_small,
            y_small,
            batch=32,
            epochs=3 if args.quick else 25,
            warmup=56,
            repeats=1 if args.quick else 2,
            gemm_reps=200 if args.quick else 3000,
        ),
    }

    header = (
        f"{'case':<6} {'network':<16} {'batch':>5} {'trainwire':>10} {'torch':>10} "
        f"{'sklearn':>10} {'gemm-only':>10} {'vs torch':>9} {'vs sklearn':>10} {'of gemm':>8}"
    )
    print()
    print("samples/second (µs per batch in brackets)")
    print(header)
    print("-" * len(header))
    for name, r in cases.items():
        us = r["us_per_batch"]
        print(
            f"{name:<6} {r['network']:<16} {r['batch_size']:>5} {r['trainwire_sps']:>10.0f} "
            f"{r['torch_sps']:>10.0f} {r['sklearn_sps']:>10.0f} {r['gemm_bound_sps']:>10.0f} "
            f"{r['ratio_vs_torch']:>8.2f}x {r['ratio_vs_sklearn']:>9.2f}x "
            f"{r['gemm_fraction']:>7.0%}"
        )
        print(
            f"{'':<6} {'':<16} {'':>5} {'(' + str(us['trainwire']) + ')':>10} "
            f"{'(' + str(us['torch']) + ')':>10} {'(' + str(us['sklearn']) + ')':>10} "
            f"{'(' + str(us['gemm_only']) + ')':>10}"
        )
    print(
        "sklearn: the same timed steps as the others after an untimed warm-up; its one call per "
        "case checks its input inside the clock (about 15 ms on the large case's rows)"
    )
    print()
    print(json.dumps({"benchmark": "engine", "blas": info, **cases}))


if __name__ == "__main__":
    main()
