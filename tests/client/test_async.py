"""`AsyncClient` under load: 50 concurrent jobs through one asyncio client."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable

import numpy as np
import pytest

from trainwire.client import (
    Client,
    ClientClosed,
    DatasetInfo,
    ModelInfo,
    NotFound,
    SpecError,
    TimedOut,
)
from trainwire.client.aio import AsyncClient, AsyncJob, AsyncJobWatch
from trainwire.server.local import LocalServer

from ..support.checkpoints import assert_same_checkpoints, server_checkpoints
from .conftest import MODEL, blobs


def test_fifty_concurrent_jobs(live_server: LocalServer, dataset: DatasetInfo) -> None:
    features, labels = blobs()

    async def one(client: AsyncClient, index: int) -> tuple[str, float, int]:
        job = await client.create_job(
            dataset, MODEL, epochs=2, batch_size=8, seed=index, labels={"batch": "async"}
        )
        status = await job.wait(timeout=120, poll_interval=0.2)
        prediction = await job.predict(features[:4])
        assert prediction.labels is not None
        metrics = await job.metrics(["loss"])
        return status.state, float(metrics.values_of("loss")[-1]), len(prediction.labels)

    async def scenario() -> None:
        async with AsyncClient(live_server.target, timeout=30) as client:
            again = await client.upload_dataset(features, labels)
            assert again.name == dataset.name, "content-addressed in asyncio too"
            results = await asyncio.gather(*(one(client, i) for i in range(50)))
            assert [r[0] for r in results] == ["SUCCEEDED"] * 50
            assert all(np.isfinite(r[1]) and r[2] == 4 for r in results)
            listed = [job async for job in client.list_jobs(labels={"batch": "async"})]
            assert len(listed) == 50 and all(isinstance(j, AsyncJob) for j in listed)

            job = listed[0]
            streamed = [
                p async for p in client.predict_stream(job.name, [features[:3], features[3:5]])
            ]
            assert [len(p.outputs) for p in streamed] == [3, 2]
            assert np.array_equal(streamed[0].outputs, (await job.predict(features[:3])).outputs)
            raw = await job.predict(features[:3], outputs_only=True)
            assert raw.labels is None and np.array_equal(raw.outputs, streamed[0].outputs)
            raw_streamed = [p async for p in job.predict_stream([features[:3]], outputs_only=True)]
            assert raw_streamed[0].probabilities is None
            assert np.array_equal(raw_streamed[0].outputs, raw.outputs)
            events = [event.sequence async for event in job.watch()]
            assert events == list(range(1, len(events) + 1))
            assert [c.epoch for c in await job.checkpoints()] == [2]
            info = await job.model_metadata()
            assert isinstance(info, ModelInfo) and info.output_shape == (-1, 3)
            assert await client.model_metadata(job) == info, "a handle as well as a name"
            assert info.checkpoint == (await job.checkpoints())[0].name
            several = await client.create_job(
                dataset, MODEL, epochs=3, batch_size=8, checkpoint_every_epochs=1
            )
            await several.wait(timeout=120, poll_interval=0.2)
            checkpoints = await several.checkpoints()
            assert [c.epoch for c in checkpoints] == [1, 2, 3]
            on_server = server_checkpoints(live_server.target, several.name)
            assert_same_checkpoints(checkpoints, on_server)
            assert (await client.get_dataset(dataset.name)).name == dataset.name
            assert dataset.name in [d.name async for d in client.list_datasets()]
            try:
                await client.create_job(dataset, [{"type": "dense", "units": 0}])
            except SpecError as error:
                assert error.field_violations[0][0] == "model.layers[0].units"
            else:
                raise AssertionError("a bad spec was sent")
            queued = await client.create_job(dataset, MODEL, epochs=1, queue="nobody-listens")
            assert (await queued.cancel()).state == "CANCELLED"
            await queued.delete()
            try:
                await queued.status()
            except NotFound as error:
                assert error.code_name == "NOT_FOUND"
            else:
                raise AssertionError("a deleted job was found")

    asyncio.run(scenario())


def test_an_async_wait_or_watch_past_its_timeout_raises_timed_out(
    live_server: LocalServer, dataset: DatasetInfo
) -> None:
    async def scenario() -> None:
        async with AsyncClient(live_server.target, timeout=30) as client:
            job = await client.create_job(dataset, MODEL, epochs=1, queue="nobody-listens")
            try:
                with pytest.raises(TimedOut, match=f"waiting for {job.name}: still QUEUED"):
                    await job.wait(timeout=0.5, poll_interval=0.1)
                with pytest.raises(TimedOut, match=f"watching {job.name}: no end of the job"):
                    _ = [event async for event in job.watch(timeout=0.5)]
            finally:
                await job.cancel()

    asyncio.run(scenario())


def test_a_watch_closed_from_another_task_ends_its_loop(
    live_server: LocalServer, dataset: DatasetInfo
) -> None:
    async def consume(watch: AsyncJobWatch, started: asyncio.Event) -> list[int]:
        sequences = []
        async for event in watch:
            sequences.append(event.sequence)
            started.set()
        return sequences

    async def scenario() -> None:
        async with AsyncClient(live_server.target, timeout=30) as client:
            job = await client.create_job(dataset, MODEL, epochs=1, queue="nobody-listens")
            try:
                started = asyncio.Event()
                closed = job.watch()
                consumer = asyncio.create_task(consume(closed, started))
                await asyncio.wait_for(started.wait(), 10)  # waiting on an open stream now
                closed.close()
                assert await asyncio.wait_for(consumer, 10) == [1]

                started = asyncio.Event()
                consumer = asyncio.create_task(consume(job.watch(), started))
                await asyncio.wait_for(started.wait(), 10)
                consumer.cancel()  # the consumer's own cancellation is not swallowed
                with pytest.raises(asyncio.CancelledError):
                    await consumer
            finally:
                await job.cancel()

    asyncio.run(scenario())


def test_a_closed_async_client_says_so_on_every_kind_of_call(
    live_server: LocalServer, dataset: DatasetInfo
) -> None:
    """grpc.aio raised its own `cygrpc.UsageError: Channel is closed.`, no SDK exception."""
    features, labels = blobs()

    async def scenario() -> None:
        client = AsyncClient(live_server.target, timeout=10)
        async with client:
            assert await client.get_dataset(dataset.name) == dataset
        calls = {
            "unary": lambda: client.get_dataset(dataset.name),
            "pages": lambda: anext(client.list_datasets()),
            "upload": lambda: client.upload_dataset(features, labels, dedupe=False),
            "predict": lambda: client.predict("jobs/any", features),
            "watch": lambda: anext(client.watch_job("jobs/any")),
            "stream": lambda: anext(client.predict_stream("jobs/any", [features])),
        }
        for call in calls.values():
            with pytest.raises(ClientClosed, match=r"^AsyncClient\('.*'\) is closed"):
                await call()
        await client.close()  # again: nothing to do

    asyncio.run(scenario())


def settings(method: Callable[..., object]) -> list[tuple[str, object, object]]:
    """A method's parameters: name, default and kind."""
    parameters = inspect.signature(method).parameters.values()
    return [(p.name, p.default, p.kind) for p in parameters]


