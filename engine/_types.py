"""Type aliases and dtype handling shared by the engine modules."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
DTypeLike = str | np.dtype[Any] | type[np.floating[Any]]

SUPPORTED_DTYPES = ("float32", "float64")


def as_float_dtype(dtype: object) -> np.dtype[Any]:
    """Normalise ``dtype`` to float32 or float64; anything else is a ValueError."""
    resolved: np.dtype[Any] | None = None
    if dtype is not None:
        try:
            resolved = np.dtype(dtype)  # type: ignore[call-overload]
        except TypeError:
            resolved = None
    if resolved is None or resolved.name not in SUPPORTED_DTYPES:
        raise ValueError(
            f"dtype must be one of: {', '.join(SUPPORTED_DTYPES)}. Received: dtype={dtype!r}"
        )
    return resolved
