"""Exceptions raised by the engine, and `quoted`, how every error message of Trainwire (the
engine's, the server's, the SDK's) shows a value it was given."""

from __future__ import annotations

# The most characters of a value an error message shows: enough to recognise it, and a message
# stays far under the metadata a gRPC status travels in (a 10,000-character name, quoted whole,
# made the status exceed the client's 16 KiB limit, which then saw only that).
QUOTED_CHARACTERS = 64


class SpecError(ValueError):
    """A model spec is invalid; the message names the field path and the received value."""


def quoted(value: object, limit: int = QUOTED_CHARACTERS) -> str:
    """`value` as an error message shows it: its repr, bounded. A string longer than `limit`
    characters shows its first `limit` and its length (`'xxxx'…(10000 characters)`); the repr of
    anything else is cut after `limit` characters the same way (`{'xx…(10012 characters)`)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}…({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} characters)"
