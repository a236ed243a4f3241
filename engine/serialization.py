"""Pickle-free (de)serialisation of named arrays as safetensors bytes.

``save_state(arrays, metadata)`` produces safetensors bytes with string metadata in the header's
``__metadata__``; ``load_state(data)`` reads them back and raises ValueError on corrupt or
truncated input. Object dtypes are rejected both ways. ``state_buffer`` builds the same state in
one buffer, copying each array once. ``read_state(pieces, size)`` reads the
same bytes given a piece at a time (a database blob read in pieces), each array allocated once
from the header and filled in place, so the whole bytes are never held; given `keep`, it
allocates only the arrays kept and reads past the others.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import safetensors.numpy

from ._types import Array

_HEADER_LIMIT = 100 * 1024 * 1024

# safetensors' names of the dtypes a header gives, by NumPy kind and item size.
_SAFETENSORS_DTYPES = {
    "b1": "BOOL", "u1": "U8", "i1": "I8", "u2": "U16", "i2": "I16", "u4": "U32", "i4": "I32",
    "u8": "U64", "i8": "I64", "f2": "F16", "f4": "F32", "f8": "F64",
}  # fmt: skip
# The NumPy dtype of each of those names (safetensors' data is little-endian).
_NUMPY_DTYPES = {code: np.dtype(f"<{kind}") for kind, code in _SAFETENSORS_DTYPES.items()}
# An array converted as it is read (`read_state`'s dtypes) goes through a buffer of this size.
_CONVERT_BYTES = 1024 * 1024


def save_state(
    arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialise named numeric arrays (and optional string metadata) to safetensors bytes."""
    return bytes(safetensors.numpy.save(_prepared(arrays), metadata=_checked_metadata(metadata)))


def state_buffer(
    arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> bytearray:
    """``save_state``'s state built in one buffer: the arrays in the order given (which
    safetensors, so every release's ``load_state``, reads alike), each copied once to its
    place. safetensors held the state twice at once (its buffer, then the bytes made of it):
    for a large model's checkpoint, twice its size on top of the trainer."""
    prepared = _prepared(arrays)
    layout = [(name, arr.dtype, arr.shape) for name, arr in prepared.items()]
    header = state_header(layout, _checked_metadata(metadata))
    buffer = bytearray(len(header) + sum(arr.nbytes for arr in prepared.values()))
    view = memoryview(buffer)  # a bytearray's own slice assignment copies the value first
    view[: len(header)] = header
    offset = len(header)
    for arr in prepared.values():
        little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)  # safetensors' byte order
        view[offset : offset + arr.nbytes] = little.reshape(-1).view(np.uint8).data
        offset += arr.nbytes
    view.release()
    return buffer


def _prepared(arrays: Mapping[str, np.ndarray]) -> dict[str, Array]:
    """The arrays as C-contiguous numeric arrays; ValueError naming one that is not numeric."""
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
    return prepared


def _checked_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    checked = {}
    for key, val in metadata.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise ValueError(
                f"metadata keys and values must be strings. Received: {key!r}: {val!r}"
            )
        checked[key] = val
    return checked


