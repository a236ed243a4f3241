"""A prediction of many rows as consecutive requests: sized by both a request's and its answer's
bytes, and answered by one checkpoint."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from trainwire.client import Client
from trainwire.client.errors import NotFound, ResourceExhausted, SpecError
from trainwire.client.results import ModelInfo
from trainwire.client.tensors import from_tensor, to_tensor
from trainwire.client.wire import (
    ChunkedPrediction,
    StreamedPrediction,
    answer_too_large,
    as_inputs,
    predict_request,
)
from trainwire.v1 import predictions_pb2, tensor_pb2

CHECKPOINT = "jobs/" + "a" * 32 + "/checkpoints/7"


def answer(request: predictions_pb2.PredictRequest) -> predictions_pb2.PredictResponse:
    """What a ten-class classifier answers: 88 bytes a row against the request's 16."""
    rows = len(from_tensor(request.inputs))
    return predictions_pb2.PredictResponse(
        checkpoint=CHECKPOINT,
        outputs=to_tensor(np.zeros((rows, 10), np.float32)),
        probabilities=to_tensor(np.zeros((rows, 10), np.float32)),
        labels=to_tensor(np.arange(rows, dtype=np.int64)),
    )


def wide_answer(rows: int, classes: int) -> predictions_pb2.PredictResponse:
    """What a classifier of `classes` classes answers for `rows` rows."""
    return predictions_pb2.PredictResponse(
        checkpoint=CHECKPOINT,
        outputs=to_tensor(np.zeros((rows, classes), np.float32)),
        probabilities=to_tensor(np.zeros((rows, classes), np.float32)),
        labels=to_tensor(np.zeros(rows, np.int64)),
    )


def run(
    x: np.ndarray, limit: int
) -> tuple[list[predictions_pb2.PredictRequest], ChunkedPrediction]:
    chunks = ChunkedPrediction("jobs/" + "a" * 32, x, "latest", limit)
    requests = []
    while (request := chunks.next_request()) is not None:
        requests.append(request)
        chunks.answered(answer(request))
    return requests, chunks


def test_requests_after_the_first_name_the_checkpoint_that_answered_it() -> None:
    requests, chunks = run(np.zeros((5000, 4), np.float32), 1 << 20)
    assert len(requests) > 2
    assert requests[0].checkpoint == "latest"
    assert {r.checkpoint for r in requests[1:]} == {CHECKPOINT}
    assert np.array_equal(
        chunks.result().labels,
        np.concatenate([np.arange(len(from_tensor(r.inputs))) for r in requests]),
    )


def test_requests_and_answers_after_the_first_stay_within_a_quarter_of_the_limit() -> None:
    limit = 256 * 1024
    requests, chunks = run(np.zeros((5000, 4), np.float32), limit)
    rows = [len(from_tensor(r.inputs)) for r in requests]
    assert sum(rows) == 5000 and rows[0] == 1024  # the first takes at most FIRST_ROWS
    # The first answer's size was unknown: it is within the limit, if not a quarter of it.
    assert answer(requests[0]).ByteSize() <= limit
    for request in requests[1:]:
        assert request.ByteSize() <= limit // 4 and answer(request).ByteSize() <= limit // 4
    assert chunks.result().outputs.shape == (5000, 10)


def test_a_small_prediction_is_one_request() -> None:
    requests, chunks = run(np.zeros((3, 4), np.float32), 4 << 20)
    assert len(requests) == 1 and requests[0].checkpoint == "latest"
    assert chunks.result().checkpoint == CHECKPOINT


