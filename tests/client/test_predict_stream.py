"""PredictStream through both clients: batches read as the stream goes, and a bad batch raised to
the caller as itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from trainwire.client import Client, DatasetInfo, Job, Prediction
from trainwire.client.aio import AsyncClient
from trainwire.server.local import LocalServer

from .conftest import MODEL, blobs

RAGGED = [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]]


@pytest.fixture(scope="module")
def job(client: Client, dataset: DatasetInfo) -> Job:
    trained = client.create_job(dataset, MODEL, epochs=2, batch_size=8)
    assert trained.wait(timeout=60, poll_interval=0.1).state == "SUCCEEDED"
    return trained


def test_a_bad_batch_is_raised_to_the_caller_after_the_batches_before_it(
    client: Client, job: Job
) -> None:
    features, _ = blobs()
    received: list[Prediction] = []
    with pytest.raises(ValueError, match="inhomogeneous"):
        for prediction in client.predict_stream(job, [features[:3], RAGGED, features[3:5]]):
            received.append(prediction)
    assert [len(p.outputs) for p in received] == [3]

    def failing() -> Iterator[np.ndarray]:
        yield features[:2]
        raise RuntimeError("the camera went away")

    with pytest.raises(RuntimeError, match="camera"):
        list(client.predict_stream(job, failing()))


def test_the_async_stream_reads_sync_and_async_iterables_as_it_goes(
    live_server: LocalServer, job: Job
) -> None:
    features, _ = blobs()

    async def scenario() -> None:
        async with AsyncClient(live_server.target, timeout=30) as client:
            answered = asyncio.Event()

            async def batches() -> AsyncIterator[np.ndarray]:
                yield features[:3]
                await answered.wait()  # the next batch depends on the first answer
                yield features[3:5]

            sizes = []
            async for prediction in client.predict_stream(job.name, batches()):
                sizes.append(len(prediction.outputs))
                answered.set()
            assert sizes == [3, 2]

            generator = (features[i : i + 2] for i in range(0, 6, 2))
            streamed = [p async for p in client.predict_stream(job.name, generator)]
            assert [len(p.outputs) for p in streamed] == [2, 2, 2]

            received = []
            with pytest.raises(ValueError, match="inhomogeneous"):
                async for prediction in client.predict_stream(
                    job.name, [features[:3], RAGGED, features[3:5]]
                ):
                    received.append(prediction)
            assert [len(p.outputs) for p in received] == [3]

    asyncio.run(scenario())
