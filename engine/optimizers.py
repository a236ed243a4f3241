"""Optimizers: in-place parameter updates with per-parameter state ("slots"), torch.optim math.

``build(params, flat_params=None)`` allocates the slots; ``step(params, grads)`` applies one
update to every parameter in place. When the parameters are views into one flat buffer (as a
Model's are, see ``Model.flat_parameters``), the slots get the same flat layout and
``step_flat(flat_params, flat_grads)`` updates everything in about ten ufunc passes over
cache-sized blocks (128 KiB per array, so the passes hit L2 rather than memory), optionally
split over ``optimizer.num_threads`` threads (ufuncs release the GIL). The default is one
thread: on our 2-core machines the blocked single-thread update beat two threads, and a second
thread suffers most when another process is busy. Per element the arithmetic is that of
``step`` whatever the blocking or threading, so all give bit-identical results.
``state_dict``/``load_state_dict``
carry the slots (``"<param>.<slot>"``) and the step count for an exact resume.

Common options (every optimizer):
    weight_decay   L2 penalty (wd/2)||p||^2, i.e. g <- g + wd p before the update (AdamW: the
                   decoupled form p <- p (1 - lr wd) instead);
    clip_norm      clip by global norm before the update, as torch.nn.utils.clip_grad_norm_:
                   total = ||(g_1, ..., g_P)||_2, and if c = clip_norm / (total + 1e-6) < 1
                   every gradient is scaled by c in place (``last_grad_norm`` keeps ``total``);
                   a NaN total makes every gradient NaN, as torch's clamp of c does.

Deviation below float32 resolution: moment-like slots that decay geometrically (momentum,
Adam's m and v, RMSprop's averages) turn subnormal after long runs of exactly-zero gradients
(dead ReLUs), which makes ufuncs several times slower. Every 64 steps, slot entries with
|s| < 1e-30 (float32; 1e-300 for float64) are set to 0; their effect on a parameter is far
below one float32 ulp. torch does not flush; trajectories agree to < 1e-6 regardless.

Registered (defaults as torch.optim, but for SGD's learning rate: 0.01, torch's 1e-3):
sgd, adam, adamw, adagrad, rmsprop. ``get(identifier)``
accepts a name, ``{"name": ..., **kwargs}`` or an instance; adding one is one subclass plus
one registry entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ._registry import check_flag, check_number, flag_names, parameter_names, resolve
from ._state import check_finite, int_entry
from ._types import Array
from .threads import parallel_for

FLUSH_EVERY = 64
FLUSH_THRESHOLD = {np.dtype("float32"): 1e-30, np.dtype("float64"): 1e-300}
_BLOCK = 1 << 15  # elements per cache block of the flat update (128 KiB of float32)
_MIN_PER_THREAD = 1 << 16  # below this many elements per thread, one thread is faster


def _check_number(
    name: str,
    value: object,
    low: float,
    high: float = math.inf,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
) -> float:
    return check_number(name, value, low, high, low_inclusive, high_inclusive)


def _data_address(arr: Array) -> int:
    return int(arr.__array_interface__["data"][0])


class Optimizer:
    """Base class. Subclasses set ``slot_names`` and implement ``_update`` for aligned chunks."""

    name: ClassVar[str] = ""
    flush_slots: ClassVar[tuple[str, ...]] = ()
    # Slots that sum squares: a negative entry is no state a run reaches (sqrt makes it NaN).
    # No slot may be NaN (``check_state_dict``), these and the others alike.
    nonnegative_slots: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, learning_rate: float, weight_decay: float = 0.0, clip_norm: float | None = None
    ) -> None:
        self.slot_names: tuple[str, ...] = ()
        self.learning_rate = _check_number("learning_rate", learning_rate, 0.0, low_inclusive=False)
        self.weight_decay = _check_number("weight_decay", weight_decay, 0.0)
        self.clip_norm = (
            None
            if clip_norm is None
            else _check_number("clip_norm", clip_norm, 0.0, low_inclusive=False)
        )
        self.iterations = 0
        self.num_threads = 1
        self.last_grad_norm: float | None = None
        self.slots: dict[str, dict[str, Array]] = {}
        self._flat_slots: dict[str, Array] = {}
        self._flat_base: Array | None = None
        self._scratch: list[tuple[Array, Array]] = []
        self._built = False

    def slot_initial_value(self, slot: str) -> float:
        return 0.0

    # -- construction -------------------------------------------------------------------------
    def build(self, params: Mapping[str, Array], flat_params: Array | None = None) -> None:
        """Allocate zeroed (or initial-valued) slots for every parameter.

        With ``flat_params`` (a contiguous 1-D buffer every parameter is a view of, as
        ``Model.flat_parameters()``), the slots get the same flat layout and ``step_flat``
        becomes available.
        """
        arrays = list(params.values())
        for name, p in params.items():
            if not p.flags.c_contiguous:
                raise ValueError(f"Parameter {name!r} must be C-contiguous to be updated in place")
        dtypes = {p.dtype for p in arrays}
        self.slots = {}
        self._flat_slots = {}
        self._flat_base = None
        self._scratch = []
        self._built = True
        if len(dtypes) > 1:  # mixed dtypes: separate slot arrays, no flat path
            self.slots = {
                name: {s: np.full_like(p, self.slot_initial_value(s)) for s in self.slot_names}
                for name, p in params.items()
            }
            return
        dtype = arrays[0].dtype if arrays else np.dtype("float64")
        offsets: list[int] = []
        if flat_params is not None:
            if flat_params.ndim != 1 or not flat_params.flags.c_contiguous:
                raise ValueError("flat_params must be a contiguous 1-D array")
            start, item = _data_address(flat_params), dtype.itemsize
            for name, p in params.items():
                off = (_data_address(p) - start) // item
                if p.dtype != flat_params.dtype or off < 0 or off + p.size > flat_params.size:
                    raise ValueError(f"Parameter {name!r} is not a view into flat_params")
                offsets.append(off)
            size = flat_params.size
            self._flat_base = flat_params
        else:
            size = 0
            for p in arrays:
                offsets.append(size)
                size += p.size
        for slot in self.slot_names:
            self._flat_slots[slot] = np.full(size, self.slot_initial_value(slot), dtype=dtype)
        for (name, p), off in zip(params.items(), offsets, strict=True):
            self.slots[name] = {
                slot: buf[off : off + p.size].reshape(p.shape)
                for slot, buf in self._flat_slots.items()
            }

    def _scratch_pair(self, index: int, size: int, dtype: np.dtype[Any]) -> tuple[Array, Array]:
        while len(self._scratch) <= index:
            self._scratch.append((np.empty(0, dtype), np.empty(0, dtype)))
        s1, s2 = self._scratch[index]
        if s1.size < size or s1.dtype != dtype:
            s1, s2 = np.empty(size, dtype), np.empty(size, dtype)
            self._scratch[index] = (s1, s2)
        return s1, s2

    # -- updates ------------------------------------------------------------------------------
    def step(self, params: Mapping[str, Array], grads: Mapping[str, Array]) -> None:
        """Apply one update to every parameter in place (clipping scales ``grads`` in place)."""
        if not self._built:
            self.build(params)
        self.iterations += 1
        t = self.iterations
        if self.clip_norm is not None:
            total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
            self._clip(total, list(grads.values()))
        for name, param in params.items():
            p, g = param.reshape(-1), np.ascontiguousarray(grads[name]).reshape(-1)
            slots = {s: arr.reshape(-1) for s, arr in self.slots[name].items()}
            s1, s2 = self._scratch_pair(0, p.size, p.dtype)
            self._update(p, g, slots, s1[: p.size], s2[: p.size], t)
        if self.flush_slots and t % FLUSH_EVERY == 0:
            for slots in self.slots.values():
                self._flush(slots)

    def step_flat(self, flat_params: Array, flat_grads: Array) -> None:
        """``step`` on the flat buffers of the parameters passed to ``build``."""
        if flat_params is not self._flat_base or flat_grads.shape != flat_params.shape:
            raise ValueError(
                "step_flat needs the flat parameter buffer the optimizer was built on and a "
                "gradient buffer of the same shape"
            )
        self.iterations += 1
        t = self.iterations
        if self.clip_norm is not None:
            self._clip(math.sqrt(float(np.dot(flat_grads, flat_grads))), [flat_grads])
        n = flat_params.size
        threads = max(1, min(self.num_threads, n // _MIN_PER_THREAD))
        per = -(-n // threads)
        per += -per % 16
        dtype = flat_params.dtype

        def work(i: int) -> None:
            lo, hi = i * per, min(n, (i + 1) * per)
            s1, s2 = self._scratch_pair(i, min(_BLOCK, max(hi - lo, 0)), dtype)
            for a in range(lo, hi, _BLOCK):
                b = min(hi, a + _BLOCK)
                slots = {s: buf[a:b] for s, buf in self._flat_slots.items()}
                self._update(flat_params[a:b], flat_grads[a:b], slots, s1[: b - a], s2[: b - a], t)

        if threads > 1:
            for i in range(threads):  # allocate scratch before the threads start
                self._scratch_pair(i, min(_BLOCK, per), dtype)
        parallel_for(work, threads)
        if self.flush_slots and t % FLUSH_EVERY == 0:
            self._flush(self._flat_slots)

    def _clip(self, total: float, grads: list[Array]) -> None:
        self.last_grad_norm = total
        assert self.clip_norm is not None
        coef = self.clip_norm / (total + 1e-6)
        # As torch's clamp(coef, max=1): a NaN norm (a NaN gradient) gives a NaN coefficient,
        # which makes every gradient NaN; skipping it (NaN < 1 is False) let the finite ones
        # take an unclipped step. At coef >= 1 torch multiplies by exactly 1.0, a no-op.
        if coef < 1.0 or math.isnan(coef):
            for g in grads:
                g *= coef

    def _flush(self, slots: Mapping[str, Array]) -> None:
        for name in self.flush_slots:
            arr = slots.get(name)
            if arr is not None:
                # s <- s 1[|s| >= threshold]: subnormal and near-subnormal entries become 0.
                np.multiply(arr, np.abs(arr) >= FLUSH_THRESHOLD[arr.dtype], out=arr)

    def _decayed(self, p: Array, g: Array, s1: Array) -> Array:
        """g + wd p in ``s1`` (L2 penalty), or ``g`` itself without weight decay."""
        if not self.weight_decay:
            return g
        np.multiply(p, self.weight_decay, out=s1)
        s1 += g
        return s1

    def _update(
        self, p: Array, g: Array, slots: dict[str, Array], s1: Array, s2: Array, t: int
    ) -> None:
        """Update one chunk in place; ``s1``/``s2`` are scratch arrays of the same shape."""
        raise NotImplementedError

    # -- configuration and state ----------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"learning_rate": self.learning_rate}
        config.update(self._extra_config())
        config["weight_decay"] = self.weight_decay
        if self.clip_norm is not None:
            config["clip_norm"] = self.clip_norm
        return config

    def _extra_config(self) -> dict[str, Any]:
        return {}

    def state_dict(self, copy: bool = True) -> dict[str, Array]:
        """Slots as ``"<param>.<slot>"`` plus ``"iterations"``; arrays are copies unless not
        ``copy``: then the live slots (see ``Model.state_dict``)."""
        state = {"iterations": np.array(self.iterations, dtype=np.int64)}
        for name, slots in self.slots.items():
            for slot, arr in slots.items():
                state[f"{name}.{slot}"] = arr.copy() if copy else arr
        return state

    def check_state_dict(self, state: Mapping[str, Array], prefix: str = "") -> None:
        """Raise ValueError naming the entry unless ``load_state_dict(state)`` would succeed;
        changes nothing. ``prefix`` is how the entries are named in an enclosing state (a
        trainer's ``"optimizer."``), for the messages."""
        expected = {f"{n}.{s}" for n, slots in self.slots.items() for s in slots} | {"iterations"}
        missing = sorted(prefix + key for key in expected - set(state))
        unexpected = sorted(prefix + key for key in set(state) - expected)
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
                        f"Optimizer slot {prefix}{name}.{slot} must be {arr.dtype}{arr.shape}, "
                        f"as its parameter. Received: {src.dtype}{src.shape}"
                    )
                # Not NaN (its parameter would turn NaN at the next step); an infinity is a
                # state a run reaches with a finite parameter (float32 Adam squares a gradient
                # of 1e20 to an infinite v, which then holds that weight still).
                check_finite(
                    src,
                    f"Optimizer slot {prefix}{name}.{slot}",
                    "it would make its parameter NaN at the next step",
                    allow_infinite=True,
                )
                if slot in self.nonnegative_slots and src.size and src.min() < 0:
                    raise ValueError(
                        f"Optimizer slot {prefix}{name}.{slot} sums squares, so it cannot be "
                        f"negative. Received: a minimum of {float(np.min(src))}"
                    )
        int_entry(state, "iterations", prefix)

    def load_state_dict(self, state: Mapping[str, Array]) -> None:
        """Restore a ``state_dict()``, checked before anything changes."""
        self.check_state_dict(state)
        for name, slots in self.slots.items():
            for slot, arr in slots.items():
                np.copyto(arr, state[f"{name}.{slot}"])
        self.iterations = int_entry(state, "iterations")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config()})"


