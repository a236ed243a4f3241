"""Prediction inputs are checked before they reach a batch: dtype, shape, finiteness, and the
checkpoint selector; and a job that cannot serve predictions says why."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from trainwire.client.tensors import to_tensor
from trainwire.engine import Model
from trainwire.server.errors import FailedPrecondition, InvalidArgument
from trainwire.server.predictions import PredictionService
from trainwire.v1 import tensor_pb2

MODEL = Model.from_spec({"input_dim": 4, "layers": [{"type": "dense", "units": 2}]}, seed=0)


def check_inputs(inputs: tensor_pb2.Tensor, model: Model) -> np.ndarray:
    """The two checks `PredictionService.predict` makes of a request's tensor, in its order."""
    return PredictionService._check_features(PredictionService.decode_inputs(inputs), model)


def test_huge_finite_values_pass_even_when_their_sum_of_squares_overflows() -> None:
    huge = np.full((2, 4), 1e20, np.float32)
    assert not np.isfinite(np.vdot(huge, huge)), "the fast check's sum of squares overflows here"
    features = check_inputs(to_tensor(huge), MODEL)
    assert np.array_equal(features, huge)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_value_that_is_not_finite_is_refused_naming_its_row(bad: float) -> None:
    x = np.zeros((3, 4), np.float32)
    x[2, 1] = bad
    with pytest.raises(InvalidArgument, match="row 2 has NaN or Inf"):
        check_inputs(to_tensor(x), MODEL)


def test_inputs_come_out_in_the_models_dtype() -> None:
    x = np.arange(8, dtype=np.float64).reshape(2, 4)
    features = check_inputs(to_tensor(x), MODEL)
    assert features.dtype == MODEL.dtype and features.flags.c_contiguous
    assert np.array_equal(features, x.astype(MODEL.dtype))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_float64_value_beyond_a_float32_models_range_is_refused_naming_its_row() -> None:
    x = np.zeros((2, 4), np.float64)
    x[1, 0] = 1e300  # finite as sent, infinite once converted to the model's float32
    with pytest.raises(InvalidArgument, match="row 1 has a value beyond the range"):
        check_inputs(to_tensor(x), MODEL)


@pytest.mark.parametrize(
    ("dtype", "says"),
    [
        (tensor_pb2.DATA_TYPE_INT64, "Received: DATA_TYPE_INT64 (4)"),
        (0, "Received: DATA_TYPE_UNSPECIFIED (0: the field unset, or an enum name the client"),
        (7, "Received: 7 (no DataType has that number)"),
    ],
)
def test_a_dtype_predictions_refuse_is_quoted_by_name(dtype: int, says: str) -> None:
    """It was quoted as a bare number ("Received: 0" for a dtype of "float32", which
    protobuf.js does not know and sends as 0, unset)."""
    tensor = tensor_pb2.Tensor(dtype=dtype, shape=[1, 4], data=bytes(32))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as refused:
        check_inputs(tensor, MODEL)
    assert refused.value.violations[0].field == "inputs.dtype"
    assert says in refused.value.message


@pytest.mark.parametrize("shape", [[0, 2**62], [2**40, 2**40, 0]])
def test_an_empty_tensor_too_large_to_address_is_refused_as_invalid(shape: list[int]) -> None:
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=shape, data=b"")
    with pytest.raises(InvalidArgument, match="too large to address"):
        check_inputs(tensor, MODEL)


@pytest.mark.parametrize(
    "selector", ["epoch/²", "epoch/" + "9" * 5000, f"jobs/{'a' * 32}/checkpoints/²"]
)
def test_a_selector_with_digits_int_refuses_is_invalid(selector: str) -> None:
    job: Any = SimpleNamespace(id="a" * 32)
    checkpoint: Any = SimpleNamespace(id=1, epoch=1)
    with pytest.raises(InvalidArgument, match="checkpoint"):
        PredictionService.resolve(None, job, selector, [checkpoint])  # type: ignore[arg-type]


def test_a_job_without_its_datasets_task_cannot_serve_and_says_why() -> None:
    """A job from before migration 0003 whose dataset was deleted before 0008 has no task; its
    checkpoint is not even read (the service has no store)."""
    service = PredictionService(None, None, 1 << 20)  # type: ignore[arg-type]
    job: Any = SimpleNamespace(id="a" * 32, target={}, model_spec={}, training={})
    checkpoint: Any = SimpleNamespace(id=1)
    with pytest.raises(FailedPrecondition, match="dataset has been deleted since"):
        service.batcher(job, checkpoint)


class UntouchableStore:
    """A store any read of which fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store was read ({name}) for a malformed tensor")


@pytest.mark.parametrize(
    ("tensor", "problem"),
    [
        (
            tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_INT64, shape=[1, 4], data=bytes(32)),
            "dtype",
        ),
        (
            tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[1, 4], data=bytes(15)),
            "bytes",
        ),
        (to_tensor(np.zeros(4, np.float32)), "must be (rows, features)"),
        (to_tensor(np.zeros((0, 4), np.float32)), "has no rows"),
    ],
)
def test_a_malformed_tensor_is_refused_before_its_job_or_model_is_read(
    tensor: tensor_pb2.Tensor, problem: str
) -> None:
    service = PredictionService(UntouchableStore(), None, 1 << 20)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as refused:
        asyncio.run(service.predict(f"jobs/{'a' * 32}", "", tensor, "default"))
    assert problem in str(refused.value)