def state_header(
    arrays: Sequence[tuple[str, np.dtype, tuple[int, ...]]],
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """The bytes a safetensors state of `arrays` (name, dtype, shape) and `metadata` starts
    with: the header's length, then the header, as `save_state` writes them. The arrays' data
    follows it, each as its little-endian C-order bytes, back to back in the order given.

    This lets a caller build a state in one buffer it fills itself (an upload's chunks land at
    their final place) instead of having `save_state` copy the arrays into a second one. Given
    in the order `save_state` writes them (safetensors' own, by dtype), the bytes are the same
    as its; in another order they are still a state `load_state` (and safetensors) reads."""
    entries: dict[str, object] = {} if metadata is None else {"__metadata__": dict(metadata)}
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
    view = memoryview(data).cast("B")
    return read_state([view], len(view))


def read_state(
    pieces: Iterable[bytes | bytearray | memoryview],
    size: int,
    dtypes: Mapping[str, np.dtype] | None = None,
    keep: Callable[[str], bool] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``load_state`` of the `size` bytes `pieces` give one after the other, of any lengths.

    Each array is allocated from the header and its bytes copied into it as they come: the
    process holds the arrays and one piece, where reading whole bytes held them, safetensors'
    copy and ours (three times the state). An array named in `dtypes` is converted to that
    dtype as it is read (the values `astype` gives), so it is never held in both. Given `keep`,
    only the arrays whose names it keeps are returned, and only they are allocated (a model's
    weights from a checkpoint that also holds its optimizer's moments, twice their size for
    Adam). ValueError on anything malformed, as safetensors' own checks refuse it: the arrays
    must fill the bytes after the header exactly, back to back, kept or not."""
    stream = _Pieces(pieces)
    head = _read_exactly(stream, 8, "the header")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > min(size - 8, _HEADER_LIMIT):
        raise ValueError(
            f"Not a safetensors state or truncated: header length {header_len} exceeds the "
            f"{size - 8} bytes present"
        )
    header = _parse_header(_read_exactly(stream, header_len, "the header"))
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError("Corrupt safetensors state: __metadata__ must map strings to strings")
    layout = _layout(header, size - 8 - header_len)
    arrays: dict[str, np.ndarray] = {}
    for name, dtype, shape in layout:
        if keep is not None and not keep(name):
            _skip(stream, name, dtype.itemsize * math.prod(shape))
            continue
        wanted = np.dtype((dtypes or {}).get(name, dtype))
        arrays[name] = _read_array(stream, name, dtype, shape, wanted)
    if not stream.at_end():
        raise ValueError(f"Corrupt or truncated safetensors state: more than {size} bytes")
    return arrays, dict(metadata)


class _Pieces:
    """Pieces of bytes read as one stream."""

    def __init__(self, pieces: Iterable[bytes | bytearray | memoryview]) -> None:
        self._pieces: Iterator[bytes | bytearray | memoryview] = iter(pieces)
        self._rest = memoryview(b"")

    def _next(self) -> bool:
        piece = next(self._pieces, None)
        if piece is None:
            return False
        self._rest = memoryview(piece).cast("B")
        return True

    def read_into(self, target: memoryview) -> int:
        """Fills `target` from the stream; the bytes filled (fewer only at its end)."""
        filled = 0
        while filled < len(target):
            if not self._rest and not self._next():
                break
            count = min(len(self._rest), len(target) - filled)
            target[filled : filled + count] = self._rest[:count]
            self._rest = self._rest[count:]
            filled += count
        return filled

    def skip(self, count: int) -> int:
        """Reads past `count` bytes of the stream; the bytes passed (fewer only at its end)."""
        passed = 0
        while passed < count:
            if not self._rest and not self._next():
                break
            step = min(len(self._rest), count - passed)
            self._rest = self._rest[step:]
            passed += step
        return passed

    def at_end(self) -> bool:
        while not self._rest:
            if not self._next():
                return True
        return False


def _read_exactly(stream: _Pieces, count: int, what: str) -> bytes:
    buffer = bytearray(count)
    got = stream.read_into(memoryview(buffer))
    if got < count:
        raise ValueError(f"Not a safetensors state or truncated: {what} ends after {got} bytes")
    return bytes(buffer)


def _parse_header(raw: bytes) -> dict[str, object]:
    try:
        # Decoded first: `json.loads` of bytes would skip a byte-order mark, which safetensors
        # (every older release's reader) refuses.
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Not a safetensors state: header is not valid JSON ({exc})") from exc
    except RecursionError:  # JSON nested deeper than Python's parser goes (safetensors' never is)
        raise ValueError("Not a safetensors state: header is nested too deeply") from None
    if not isinstance(header, dict):
        raise ValueError("Not a safetensors state: header is not a JSON object")
    return header


def _layout(
    header: Mapping[str, object], data_bytes: int
) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """The arrays a header describes, in the order of their bytes: (name, dtype, shape).
    Checked as safetensors checks them: known dtypes, a byte range the shape fills, ranges
    back to back from 0 to the end of the bytes."""
    entries = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise ValueError(
                f"Corrupt or truncated safetensors state: entry {name!r} is not an object"
            )
        code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(code, str) or code not in _NUMPY_DTYPES:
            raise ValueError(f"Array {name!r} has unsupported dtype {code!r}")
        if not _is_int_list(shape, None) or not _is_int_list(offsets, 2):
            raise ValueError(
                f"Corrupt or truncated safetensors state: entry {name!r} needs a shape and "
                f"two data offsets of non-negative integers. Received: {entry!r}"
            )
        assert isinstance(shape, list) and isinstance(offsets, list)
        dtype = _NUMPY_DTYPES[code]
        elements = _elements(shape, data_bytes // dtype.itemsize)
        if elements is None:
            raise ValueError(
                f"Corrupt or truncated safetensors state: entry {name!r} has {len(shape)} "
                f"dimensions, more elements than the state's {data_bytes} bytes hold, or more "
                f"than {_MAX_DIMENSIONS} dimensions"
            )
        if offsets[1] - offsets[0] != dtype.itemsize * elements:
            raise ValueError(
                f"Corrupt or truncated safetensors state: entry {name!r} of shape {shape} "
                f"({code}) has data offsets {offsets}"
            )
        entries.append((offsets[0], offsets[1], name, dtype, tuple(shape)))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    end = 0
    for begin, stop, name, _, _ in entries:
        if begin != end:
            raise ValueError(
                f"Corrupt or truncated safetensors state: entry {name!r} starts at byte "
                f"{begin} of the data, not {end}"
            )
        end = stop
    if end != data_bytes:
        raise ValueError(
            f"Corrupt or truncated safetensors state: the arrays take {end} bytes, the state "
            f"holds {data_bytes} after its header"
        )
    return [(name, dtype, shape) for _, _, name, dtype, shape in entries]


# The most dimensions an array of a state may have (safetensors' own states have a handful),
# and the most elements of an empty one's other dimensions (NumPy's bound, with room to spare).
_MAX_DIMENSIONS = 64
_MAX_EMPTY_ELEMENTS = 2**59


def _elements(shape: Sequence[int], limit: int) -> int | None:
    """The number of elements of `shape`, or None when it has more than `_MAX_DIMENSIONS`
    dimensions or more than `limit` elements (what the bytes could hold; an empty array's other
    dimensions, more than NumPy allocates). Counted a dimension at a time, stopping past the
    bound: the product of a corrupt header's thousands-of-digits sizes took minutes to compute
    before it could be refused."""
    if len(shape) > _MAX_DIMENSIONS:
        return None
    empty = 0 in shape
    bound = _MAX_EMPTY_ELEMENTS if empty else limit
    count = 1
    for size in shape:
        count *= size or 1
        if count > bound:
            return None
    return 0 if empty else count


def _is_int_list(value: object, length: int | None) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )


def _read_array(
    stream: _Pieces, name: str, dtype: np.dtype, shape: tuple[int, ...], wanted: np.dtype
) -> np.ndarray:
    """The next array of the stream, of `dtype` and `shape`, as `wanted`."""
    if wanted.kind not in "biuf":
        raise ValueError(f"Array {name!r} cannot be read as {wanted}")
    if wanted != dtype and not (dtype.kind == "f" and wanted.kind == "f"):
        # Only floats are converted (a dataset's features, to the model's dtype): a corrupt
        # state whose array claimed bool or uint8 would otherwise grow 8 times as it is read.
        raise ValueError(
            f"Array {name!r} is stored as {dtype}, not a float: cannot read it as {wanted}"
        )
    array = np.empty(shape, dtype=wanted)
    flat = array.reshape(-1)
    if wanted == dtype:
        _fill(stream, name, flat.view(np.uint8).data)
        return array
    step = max(_CONVERT_BYTES // dtype.itemsize, 1)
    buffer = np.empty(min(step, flat.size), dtype=dtype)
    for start in range(0, flat.size, step):
        part = buffer[: min(step, flat.size - start)]
        _fill(stream, name, part.view(np.uint8).data)
        flat[start : start + part.size] = part
    return array


def _fill(stream: _Pieces, name: str, target: memoryview) -> None:
    if stream.read_into(target) < len(target):
        raise ValueError(f"Corrupt or truncated safetensors state: array {name!r} is cut short")


def _skip(stream: _Pieces, name: str, count: int) -> None:
    if stream.skip(count) < count:
        raise ValueError(f"Corrupt or truncated safetensors state: array {name!r} is cut short")
