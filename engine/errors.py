"""Exceptions raised by the engine."""

from __future__ import annotations


class SpecError(ValueError):
    """A model spec is invalid; the message names the field path and the received value."""
