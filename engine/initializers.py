"""Weight initializers: each draws an array of a given shape and dtype from one Generator.

``get(identifier)`` accepts a name, ``{"name": ..., **kwargs}`` or an instance.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ._registry import resolve
from ._types import Array


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a (in, out) kernel; a vector uses its length for both."""
    if len(shape) == 2:
        return shape[0], shape[1]
    size = int(np.prod(shape)) if shape else 1
    return size, size


class Initializer:
    """Base class: ``init(shape, dtype, rng)`` returns a new array."""

    name: ClassVar[str] = ""

    def __call__(
        self, shape: tuple[int, ...], dtype: np.dtype[Any], rng: np.random.Generator
    ) -> Array:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config()})"


class Zeros(Initializer):
    name = "zeros"

    def __call__(
        self, shape: tuple[int, ...], dtype: np.dtype[Any], rng: np.random.Generator
    ) -> Array:
        return np.zeros(shape, dtype=dtype)


class Ones(Initializer):
    name = "ones"

    def __call__(
        self, shape: tuple[int, ...], dtype: np.dtype[Any], rng: np.random.Generator
    ) -> Array:
        return np.ones(shape, dtype=dtype)


class _Uniform(Initializer):
    """U(-limit, limit) with limit = sqrt(scale / fan)."""

    scale: ClassVar[float] = 1.0

    def _fan(self, fan_in: int, fan_out: int) -> float:
        raise NotImplementedError

    def __call__(
        self, shape: tuple[int, ...], dtype: np.dtype[Any], rng: np.random.Generator
    ) -> Array:
        limit = math.sqrt(self.scale / self._fan(*_fans(shape)))
        return rng.uniform(-limit, limit, size=shape).astype(dtype, copy=False)


class _Normal(Initializer):
    """N(0, std^2) with std = sqrt(scale / fan) (not truncated, as torch's kaiming/xavier)."""

    scale: ClassVar[float] = 1.0

    def _fan(self, fan_in: int, fan_out: int) -> float:
        raise NotImplementedError

    def __call__(
        self, shape: tuple[int, ...], dtype: np.dtype[Any], rng: np.random.Generator
    ) -> Array:
        std = math.sqrt(self.scale / self._fan(*_fans(shape)))
        return (rng.standard_normal(size=shape) * std).astype(dtype, copy=False)


class GlorotUniform(_Uniform):
    """limit = sqrt(6 / (fan_in + fan_out))."""

    name = "glorot_uniform"
    scale = 6.0

    def _fan(self, fan_in: int, fan_out: int) -> float:
        return fan_in + fan_out


class GlorotNormal(_Normal):
    """std = sqrt(2 / (fan_in + fan_out))."""

    name = "glorot_normal"
    scale = 2.0

    def _fan(self, fan_in: int, fan_out: int) -> float:
        return fan_in + fan_out


class HeUniform(_Uniform):
    """limit = sqrt(6 / fan_in)."""

    name = "he_uniform"
    scale = 6.0

    def _fan(self, fan_in: int, fan_out: int) -> float:
        return fan_in


class HeNormal(_Normal):
    """std = sqrt(2 / fan_in)."""

    name = "he_normal"
    scale = 2.0

    def _fan(self, fan_in: int, fan_out: int) -> float:
        return fan_in


REGISTRY: dict[str, type[Initializer]] = {
    cls.name: cls for cls in (Zeros, Ones, GlorotUniform, GlorotNormal, HeUniform, HeNormal)
}


def get(identifier: object) -> Initializer:
    """An initializer from a name, a ``{"name": ...}`` dict or an instance."""
    return resolve("initializer", REGISTRY, identifier, Initializer)
