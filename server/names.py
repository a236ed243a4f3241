"""Resource names (`datasets/{id}`, `jobs/{id}`) parsed with an error that names the field."""

from __future__ import annotations

import re

from .errors import InvalidArgument

_ID = re.compile(r"^[0-9a-f]{32}$")


def parse_name(name: str, collection: str, field: str) -> str:
    """The id in `{collection}/{id}`; INVALID_ARGUMENT naming `field` if malformed."""
    prefix = f"{collection}/"
    if not name:
        raise InvalidArgument.field(field, f"is required, e.g. '{prefix}<id>'")
    if not name.startswith(prefix) or not _ID.match(name[len(prefix) :]):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise InvalidArgument.field(
            field, f"must be a name like '{prefix}<32 hex digits>'. Received: {shown!r}"
        )
    return name[len(prefix) :]


def check_text(field: str, value: str, max_length: int) -> None:
    """Free text a user gave (names, labels): bounded, and no NUL (PostgreSQL refuses it)."""
    if len(value) > max_length:
        raise InvalidArgument.field(
            field, f"must be at most {max_length} characters. Received: {len(value)}"
        )
    if "\x00" in value:
        raise InvalidArgument.field(field, "must not contain NUL characters")
