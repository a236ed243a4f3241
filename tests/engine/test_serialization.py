"""save_state / load_state: safetensors bytes, metadata, and rejection of bad input."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from trainwire.engine import load_state, save_state
from trainwire.engine.serialization import state_header


def _arrays() -> dict[str, np.ndarray]:
    return {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "d": np.linspace(0, 1, 5),
        "step": np.array(7, dtype=np.int64),
        "empty": np.zeros(0, dtype=np.int64),
        "bytes": np.frombuffer(b'{"a": 1}', dtype=np.uint8),
        "t": np.arange(6, dtype=np.float64).reshape(2, 3).T,  # non-contiguous input
    }


def test_round_trip_with_metadata() -> None:
    arrays = _arrays()
    data = save_state(arrays, {"spec": '{"input_dim": 4}', "version": "1"})
    assert isinstance(data, bytes)
    loaded, meta = load_state(data)
    assert meta == {"spec": '{"input_dim": 4}', "version": "1"}
    assert loaded.keys() == arrays.keys()
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v), k
    loaded["w"][0, 0] = 99.0  # writable copies
    assert load_state(save_state({}))[0] == {}
    assert load_state(save_state({"a": np.ones(2)}))[1] == {}


def test_no_pickle_in_output() -> None:
    data = save_state(_arrays())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    assert header["w"]["dtype"] == "F32"
    assert b"\x80\x04" not in data[: 8 + header_len]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"not a safetensors file at all, just some bytes" * 3,
        struct.pack("<Q", 10**12) + b"{}",
        struct.pack("<Q", 4) + b"\xff\xfe{}",
        struct.pack("<Q", 2) + b"[]",
        struct.pack("<Q", 7) + b"nojson!",
        struct.pack("<Q", 20_000) + b"[" * 10_000 + b"]" * 10_000,  # deeper than json parses
    ],
)
def test_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        load_state(data)


def test_rejects_truncated_and_corrupted() -> None:
    data = save_state(_arrays(), {"k": "v"})
    for cut in (4, 9, len(data) // 2, len(data) - 1):
        with pytest.raises(ValueError):
            load_state(data[:cut])
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    header["w"]["data_offsets"] = [0, 10**6]
    bad_header = json.dumps(header).encode()
    with pytest.raises(ValueError, match="Corrupt"):
        load_state(struct.pack("<Q", len(bad_header)) + bad_header + data[8 + header_len :])
    with pytest.raises(ValueError):
        load_state("text")  # type: ignore[arg-type]


def test_rejects_object_dtypes_and_bad_metadata() -> None:
    with pytest.raises(ValueError, match="unsupported dtype object"):
        save_state({"o": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="unsupported dtype"):
        save_state({"s": np.array(["abc"])})
    with pytest.raises(ValueError, match="metadata"):
        save_state({}, {"k": 1})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("features", "targets"),
    [
        ("<f4", "<f4"),
        ("<f8", "<f4"),
        ("<f8", "<f8"),
        ("<f4", "<i8"),  # safetensors writes the wider targets first
        ("<f8", "<i8"),
    ],
)
def test_a_state_built_after_its_header_is_read_as_save_state_writes_it(
    features: str, targets: str
) -> None:
    """An upload is stored as `state_header` and the arrays' bytes after it (no second copy from
    `save_state`): `load_state` reads it back alike, and in save_state's order it is its bytes."""
    arrays = {
        "features": np.arange(15).astype(features).reshape(5, 3),
        "targets": np.arange(5).astype(targets),
    }
    header = state_header([(name, a.dtype, a.shape) for name, a in arrays.items()])
    data = header + b"".join(a.tobytes() for a in arrays.values())
    assert len(header) % 8 == 0
    loaded, metadata = load_state(data)
    assert metadata == {}
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array), name
    if np.dtype(targets).itemsize < np.dtype(features).itemsize or targets == features:
        assert data == save_state(arrays)
