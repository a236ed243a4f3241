"""Shared lookup logic behind the Keras-style ``get()`` functions of each registry module.

A registry maps a lowercase name to a class. ``resolve`` accepts a name, a dict
``{"name": ..., **kwargs}`` or an instance, so adding a component is one class plus one entry.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import numpy as np

from .errors import quoted

T = TypeVar("T")


class Configurable(Protocol):
    @property
    def name(self) -> str: ...

    def get_config(self) -> dict[str, Any]: ...


def parameter_names(registry: Mapping[str, type], name: str) -> tuple[str, ...] | None:
    """The keyword arguments the class registered as `name` takes, or None for an unknown name:
    what a caller may put beside ``"name"`` in a dict identifier."""
    cls = registry.get(name.lower())
    return None if cls is None else tuple(inspect.signature(cls).parameters)


def required_names(registry: Mapping[str, type], name: str) -> tuple[str, ...]:
    """The keyword arguments the class registered as `name` cannot do without (no default),
    empty for an unknown name: a caller that leaves one out met Python's own TypeError ("missing
    1 required positional argument"), naming no field."""
    cls = registry.get(name.lower())
    if cls is None:
        return ()
    parameters = inspect.signature(cls).parameters.items()
    return tuple(key for key, p in parameters if p.default is inspect.Parameter.empty)


def flag_names(registry: Mapping[str, type], name: str) -> frozenset[str]:
    """The keyword arguments of the class registered as `name` that are flags (annotated
    ``bool``): a job's settings carry them as 1 and 0, its parameters being numbers."""
    return _annotated_names(registry, name, FLAG_TYPES)


def text_names(registry: Mapping[str, type], name: str) -> frozenset[str]:
    """The keyword arguments of the class registered as `name` that are text (annotated
    ``str``, e.g. a schedule's ``interval``): a job's settings carry them apart from its
    numbers."""
    return _annotated_names(registry, name, TEXT_TYPES)


def _annotated_names(
    registry: Mapping[str, type], name: str, types: tuple[object, ...]
) -> frozenset[str]:
    cls = registry.get(name.lower())
    if cls is None:
        return frozenset()
    signature = inspect.signature(cls)
    return frozenset(key for key, p in signature.parameters.items() if p.annotation in types)


# An annotation as `inspect` reads it: a string under `from __future__ import annotations`.
FLAG_TYPES = ("bool", bool)
TEXT_TYPES = ("str", str)


def resolve(kind: str, registry: Mapping[str, type[T]], identifier: object, base: type[T]) -> T:
    """Turn ``identifier`` into an instance of ``base`` using ``registry``.

    Raises ValueError naming the bad value and the allowed names.
    """
    if isinstance(identifier, base):
        return identifier
    if isinstance(identifier, str):
        name: object = identifier
        kwargs: dict[str, Any] = {}
    elif isinstance(identifier, Mapping):
        kwargs = dict(identifier)
        if "name" not in kwargs:
            raise ValueError(
                f"A {kind} given as a dict needs a 'name' key; "
                f"expected one of: {', '.join(sorted(registry))}. Received: {quoted(identifier)}"
            )
        name = kwargs.pop("name")
    else:
        raise ValueError(
            f"Could not interpret {kind} identifier; expected a name, a dict with 'name' or a "
            f"{base.__name__} instance. Received: {quoted(identifier)}"
        )
    if not isinstance(name, str) or name.lower() not in registry:
        raise ValueError(
            f"Unknown {kind} {quoted(name)}; expected one of: {', '.join(sorted(registry))}. "
            f"Received: name={quoted(name)}"
        )
    cls = registry[name.lower()]
    # Python's TypeError for an argument the class does not take quotes its name whole: named
    # here instead, bounded.
    accepted = parameter_names(registry, name) or ()
    unknown = [key for key in kwargs if key not in accepted]
    if unknown:
        raise ValueError(
            f"Invalid arguments for {kind} {name!r}: {quoted(unknown[0])} is not one of its "
            f"parameters ({', '.join(accepted) or 'it takes none'}). Received: {quoted(kwargs)}"
        )
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(
            f"Invalid arguments for {kind} {name!r}: {exc}. Received: {quoted(kwargs)}"
        ) from exc


def serialize(obj: Configurable) -> str | dict[str, Any]:
    """The JSON form of a registry component: its name, or a dict when it has arguments."""
    config = obj.get_config()
    if not config:
        return obj.name
    return {"name": obj.name, **config}


def check_number(
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
) -> float:
    """``value`` as a float inside the interval; ValueError naming ``name`` and the value."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = math.isfinite(v) and (v >= low if low_inclusive else v > low)
        ok = ok and (v <= high if high_inclusive else v < high)
    if not ok:
        lo = "[" if low_inclusive else "("
        hi = "]" if high_inclusive else ")"
        raise ValueError(
            f"{name} must be a number in {lo}{low}, {high}{hi}. Received: {name}={quoted(value)}"
        )
    return float(value)  # type: ignore[arg-type]


def check_flag(name: str, value: object) -> bool:
    """``value`` as a bool: True or False, or 1 or 0 (a job's parameters travel as numbers);
    ValueError naming ``name`` and the value for anything else."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be true or false (or 1 or 0). Received: {name}={quoted(value)}")


def check_int(name: str, value: object, low: int = 0) -> int:
    """``value`` as an int >= ``low``; ValueError naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}. Received: {name}={quoted(value)}")
    return int(value)


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``; ValueError listing them otherwise."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"{name} must be one of: {', '.join(allowed)}. Received: {name}={quoted(value)}"
        )
    return value
