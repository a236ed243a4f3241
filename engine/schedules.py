"""Learning-rate schedules: the learning rate of every optimizer step, from the optimizer's
base rate (its configured ``learning_rate``) and the trainer's position.

``learning_rate(base_lr, step, epoch)`` gives the rate for the next optimizer step, where
``step`` and ``epoch`` count the steps and epochs already completed; ``interval`` says which of
the two a schedule follows ("epoch": the rate changes between epochs, as when torch's
scheduler.step() is called once per epoch; "step": between optimizer steps).
``on_epoch_end(epoch, logs)`` lets a schedule react to the epoch's logs (reduce-on-plateau);
its state round-trips through ``state_dict``/``load_state_dict`` (plain arrays) so a resumed
run is bit-exact. ``get(identifier)`` accepts a name, ``{"name": ..., **kwargs}`` or an
instance.

Registered (all JSON-able through ``serialize``):
    {"name": "constant"}
    {"name": "step", "step_size": k, "gamma": 0.1, "interval": "epoch"}       (torch StepLR)
    {"name": "exponential", "gamma": g, "interval": "epoch"}           (torch ExponentialLR)
    (gamma in (0, 1]: torch takes any, but a growing gamma^t overflows partway through a run)
    {"name": "cosine", "total": T, "warmup": 0, "min_lr": 0.0, "interval": "step"}
    {"name": "reduce_on_plateau", "monitor": "val_loss", "factor": 0.1, "patience": 10,
     "min_lr": 0.0, "mode": "auto", "threshold": 1e-4, "threshold_mode": "rel",
     "cooldown": 0}                                                 (torch ReduceLROnPlateau)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ._registry import (
    check_choice,
    check_int,
    check_number,
    parameter_names,
    required_names,
    resolve,
    text_names,
)
from ._state import float_entry, int_entry
from ._types import Array

INTERVALS = ("epoch", "step")
MODES = ("auto", "min", "max")
THRESHOLD_MODES = ("rel", "abs")
# The values each text parameter with a fixed set of them takes (a monitor takes any log key):
# the SDK and the server check a job's text settings by them.
CHOICES: dict[str, tuple[str, ...]] = {
    "interval": INTERVALS,
    "mode": MODES,
    "threshold_mode": THRESHOLD_MODES,
}


class Schedule:
    """Base class: a stateless schedule implements ``_value(base_lr, t)``."""

    name: ClassVar[str] = ""

    def __init__(self, interval: str = "epoch") -> None:
        self.interval = check_choice("interval", interval, INTERVALS)

    def learning_rate(self, base_lr: float, step: int, epoch: int) -> float:
        return self._value(base_lr, step if self.interval == "step" else epoch)

    def _value(self, base_lr: float, t: int) -> float:
        raise NotImplementedError

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        """React to an epoch's logs (after validation); stateless schedules ignore them."""

    @property
    def monitor(self) -> str | None:
        """The log key read by ``on_epoch_end``, if any (checked before training starts)."""
        return None

    def state_dict(self) -> dict[str, Array]:
        return {}

    def check_state_dict(self, state: Mapping[str, Array], prefix: str = "") -> None:
        """Raise ValueError naming the entry unless ``load_state_dict(state)`` would succeed;
        changes nothing. ``prefix`` is how the entries are named in an enclosing state (a
        trainer's ``"schedule."``), for the messages."""
        if state:
            received = sorted(prefix + key for key in state)
            raise ValueError(f"Schedule {self.name!r} has no state. Received: {received}")

    def load_state_dict(self, state: Mapping[str, Array]) -> None:
        self.check_state_dict(state)

    def get_config(self) -> dict[str, Any]:
        return {"interval": self.interval}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config()})"


class Constant(Schedule):
    """lr_t = base_lr."""

    name = "constant"

    def _value(self, base_lr: float, t: int) -> float:
        return base_lr

    def get_config(self) -> dict[str, Any]:
        return {}


def _decay_factor(gamma: object) -> float:
    """A decay schedule's gamma, in (0, 1]. torch's StepLR and ExponentialLR take any gamma, but
    here a rate is gamma^t computed afresh at every step: past 1 it grows without bound until
    the float power overflows (gamma 1e10 by epoch 31) and the run fails halfway, and a rate
    that grows is not a decay (a warm-up is the cosine schedule's)."""
    return check_number("gamma", gamma, 0.0, 1.0, low_inclusive=False, high_inclusive=True)


