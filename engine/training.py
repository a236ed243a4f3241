"""Trainer: mini-batch training of a Model with a loss, an optimizer, a learning-rate schedule,
early stopping, metrics and callbacks.

One Generator (seeded by ``seed``) drives shuffling and dropout. The trainer's position (epoch,
batch within the epoch, that epoch's permutation, running epoch statistics, generator state,
optimizer slots, model weights and BatchNorm statistics, schedule and early-stopping state,
history) is all in ``state_dict()`` as plain arrays, so a run stopped after any batch and
restored into a fresh Trainer built the same way continues bit-for-bit as if it had never
stopped. A state that would not load is refused whole: ``load_state_dict`` checks every part
before it changes any, and raises ValueError naming the entry.

Options beyond the basics (all plain data, so a job config maps onto them directly):
    schedule        a schedules name/dict/instance, e.g. {"name": "step", "step_size": 10}
    early_stopping  {"monitor": "val_loss", "patience": 3, "min_delta": 0.0,
                     "restore_best_weights": True, "mode": "auto"} or an EarlyStopping
    clip_norm       clip gradients by global norm (torch's clip_grad_norm_), e.g. 1.0
    num_threads     BLAS threads during ``fit`` (None: leave BLAS as it is); it also caps
                    ``optimizer.num_threads`` (see ``optimizers``)
and ``fit(..., sample_weight=w)`` weights the loss per sample (see ``losses``).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import losses as losses_mod
from . import metrics as metrics_mod
from . import optimizers as optimizers_mod
from . import schedules as schedules_mod
from ._registry import check_int, check_number
from ._state import flag_entry, float_entry, int_entry
from ._types import Array
from .model import Model
from .schedules import resolve_mode

# Evaluation (validation at each epoch's end) runs max(batch_size, this) rows per forward pass.
EVALUATION_BATCH_ROWS = 1024

# A validation set of 0 rows logs no val_* key: a monitor of one (early stopping, a plateau
# schedule) would fail at the first epoch's end, after that epoch had trained, and a fit
# without one would log no validation at all. ``fit`` refuses it before any training.
_NO_VALIDATION_ROWS = (
    "{what}: validation needs at least one row. Pass some rows, or no validation "
    "(validation_data=None, validation_split=0.0) to train without it"
)


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


class EarlyStopping:
    """Stop when ``monitor`` has not improved for ``patience`` epochs (Keras semantics).

    Improvement (mode min) means value < best - min_delta (mode max: value > best + min_delta;
    "auto" picks max for accuracy/r2 keys). On improvement the wait counter resets (and, with
    ``restore_best_weights``, the model state is copied); otherwise it grows, and when it
    reaches max(patience, 1) training stops, restoring the best weights if asked. The trainer
    owns it (``Trainer(early_stopping=...)``) so its state, best weights included, is part of
    ``trainer.state_dict()``; after it has fired, ``fit`` trains no further.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 0,
        min_delta: float = 0.0,
        restore_best_weights: bool = False,
        mode: str = "auto",
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be a log key. Received: monitor={monitor!r}")
        self.monitor = monitor
        self.patience = check_int("patience", patience, 0)
        self.min_delta = abs(check_number("min_delta", min_delta))
        if not isinstance(restore_best_weights, bool | np.bool_):
            raise ValueError(
                "restore_best_weights must be a boolean. "
                f"Received: restore_best_weights={restore_best_weights!r}"
            )
        self.restore_best_weights = bool(restore_best_weights)
        self.mode = mode
        self._direction = resolve_mode(mode, monitor)
        self.reset()

    def reset(self) -> None:
        """Forget the best value and any stop, as before the first epoch."""
        self.best = math.inf if self._direction == "min" else -math.inf
        self.wait = 0
        self.best_epoch = -1
        self.stopped_epoch = -1
        self.best_weights: dict[str, Array] | None = None

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch >= 0

    @property
    def restored(self) -> bool:
        """Whether it stopped training and put the best epoch's weights back in the model."""
        return self.stopped and self.restore_best_weights and self.best_weights is not None

    def get_config(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "restore_best_weights": self.restore_best_weights,
            "mode": self.mode,
        }

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Mapping[str, float]) -> None:
        if self.monitor not in logs:
            raise ValueError(
                f"early_stopping monitors {self.monitor!r}, which is not logged; available: "
                f"{', '.join(sorted(logs))}. Received: monitor={self.monitor!r}"
            )
        value = float(logs[self.monitor])
        if self._direction == "min":
            improved = value < self.best - self.min_delta
        else:
            improved = value > self.best + self.min_delta
        if improved:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = trainer.model.state_dict()
            return
        self.wait += 1
        if self.wait >= max(self.patience, 1):
            self.stopped_epoch = epoch
            trainer.stop_training = True
            if self.restore_best_weights and self.best_weights is not None:
                trainer.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Array]:
        state: dict[str, Array] = {
            "best": np.array(self.best, dtype=np.float64),
            "wait": np.array(self.wait, dtype=np.int64),
            "best_epoch": np.array(self.best_epoch, dtype=np.int64),
            "stopped_epoch": np.array(self.stopped_epoch, dtype=np.int64),
            "has_best_weights": np.array(self.best_weights is not None, dtype=np.uint8),
        }
        for name, arr in (self.best_weights or {}).items():
            state[f"weights.{name}"] = arr.copy()
        return state

    def check_state_dict(self, state: Mapping[str, Array], prefix: str = "") -> None:
        """Raise ValueError naming the entry unless ``load_state_dict(state)`` would succeed;
        changes nothing. ``prefix`` is how the entries are named in an enclosing state (a
        trainer's ``"early_stopping."``), for the messages."""
        required = ("best", "wait", "best_epoch", "stopped_epoch", "has_best_weights")
        missing = [prefix + key for key in required if key not in state]
        if missing:
            raise ValueError(f"Early-stopping state is missing entries: {missing}")
        float_entry(state, "best", prefix)
        int_entry(state, "wait", prefix)
        int_entry(state, "best_epoch", prefix, low=-1)
        int_entry(state, "stopped_epoch", prefix, low=-1)
        has_weights = flag_entry(state, "has_best_weights", prefix)
        weights = [k for k in state if k.startswith("weights.")]
        unexpected = sorted(
            prefix + k for k in state if k not in required and not k.startswith("weights.")
        )
        if unexpected:
            raise ValueError(f"Early-stopping state has unexpected entries: {unexpected}")
        if has_weights != bool(weights):
            raise ValueError(
                f"Early-stopping state entry {prefix}has_best_weights is {int(has_weights)} "
                f"but the state holds {len(weights)} {prefix}weights.* entries"
            )

    def load_state_dict(self, state: Mapping[str, Array]) -> None:
        """Restore a ``state_dict()``, checked before anything changes (the best weights only
        as far as this object can: a trainer checks them against its model)."""
        self.check_state_dict(state)
        self.best = float_entry(state, "best")
        self.wait = int_entry(state, "wait")
        self.best_epoch = int_entry(state, "best_epoch", low=-1)
        self.stopped_epoch = int_entry(state, "stopped_epoch", low=-1)
        if flag_entry(state, "has_best_weights"):
            prefix = "weights."
            self.best_weights = {
                k[len(prefix) :]: np.array(v, copy=True)
                for k, v in state.items()
                if k.startswith(prefix)
            }
        else:
            self.best_weights = None