class SGD(Optimizer):
    """torch.optim.SGD (dampening 0):
    g <- g + wd p;  b <- mu b + g;  d = g + mu b (nesterov) or b;  p <- p - lr d.
    Without momentum d = g and no slot is kept.
    """

    name = "sgd"
    flush_slots = ("momentum",)

    def __init__(
        self,
        learning_rate: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(learning_rate, weight_decay, clip_norm)
        self.momentum = _check_number("momentum", momentum, 0.0, 1.0)
        self.nesterov = check_flag("nesterov", nesterov)
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0. Received: momentum=0.0")
        self.slot_names = ("momentum",) if self.momentum > 0 else ()

    def _update(
        self, p: Array, g: Array, slots: dict[str, Array], s1: Array, s2: Array, t: int
    ) -> None:
        g = self._decayed(p, g, s1)
        d = g
        if self.momentum:
            buf = slots["momentum"]
            buf *= self.momentum
            buf += g
            if self.nesterov:
                d = np.multiply(buf, self.momentum, out=s2)  # d = g + mu b
                d += g
            else:
                d = buf
        np.multiply(d, self.learning_rate, out=s2)
        p -= s2

    def _extra_config(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """torch.optim.Adam (Kingma & Ba with bias correction, L2 weight decay added to g):
    g <- g + wd p;  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps).

    The slots hold the moments rescaled, m' = m / (1 - b1) and v' = v / (1 - b2), so that
    m' <- b1 m' + g and v' <- b2 v' + g^2 take two passes fewer; with c2 = sqrt(1 - b2^t)
    and r = sqrt(1 - b2),
        p <- p - [lr (1 - b1) c2 / ((1 - b1^t) r)] m' / (sqrt(v') + eps c2 / r)
    is the same update (ten ufunc passes without weight decay).
    """

    name = "adam"
    flush_slots = ("m", "v")
    nonnegative_slots = ("v",)
    decoupled: ClassVar[bool] = False

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(learning_rate, weight_decay, clip_norm)
        self.slot_names = ("m", "v")
        self.beta_1 = _check_number("beta_1", beta_1, 0.0, 1.0)
        self.beta_2 = _check_number("beta_2", beta_2, 0.0, 1.0)
        self.epsilon = _check_number("epsilon", epsilon, 0.0)

    def _update(
        self, p: Array, g: Array, slots: dict[str, Array], s1: Array, s2: Array, t: int
    ) -> None:
        m, v = slots["m"], slots["v"]
        if self.decoupled:
            if self.weight_decay:
                p *= 1.0 - self.learning_rate * self.weight_decay
        else:
            g = self._decayed(p, g, s1)
        m *= self.beta_1
        m += g
        v *= self.beta_2
        np.multiply(g, g, out=s2)
        v += s2
        c2 = math.sqrt(1.0 - self.beta_2**t)
        root = math.sqrt(1.0 - self.beta_2)
        step = self.learning_rate * (1.0 - self.beta_1) * c2 / ((1.0 - self.beta_1**t) * root)
        denom = np.sqrt(v, out=s2)
        denom += self.epsilon * c2 / root
        np.divide(m, denom, out=denom)
        denom *= step
        p -= denom

    def _extra_config(self) -> dict[str, Any]:
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


class AdamW(Adam):
    """torch.optim.AdamW: Adam without the L2 term, plus decoupled decay p <- p (1 - lr wd)
    applied before the moment update (default wd 0.01)."""

    name = "adamw"
    decoupled = True

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float = 0.01,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(learning_rate, beta_1, beta_2, epsilon, weight_decay, clip_norm)


class Adagrad(Optimizer):
    """torch.optim.Adagrad:
    g <- g + wd p;  lr_t = lr / (1 + (t - 1) lr_decay);  s <- s + g^2;
    p <- p - lr_t g / (sqrt(s) + eps), with s starting at ``initial_accumulator_value``.
    """

    name = "adagrad"
    nonnegative_slots = ("sum",)

    def __init__(
        self,
        learning_rate: float = 0.01,
        lr_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        epsilon: float = 1e-10,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(learning_rate, weight_decay, clip_norm)
        self.lr_decay = _check_number("lr_decay", lr_decay, 0.0)
        self.initial_accumulator_value = _check_number(
            "initial_accumulator_value", initial_accumulator_value, 0.0
        )
        self.epsilon = _check_number("epsilon", epsilon, 0.0)
        self.slot_names = ("sum",)

    def slot_initial_value(self, slot: str) -> float:
        return self.initial_accumulator_value

    def _update(
        self, p: Array, g: Array, slots: dict[str, Array], s1: Array, s2: Array, t: int
    ) -> None:
        g = self._decayed(p, g, s1)
        acc = slots["sum"]
        np.multiply(g, g, out=s2)
        acc += s2
        denom = np.sqrt(acc, out=s2)
        denom += self.epsilon
        np.divide(g, denom, out=denom)
        denom *= self.learning_rate / (1.0 + (t - 1) * self.lr_decay)
        p -= denom

    def _extra_config(self) -> dict[str, Any]:
        return {
            "lr_decay": self.lr_decay,
            "initial_accumulator_value": self.initial_accumulator_value,
            "epsilon": self.epsilon,
        }


class RMSprop(Optimizer):
    """torch.optim.RMSprop:
    g <- g + wd p;  a <- alpha a + (1 - alpha) g^2;
    centered: gbar <- alpha gbar + (1 - alpha) g,  r = sqrt(a - gbar^2) + eps;
    otherwise r = sqrt(a) + eps;
    momentum mu > 0: b <- mu b + g / r,  p <- p - lr b;  else p <- p - lr g / r.
    """

    name = "rmsprop"
    flush_slots = ("square_avg", "momentum", "grad_avg")
    nonnegative_slots = ("square_avg",)

    def __init__(
        self,
        learning_rate: float = 0.01,
        alpha: float = 0.99,
        epsilon: float = 1e-8,
        momentum: float = 0.0,
        centered: bool = False,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(learning_rate, weight_decay, clip_norm)
        self.alpha = _check_number("alpha", alpha, 0.0, 1.0)
        self.epsilon = _check_number("epsilon", epsilon, 0.0)
        self.momentum = _check_number("momentum", momentum, 0.0, 1.0)
        self.centered = check_flag("centered", centered)
        self.slot_names = (
            ("square_avg",)
            + (("momentum",) if self.momentum > 0 else ())
            + (("grad_avg",) if self.centered else ())
        )

    def _update(
        self, p: Array, g: Array, slots: dict[str, Array], s1: Array, s2: Array, t: int
    ) -> None:
        g = self._decayed(p, g, s1)
        a = slots["square_avg"]
        a *= self.alpha
        np.multiply(g, g, out=s2)
        s2 *= 1.0 - self.alpha
        a += s2
        if self.centered:
            gbar = slots["grad_avg"]
            gbar *= self.alpha
            np.multiply(g, 1.0 - self.alpha, out=s2)
            gbar += s2
            np.multiply(gbar, gbar, out=s2)
            np.subtract(a, s2, out=s2)
            np.sqrt(s2, out=s2)
        else:
            np.sqrt(a, out=s2)
        s2 += self.epsilon
        np.divide(g, s2, out=s2)
        if self.momentum > 0:
            buf = slots["momentum"]
            buf *= self.momentum
            buf += s2
            np.multiply(buf, self.learning_rate, out=s2)
        else:
            s2 *= self.learning_rate
        p -= s2

    def _extra_config(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "epsilon": self.epsilon,
            "momentum": self.momentum,
            "centered": self.centered,
        }


REGISTRY: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (SGD, Adam, AdamW, Adagrad, RMSprop)
}


def get(identifier: object) -> Optimizer:
    """An optimizer from a name, a ``{"name": ..., **kwargs}`` dict or an instance."""
    return resolve("optimizer", REGISTRY, identifier, Optimizer)


def parameters(name: str) -> tuple[str, ...] | None:
    """The parameters optimizer `name` takes (``learning_rate``, ``beta_1``, ...), or None for a
    name it does not know: the SDK and the server check a job's optimizer settings by them."""
    return parameter_names(REGISTRY, name)


def flags(name: str) -> frozenset[str]:
    """The parameters of optimizer `name` that are flags (``nesterov``, ``centered``): a job
    carries them as 1 or 0, and the SDK sends True and False so."""
    return flag_names(REGISTRY, name)
