"""Trainer: mini-batch training of a Model with a loss, an optimizer, metrics and callbacks.

One Generator (seeded by ``seed``) drives shuffling and dropout. The trainer's position (epoch,
batch within the epoch, that epoch's permutation, running epoch sums, generator state, optimizer
slots, model weights, history) is all in ``state_dict()``, so a run stopped after any batch and
restored into a fresh Trainer continues bit-for-bit as if it had never stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import losses as losses_mod
from . import metrics as metrics_mod
from . import optimizers as optimizers_mod
from ._types import Array
from .model import Model


class Callback:
    """Hooks called by ``Trainer.fit``; all are no-ops by default.

    When a hook runs, the trainer's state already includes the finished batch or epoch, so
    ``trainer.state_dict()`` taken there is a valid resume point.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        pass

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        pass

    def on_batch_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        pass

    def on_train_end(self, trainer: Trainer) -> None:
        pass


class History:
    """Per-epoch logs: ``history["loss"][e]`` is the value logged at the end of epoch ``e``."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}

    def append(self, logs: Mapping[str, float]) -> None:
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __repr__(self) -> str:
        return f"History({self.history})"


def _encode_json(obj: object) -> Array:
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode(), dtype=np.uint8).copy()


def _decode_json(arr: Array) -> Any:
    return json.loads(np.asarray(arr, dtype=np.uint8).tobytes().decode())


class Trainer:
    """Trains ``model`` by mini-batch gradient descent."""

    def __init__(
        self,
        model: Model,
        loss: object = "mse",
        optimizer: object = "adam",
        batch_size: int = 32,
        seed: int | None = 0,
        metrics: Sequence[object] = (),
        shuffle: bool = True,
    ) -> None:
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int | np.integer)
            or batch_size <= 0
        ):
            raise ValueError(
                f"batch_size must be a positive integer. Received: batch_size={batch_size!r}"
            )
        if isinstance(metrics, str):
            metrics = (metrics,)
        self.model = model
        self.loss = losses_mod.get(loss)
        self.optimizer = optimizers_mod.get(optimizer)
        self.optimizer.build(model.parameters())
        self.metrics = [metrics_mod.get(m) for m in metrics]
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.rng = np.random.default_rng(seed)
        self.history = History()
        self.stop_training = False
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimizer steps, over all epochs
        self._batch_index = 0  # completed batches in the current epoch
        self._permutation: Array | None = None  # set while an epoch is in progress
        # Running sums over the current epoch: [loss * n, metric_k * n..., n].
        self._epoch_sums = np.zeros(len(self.metrics) + 2, dtype=np.float64)
        self._batch_buffers: dict[tuple[str, int], Array] = {}

    # -- training -----------------------------------------------------------------------------
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        epochs: int = 1,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        validation_split: float = 0.0,
        callbacks: Sequence[Callback] | None = None,
    ) -> History:
        """Train until ``epochs`` epochs in total are done (continuing from the current position).

        Returns ``self.history``. A callback setting ``trainer.stop_training = True`` ends the run
        after the current batch (or epoch end), leaving a resumable state.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int | np.integer) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer. Received: epochs={epochs!r}")
        x_all = self.model.check_input(X)
        y_all = self.loss.prepare_targets(y, self.model.output_dim, self.model.dtype)
        if y_all.shape[0] != x_all.shape[0]:
            raise ValueError(
                f"X and y must have the same number of rows. Received: {x_all.shape[0]} and "
                f"{y_all.shape[0]}"
            )
        x_train, y_train, val = self._split(x_all, y_all, validation_data, validation_split)
        n = x_train.shape[0]
        if n == 0:
            raise ValueError("fit needs at least one training sample. Received: 0 rows")
        num_batches = math.ceil(n / self.batch_size)
        callbacks = list(callbacks or ())
        params, grads = self.model.parameters(), self.model.gradients()

        self.stop_training = False
        for cb in callbacks:
            cb.on_train_begin(self)
        while self.epoch < epochs and not self.stop_training:
            if self._permutation is None:
                self._permutation = self.rng.permutation(n) if self.shuffle else np.arange(n)
                self._batch_index = 0
                self._epoch_sums[:] = 0.0
                for cb in callbacks:
                    cb.on_epoch_begin(self, self.epoch)
            elif self._permutation.shape[0] != n:
                raise ValueError(
                    f"The restored epoch covers {self._permutation.shape[0]} training rows but "
                    f"fit got {n}; resume with the same data."
                )
            perm = self._permutation
            while self._batch_index < num_batches:
                start = self._batch_index * self.batch_size
                idx = perm[start : start + self.batch_size]
                xb = np.take(x_train, idx, axis=0, out=self._batch_buffer("x", x_train, len(idx)))
                yb = np.take(y_train, idx, axis=0, out=self._batch_buffer("y", y_train, len(idx)))
                outputs = self.model.forward(xb, training=True, rng=self.rng)
                loss, grad = self.loss.value_and_grad(outputs, yb)
                rows = len(idx)
                self._epoch_sums[0] += loss * rows
                for k, metric in enumerate(self.metrics, start=1):
                    self._epoch_sums[k] += metric(outputs, yb) * rows
                self._epoch_sums[-1] += rows
                self.model.backward(grad)
                self.optimizer.step(params, grads)
                self.step += 1
                self._batch_index += 1
                for cb in callbacks:
                    cb.on_batch_end(self, self.step, {"loss": loss})
                if self.stop_training:
                    break
            if self.stop_training:
                # Even after the epoch's last batch: the epoch end then runs on resume.
                break
            self._end_epoch(val, callbacks)
        for cb in callbacks:
            cb.on_train_end(self)
        return self.history

    def _end_epoch(self, val: tuple[Array, Array] | None, callbacks: Sequence[Callback]) -> None:
        count = self._epoch_sums[-1]
        logs = {"loss": float(self._epoch_sums[0] / count)}
        for k, metric in enumerate(self.metrics, start=1):
            logs[metric.name] = float(self._epoch_sums[k] / count)
        if val is not None:
            for key, value in self._evaluate_prepared(*val).items():
                logs[f"val_{key}"] = value
        self.history.append(logs)
        finished = self.epoch
        self.epoch += 1
        self._permutation = None
        self._batch_index = 0
        for cb in callbacks:
            cb.on_epoch_end(self, finished, logs)

    def _split(
        self,
        x: Array,
        y: Array,
        validation_data: tuple[np.ndarray, np.ndarray] | None,
        validation_split: float,
    ) -> tuple[Array, Array, tuple[Array, Array] | None]:
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(
                "validation_split must be in [0, 1). "
                f"Received: validation_split={validation_split!r}"
            )
        if validation_data is not None:
            if validation_split:
                raise ValueError("Pass either validation_data or validation_split, not both.")
            vx, vy = validation_data
            vx_arr = self.model.check_input(vx)
            vy_arr = self.loss.prepare_targets(vy, self.model.output_dim, self.model.dtype)
            if vx_arr.shape[0] != vy_arr.shape[0]:
                raise ValueError("validation_data X and y must have the same number of rows.")
            return x, y, (vx_arr, vy_arr)
        if validation_split:
            # The last fraction of the rows (before any shuffling) is held out, as in Keras.
            cut = int(x.shape[0] * (1.0 - validation_split))
            return x[:cut], y[:cut], (x[cut:], y[cut:])
        return x, y, None

    def _batch_buffer(self, key: str, source: Array, rows: int) -> Array:
        buf = self._batch_buffers.get((key, rows))
        if buf is None or buf.shape[1:] != source.shape[1:] or buf.dtype != source.dtype:
            buf = np.empty((rows, *source.shape[1:]), dtype=source.dtype)
            self._batch_buffers[(key, rows)] = buf
        return buf

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(
        self, X: np.ndarray, y: np.ndarray, batch_size: int | None = None
    ) -> dict[str, float]:
        """Loss and metrics over a whole data set in evaluation mode."""
        x_arr = self.model.check_input(X)
        y_arr = self.loss.prepare_targets(y, self.model.output_dim, self.model.dtype)
        return self._evaluate_prepared(x_arr, y_arr, batch_size)

    def _evaluate_prepared(
        self, x: Array, y: Array, batch_size: int | None = None
    ) -> dict[str, float]:
        if x.shape[0] == 0:
            return {}
        outputs = self.model.predict(x, batch_size=batch_size or self.batch_size)
        logs = {"loss": self.loss.value(outputs, y)}
        for metric in self.metrics:
            logs[metric.name] = metric(outputs, y)
        return logs

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Array]:
        """Everything needed for an exact resume, as named numpy arrays (no objects)."""
        state: dict[str, Array] = {}
        for name, arr in self.model.state_dict().items():
            state[f"model.{name}"] = arr
        for name, arr in self.optimizer.state_dict().items():
            state[f"optimizer.{name}"] = arr
        state["trainer.rng_state"] = _encode_json(self.rng.bit_generator.state)
        state["trainer.epoch"] = np.array(self.epoch, dtype=np.int64)
        state["trainer.step"] = np.array(self.step, dtype=np.int64)
        state["trainer.batch_index"] = np.array(self._batch_index, dtype=np.int64)
        state["trainer.batch_size"] = np.array(self.batch_size, dtype=np.int64)
        state["trainer.in_epoch"] = np.array(self._permutation is not None, dtype=np.uint8)
        perm = self._permutation if self._permutation is not None else np.zeros(0, np.int64)
        state["trainer.permutation"] = perm.astype(np.int64)
        state["trainer.epoch_sums"] = self._epoch_sums.copy()
        state["trainer.history_keys"] = _encode_json(list(self.history.history))
        for key, values in self.history.history.items():
            state[f"history.{key}"] = np.asarray(values, dtype=np.float64)
        return state

    def load_state_dict(self, state: Mapping[str, Array]) -> None:
        """Restore a ``state_dict()``; the model and trainer must be built the same way."""
        required = (
            "trainer.rng_state",
            "trainer.epoch",
            "trainer.step",
            "trainer.batch_index",
            "trainer.batch_size",
            "trainer.in_epoch",
            "trainer.permutation",
            "trainer.epoch_sums",
            "trainer.history_keys",
        )
        missing = [key for key in required if key not in state]
        if missing:
            raise ValueError(f"Trainer state is missing entries: {missing}")
        batch_size = int(np.asarray(state["trainer.batch_size"]))
        if batch_size != self.batch_size:
            raise ValueError(
                f"Trainer state was saved with batch_size={batch_size}; this trainer has "
                f"batch_size={self.batch_size}"
            )
        sums = np.asarray(state["trainer.epoch_sums"], dtype=np.float64)
        if sums.shape != self._epoch_sums.shape:
            raise ValueError(
                f"Trainer state has {sums.shape[0] - 2} metrics; this trainer has "
                f"{len(self.metrics)}"
            )
        rng_state = _decode_json(state["trainer.rng_state"])
        if rng_state.get("bit_generator") != type(self.rng.bit_generator).__name__:
            raise ValueError(
                f"Trainer state holds a {rng_state.get('bit_generator')!r} generator state; "
                f"expected {type(self.rng.bit_generator).__name__!r}"
            )
        self.model.load_state_dict(
            {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        )
        self.optimizer.load_state_dict(
            {k[len("optimizer.") :]: v for k, v in state.items() if k.startswith("optimizer.")}
        )
        self.rng.bit_generator.state = rng_state
        self.epoch = int(np.asarray(state["trainer.epoch"]))
        self.step = int(np.asarray(state["trainer.step"]))
        self._batch_index = int(np.asarray(state["trainer.batch_index"]))
        in_epoch = bool(np.asarray(state["trainer.in_epoch"]))
        perm = np.asarray(state["trainer.permutation"], dtype=np.int64)
        self._permutation = perm.astype(np.intp) if in_epoch else None
        self._epoch_sums[:] = sums
        self.history = History()
        for key in _decode_json(state["trainer.history_keys"]):
            self.history.history[key] = [float(v) for v in np.asarray(state[f"history.{key}"])]