def _encode_json(obj: object) -> Array:
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode(), dtype=np.uint8).copy()


def _decode_json(arr: Array) -> Any:
    return json.loads(np.asarray(arr, dtype=np.uint8).tobytes().decode())


def _json_entry(state: Mapping[str, Array], key: str) -> Any:
    arr = np.asarray(state[key])
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError(
            f"Trainer state entry {key!r} must be JSON text as 1-D uint8. "
            f"Received: {arr.dtype} array of shape {arr.shape}"
        )
    try:
        return _decode_json(arr)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Trainer state entry {key!r} is not JSON text: {exc}") from exc


def saved_in_epoch(state: Mapping[str, Array]) -> bool:
    """Whether a ``Trainer.state_dict()`` was saved partway through an epoch (as
    ``Trainer.in_epoch`` said then), read from its ``trainer.in_epoch`` entry alone: KeyError if
    ``state`` has none (it is no trainer state), ValueError if that entry is not 0 or 1."""
    return flag_entry(state, "trainer.in_epoch")


def _checked_permutation(state: Mapping[str, Array]) -> Array | None:
    """The order of the epoch in progress: a permutation of range(n), or None when no epoch is
    in progress (the entry is then empty)."""
    in_epoch = saved_in_epoch(state)
    perm = np.asarray(state["trainer.permutation"])
    if perm.ndim != 1 or perm.dtype.kind not in "iu":
        raise ValueError(
            "Trainer state entry 'trainer.permutation' must be a 1-D integer array. "
            f"Received: {perm.dtype} array of shape {perm.shape}"
        )
    n = perm.shape[0]
    if not in_epoch:
        if n:
            raise ValueError(
                f"Trainer state entry 'trainer.permutation' holds {n} rows, but "
                "'trainer.in_epoch' says no epoch is in progress (it is then empty)"
            )
        return None
    if n == 0:
        raise ValueError(
            "Trainer state entry 'trainer.permutation' is empty, but 'trainer.in_epoch' says an "
            "epoch is in progress (its order of the training rows)"
        )
    low, high = int(perm.min()), int(perm.max())
    if low < 0 or high >= n:
        raise ValueError(
            f"Trainer state entry 'trainer.permutation' must be a permutation of range({n}). "
            f"Received: an index {low if low < 0 else high}"
        )
    order = perm.astype(np.intp)  # in range now, whatever the integer type was
    counts = np.bincount(order, minlength=n)
    if counts.max() > 1:
        twice = int(np.argmax(counts > 1))
        raise ValueError(
            f"Trainer state entry 'trainer.permutation' must be a permutation of range({n}). "
            f"Received: row {twice} {int(counts[twice])} times"
        )
    return order


