"""PredictStream's slices are one input: the checkpoint that answered the first answers the rest."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from trainwire.client.tensors import to_tensor
from trainwire.server.api import PredictionServicer
from trainwire.server.predictions import Prediction
from trainwire.server.records import Checkpoint
from trainwire.v1 import predictions_pb2

JOB = "jobs/" + "a" * 32


class MovingLatest:
    """A prediction service whose "latest" and "best" name a newer checkpoint at every call."""

    def __init__(self) -> None:
        self.selectors: list[str] = []

    async def predict(self, job: str, selector: str, *_: Any, **__: Any) -> Prediction:
        self.selectors.append(selector)
        prefix = f"{JOB}/checkpoints/"
        number = (
            int(selector[len(prefix) :]) if selector.startswith(prefix) else len(self.selectors)
        )
        checkpoint = Checkpoint(
            number, "a" * 32, 1, 1, {}, False, 0, datetime.datetime.now(datetime.UTC)
        )
        return Prediction(checkpoint, np.zeros((1, 1), np.float32), None, None)


class Context:
    def time_remaining(self) -> None:
        return None


def stream(*requests: predictions_pb2.PredictRequest) -> list[predictions_pb2.PredictResponse]:
    service = MovingLatest()
    servicer = PredictionServicer(service)

    async def feed() -> AsyncIterator[predictions_pb2.PredictRequest]:
        for request in requests:
            yield request

    async def run() -> list[predictions_pb2.PredictResponse]:
        return [r async for r in servicer.PredictStream(feed(), Context())]

    return asyncio.run(run())


def slice_of(selector: str) -> predictions_pb2.PredictRequest:
    inputs = to_tensor(np.zeros((1, 1), np.float32))
    return predictions_pb2.PredictRequest(job=JOB, checkpoint=selector, inputs=inputs)


def test_later_slices_are_answered_by_the_first_slices_checkpoint() -> None:
    answers = stream(slice_of(""), slice_of(""), slice_of(""))
    assert [a.checkpoint for a in answers] == [f"{JOB}/checkpoints/1"] * 3


def test_a_slice_with_another_selector_is_resolved_on_its_own() -> None:
    answers = stream(slice_of(""), slice_of("best"), slice_of(""))
    assert [a.checkpoint.rsplit("/", 1)[1] for a in answers] == ["1", "2", "1"]
