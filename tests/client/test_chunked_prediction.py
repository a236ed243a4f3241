"""A prediction of many rows as consecutive requests: sized by both a request's and its answer's
bytes, and answered by one checkpoint."""

from __future__ import annotations

import numpy as np

from trainwire.client.tensors import from_tensor, to_tensor
from trainwire.client.wire import ChunkedPrediction
from trainwire.v1 import predictions_pb2

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