def _sub_state(state: Mapping[str, Array], prefix: str) -> dict[str, Array]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


Validation = tuple[Array, Array, Array | None]


@dataclass(frozen=True)
class _Position:
    """A trainer's own entries of a checked state, ready to be set."""

    rng_state: dict[str, Any]
    epoch: int
    step: int
    batch_index: int
    permutation: Array | None
    epoch_sums: Array
    epoch_weight: float
    history: dict[str, list[float]]


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
        schedule: object = None,
        early_stopping: object = None,
        clip_norm: float | None = None,
        num_threads: int | None = None,
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
        if clip_norm is not None:
            self.optimizer.clip_norm = check_number(
                "clip_norm", clip_norm, 0.0, low_inclusive=False
            )
        self.optimizer.build(model.parameters(), flat_params=model.flat_parameters())
        self.base_learning_rate = self.optimizer.learning_rate
        self.schedule: schedules_mod.Schedule | None = (
            None if schedule is None else schedules_mod.get(schedule)
        )
        self.early_stopping = self._early_stopping(early_stopping)
        self.num_threads = None if num_threads is None else check_int("num_threads", num_threads, 1)
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
        # Running statistics of the current epoch: [loss * weight, each metric's epoch
        # statistics (`Metric.accumulate`; one float, value * rows, for a mean such as accuracy
        # or mae, more for r2), n] and the summed loss weight (n without sample weights). The
        # logged training metrics are the epoch's values over its batches, each batch's outputs
        # from the weights of its step, as in Keras; validation metrics score the whole set.
        columns = model.output_dim
        self._metric_slices: list[slice] = []
        start = 1
        for metric in self.metrics:
            size = metric.epoch_stats_size(columns)
            self._metric_slices.append(slice(start, start + size))
            start += size
        self._epoch_sums = np.zeros(start + 1, dtype=np.float64)
        self._epoch_weight = 0.0
        self._batch_buffers: dict[tuple[str, int], Array] = {}

    @staticmethod
    def _early_stopping(value: object) -> EarlyStopping | None:
        if value is None or isinstance(value, EarlyStopping):
            return value
        if isinstance(value, Mapping):
            try:
                return EarlyStopping(**value)
            except TypeError as exc:
                raise ValueError(
                    f"Invalid early_stopping arguments: {exc}. Received: {dict(value)!r}"
                ) from exc
        raise ValueError(
            "early_stopping must be a dict, an EarlyStopping or None. "
            f"Received: early_stopping={value!r}"
        )

    @property
    def in_epoch(self) -> bool:
        """Whether the state is partway through an epoch (stopped after a batch, before the
        epoch's end ran): ``epoch`` counts only the epochs that ended."""
        return self._permutation is not None

    def model_logs(self) -> dict[str, float]:
        """The logged values that describe the model's weights now: the last epoch's, or the best
        epoch's once early stopping has restored that epoch's weights (the history keeps every
        epoch as it was logged; these are the numbers of the model a caller keeps)."""
        stopper = self.early_stopping
        epoch = stopper.best_epoch if stopper is not None and stopper.restored else -1
        return {key: values[epoch] for key, values in self.history.history.items() if values}

    @property
    def learning_rate(self) -> float:
        """The learning rate the next optimizer step will use."""
        if self.schedule is None:
            return self.optimizer.learning_rate
        return self.schedule.learning_rate(self.base_learning_rate, self.step, self.epoch)

    # -- training -----------------------------------------------------------------------------
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        epochs: int = 1,
        validation_data: tuple[np.ndarray, ...] | None = None,
        validation_split: float = 0.0,
        callbacks: Sequence[Callback] | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> History:
        """Train until ``epochs`` epochs in total are done (continuing from the current position).

        ``validation_data`` is ``(X, y)`` or ``(X, y, sample_weight)``; ``validation_split``
        holds out the last fraction of the rows instead. Returns ``self.history``. A callback
        setting ``trainer.stop_training = True`` ends the run after the current batch (or epoch
        end), leaving a resumable state.
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
        w_all = (
            None
            if sample_weight is None
            else losses_mod.prepare_sample_weight(sample_weight, x_all.shape[0], self.model.dtype)
        )
        x_train, y_train, w_train, val = self._split(
            x_all, y_all, w_all, validation_data, validation_split
        )
        n = x_train.shape[0]
        if n == 0:
            raise ValueError("fit needs at least one training sample. Received: 0 rows")
        self._check_monitors(val is not None)
        callbacks = list(callbacks or ())
        self.stop_training = False
        if self.early_stopping is not None and self.early_stopping.stopped:
            return self.history  # early stopping has fired: the run is over
        with self._threads():
            for cb in callbacks:
                cb.on_train_begin(self)
            self._run(x_train, y_train, w_train, val, epochs, callbacks)
            for cb in callbacks:
                cb.on_train_end(self)
        return self.history

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        if self.num_threads is None:
            yield
            return
        from threadpoolctl import threadpool_limits

        self.optimizer.num_threads = min(self.optimizer.num_threads, self.num_threads)
        with threadpool_limits(limits=self.num_threads, user_api="blas"):
            yield

    def _run(
        self,
        x_train: Array,
        y_train: Array,
        w_train: Array | None,
        val: Validation | None,
        epochs: int,
        callbacks: list[Callback],
    ) -> None:
        n = x_train.shape[0]
        bs = self.batch_size
        num_batches = math.ceil(n / bs)
        model, loss_fn, optimizer, schedule = self.model, self.loss, self.optimizer, self.schedule
        flat_params, flat_grads = model.flat_parameters(), model.flat_gradients()
        sums, rng = self._epoch_sums, self.rng
        metric_stats = [  # each metric with its view of `sums`
            (metric, sums[part])
            for metric, part in zip(self.metrics, self._metric_slices, strict=True)
        ]
        base_lr = self.base_learning_rate
        while self.epoch < epochs and not self.stop_training:
            if self._permutation is None:
                self._permutation = self.rng.permutation(n) if self.shuffle else np.arange(n)
                self._batch_index = 0
                sums[:] = 0.0
                self._epoch_weight = 0.0
                for cb in callbacks:
                    cb.on_epoch_begin(self, self.epoch)
            elif self._permutation.shape[0] != n:
                raise ValueError(
                    f"The restored epoch covers {self._permutation.shape[0]} training rows but "
                    f"fit got {n}; resume with the same data."
                )
            perm = self._permutation
            while self._batch_index < num_batches:
                start = self._batch_index * bs
                idx = perm[start : start + bs]
                rows = idx.shape[0]
                xb = np.take(x_train, idx, axis=0, out=self._batch_buffer("x", x_train, rows))
                yb = np.take(y_train, idx, axis=0, out=self._batch_buffer("y", y_train, rows))
                wb = (
                    None
                    if w_train is None
                    else np.take(w_train, idx, out=self._batch_buffer("w", w_train, rows))
                )
                outputs = model.forward(xb, training=True, rng=rng)
                loss, grad = loss_fn.value_and_grad(outputs, yb, wb)
                weight = rows if wb is None else float(np.sum(wb, dtype=np.float64))
                sums[0] += loss * weight
                self._epoch_weight += weight
                for metric, stats in metric_stats:
                    metric.accumulate(stats, outputs, yb)
                sums[-1] += rows
                model.backward(grad)
                if schedule is not None:
                    optimizer.learning_rate = schedule.learning_rate(base_lr, self.step, self.epoch)
                optimizer.step_flat(flat_params, flat_grads)
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

    def logged_keys(self, has_validation: bool) -> list[str]:
        """The keys of every epoch's logs in a fit with or without validation data."""
        keys = ["loss", *(m.name for m in self.metrics)]
        if has_validation:
            keys += [f"val_{k}" for k in keys]
        if self.schedule is not None:
            keys.append("learning_rate")
        return keys

    def monitor_problem(self, has_validation: bool) -> tuple[str, str, str] | None:
        """The first monitor a fit with or without validation data would not log, as (owner:
        "early_stopping" or "schedule", the monitored key, a message); None if all are logged.
        ``fit`` refuses such a run before it starts; a caller can ask before it has data."""
        keys = self.logged_keys(has_validation)
        for owner, monitor in (
            ("early_stopping", self.early_stopping and self.early_stopping.monitor),
            ("schedule", self.schedule and self.schedule.monitor),
        ):
            if monitor and monitor not in keys:
                message = (
                    f"{owner} monitors {monitor!r}, which this fit does not log; it logs: "
                    f"{', '.join(keys)}. Received: monitor={monitor!r}"
                )
                return owner, monitor, message
        return None

    def _check_monitors(self, has_validation: bool) -> None:
        problem = self.monitor_problem(has_validation)
        if problem is not None:
            raise ValueError(problem[2])

    def _end_epoch(self, val: Validation | None, callbacks: Sequence[Callback]) -> None:
        count = self._epoch_sums[-1]
        weight = self._epoch_weight
        logs = {"loss": float(self._epoch_sums[0] / weight) if weight > 0 else 0.0}
        for metric, part in zip(self.metrics, self._metric_slices, strict=True):
            logs[metric.name] = metric.epoch_value(self._epoch_sums[part], count)
        if val is not None:
            for key, value in self._evaluate_prepared(*val).items():
                logs[f"val_{key}"] = value
        if self.schedule is not None:
            # The rate the epoch's last step used (`self.step` already counts that step).
            logs["learning_rate"] = self.schedule.learning_rate(
                self.base_learning_rate, max(self.step - 1, 0), self.epoch
            )
        finished = self.epoch
        self.epoch += 1
        self._permutation = None
        self._batch_index = 0
        if self.schedule is not None:
            self.schedule.on_epoch_end(finished, logs)
        if self.early_stopping is not None:
            self.early_stopping.on_epoch_end(self, finished, logs)
        self.history.append(logs)
        for cb in callbacks:
            cb.on_epoch_end(self, finished, logs)

    def _split(
        self,
        x: Array,
        y: Array,
        w: Array | None,
        validation_data: tuple[np.ndarray, ...] | None,
        validation_split: float,
    ) -> tuple[Array, Array, Array | None, Validation | None]:
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(
                "validation_split must be in [0, 1). "
                f"Received: validation_split={validation_split!r}"
            )
        if validation_data is not None:
            if validation_split:
                raise ValueError("Pass either validation_data or validation_split, not both.")
            if len(validation_data) not in (2, 3):
                raise ValueError(
                    "validation_data must be (X, y) or (X, y, sample_weight). "
                    f"Received: a tuple of {len(validation_data)}"
                )
            vx_arr = self.model.check_input(validation_data[0])
            vy_arr = self.loss.prepare_targets(
                validation_data[1], self.model.output_dim, self.model.dtype
            )
            if vx_arr.shape[0] != vy_arr.shape[0]:
                raise ValueError("validation_data X and y must have the same number of rows.")
            if vx_arr.shape[0] == 0:
                raise ValueError(_NO_VALIDATION_ROWS.format(what="validation_data has 0 rows"))
            vw = None
            if len(validation_data) == 3 and validation_data[2] is not None:
                vw = losses_mod.prepare_sample_weight(
                    validation_data[2], vx_arr.shape[0], self.model.dtype
                )
            return x, y, w, (vx_arr, vy_arr, vw)
        if validation_split:
            # The last fraction of the rows (before any shuffling) is held out, as in Keras.
            cut = int(x.shape[0] * (1.0 - validation_split))
            if cut == x.shape[0]:  # a split so small that 1 - split rounds to 1
                raise ValueError(
                    _NO_VALIDATION_ROWS.format(
                        what=f"validation_split={validation_split!r} holds out 0 of the "
                        f"{x.shape[0]} rows"
                    )
                )
            w_train, w_val = (None, None) if w is None else (w[:cut], w[cut:])
            return x[:cut], y[:cut], w_train, (x[cut:], y[cut:], w_val)
        return x, y, w, None

    def _batch_buffer(self, key: str, source: Array, rows: int) -> Array:
        buf = self._batch_buffers.get((key, rows))
        if buf is None or buf.shape[1:] != source.shape[1:] or buf.dtype != source.dtype:
            buf = np.empty((rows, *source.shape[1:]), dtype=source.dtype)
            self._batch_buffers[(key, rows)] = buf
        return buf

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(
        self,
        X: np.ndarray,
        y: np.ndarray,
        batch_size: int | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> dict[str, float]:
        """Loss (weighted by ``sample_weight`` if given) and metrics in evaluation mode."""
        x_arr = self.model.check_input(X)
        if x_arr.shape[0] == 0:
            # As fit refuses a validation set of 0 rows: {} read as "no loss, no metrics" where
            # a caller indexing results["loss"] met a KeyError naming no cause.
            raise ValueError("X has 0 rows: evaluation needs at least one row")
        y_arr = self.loss.prepare_targets(y, self.model.output_dim, self.model.dtype)
        w_arr = (
            None
            if sample_weight is None
            else losses_mod.prepare_sample_weight(sample_weight, x_arr.shape[0], self.model.dtype)
        )
        return self._evaluate_prepared(x_arr, y_arr, w_arr, batch_size)

    def _evaluate_prepared(
        self, x: Array, y: Array, w: Array | None = None, batch_size: int | None = None
    ) -> dict[str, float]:
        """``evaluate`` on prepared arrays of at least one row (fit's validation is too)."""
        rows = batch_size or max(self.batch_size, EVALUATION_BATCH_ROWS)
        outputs = self.model.predict(x, batch_size=rows)
        logs = {"loss": self.loss.value(outputs, y, w)}
        for metric in self.metrics:
            logs[metric.name] = metric(outputs, y)
        return logs

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self, copy: bool = True) -> dict[str, Array]:
        """Everything needed for an exact resume, as named numpy arrays (no objects). Not
        ``copy``, the model's and optimizer's entries are their live arrays (see
        ``Model.state_dict``): a checkpoint serialised at once is then held once, not twice."""
        state: dict[str, Array] = {}
        for name, arr in self.model.state_dict(copy).items():
            state[f"model.{name}"] = arr
        for name, arr in self.optimizer.state_dict(copy).items():
            state[f"optimizer.{name}"] = arr
        if self.schedule is not None:
            for name, arr in self.schedule.state_dict().items():
                state[f"schedule.{name}"] = arr
        if self.early_stopping is not None:
            for name, arr in self.early_stopping.state_dict().items():
                state[f"early_stopping.{name}"] = arr
        state["trainer.rng_state"] = _encode_json(self.rng.bit_generator.state)
        state["trainer.epoch"] = np.array(self.epoch, dtype=np.int64)
        state["trainer.step"] = np.array(self.step, dtype=np.int64)
        state["trainer.batch_index"] = np.array(self._batch_index, dtype=np.int64)
        state["trainer.batch_size"] = np.array(self.batch_size, dtype=np.int64)
        state["trainer.in_epoch"] = np.array(self._permutation is not None, dtype=np.uint8)
        perm = self._permutation if self._permutation is not None else np.zeros(0, np.int64)
        state["trainer.permutation"] = perm.astype(np.int64)
        # 'trainer.epoch_sums' keeps the layout of the releases before epoch statistics (loss,
        # one float per metric, rows), which they check by its size: a job checkpointed here and
        # resumed by such a worker (a rollback, or workers upgraded one at a time) failed for
        # good. Its float for a metric of more statistics (r2) is 0, which such a release reads
        # as a mean of no batch. The statistics are 'trainer.epoch_statistics', an entry those
        # releases do not read.
        state["trainer.epoch_sums"] = self._legacy_epoch_sums()
        state["trainer.epoch_statistics"] = self._epoch_sums.copy()
        state["trainer.epoch_weight"] = np.array(self._epoch_weight, dtype=np.float64)
        state["trainer.history_keys"] = _encode_json(list(self.history.history))
        for key, values in self.history.history.items():
            state[f"history.{key}"] = np.asarray(values, dtype=np.float64)
        return state

    def load_state_dict(self, state: Mapping[str, Array]) -> None:
        """Restore a ``state_dict()``; the model and trainer must be built the same way.

        The whole state is checked before anything changes: a damaged or inconsistent one
        raises ValueError naming the entry and leaves the trainer as it was.
        """
        position = self._checked_position(state)
        self.model.load_state_dict(_sub_state(state, "model."))
        self.optimizer.load_state_dict(_sub_state(state, "optimizer."))
        if self.schedule is not None:
            self.schedule.load_state_dict(_sub_state(state, "schedule."))
        if self.early_stopping is not None:
            self.early_stopping.load_state_dict(_sub_state(state, "early_stopping."))
        self.rng.bit_generator.state = position.rng_state
        self.epoch = position.epoch
        self.step = position.step
        self._batch_index = position.batch_index
        self._permutation = position.permutation
        self._epoch_sums[:] = position.epoch_sums
        self._epoch_weight = position.epoch_weight
        self.history = History()
        self.history.history.update(position.history)

    def _checked_position(self, state: Mapping[str, Array]) -> _Position:
        """The trainer's own entries of ``state``, once every part of it (model, optimizer,
        schedule, early stopping) is known to load: ValueError naming the entry otherwise."""
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
        batch_size = int_entry(state, "trainer.batch_size", low=1)
        if batch_size != self.batch_size:
            raise ValueError(
                f"Trainer state was saved with batch_size={batch_size}; this trainer has "
                f"batch_size={self.batch_size}"
            )
        rng_state = self._checked_rng_state(state)
        self._check_parts(state)
        epoch = int_entry(state, "trainer.epoch")
        step = int_entry(state, "trainer.step")
        batch_index = int_entry(state, "trainer.batch_index")
        permutation = _checked_permutation(state)
        rows = 0 if permutation is None else permutation.shape[0]
        batches = math.ceil(rows / self.batch_size)
        if batch_index > batches:  # the epoch would end at once, its remaining rows unseen
            raise ValueError(
                f"Trainer state entry 'trainer.batch_index' is {batch_index}, but the epoch in "
                f"progress has {batches} batches of {self.batch_size} ('trainer.permutation' "
                f"holds {rows} rows)"
            )
        if step < epoch + batch_index:
            raise ValueError(
                f"Trainer state entry 'trainer.step' is {step}, but its position implies at "
                f"least {epoch + batch_index} steps: {epoch} finished epochs ('trainer.epoch', "
                f"a step each at least) and {batch_index} batches of the epoch in progress "
                "('trainer.batch_index')"
            )
        rows_done = None if permutation is None else min(batch_index * self.batch_size, rows)
        sums = self._checked_epoch_sums(state, rows_done)
        epoch_weight = float(sums[-1])  # what a state from before the entry existed meant
        if "trainer.epoch_weight" in state:
            epoch_weight = float_entry(state, "trainer.epoch_weight")
            if not 0.0 <= epoch_weight < math.inf:  # a sum of finite non-negative weights
                raise ValueError(
                    "Trainer state entry 'trainer.epoch_weight' must be a finite number >= 0. "
                    f"Received: {epoch_weight}"
                )
        return _Position(
            rng_state=rng_state,
            epoch=epoch,
            step=step,
            batch_index=batch_index,
            permutation=permutation,
            epoch_sums=sums,
            epoch_weight=epoch_weight,
            history=self._checked_history(state, epoch),
        )

    def _checked_rng_state(self, state: Mapping[str, Array]) -> dict[str, Any]:
        kind = type(self.rng.bit_generator)
        rng_state = _json_entry(state, "trainer.rng_state")
        if not isinstance(rng_state, dict) or rng_state.get("bit_generator") != kind.__name__:
            received = (
                f"bit_generator={rng_state.get('bit_generator')!r}"
                if isinstance(rng_state, dict)
                else f"a JSON {type(rng_state).__name__}"
            )
            raise ValueError(
                f"Trainer state entry 'trainer.rng_state' must hold a {kind.__name__!r} "
                f"generator state. Received: {received}"
            )
        try:  # on a spare generator: NumPy checks the fields only as it sets them
            kind().state = rng_state
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(
                f"Trainer state entry 'trainer.rng_state' is not a valid {kind.__name__} state: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return rng_state

    def _checked_epoch_sums(self, state: Mapping[str, Array], rows_done: int | None) -> Array:
        """The running statistics ('trainer.epoch_statistics', beside 'trainer.epoch_sums' in
        the layout of the releases before them, see `state_dict`); in an epoch in progress, their
        row count must be the rows its batches took so far (``rows_done``; otherwise they are the
        last epoch's, unused).

        A state saved before metrics kept epoch statistics has 'trainer.epoch_sums' alone: one
        float per metric, its
        batch values times their rows. For a mean (accuracy, mae) that float is the statistic
        itself. For r2 it was the defect, a row-weighted mean of per-batch R² from which the
        sums of squares cannot be recovered: such a state loads with r2's statistics empty, so
        the epoch in progress logs the R² of the rows trained after the resume (0 if none
        remain, as the loss of no weight) — a true R² of fewer rows, not an invented one.
        """
        legacy = self._checked_sums(state, "trainer.epoch_sums", len(self.metrics) + 2, rows_done)
        if "trainer.epoch_statistics" not in state:
            converted = np.zeros_like(self._epoch_sums)
            converted[0], converted[-1] = legacy[0], legacy[-1]
            for k, part in enumerate(self._metric_slices, start=1):
                if part.stop - part.start == 1:  # a mean's statistic, as it was
                    converted[part] = legacy[k]
            return converted
        sums = self._checked_sums(
            state, "trainer.epoch_statistics", self._epoch_sums.shape[0], rows_done
        )
        for metric, part in zip(self.metrics, self._metric_slices, strict=True):
            problem = metric.epoch_stats_problem(sums[part], rows_done)
            if problem is not None:
                raise ValueError(
                    f"Trainer state entry 'trainer.epoch_statistics' is refused: {problem}"
                )
        return sums

    @staticmethod
    def _checked_sums(
        state: Mapping[str, Array], key: str, size: int, rows_done: int | None
    ) -> Array:
        """Entry `key`: `size` floats, the last the rows of the epoch in progress (`rows_done`
        if one is; otherwise the last epoch's, unused)."""
        sums = np.asarray(state[key])
        if sums.dtype.kind != "f" or sums.shape != (size,):
            raise ValueError(
                f"Trainer state entry '{key}' must be {size} floats (loss, the metrics', rows) "
                f"for this trainer. Received: {sums.dtype} array of shape {sums.shape}"
            )
        sums = sums.astype(np.float64)
        if rows_done is not None and sums[-1] != rows_done:
            raise ValueError(
                f"Trainer state entry '{key}' counts {sums[-1]:g} rows in the epoch in "
                f"progress, but its batches so far ('trainer.batch_index') took {rows_done}"
            )
        return sums

    def _legacy_epoch_sums(self) -> Array:
        """The epoch's running sums as releases before epoch statistics kept them: loss, one
        float per metric (a mean's statistic as it is, 0 for a metric of more), rows."""
        legacy = np.zeros(len(self.metrics) + 2, dtype=np.float64)
        legacy[0], legacy[-1] = self._epoch_sums[0], self._epoch_sums[-1]
        for k, part in enumerate(self._metric_slices, start=1):
            if part.stop - part.start == 1:
                legacy[k] = self._epoch_sums[part.start]
        return legacy

    def _checked_history(self, state: Mapping[str, Array], epoch: int) -> dict[str, list[float]]:
        """The history, one entry per key of 'trainer.history_keys', each a log this trainer
        writes, with at most one value per finished epoch."""
        keys = _json_entry(state, "trainer.history_keys")
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            raise ValueError(
                "Trainer state entry 'trainer.history_keys' must be a list of log names. "
                f"Received: {keys!r}"
            )
        logged = self.logged_keys(has_validation=True)
        unknown = [key for key in keys if key not in logged]
        if unknown or len(set(keys)) != len(keys):
            raise ValueError(
                f"Trainer state entry 'trainer.history_keys' must name each log once, of those "
                f"this trainer writes ({', '.join(logged)}). Received: {keys}"
            )
        entries = {k for k in state if k.startswith("history.")}
        missing = sorted(f"history.{key}" for key in keys if f"history.{key}" not in entries)
        unlisted = sorted(entries - {f"history.{key}" for key in keys})
        if missing or unlisted:
            raise ValueError(
                "Trainer state's history entries do not match 'trainer.history_keys': "
                f"missing={missing}, unlisted={unlisted}"
            )
        history: dict[str, list[float]] = {}
        for key in keys:
            values = np.asarray(state[f"history.{key}"])
            if values.ndim != 1 or values.dtype.kind not in "iuf" or values.shape[0] > epoch:
                raise ValueError(
                    f"Trainer state entry 'history.{key}' must hold at most one number per "
                    f"finished epoch ('trainer.epoch' is {epoch}). "
                    f"Received: {values.dtype} array of shape {values.shape}"
                )
            history[key] = [float(v) for v in values]
        return history

    def _check_parts(self, state: Mapping[str, Array]) -> None:
        """The model, optimizer, schedule and early-stopping entries, as each would load them."""
        has_early = any(k.startswith("early_stopping.") for k in state)
        if has_early != (self.early_stopping is not None):
            raise ValueError(
                "Trainer state and this trainer disagree on early stopping: the state "
                f"{'has' if has_early else 'has no'} early-stopping entries"
            )
        schedule_state = _sub_state(state, "schedule.")
        if self.schedule is None and schedule_state:
            raise ValueError("Trainer state has schedule entries but this trainer has none")
        self.model.check_state_dict(_sub_state(state, "model."), "model.")
        self.optimizer.check_state_dict(_sub_state(state, "optimizer."), "optimizer.")
        if self.schedule is not None:
            self.schedule.check_state_dict(schedule_state, "schedule.")
        if self.early_stopping is not None:
            self.early_stopping.check_state_dict(
                _sub_state(state, "early_stopping."), "early_stopping."
            )
            best_weights = _sub_state(state, "early_stopping.weights.")
            if best_weights:  # else restoring them would fail at an epoch's end
                self.model.check_state_dict(best_weights, "early_stopping.weights.")