class StepDecay(Schedule):
    """lr_t = base_lr gamma^floor(t / step_size) (torch.optim.lr_scheduler.StepLR)."""

    name = "step"

    def __init__(self, step_size: int, gamma: float = 0.1, interval: str = "epoch") -> None:
        super().__init__(interval)
        self.step_size = check_int("step_size", step_size, 1)
        self.gamma = _decay_factor(gamma)

    def _value(self, base_lr: float, t: int) -> float:
        return base_lr * self.gamma ** (t // self.step_size)

    def get_config(self) -> dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma, **super().get_config()}


class ExponentialDecay(Schedule):
    """lr_t = base_lr gamma^t (torch.optim.lr_scheduler.ExponentialLR)."""

    name = "exponential"

    def __init__(self, gamma: float, interval: str = "epoch") -> None:
        super().__init__(interval)
        self.gamma = _decay_factor(gamma)

    def _value(self, base_lr: float, t: int) -> float:
        return base_lr * self.gamma**t

    def get_config(self) -> dict[str, Any]:
        return {"gamma": self.gamma, **super().get_config()}


class CosineWarmup(Schedule):
    """Linear warm-up over W = ``warmup`` steps (or epochs), then cosine decay to ``min_lr`` at
    T = ``total``, constant afterwards; with t the number of completed steps (epochs):
        t < W:        lr = base_lr (t + 1) / W
        W <= t < T:   lr = min_lr + (base_lr - min_lr) (1 + cos(pi (t - W) / (T - W))) / 2
        t >= T:       lr = min_lr
    """

    name = "cosine"

    def __init__(
        self, total: int, warmup: int = 0, min_lr: float = 0.0, interval: str = "step"
    ) -> None:
        super().__init__(interval)
        self.total = check_int("total", total, 1)
        self.warmup = check_int("warmup", warmup, 0)
        if self.warmup >= self.total:
            raise ValueError(
                f"warmup must be smaller than total. Received: warmup={warmup!r}, total={total!r}"
            )
        self.min_lr = check_number("min_lr", min_lr, 0.0)

    def _value(self, base_lr: float, t: int) -> float:
        if t < self.warmup:
            return base_lr * (t + 1) / self.warmup
        if t >= self.total:
            return self.min_lr
        progress = (t - self.warmup) / (self.total - self.warmup)
        return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_config(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "warmup": self.warmup,
            "min_lr": self.min_lr,
            **super().get_config(),
        }


def check_monitor(monitor: object) -> str:
    """``monitor`` if it can name a log key (a non-empty string); ValueError otherwise."""
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"monitor must be a log key. Received: monitor={monitor!r}")
    return monitor


def resolve_mode(mode: str, monitor: str) -> str:
    """ "min" or "max"; "auto" is "max" for accuracy/r2-like keys and "min" otherwise."""
    mode = check_choice("mode", mode, MODES)
    if mode != "auto":
        return mode
    return "max" if any(key in monitor for key in ("acc", "r2")) else "min"


