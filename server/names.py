"""Resource names (`datasets/{id}`, `jobs/{id}`) parsed with an error that names the field."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from trainwire.engine.errors import quoted
from trainwire.v1 import tensor_pb2

from .errors import InvalidArgument

_ID_LENGTH = 32
_ID = re.compile(rf"[0-9a-f]{{{_ID_LENGTH}}}")


def is_name(name: str, collection: str) -> bool:
    """Whether `name` is a well-formed `{collection}/{id}`."""
    return len(name) == len(collection) + 1 + _ID_LENGTH and _id_in(name, collection) is not None


def is_id(value: object) -> bool:
    """Whether `value` is an id as the store makes them (32 lowercase hex digits)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def parse_name(name: str, collection: str, field: str) -> str:
    """The id in `{collection}/{id}`; INVALID_ARGUMENT naming `field` if malformed."""
    # Only names of a well-formed name's length reach the cache: it keeps refusals too, keyed by
    # the whole string, and 4,096 remembered 4 MiB names would hold 16 GiB.
    well_formed = len(name) == len(collection) + 1 + _ID_LENGTH
    found = _id_in(name, collection) if well_formed else None
    if found is not None:
        return found
    prefix = f"{collection}/"
    if not name:
        raise InvalidArgument.field(field, f"is required, e.g. '{prefix}<id>'")
    raise InvalidArgument.field(
        field, f"must be a name like '{prefix}<32 hex digits>'. Received: {quoted(name)}"
    )


# Remembered: every prediction names its job, and the regular expression was 3% of the
# server's time on a one-row Predict at concurrency 1 (py-spy).
@functools.lru_cache(maxsize=4096)
def _id_in(name: str, collection: str) -> str | None:
    """The id of a well-formed `{collection}/{id}` name, else None."""
    prefix = f"{collection}/"
    if name.startswith(prefix) and _ID.fullmatch(name[len(prefix) :]):
        return name[len(prefix) :]
    return None


# The longest name a user gives (a dataset's, its features' and classes', an API key's note): what
# the columns that store them hold.
MAX_NAME_LENGTH = 256
# How many labels a job or a dataset may carry (`jobs.check_labels`), and so how many a ListJobs
# filter that matches anything can name.
MAX_LABELS = 64

# C0 controls (tab included: a name or a label has no use for one), DEL and C1 controls: a
# terminal that prints them runs them (ESC and CSI sequences rewrite the screen, OSC 52 sets the
# clipboard, CR overwrites the line), so text another user's CLI shows must hold none. NUL is
# one of them, and PostgreSQL refuses it.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def enum_received(enum: EnumTypeWrapper, number: int) -> str:
    """How a refusal quotes an enum field's value: by its name and number. A bare number left a
    caller that sends names (as JSON mappings and protobuf.js do) to look it up; and 0 is also
    what such a library sends for a name it does not know ("float32"), silently."""
    if number == 0:
        return f"{enum.Name(0)} (0: the field unset, or an enum name the client did not know)"
    try:
        return f"{enum.Name(number)} ({number})"
    except ValueError:
        return f"{number} (no {enum.DESCRIPTOR.name} has that number)"


# The floating dtypes features, prediction inputs and models take.
FLOAT_DTYPES = (tensor_pb2.DATA_TYPE_FLOAT32, tensor_pb2.DATA_TYPE_FLOAT64)


def check_enum(field: str, enum: EnumTypeWrapper, number: int, allowed: Sequence[int]) -> None:
    """Refuses an enum field's `number` unless it is one of `allowed`, naming them (in order)
    and quoting it by name (`enum_received`)."""
    if number in allowed:
        return
    names = [enum.Name(value) for value in allowed]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    raise InvalidArgument.field(field, f"must be {listed}. Received: {enum_received(enum, number)}")


def check_text(field: str, value: str, max_length: int) -> None:
    """Free text a user gave (names, labels): bounded, and no control character."""
    if len(value) > max_length:
        raise InvalidArgument.field(
            field, f"must be at most {max_length} characters. Received: {len(value)}"
        )
    found = _CONTROL.search(value)
    if found is not None:
        code_point = f"U+{ord(found.group()):04X}"
        raise InvalidArgument.field(
            field,
            "must not contain control characters (U+0000-U+001F, tab included, U+007F, "
            f"U+0080-U+009F). Received: {code_point} at position {found.start()} (from 0)",
        )
