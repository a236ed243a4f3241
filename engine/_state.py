"""Reading one number back out of a ``state_dict()``, checked.

A state comes back from a checkpoint that may be damaged or written by another version, and
``int(np.asarray(x))`` takes too much: a float epoch, a negative step or a one-element matrix
would all convert and resume a run wrongly instead of failing. Messages name the entry as the
enclosing state names it (``prefix + key``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ._types import Array


def _one_value(state: Mapping[str, Array], key: str, prefix: str, kinds: str, what: str) -> Array:
    arr = np.asarray(state[key])
    if arr.size != 1 or arr.dtype.kind not in kinds:
        raise ValueError(
            f"State entry {prefix + key!r} must be {what}. "
            f"Received: {arr.dtype} array of shape {arr.shape}"
        )
    return arr.reshape(())


def int_entry(state: Mapping[str, Array], key: str, prefix: str = "", low: int = 0) -> int:
    """``state[key]`` as an int >= ``low``; ValueError naming the entry otherwise."""
    value = int(_one_value(state, key, prefix, "iu", "one integer"))
    if value < low:
        raise ValueError(f"State entry {prefix + key!r} must be >= {low}. Received: {value}")
    return value


def flag_entry(state: Mapping[str, Array], key: str, prefix: str = "") -> bool:
    """``state[key]`` (0 or 1) as a bool; ValueError naming the entry otherwise."""
    value = int(_one_value(state, key, prefix, "biu", "one flag, 0 or 1"))
    if value not in (0, 1):
        raise ValueError(f"State entry {prefix + key!r} must be 0 or 1. Received: {value}")
    return bool(value)


def float_entry(
    state: Mapping[str, Array], key: str, prefix: str = "", allow_nan: bool = False
) -> float:
    """``state[key]`` as a float (infinities allowed, NaN only if ``allow_nan``)."""
    value = float(_one_value(state, key, prefix, "iuf", "one number"))
    if math.isnan(value) and not allow_nan:
        raise ValueError(f"State entry {prefix + key!r} must be a number. Received: nan")
    return value


def check_finite(arr: Array, label: str, reason: str, allow_infinite: bool = False) -> None:
    """ValueError naming ``label`` (as the messages name the entry) unless every entry of the
    floating array ``arr`` is finite (``allow_infinite``: is no NaN); ``reason`` says what such
    a value there would do.

    A min and a max (NaN propagates through both) cost two passes and no temporary array on a
    state that loads; the first bad entry is looked for only to say which one it is.
    """
    if arr.size == 0:
        return
    low, high = float(arr.min()), float(arr.max())
    if (math.isfinite(low) and math.isfinite(high)) or (
        allow_infinite and not (math.isnan(low) or math.isnan(high))
    ):
        return
    bad = np.isnan(arr) if allow_infinite else ~np.isfinite(arr)
    first = np.unravel_index(int(np.argmax(bad)), arr.shape)
    where = f" at index {tuple(int(i) for i in first)}" if arr.ndim else ""
    kind = "NaN" if allow_infinite else "NaN or infinite"
    raise ValueError(
        f"{label} must {'not be NaN' if allow_infinite else 'be finite'}: {reason}. "
        f"Received: {arr[first]}{where} ({int(bad.sum())} of {arr.size} entries are {kind})"
    )