class ReduceOnPlateau(Schedule):
    """torch.optim.lr_scheduler.ReduceLROnPlateau on ``logs[monitor]`` at each epoch end:
    better (mode min, rel) means value < best (1 - threshold) (abs: value < best - threshold;
    mode max mirrors it); after more than ``patience`` epochs without improvement
    lr <- max(lr factor, min_lr) (only if that changes lr by more than 1e-8), then
    ``cooldown`` epochs in which bad epochs are not counted.
    """

    name = "reduce_on_plateau"

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        min_lr: float = 0.0,
        mode: str = "auto",
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
    ) -> None:
        super().__init__("epoch")
        self._monitor = check_monitor(monitor)
        self.factor = check_number("factor", factor, 0.0, 1.0, low_inclusive=False)
        self.patience = check_int("patience", patience, 0)
        self.min_lr = check_number("min_lr", min_lr, 0.0)
        self.mode = check_choice("mode", mode, MODES)
        self._direction = resolve_mode(mode, monitor)
        self.threshold = check_number("threshold", threshold, 0.0)
        self.threshold_mode = check_choice("threshold_mode", threshold_mode, THRESHOLD_MODES)
        self.cooldown = check_int("cooldown", cooldown, 0)
        self.current_lr: float | None = None  # None until the first step sets it to base_lr
        self.best = math.inf if self._direction == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    @property
    def monitor(self) -> str | None:
        return self._monitor

    def learning_rate(self, base_lr: float, step: int, epoch: int) -> float:
        if self.current_lr is None:
            self.current_lr = base_lr
        return self.current_lr

    def _is_better(self, value: float) -> bool:
        if self._direction == "min":
            bound = (
                self.best * (1.0 - self.threshold)
                if self.threshold_mode == "rel"
                else self.best - self.threshold
            )
            return value < bound
        bound = (
            self.best * (1.0 + self.threshold)
            if self.threshold_mode == "rel"
            else self.best + self.threshold
        )
        return value > bound

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        if self._monitor not in logs:
            raise ValueError(
                f"reduce_on_plateau monitors {self._monitor!r}, which is not logged; available: "
                f"{', '.join(sorted(logs))}. Received: monitor={self._monitor!r}"
            )
        value = float(logs[self._monitor])
        if self._is_better(value):
            self.best = value
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience and self.current_lr is not None:
            new_lr = max(self.current_lr * self.factor, self.min_lr)
            if self.current_lr - new_lr > 1e-8:
                self.current_lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def state_dict(self) -> dict[str, Array]:
        return {
            "current_lr": np.array(
                math.nan if self.current_lr is None else self.current_lr, dtype=np.float64
            ),
            "best": np.array(self.best, dtype=np.float64),
            "num_bad_epochs": np.array(self.num_bad_epochs, dtype=np.int64),
            "cooldown_counter": np.array(self.cooldown_counter, dtype=np.int64),
        }

    def check_state_dict(self, state: Mapping[str, Array], prefix: str = "") -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"Schedule state does not match ({self.name}): expected "
                f"{sorted(prefix + key for key in expected)}. "
                f"Received: {sorted(prefix + key for key in state)}"
            )
        lr = float_entry(state, "current_lr", prefix, allow_nan=True)  # NaN: not set yet
        if not (math.isnan(lr) or 0.0 <= lr < math.inf):
            raise ValueError(
                f"State entry {prefix + 'current_lr'!r} must be a finite rate >= 0 (or NaN "
                f"before the first step). Received: {lr}"
            )
        float_entry(state, "best", prefix)
        int_entry(state, "num_bad_epochs", prefix)
        int_entry(state, "cooldown_counter", prefix)

    def load_state_dict(self, state: Mapping[str, Array]) -> None:
        self.check_state_dict(state)
        lr = float_entry(state, "current_lr", allow_nan=True)
        self.current_lr = None if math.isnan(lr) else lr
        self.best = float_entry(state, "best")
        self.num_bad_epochs = int_entry(state, "num_bad_epochs")
        self.cooldown_counter = int_entry(state, "cooldown_counter")

    def get_config(self) -> dict[str, Any]:
        return {
            "monitor": self._monitor,
            "factor": self.factor,
            "patience": self.patience,
            "min_lr": self.min_lr,
            "mode": self.mode,
            "threshold": self.threshold,
            "threshold_mode": self.threshold_mode,
            "cooldown": self.cooldown,
        }


REGISTRY: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (Constant, StepDecay, ExponentialDecay, CosineWarmup, ReduceOnPlateau)
}


def get(identifier: object) -> Schedule:
    """A schedule from a name, a ``{"name": ..., **kwargs}`` dict or an instance."""
    if identifier is None:
        return Constant()
    return resolve("schedule", REGISTRY, identifier, Schedule)


def parameters(name: str) -> tuple[str, ...] | None:
    """The parameters schedule `name` takes (``step_size``, ``gamma``, ...), or None for a name
    it does not know: the SDK and the server check a job's schedule settings by them."""
    return parameter_names(REGISTRY, name)


def required_parameters(name: str) -> tuple[str, ...]:
    """The parameters schedule `name` has no default for (``step``'s ``step_size``,
    ``exponential``'s ``gamma``, ``cosine``'s ``total``), empty for a name it does not know."""
    return required_names(REGISTRY, name)


def text_parameters(name: str) -> frozenset[str]:
    """The parameters of schedule `name` that are text (``interval``; reduce_on_plateau's
    ``monitor``, ``mode`` and ``threshold_mode``), empty for a name it does not know: a job's
    settings carry them apart from its numbers."""
    return text_names(REGISTRY, name)


def check_text_parameter(key: str, value: object) -> str:
    """``value`` as the schedules take text parameter `key`: one of its ``CHOICES``, or (a
    monitor) a log key; ValueError naming `key` and the value otherwise."""
    if key in CHOICES:
        return check_choice(key, value, CHOICES[key])
    return check_monitor(value)
