"""Pickle-free (de)serialisation of named arrays as safetensors bytes.

``save_state(arrays, metadata)`` produces safetensors bytes with string metadata in the header's
``__metadata__``; ``load_state(data)`` reads them back and raises ValueError on corrupt or
truncated input. Object dtypes are rejected both ways.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence

import numpy as np
import safetensors.numpy

from ._types import Array

_HEADER_LIMIT = 100 * 1024 * 1024

# safetensors' names of the dtypes a header gives, by NumPy kind and item size.
_SAFETENSORS_DTYPES = {
    "b1": "BOOL", "u1": "U8", "i1": "I8", "u2": "U16", "i2": "I16", "u4": "U32", "i4": "I32",
    "u8": "U64", "i8": "I64", "f2": "F16", "f4": "F32", "f8": "F64",
}  # fmt: skip


def save_state(
    arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialise named numeric arrays (and optional string metadata) to safetensors bytes."""
    prepared: dict[str, Array] = {}
    for name, value in arrays.items():
        if not isinstance(name, str):
            raise ValueError(f"Array names must be strings. Received: {name!r}")
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise ValueError(
                f"Array {name!r} has unsupported dtype {arr.dtype}; only bool, integer and "
                f"float arrays can be saved"
            )
        # (np.ascontiguousarray would turn 0-d arrays into shape (1,).)
        prepared[name] = arr if arr.flags.c_contiguous else arr.copy(order="C")
    meta: dict[str, str] | None = None
    if metadata is not None:
        meta = {}
        for key, val in metadata.items():
            if not isinstance(key, str) or not isinstance(val, str):
                raise ValueError(
                    f"metadata keys and values must be strings. Received: {key!r}: {val!r}"
                )
            meta[key] = val
    return bytes(safetensors.numpy.save(prepared, metadata=meta))


def state_header(arrays: Sequence[tuple[str, np.dtype, tuple[int, ...]]]) -> bytes:
    """The bytes a safetensors state of `arrays` (name, dtype, shape) starts with: the header's
    length, then the header, as `save_state` writes them. The arrays' data follows it, each as
    its little-endian C-order bytes, back to back in the order given.

    This lets a caller build a state in one buffer it fills itself (an upload's chunks land at
    their final place) instead of having `save_state` copy the arrays into a second one. Given
    in the order `save_state` writes them (safetensors' own, by dtype), the bytes are the same
    as its; in another order they are still a state `load_state` (and safetensors) reads."""
    entries: dict[str, object] = {}
    offset = 0
    for name, dtype, shape in arrays:
        code = _SAFETENSORS_DTYPES.get(f"{dtype.kind}{dtype.itemsize}")
        if code is None:
            raise ValueError(f"Array {name!r} has unsupported dtype {dtype}")
        end = offset + dtype.itemsize * math.prod(shape)
        entries[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # safetensors pads it to 8 bytes, aligning the data
    return struct.pack("<Q", len(header)) + header


def load_state(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read ``save_state`` bytes back: (arrays, metadata). ValueError on anything malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"load_state expects bytes. Received: {type(data).__name__}")
    raw = bytes(data)
    if len(raw) < 8:
        raise ValueError(f"Not a safetensors state: {len(raw)} bytes is shorter than the header")
    (header_len,) = struct.unpack("<Q", raw[:8])
    if header_len > min(len(raw) - 8, _HEADER_LIMIT):
        raise ValueError(
            f"Not a safetensors state or truncated: header length {header_len} exceeds the "
            f"{len(raw) - 8} bytes present"
        )
    try:
        header = json.loads(raw[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Not a safetensors state: header is not valid JSON ({exc})") from exc
    except RecursionError:  # JSON nested deeper than Python's parser goes (safetensors' never is)
        raise ValueError("Not a safetensors state: header is nested too deeply") from None
    if not isinstance(header, dict):
        raise ValueError("Not a safetensors state: header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError("Corrupt safetensors state: __metadata__ must map strings to strings")
    try:
        loaded = safetensors.numpy.load(raw)
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise ValueError(f"Corrupt or truncated safetensors state: {exc}") from exc
    arrays: dict[str, np.ndarray] = {}
    for name, arr in loaded.items():
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"Array {name!r} has unsupported dtype {arr.dtype}")
        arrays[name] = np.array(arr, copy=True)
    return arrays, dict(metadata)