def test_both_clients_create_jobs_with_the_same_settings_and_defaults() -> None:
    # `jobs submit` checks a spec file against Client.create_job's defaults (client/jobspec.py):
    # the async client's must be the same, or a spec would be judged by settings it never gets.
    assert settings(AsyncClient.create_job) == settings(Client.create_job)


def test_both_clients_upload_with_the_same_settings_and_defaults() -> None:
    """The README gives AsyncClient the same surface: its upload_dataset once lacked `progress`."""
    assert settings(AsyncClient.upload_dataset) == settings(Client.upload_dataset)


def test_an_async_upload_shows_its_progress(
    live_server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    features, labels = blobs(30, seed=11)

    async def scenario() -> DatasetInfo:
        async with AsyncClient(live_server.target, timeout=30) as client:
            info = await client.upload_dataset(features, labels, name="bar", progress=True)
            await client.delete_dataset(info.name)
            return info

    info = asyncio.run(scenario())
    bar = capsys.readouterr().err
    assert "uploading bar" in bar and f"{info.size_bytes}/{info.size_bytes}" in bar


def test_every_method_taking_a_name_also_takes_the_handle(live_server: LocalServer) -> None:
    features, labels = blobs(rows=12, seed=8)

    async def scenario() -> None:
        async with AsyncClient(live_server.target, timeout=30) as client:
            data = await client.upload_dataset(features, labels, name="handles", dedupe=False)
            job = await client.create_job(data, MODEL, epochs=1, queue="nobody-listens")
            assert (await client.get_dataset(data)).name == data.name
            assert (await client.get_job(job)).name == (await client.job_status(job)).name
            assert [j.name async for j in client.list_jobs(dataset=data)] == [job.name]
            assert await client.job_metrics(job) == {} and await client.job_checkpoints(job) == []
            assert (await client.cancel_job(job)).state == "CANCELLED"
            assert [e.state async for e in client.watch_job(job)][-1] == "CANCELLED"
            await client.delete_job(job)
            await client.delete_dataset(data)
            with pytest.raises(NotFound):
                await client.get_dataset(data)
            with pytest.raises(TypeError, match=r"^name must be a job name \(str\) or an AsyncJob"):
                await client.job_status(42)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"^name must be a dataset name \(str\) or a Data"):
                await client.get_dataset(None)  # type: ignore[arg-type]

    asyncio.run(scenario())
