"""Shared lookup logic behind the Keras-style ``get()`` functions of each registry module.

A registry maps a lowercase name to a class. ``resolve`` accepts a name, a dict
``{"name": ..., **kwargs}`` or an instance, so adding a component is one class plus one entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Configurable(Protocol):
    @property
    def name(self) -> str: ...

    def get_config(self) -> dict[str, Any]: ...


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
                f"expected one of: {', '.join(sorted(registry))}. Received: {identifier!r}"
            )
        name = kwargs.pop("name")
    else:
        raise ValueError(
            f"Could not interpret {kind} identifier; expected a name, a dict with 'name' or a "
            f"{base.__name__} instance. Received: {identifier!r}"
        )
    if not isinstance(name, str) or name.lower() not in registry:
        raise ValueError(
            f"Unknown {kind} {name!r}; expected one of: {', '.join(sorted(registry))}. "
            f"Received: name={name!r}"
        )
    cls = registry[name.lower()]
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(
            f"Invalid arguments for {kind} {name!r}: {exc}. Received: {kwargs!r}"
        ) from exc


def serialize(obj: Configurable) -> str | dict[str, Any]:
    """The JSON form of a registry component: its name, or a dict when it has arguments."""
    config = obj.get_config()
    if not config:
        return obj.name
    return {"name": obj.name, **config}
