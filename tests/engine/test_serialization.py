"""save_state / load_state: safetensors bytes, metadata, and rejection of bad input."""

from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest
import safetensors.numpy

from trainwire.engine import load_state, read_state, save_state, state_buffer
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


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


@pytest.mark.parametrize("piece", [1, 3, 8, 13, 4096])
def test_read_state_reads_pieces_of_any_length_as_load_state_reads_the_whole(piece: int) -> None:
    """A database blob is read a piece at a time, the pieces cutting through the header and
    the arrays anywhere."""
    data = save_state({**_arrays(), "flag": np.array([True, False])}, {"k": "v"})
    whole, whole_metadata = load_state(data)
    loaded, metadata = read_state(_pieces(data, piece), len(data))
    assert metadata == whole_metadata == {"k": "v"}
    assert list(loaded) == list(whole)
    for name, array in whole.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        assert loaded[name].tobytes() == array.tobytes(), name
        assert loaded[name].flags.writeable and loaded[name].flags.c_contiguous, name


def test_read_state_converts_the_arrays_named_as_astype_does() -> None:
    """The worker reads float32 features as a float64 model's: the values `astype` (and the
    engine's own conversion) gives, never the float32 array and its copy at once."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((300, 7)).astype(np.float32)
    counts = rng.integers(-5, 5, (300, 7))
    data = save_state({"features": features, "counts": counts, "targets": features[:, 0]})
    loaded, _ = read_state(_pieces(data, 1000), len(data), {"features": np.dtype(np.float64)})
    assert loaded["features"].dtype == np.float64
    assert np.array_equal(loaded["features"], features.astype(np.float64))
    assert loaded["targets"].dtype == np.float32  # not named: as stored
    # Only floats are converted: a corrupt state's bool or uint8 array would grow 8 times.
    with pytest.raises(ValueError, match="'counts' is stored as int64, not a float"):
        read_state(_pieces(data, 1000), len(data), {"counts": np.dtype(np.float32)})


def test_read_state_keeps_only_the_arrays_asked_for_and_allocates_no_other() -> None:
    """The model cache reads a trainer's checkpoint for the model's weights: Adam's two moments
    beside them (twice their size) were read, and held, for nothing."""
    rng = np.random.default_rng(0)
    weights = {"model.w": rng.standard_normal(50_000), "model.b": rng.standard_normal(10)}
    moments = {f"optimizer.{k}": rng.standard_normal(50_000) for k in ("m", "v")}
    data = save_state({**moments, **weights}, {"k": "v"})
    pieces = _pieces(data, 4096)
    tracemalloc.start()
    try:
        loaded, metadata = read_state(
            pieces, len(data), keep=lambda name: name.startswith("model.")
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert metadata == {"k": "v"}
    assert loaded.keys() == weights.keys()
    for name, array in weights.items():
        assert loaded[name].tobytes() == array.tobytes(), name
    assert peak < 1.2 * sum(a.nbytes for a in weights.values()), peak
    # The arrays passed over are still checked as the state's: cut short, or a header whose
    # layout is wrong, is refused whichever arrays are kept.
    with pytest.raises(ValueError, match="is cut short"):  # in an array passed over
        read_state(_pieces(data[:-8], 100), len(data), keep=lambda name: False)
    broken = _state_with(
        {"skipped": {"dtype": "F64", "shape": [1], "data_offsets": [0, 4]}}, bytes(8)
    )
    with pytest.raises(ValueError, match="entry 'skipped' of shape"):
        read_state([broken], len(broken), keep=lambda name: False)


def _state_with(entries: dict[str, object], data: bytes = b"") -> bytes:
    header = json.dumps(entries).encode()
    return struct.pack("<Q", len(header)) + header + data


def test_read_state_refuses_a_shape_too_large_for_its_bytes_before_multiplying_it() -> None:
    """A corrupt header's shape of hundreds of 4,000-digit sizes: their product took seconds
    to compute (minutes for a few MB of header) before the offsets refused it; safetensors
    refuses it at once. So do too many dimensions."""
    huge = int("9" * 4000)
    for shape in ([huge] * 200, [1] * 65, [5, 4], [huge, 0], [2**40, 2**40, 0]):
        entry = {"dtype": "F32", "shape": shape, "data_offsets": [0, 4]}
        with pytest.raises(ValueError, match="more elements than the state's 4 bytes hold"):
            load_state(_state_with({"a": entry}, b"x" * 4))
    # An empty array's other dimensions may be anything NumPy allocates, as safetensors reads.
    state = _state_with({"a": {"dtype": "F32", "shape": [10**6, 0, 3], "data_offsets": [0, 0]}})
    assert load_state(state)[0]["a"].shape == safetensors.numpy.load(state)["a"].shape


def test_read_state_refuses_metadata_and_encodings_safetensors_refuses() -> None:
    """What an older release (safetensors' reader) refuses must not load here either."""
    for metadata in ("", [], 0, False):
        state = _state_with({"__metadata__": metadata})
        with pytest.raises(safetensors.SafetensorError):
            safetensors.numpy.load(state)
        with pytest.raises(ValueError, match="__metadata__ must map strings to strings"):
            load_state(state)
    header = b"\xef\xbb\xbf" + json.dumps({}).encode()  # a UTF-8 byte-order mark first
    with pytest.raises(ValueError, match="not valid JSON"):
        load_state(struct.pack("<Q", len(header)) + header)


def test_read_state_refuses_a_stream_cut_short_or_running_on() -> None:
    data = save_state(_arrays())
    for cut in (4, 9, len(data) // 2, len(data) - 1):
        with pytest.raises(ValueError, match="truncated"):
            read_state(_pieces(data[:cut], 5), len(data))
    with pytest.raises(ValueError, match="Corrupt or truncated"):
        read_state(_pieces(data + b"more", 5), len(data))
    with pytest.raises(ValueError, match="Corrupt or truncated"):
        read_state(_pieces(data, 5), len(data) + 4)  # the arrays do not fill what it says


def test_state_buffer_is_a_state_every_release_reads() -> None:
    """A checkpoint built in one buffer, its arrays in the order given: safetensors' own loader
    (what an older release's load_state calls) and ours read the arrays and metadata back."""
    arrays = {
        **_arrays(),
        "big_endian": np.arange(4, dtype=">f8"),
        "flag": np.array([True, False]),
        "scalar": np.array(2.5),
    }
    data = state_buffer(arrays, {"job": "j", "kind": "trainer"})
    theirs = safetensors.numpy.load(bytes(data))
    ours, metadata = load_state(data)
    assert metadata == {"job": "j", "kind": "trainer"}
    assert theirs.keys() == ours.keys() == arrays.keys()
    for name, array in arrays.items():
        for loaded in (theirs[name], ours[name]):
            assert loaded.shape == array.shape and np.array_equal(loaded, array), name
            assert loaded.dtype == array.dtype.newbyteorder("<"), name
    assert state_buffer({}) == save_state({}) or load_state(state_buffer({})) == ({}, {})


def test_state_buffer_holds_the_state_once() -> None:
    """save_state (safetensors) held a state twice at its peak: its own buffer, then bytes."""
    arrays = {"w": np.ones(2**20), "m": np.zeros(2**20), "v": np.ones(2**20)}  # 24 MiB
    size = sum(array.nbytes for array in arrays.values())
    tracemalloc.start()
    try:
        data = state_buffer(arrays, {"kind": "trainer"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(data) > size and peak < size + size // 8, f"{peak / 2**20:.1f} MiB"
