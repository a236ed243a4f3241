"""Optimizers: in-place parameter updates with per-parameter state ("slots").

``build(params)`` allocates each parameter's slots; ``step(params, grads)`` applies one update to
every parameter in place. ``state_dict``/``load_state_dict`` carry slots and the step count for
an exact resume. The math follows torch.optim. ``get(identifier)`` accepts a name,
``{"name": ..., **kwargs}`` or an instance; adding one is one subclass plus one registry entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ._registry import resolve
from ._types import Array


def _check_number(
    name: str,
    value: object,
    low: float,
    high: float = math.inf,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v >= low if low_inclusive else v > low) and (
            v <= high if high_inclusive else v < high
        )
    if not ok:
        lo = "[" if low_inclusive else "("
        hi = "]" if high_inclusive else ")"
        raise ValueError(
            f"{name} must be a number in {lo}{low}, {high}{hi}. Received: {name}={value!r}"
        )
    return float(value)  # type: ignore[arg-type]


class Optimizer:
    """Base class. Subclasses set ``slot_names`` and implement ``_update`` for one parameter."""

    name: ClassVar[str] = ""

    def __init__(self, learning_rate: float) -> None:
        self.slot_names: tuple[str, ...] = ()
        self.learning_rate = _check_number("learning_rate", learning_rate, 0.0, low_inclusive=False)
        self.iterations = 0
        self.slots: dict[str, dict[str, Array]] = {}
        self._scratch: dict[str, Array] = {}

    def build(self, params: Mapping[str, Array]) -> None:
        """Allocate zeroed slots (and a scratch buffer) for every parameter."""
        self.slots = {
            name: {slot: np.zeros_like(p) for slot in self.slot_names} for name, p in params.items()
        }
        self._scratch = {name: np.empty_like(p) for name, p in params.items()}

    def step(self, params: Mapping[str, Array], grads: Mapping[str, Array]) -> None:
        """Apply one update to every parameter in place."""
        if not self._scratch:
            self.build(params)
        self.iterations += 1
        for name, param in params.items():
            self._update(param, grads[name], self.slots[name], self._scratch[name], self.iterations)

    def _update(
        self, param: Array, grad: Array, slots: dict[str, Array], scratch: Array, t: int
    ) -> None:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate}

    def state_dict(self) -> dict[str, Array]:
        """Slots as ``"<param>.<slot>"`` plus ``"iterations"``; arrays are copies."""
        state = {"iterations": np.array(self.iterations, dtype=np.int64)}
        for name, slots in self.slots.items():
            for slot, arr in slots.items():
                state[f"{name}.{slot}"] = arr.copy()
        return state

    def load_state_dict(self, state: Mapping[str, Array]) -> None:
        expected = {f"{n}.{s}" for n, slots in self.slots.items() for s in slots} | {"iterations"}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"Optimizer state does not match ({self.name}): missing={missing}, "
                f"unexpected={unexpected}"
            )
        for name, slots in self.slots.items():
            for slot, arr in slots.items():
                src = np.asarray(state[f"{name}.{slot}"])
                if src.shape != arr.shape or src.dtype != arr.dtype:
                    raise ValueError(
                        f"Optimizer slot {name}.{slot} must be {arr.dtype}{arr.shape}. "
                        f"Received: {src.dtype}{src.shape}"
                    )
        for name, slots in self.slots.items():
            for slot, arr in slots.items():
                np.copyto(arr, state[f"{name}.{slot}"])
        self.iterations = int(np.asarray(state["iterations"]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config()})"


class SGD(Optimizer):
    """torch.optim.SGD (dampening 0):
    g <- g + wd p;  b <- mu b + g;  d = g + mu b (nesterov) or b;  p <- p - lr d.
    Without momentum d = g and no slot is kept.
    """

    name = "sgd"

    def __init__(
        self,
        learning_rate: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(learning_rate)
        self.momentum = _check_number("momentum", momentum, 0.0, 1.0)
        self.nesterov = bool(nesterov)
        self.weight_decay = _check_number("weight_decay", weight_decay, 0.0)
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0. Received: momentum=0.0")
        self.slot_names = ("momentum",) if self.momentum > 0 else ()

    def _update(
        self, param: Array, grad: Array, slots: dict[str, Array], scratch: Array, t: int
    ) -> None:
        if self.weight_decay:
            g = np.multiply(param, self.weight_decay, out=scratch)
            g += grad
        else:
            g = grad
        if self.momentum:
            buf = slots["momentum"]
            buf *= self.momentum
            buf += g
            if self.nesterov:
                # d = g + mu * b
                if g is scratch:
                    scratch += self.momentum * buf
                else:
                    np.multiply(buf, self.momentum, out=scratch)
                    scratch += g
                d = scratch
            else:
                d = buf
        else:
            d = g
        param -= self.learning_rate * d

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }


class Adam(Optimizer):
    """torch.optim.Adam (Kingma & Ba with bias correction, L2 weight decay added to g):
    g <- g + wd p;  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """

    name = "adam"

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(learning_rate)
        self.slot_names = ("m", "v")
        self.beta_1 = _check_number("beta_1", beta_1, 0.0, 1.0)
        self.beta_2 = _check_number("beta_2", beta_2, 0.0, 1.0)
        self.epsilon = _check_number("epsilon", epsilon, 0.0)
        self.weight_decay = _check_number("weight_decay", weight_decay, 0.0)

    def _update(
        self, param: Array, grad: Array, slots: dict[str, Array], scratch: Array, t: int
    ) -> None:
        m, v = slots["m"], slots["v"]
        if self.weight_decay:
            g = np.multiply(param, self.weight_decay, out=scratch)
            g += grad
        else:
            g = grad
        m *= self.beta_1
        m += (1.0 - self.beta_1) * g
        v *= self.beta_2
        v += (1.0 - self.beta_2) * np.square(g)
        step_size = self.learning_rate / (1.0 - self.beta_1**t)
        bias_correction2_sqrt = math.sqrt(1.0 - self.beta_2**t)
        denom = np.sqrt(v, out=scratch)  # g (if it lives in scratch) is no longer needed
        denom /= bias_correction2_sqrt
        denom += self.epsilon
        np.divide(m, denom, out=denom)
        denom *= step_size
        param -= denom

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "weight_decay": self.weight_decay,
        }


REGISTRY: dict[str, type[Optimizer]] = {cls.name: cls for cls in (SGD, Adam)}


def get(identifier: object) -> Optimizer:
    """An optimizer from a name, a ``{"name": ..., **kwargs}`` dict or an instance."""
    return resolve("optimizer", REGISTRY, identifier, Optimizer)