def test_a_first_request_whose_answer_cannot_be_sent_is_sent_again_with_the_rows_that_fit() -> None:
    x = np.zeros((3000, 4), np.float32)
    chunks = ChunkedPrediction("jobs/" + "a" * 32, x, "", 4 << 20)
    first = chunks.next_request()
    assert first is not None and len(from_tensor(first.inputs)) == ChunkedPrediction.FIRST_ROWS
    refusal = answer_too_large(4 << 20, 500, ChunkedPrediction.FIRST_ROWS)
    assert chunks.retry_after(ResourceExhausted(refusal, grpc.StatusCode.RESOURCE_EXHAUSTED))
    again = chunks.next_request()
    # A row's answer takes at most 4 MiB / 500 bytes (8,389 rounded up): 124 rows in a quarter
    # of the limit, within a quarter of the 500 rows the server allows.
    assert again is not None and len(from_tensor(again.inputs)) == 124
    chunks.answered(answer(again))
    rows = len(from_tensor(again.inputs))
    while (request := chunks.next_request()) is not None:
        rows += len(from_tensor(request.inputs))
        chunks.answered(answer(request))
    assert rows == 3000 and chunks.result().outputs.shape == (3000, 10)
    other = ResourceExhausted("max_epochs is limited to 5", grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert not chunks.retry_after(other)
    # Not even one row's answer fits: sending it again would be refused again, for ever.
    none_fit = answer_too_large(64 << 10, 0, 1)
    assert not chunks.retry_after(ResourceExhausted(none_fit, grpc.StatusCode.RESOURCE_EXHAUSTED))


def test_a_retry_keeps_answers_within_this_clients_limit_below_the_servers() -> None:
    # A 1,000-class classifier of 2 features (8,008 answer bytes a row), a client limited to
    # 256 KiB and a server to 4 MiB: the server's refusal allows 523 rows, a quarter of which
    # would answer about 1 MB, beyond what this client may receive.
    chunks = ChunkedPrediction("jobs/" + "a" * 32, np.zeros((2000, 2), np.float32), "", 256 << 10)
    first = chunks.next_request()
    assert first is not None
    refusal = answer_too_large((4 << 20) - 1024, ((4 << 20) - 1024) // 8008, 1024)
    assert chunks.retry_after(ResourceExhausted(refusal, grpc.StatusCode.RESOURCE_EXHAUSTED))
    again = chunks.next_request()
    assert again is not None
    assert 0 < len(from_tensor(again.inputs)) * 8008 <= (256 << 10) // 4


def test_a_measured_answer_replaces_the_bound_a_refusal_gave() -> None:
    # A server allowing 100,000 answer bytes refuses, naming 1 row: a row takes at most 100,000
    # bytes, and the retry is sized by that. The real answer, 50,008 bytes a row (6,250
    # classes), then sizes the rest: twice the rows the bound would have kept sending.
    chunks = ChunkedPrediction("jobs/" + "a" * 32, np.zeros((500, 2), np.float32), "", 4 << 20)
    assert chunks.next_request() is not None
    refusal = answer_too_large(100_000, 1, ChunkedPrediction.FIRST_ROWS)
    assert chunks.retry_after(ResourceExhausted(refusal, grpc.StatusCode.RESOURCE_EXHAUSTED))
    again = chunks.next_request()
    assert again is not None and len(from_tensor(again.inputs)) == 1  # a quarter of 1, at least 1
    answer = wide_answer(1, 6250)
    chunks.answered(answer)
    after = chunks.next_request()
    assert after is not None
    assert len(from_tensor(after.inputs)) == (4 << 20) // 4 // answer.ByteSize() == 20


def test_a_pinned_checkpoint_deleted_midway_starts_the_prediction_over_once() -> None:
    x = np.zeros((5000, 4), np.float32)
    chunks = ChunkedPrediction("jobs/" + "a" * 32, x, "latest", 1 << 20)
    first = chunks.next_request()
    assert first is not None
    chunks.answered(answer(first))
    second = chunks.next_request()
    assert second is not None and second.checkpoint == CHECKPOINT
    gone = NotFound(f"{CHECKPOINT} does not exist", grpc.StatusCode.NOT_FOUND)
    assert chunks.retry_after(gone)
    again = chunks.next_request()
    assert again is not None and again.checkpoint == "latest"
    assert np.array_equal(from_tensor(again.inputs), x[: len(from_tensor(again.inputs))])
    chunks.answered(answer(again))
    assert chunks.next_request() is not None
    assert not chunks.retry_after(gone), "only once"


def answer_data_bytes(response: predictions_pb2.PredictResponse) -> int:
    return sum(len(t.data) for t in (response.outputs, response.probabilities, response.labels))


def metadata(outputs: int, num_classes: int, max_message_bytes: int = 0) -> ModelInfo:
    """What `model_metadata()` says of a float32 model of 4 features and `outputs` outputs,
    from a server whose limit is `max_message_bytes` (0: one that does not say it)."""
    inputs = tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[-1, 4])
    info = tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[-1, outputs])
    message = predictions_pb2.ModelMetadata(
        inputs=inputs, outputs=info, num_classes=num_classes, max_message_bytes=max_message_bytes
    )
    return ModelInfo.from_proto(message)


