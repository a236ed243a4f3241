"""NumPy arrays <-> `trainwire.v1.Tensor`: raw little-endian bytes with dtype and shape.

Shared by the SDK and the server (the one codec on both ends of the wire). Decoding checks the byte
count against dtype and shape and never executes anything: it is `np.frombuffer` on plain bytes.
"""

from __future__ import annotations

import numpy as np

from trainwire.v1 import tensor_pb2

DTYPES: dict[int, np.dtype] = {
    tensor_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    tensor_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}
_NATIVE = {dtype: dtype.newbyteorder("=") for dtype in DTYPES.values()}


class TensorError(ValueError):
    """A tensor whose dtype, shape and bytes do not agree."""


def dtype_code(dtype: np.dtype | type | str) -> int:
    """The wire code of a NumPy dtype (float32, float64, int32, int64)."""
    little = np.dtype(dtype).newbyteorder("<")
    if little not in _CODES:
        allowed = ", ".join(str(d) for d in DTYPES.values())
        raise TensorError(f"dtype {np.dtype(dtype)} is not supported; use one of: {allowed}")
    return _CODES[little]


def dtype_of(code: int) -> np.dtype:
    """The NumPy dtype of a wire code; TensorError for unknown or unspecified codes."""
    if code not in DTYPES:
        names = ", ".join(tensor_pb2.DataType.Name(c) for c in DTYPES)
        raise TensorError(f"dtype must be one of {names}. Received: {code}")
    return DTYPES[code]


def dtype_name(code: int) -> str:
    """The NumPy name (`float32`, ...) of a wire code."""
    return str(dtype_of(code).newbyteorder("="))


def to_tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    """Encodes `array` as raw little-endian C-order bytes."""
    return write_tensor(tensor_pb2.Tensor(), array)


def write_tensor(tensor: tensor_pb2.Tensor, array: np.ndarray) -> tensor_pb2.Tensor:
    """`to_tensor` into `tensor` in place, such as a field of a message being built: a tensor
    passed to a message's constructor is copied, one filled in place is not."""
    code = _CODES.get(array.dtype)  # the common case, a little-endian dtype: one lookup
    if code is None:
        code = dtype_code(array.dtype)
        array = array.astype(DTYPES[code])
    tensor.dtype = code
    tensor.shape[:] = array.shape
    tensor.data = array.tobytes()  # C order whatever the array's layout
    return tensor


def expected_nbytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """The byte count of a tensor of `dtype` and `shape`; TensorError for negative sizes."""
    count = 1
    for size in shape:
        if size < 0:
            raise TensorError(f"shape must not have negative sizes. Received: {list(shape)}")
        count *= size
    return count * dtype.itemsize


def from_tensor(tensor: tensor_pb2.Tensor) -> np.ndarray:
    """Decodes a tensor; the result is a read-only view of the message bytes in native order."""
    dtype = dtype_of(tensor.dtype)
    shape = tuple(tensor.shape)
    expected = expected_nbytes(dtype, shape)
    data = tensor.data  # read once: each read of a bytes field makes a new object
    if len(data) != expected:
        raise TensorError(
            f"data has {len(data)} bytes but dtype {dtype_name(tensor.dtype)} and shape "
            f"{list(shape)} need {expected}"
        )
    try:
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
    except ValueError:  # an empty tensor whose other sizes multiply beyond what NumPy indexes
        raise TensorError(f"shape {list(shape)} is too large to address") from None
    return array if dtype.isnative else array.astype(_NATIVE[dtype])