def test_a_streamed_batch_beyond_a_quarter_of_the_limit_is_split_and_joined_back() -> None:
    limit = 64 * 1024
    streamed = StreamedPrediction("jobs/" + "a" * 32, "latest", limit)
    streamed.describe(metadata(outputs=1, num_classes=0))  # answers of 4 bytes a row
    batches = [np.zeros((3, 4), np.float32), np.zeros((5000, 4)), [1.0, 2.0, 3.0, 4.0]]
    requests = [list(streamed.requests(as_inputs(batch))) for batch in batches]
    assert [len(r) for r in requests] == [1, 10, 1]  # float64 rows of 32 bytes: 512 a message
    assert all(len(r.inputs.data) <= limit // 4 for batch in requests for r in batch)
    assert from_tensor(requests[1][0].inputs).dtype == np.float64
    assert from_tensor(requests[2][0].inputs).shape == (1, 4)
    answers = [streamed.answered(answer(r)) for batch in requests for r in batch]
    done = [a for a in answers if a is not None]
    assert [len(p.outputs) for p in done] == [3, 5000, 1]
    assert answers[1:10] == [None] * 9, "a batch is answered once all its messages are"


def test_a_streamed_batch_whose_answers_outgrow_its_inputs_is_split_by_the_answers() -> None:
    limit = 64 * 1024
    streamed = StreamedPrediction("jobs/" + "a" * 32, "latest", limit)
    streamed.describe(metadata(outputs=10, num_classes=10))
    one_row = answer(predict_request("", np.zeros((1, 2), np.float32), "", False))
    assert streamed.answer_row_bytes == answer_data_bytes(one_row) == 88, "ten classes"
    binary = StreamedPrediction("jobs/" + "a" * 32, "latest", limit)
    binary.describe(metadata(outputs=1, num_classes=2))
    assert binary.answer_row_bytes == 4 + 2 * 4 + 8, "one logit, two probabilities, a label"
    raw = StreamedPrediction("jobs/" + "a" * 32, "latest", limit, outputs_only=True)
    raw.describe(metadata(outputs=10, num_classes=10))
    assert raw.answer_row_bytes == 40, "ten outputs alone"
    assert all(r.outputs_only for r in raw.requests(np.zeros((3, 2), np.float32)))

    # 8 bytes of inputs a row would make messages of 2,048 rows and answers of 176 KiB.
    requests = list(streamed.requests(np.zeros((1000, 2), np.float32)))
    assert [len(from_tensor(r.inputs)) for r in requests] == [186] * 5 + [70]
    answers = [answer(r) for r in requests]
    assert all(answer_data_bytes(a) <= limit // 4 for a in answers)
    [joined] = [p for p in map(streamed.answered, answers) if p is not None]
    assert np.array_equal(joined.labels, np.concatenate([np.arange(186)] * 5 + [np.arange(70)]))


def test_inputs_of_another_float_dtype_go_as_float32_and_nothing_is_no_row() -> None:
    half = as_inputs(np.ones((2, 3), np.float16))
    assert half.dtype == np.float32 and half.shape == (2, 3)
    assert as_inputs(np.ones(3, np.float64)).shape == (1, 3), "one row, given 1-D"
    for nothing in ([], np.zeros(0, np.float32), np.zeros((0, 3), np.float32)):
        with pytest.raises(SpecError, match="has no rows"):
            as_inputs(nothing)


@pytest.mark.parametrize(
    ("inputs", "received"),
    [
        (np.ones((2, 3), np.complex64) * 1j, "Received: complex64 values; pass the part"),
        (None, "Received: None"),
        ([["a", "b"]], "Received: <U1 values such as np.str_('a')"),
        (np.array([[1.0, None]], dtype=object), "Received: object values such as None"),
        ([[1.0, 2.0], [3.0]], "must be rows of numbers of one length"),
    ],
)
def test_inputs_that_are_not_real_numbers_are_refused_before_sending(
    inputs: object, received: str
) -> None:
    """A complex array lost its imaginary part (a ComplexWarning alone) and None went as a NaN."""
    # Nothing listens on port 9: a network call would fail with UNAVAILABLE, not SpecError.
    with Client("127.0.0.1:9", timeout=5) as client, pytest.raises(SpecError) as caught:
        client.predict("jobs/x", inputs)  # type: ignore[arg-type]
    [(field, description)] = caught.value.field_violations
    assert field == "inputs" and received in description
    assert as_inputs(np.array([[1, 2.5]], dtype=object)).dtype == np.float32, "numbers still go"
    assert as_inputs([[True, False]]).tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize(
    ("server_limit", "rows"),
    [(64 * 1024, 4096), (0, 65536), (16 * 1024 * 1024, 65536)],
    ids=["smaller", "unknown", "larger"],
)
def test_a_stream_is_sized_by_the_smaller_of_the_two_limits(server_limit: int, rows: int) -> None:
    """A server's limit below the client's sizes the stream's messages (a quarter of 64 KiB: 4,096
    rows of 4 bytes); one above it, or none (a server older than the field), leaves the client's
    (a quarter of 1 MiB)."""
    streamed = StreamedPrediction("jobs/" + "a" * 32, "latest", 1024 * 1024)
    streamed.describe(metadata(outputs=1, num_classes=0, max_message_bytes=server_limit))
    requests = list(streamed.requests(np.zeros((100_000, 1), np.float32)))
    assert len(from_tensor(requests[0].inputs)) == rows
