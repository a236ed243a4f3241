"""Every RPC of trainwire.v1 over a live server: datasets, jobs, watches, metrics, checkpoints,
predictions, limits, API keys with project isolation, TLS, and health during a database outage."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, select
from sqlalchemy.engine import make_url

from trainwire.client import (
    Client,
    ClientClosed,
    DatasetInfo,
    FailedPrecondition,
    InvalidArgument,
    Job,
    JobEvent,
    NotFound,
    ResourceExhausted,
    RetryPolicy,
    TrainwireError,
)
from trainwire.client.aio import AsyncClient
from trainwire.client.tensors import from_tensor, to_tensor
from trainwire.client.wire import prepare_upload
from trainwire.server.cli import main
from trainwire.server.db import Database
from trainwire.server.local import local_server
from trainwire.server.migrate import upgrade
from trainwire.server.models import CheckpointRow, JobEventRow
from trainwire.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    predictions_pb2,
    predictions_pb2_grpc,
    tensor_pb2,
)

from ..conftest import fresh_postgres_database
from ..support.checkpoints import assert_same_checkpoints, server_checkpoints
from ..support.ports import free_ports
from ..support.tcp_proxy import TcpProxy
from ..support.waiting import wait_for

CLI = [sys.executable, "-m", "trainwire.server.cli"]
MLP = {
    "layers": [
        {"type": "dense", "units": 16, "activation": "relu"},
        {"type": "dense", "units": 3},
    ]
}


def test_watch_numbers_events_and_resumes_without_gaps(
    client: Client, iris_dataset: DatasetInfo
) -> None:
    job = client.create_job(iris_dataset, MLP, epochs=8, checkpoint_every_epochs=2)
    events = list(job.watch())
    sequences = [e.sequence for e in events]
    assert sequences == list(range(1, len(events) + 1))
    assert all(isinstance(e, JobEvent) for e in events)
    states = [e.state for e in events]
    assert states[0] == "QUEUED" and states[-1] == "SUCCEEDED"
    epochs = [e.epoch for e in events if e.metrics]
    assert epochs[:8] == list(range(1, 9))
    assert all(e.time is not None and e.time.tzinfo is datetime.UTC for e in events)
    assert all(list(e.metrics) == sorted(e.metrics) for e in events)
    # Reconnecting after any event replays exactly the rest.
    for cut in (1, 3, len(events) - 1):
        rest = [e.sequence for e in job.watch(after_sequence=cut)]
        assert rest == sequences[cut:]
    assert list(job.watch(after_sequence=sequences[-1])) == []
    # After a number no event has is refused, on a finished job as on a running one (which
    # stayed silent until the deadline).
    with pytest.raises(InvalidArgument) as beyond:
        list(job.watch(after_sequence=sequences[-1] + 1))
    assert beyond.value.field_violations[0][0] == "after_sequence"
    queued = client.create_job(iris_dataset, MLP, epochs=1, queue="nobody")
    with pytest.raises(InvalidArgument, match=r"last event, number 1\. Received: 2"):
        list(queued.watch(after_sequence=2, timeout=20))
    queued.cancel()


def test_watch_job_batches_answers_watch_jobs_events_several_to_a_message(
    client: Client, iris_dataset: DatasetInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WatchJobBatches sends exactly WatchJob's events, as many to a message as one look at the
    job found (a finished job's history: one message), resuming alike; both SDKs' watches read
    it. (Their watches of a server without it fall back to WatchJob: test_resilience.py's fake
    server has WatchJob alone.)"""
    job = client.create_job(iris_dataset, MLP, epochs=4)
    job.wait(timeout=120)
    with grpc.insecure_channel(client.target) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        for after in (0, 3):
            request = jobs_pb2.WatchJobRequest(name=job.name, after_sequence=after)
            one_by_one = list(stub.WatchJob(request, timeout=30))
            batches = list(stub.WatchJobBatches(request, timeout=30))
            assert len(one_by_one) >= 4 and len(batches) == 1
            assert [event for batch in batches for event in batch.events] == one_by_one
            if after == 0:
                history = [event.sequence for event in one_by_one]

    def one_by_one_refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the SDK's watch asked for WatchJob, not WatchJobBatches")

    monkeypatch.setattr(client._rpc, "watch_job", one_by_one_refused)
    assert [event.sequence for event in job.watch()] == history

    async def watch_async() -> list[int]:
        async with AsyncClient(client.target, timeout=30) as aio:
            monkeypatch.setattr(aio._rpc, "watch_job", one_by_one_refused)
            return [event.sequence async for event in aio.watch_job(job.name)]

    assert asyncio.run(watch_async()) == history


def test_a_long_watch_fits_the_smallest_client_limit_and_ends_at_close(tmp_path: Path) -> None:
    """WatchJobBatches filled its messages up to the server's limit (4 MiB), past a client's of
    64 KiB ("Received message larger than max"), where WatchJob's single events fit; and the
    rest of a batch read before its client's close() was handed out after it (both SDKs)."""
    url = f"sqlite:///{tmp_path / 'watch.db'}"
    with local_server(url, workers=1) as server:
        with Client(server.target, max_message_bytes=64 * 1024) as client:
            data = client.upload_dataset(np.zeros((10, 4), np.float32), np.arange(10) % 3)
            job = client.create_job(data, MLP, epochs=1)
            job.wait(timeout=60, poll_interval=0.1)
            history = _add_events(url, job.name, 1_500)
            assert [event.sequence for event in client.watch_job(job)] == history
        closing = Client(server.target)
        watch = closing.watch_job(job.name)
        assert next(watch).sequence == 1
        closing.close()
        with pytest.raises(ClientClosed):
            next(watch)

        async def closed_while_watching() -> None:
            aio = AsyncClient(server.target)
            watching = aio.watch_job(job.name)
            assert (await anext(watching)).sequence == 1
            await aio.close()
            with pytest.raises(ClientClosed):
                await anext(watching)

        asyncio.run(closed_while_watching())


def _add_events(url: str, job_name: str, count: int) -> list[int]:
    """Appends `count` copies of the job's last event to its history (a job of many epochs, in
    an instant); returns the sequences of the whole history."""
    database = Database(url)
    job_id = job_name.removeprefix("jobs/")
    with database.write() as session:
        last = session.scalars(
            select(JobEventRow)
            .where(JobEventRow.job_id == job_id)
            .order_by(JobEventRow.sequence.desc())
            .limit(1)
        ).one()
        columns = {c.key: getattr(last, c.key) for c in JobEventRow.__table__.columns}
        session.execute(
            insert(JobEventRow),
            [{**columns, "sequence": last.sequence + n} for n in range(1, count + 1)],
        )
    database.dispose()
    return list(range(1, last.sequence + count + 1))


def test_metrics_checkpoints_metadata_and_stream(
    client: Client, iris_dataset: DatasetInfo, iris: dict[str, np.ndarray]
) -> None:
    job = client.create_job(
        iris_dataset, MLP, epochs=6, validation_fraction=0.25, checkpoint_every_epochs=2,
        optimizer={"name": "adam", "learning_rate": 0.02},
    )  # fmt: skip
    job.wait(timeout=120)
    metrics = job.metrics()
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(metrics)
    assert metrics["loss"][:, 1].tolist() == [1, 2, 3, 4, 5, 6]
    assert np.all(np.diff(metrics["loss"][:, 0]) > 0)
    only_loss = job.metrics(["loss"])
    assert list(only_loss) == ["loss"]

    checkpoints = job.checkpoints()
    assert [c.epoch for c in checkpoints] == [2, 4, 6]
    assert_same_checkpoints(checkpoints, server_checkpoints(client.target, job.name))
    assert checkpoints[-1].is_final and sum(c.is_best for c in checkpoints) == 1
    best = next(c for c in checkpoints if c.is_best)
    assert best.metrics["val_loss"] == min(c.metrics["val_loss"] for c in checkpoints)
    by_epoch = job.predict(iris["x_test"], checkpoint="epoch/2")
    assert by_epoch.checkpoint == checkpoints[0].name
    assert job.predict(iris["x_test"], checkpoint="best").checkpoint == best.name
    assert job.predict(iris["x_test"], checkpoint=checkpoints[1].name).checkpoint == (
        checkpoints[1].name
    )

    metadata = client.model_metadata(job.name)
    assert metadata.input_shape == (-1, 4) and metadata.output_shape == (-1, 3)
    assert metadata.input_dtype == metadata.output_dtype == np.float32
    assert metadata.num_classes == 3 and metadata.num_parameters == 4 * 16 + 16 + 16 * 3 + 3
    assert (metadata.job, metadata.checkpoint) == (job.name, checkpoints[-1].name)
    # MLP as the server stored it: the engine's defaults written out.
    defaults = {
        "use_bias": True,
        "kernel_initializer": "glorot_uniform",
        "bias_initializer": "zeros",
    }
    assert metadata.model == {
        "input_dim": 4,
        "layers": [
            {"type": "dense", "units": 16, "activation": "relu", **defaults},
            {"type": "dense", "units": 3, "activation": "linear", **defaults},
        ],
    }
    assert client.model_metadata(job.name, "epoch/2").checkpoint == checkpoints[0].name

    # PredictStream answers each slice in order, equal to unary predictions.
    with grpc.insecure_channel(client.target) as channel:
        stub = predictions_pb2_grpc.PredictionServiceStub(channel)
        requests = [
            predictions_pb2.PredictRequest(job=job.name, inputs=to_tensor(iris["x_test"][i::3]))
            for i in range(3)
        ]
        answers = list(stub.PredictStream(iter(requests), timeout=30))
    assert len(answers) == 3
    for i, answer in enumerate(answers):
        expected = job.predict(iris["x_test"][i::3]).outputs
        assert answer.outputs.data == expected.astype("<f4").tobytes()


def test_a_stream_is_answered_by_its_first_model_after_its_checkpoint_is_deleted(
    client: Client, iris_dataset: DatasetInfo, iris: dict[str, np.ndarray]
) -> None:
    """PredictStream's slices are one input: "latest" moves on and retention deletes the
    checkpoint that answered the first slice, and the next slice is still answered by it; once
    the job itself is deleted, the stream's next slice is NOT_FOUND."""
    job = client.create_job(
        iris_dataset, MLP, epochs=3000, checkpoint_every_epochs=1, keep_checkpoints=1
    )
    wait_for(lambda: bool(job.checkpoints()), 60, "a first checkpoint")
    later, deleted = threading.Event(), threading.Event()

    def slices() -> Iterator[predictions_pb2.PredictRequest]:
        for part, gate in ((iris["x_test"][:10], later), (iris["x_test"][10:], deleted)):
            yield predictions_pb2.PredictRequest(job=job.name, inputs=to_tensor(part))
            assert gate.wait(60)
        yield predictions_pb2.PredictRequest(job=job.name, inputs=to_tensor(iris["x_test"]))

    try:
        with grpc.insecure_channel(client.target) as channel:
            stub = predictions_pb2_grpc.PredictionServiceStub(channel)
            answers = stub.PredictStream(slices(), timeout=120)
            first = next(answers).checkpoint
            # Training goes on; retention deletes the first's checkpoint.
            wait_for(lambda: first not in [c.name for c in job.checkpoints()], 60, "its deletion")
            time.sleep(2.5)  # past the server's job cache: a lookup by name would now fail
            later.set()
            assert next(answers).checkpoint == first
            job.cancel()
            job.wait(timeout=60)
            job.delete()
            deleted.set()
            with pytest.raises(grpc.RpcError) as gone:
                next(answers)
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        if not deleted.is_set():
            job.cancel()


def test_predictions_whose_answers_outgrow_their_requests(client: Client) -> None:
    """Ten classes from four features: an answer row (outputs, probabilities, label: 88 bytes)
    is 5.5 times its request row, so requests sized by their own bytes would get answers over
    the 4 MiB message limit."""
    rng = np.random.default_rng(3)
    data = client.upload_dataset(rng.normal(size=(200, 4)).astype(np.float32), np.arange(200) % 10)
    ten_classes = {"layers": [{"type": "dense", "units": 8, "activation": "relu"},
                              {"type": "dense", "units": 10}]}  # fmt: skip
    job = client.create_job(data, ten_classes, epochs=1)
    job.wait(timeout=120)
    x = rng.normal(size=(70_000, 4)).astype(np.float32)
    whole = job.predict(x)
    assert whole.outputs.shape == (70_000, 10) and whole.labels is not None
    # The last rows, in order. Not bit for bit: inside the SDK's large requests they may go
    # through matrix products of whole row blocks, alone through matrix-vector products
    # (engine.inference), which differ in the last bits.
    np.testing.assert_allclose(
        whole.outputs[-5:], job.predict(x[-5:]).outputs, rtol=1e-5, atol=1e-6
    )

    # Six hundred classes: the first request's 1,024 answer rows (4.8 KB each) cannot be sent;
    # the SDK learns the rows that fit from the refusal and sends those.
    wide_data = client.upload_dataset(rng.normal(size=(1200, 4)).astype(np.float32),
                                      np.arange(1200) % 600)  # fmt: skip
    wide = client.create_job(wide_data, {"layers": [{"type": "dense", "units": 600}]}, epochs=1)
    wide.wait(timeout=120)
    assert wide.predict(x[:3000]).outputs.shape == (3000, 600)

    # One request whose answer cannot be sent is refused before its forward pass.
    with grpc.insecure_channel(client.target) as channel:
        stub = predictions_pb2_grpc.PredictionServiceStub(channel)
        request = predictions_pb2.PredictRequest(job=job.name, inputs=to_tensor(x[:60_000]))
        with pytest.raises(grpc.RpcError) as too_big:
            stub.Predict(request, timeout=30)
        # The same rows' raw outputs alone (40 bytes a row) fit one answer.
        request.outputs_only = True
        raw = stub.Predict(request, timeout=30)
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 47" in (too_big.value.details() or "")  # 4 MiB less 4 KiB, over 88 bytes
    assert not raw.HasField("probabilities") and not raw.HasField("labels")
    # Split into other requests (answers of 40 bytes a row, not 88), rows go through matrix
    # products of other sizes: equal up to float32 rounding.
    np.testing.assert_allclose(
        from_tensor(raw.outputs), whole.outputs[:60_000], rtol=1e-5, atol=1e-6
    )
    raw_whole = job.predict(x, outputs_only=True)
    assert raw_whole.labels is None
    np.testing.assert_allclose(raw_whole.outputs, whole.outputs, rtol=1e-5, atol=1e-6)


def test_delete_dataset_and_job(client: Client, iris: dict[str, np.ndarray]) -> None:
    # Not the module's iris dataset (the SDK would reuse that one for the same arrays).
    data = client.upload_dataset(iris["x_train"][1:], iris["y_train"][1:])
    waiting = client.create_job(data, MLP, epochs=1, queue="nobody-listens")
    with pytest.raises(FailedPrecondition, match="used by unfinished jobs"):
        client.delete_dataset(data.name)
    with pytest.raises(FailedPrecondition, match="cancel it"):
        waiting.delete()
    waiting.cancel()
    done = client.create_job(data, MLP, epochs=2)
    done.wait(timeout=120)
    client.delete_dataset(data.name)
    with pytest.raises(NotFound):
        client.get_dataset(data.name)
    # A finished job keeps its model after its dataset is gone.
    assert done.status().raw.dataset == ""
    assert done.predict(iris["x_test"]).labels is not None
    done.delete()
    for call in (done.status, done.checkpoints, done.metrics):
        with pytest.raises(NotFound):
            call()
    with pytest.raises(NotFound):
        done.predict(iris["x_test"])


@pytest.fixture
def limited_server(tmp_path: Path) -> Iterator[Client]:
    limits = {
        "TRAINWIRE_MAX_EPOCHS": "5",
        "TRAINWIRE_MAX_PARAMETERS": "1000",
        "TRAINWIRE_MAX_DATASET_BYTES": "4096",
        "TRAINWIRE_MAX_WATCHES_PER_CLIENT": "1",
    }
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    with local_server(url, workers=0, extra_env=limits) as server, Client(server.target) as sdk:
        yield sdk


def test_limits_are_resource_exhausted_naming_the_limit(limited_server: Client) -> None:
    client = limited_server
    x = np.zeros((10, 4), np.float32)
    data = client.upload_dataset(x, np.arange(10) % 3)
    with pytest.raises(ResourceExhausted, match=r"max_dataset_bytes is limited to 4096"):
        client.upload_dataset(np.zeros((1000, 4), np.float32), np.zeros(1000, np.int64))
    with pytest.raises(ResourceExhausted, match=r"max_epochs is limited to 5. Received: 6"):
        client.create_job(data, MLP, epochs=6)
    with pytest.raises(ResourceExhausted, match=r"max_parameters is limited to 1000"):
        client.create_job(data, {"layers": [{"type": "dense", "units": 10**9}]}, epochs=1)
    with grpc.insecure_channel(client.target) as channel:
        stub = predictions_pb2_grpc.PredictionServiceStub(channel)
        huge = to_tensor(np.zeros((300_000, 4), np.float32))  # 4.8 MB > the 4 MiB limit
        with pytest.raises(grpc.RpcError) as too_big:
            stub.Predict(predictions_pb2.PredictRequest(job="jobs/x", inputs=huge), timeout=30)
        assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4194304" in (too_big.value.details() or "")
    job = client.create_job(data, MLP, epochs=1)  # no worker: stays QUEUED, so watches stay open
    first = job.watch()
    assert next(first).sequence == 1
    with pytest.raises(ResourceExhausted, match="max_watches_per_client is limited to 1"):
        next(job.watch())
    first.close()


def test_a_job_too_large_for_the_message_limit_is_refused_and_a_stored_one_still_shown(
    tmp_path: Path,
) -> None:
    """A model whose normalised spec would not fit an answer is refused before it is stored
    (it was queued and trained while CreateJob answered RESOURCE_EXHAUSTED, then broke GetJob,
    CancelJob and ListJobs); one stored under a larger limit is shown without its layers."""
    url = f"sqlite:///{tmp_path / 'sizes.db'}"
    many = {"layers": [{"type": "dense", "units": 4}] * 2000 + [{"type": "dense", "units": 3}]}
    small = {"TRAINWIRE_MAX_MESSAGE_BYTES": str(64 * 1024)}
    with local_server(url, workers=0) as server, Client(server.target) as client:
        data = client.upload_dataset(np.zeros((10, 4), np.float32), np.arange(10) % 3)
        stored = client.create_job(data, many, epochs=1)  # about 74 KB shown: fits 4 MiB
    with local_server(url, workers=0, extra_env=small) as server, Client(server.target) as client:
        with pytest.raises(ResourceExhausted, match=r"model.layers is limited to 30720"):
            client.create_job(data, many, epochs=1)
        assert [job.name for job in client.list_jobs()] == [stored.name]
        shown = client.job_status(stored.name)
        assert shown.model["layers"] == [] and shown.state == "QUEUED"
        assert client.cancel_job(stored.name).state == "CANCELLED"
        fitting = client.create_job(data, MLP, epochs=1)
        assert len(fitting.last_status.model["layers"]) == 2
        assert {job.name for job in client.list_jobs()} == {stored.name, fitting.name}


def test_model_metadata_of_a_stored_job_too_large_to_show_is_shown_without_its_layers(
    tmp_path: Path,
) -> None:
    """GetJob showed such a job without its layers, but GetModelMetadata sent its whole model
    and failed for the message limit."""
    url = f"sqlite:///{tmp_path / 'metadata.db'}"
    many = {"layers": [{"type": "dense", "units": 4}] * 2000 + [{"type": "dense", "units": 3}]}
    small = {"TRAINWIRE_MAX_MESSAGE_BYTES": str(64 * 1024)}
    with local_server(url, workers=1) as server, Client(server.target) as client:
        data = client.upload_dataset(np.zeros((10, 4), np.float32), np.arange(10) % 3)
        stored = client.create_job(data, many, epochs=1)  # about 74 KB shown: fits 4 MiB
        assert stored.wait(timeout=120).state == "SUCCEEDED"
        assert len(client.model_metadata(stored.name).model["layers"]) == 2001
    with local_server(url, workers=0, extra_env=small) as server, Client(server.target) as client:
        metadata = client.model_metadata(stored.name)
        assert metadata.model["layers"] == [] and metadata.num_classes == 3


def test_list_answers_end_their_page_where_the_message_limit_would_be_passed(
    tmp_path: Path,
) -> None:
    """A page of up to 1,000 jobs or datasets went past the message limit once its items were
    sizeable, and the whole answer failed; now it ends early with a token, and paging on gets
    every item."""
    url = f"sqlite:///{tmp_path / 'pages.db'}"
    small = {"TRAINWIRE_MAX_MESSAGE_BYTES": str(64 * 1024)}
    wide = {"layers": [{"type": "dense", "units": 4}] * 500 + [{"type": "dense", "units": 3}]}
    # About 15 KB of names a dataset, within the quarter of an answer they may take: six
    # datasets pass one 64 KiB answer.
    names = [f"feature {i} " + "x" * 90 for i in range(140)]
    with local_server(url, workers=0, extra_env=small) as server, Client(server.target) as client:
        datasets = [
            client.upload_dataset(
                np.full((3, 140), i, np.float32), np.arange(3), feature_names=names
            ).name
            for i in range(6)
        ]
        jobs = [client.create_job(datasets[0], wide, epochs=1).name for _ in range(8)]  # ~19 KB
        with grpc.insecure_channel(server.target) as channel:
            first = jobs_pb2_grpc.JobServiceStub(channel).ListJobs(
                jobs_pb2.ListJobsRequest(page_size=1000), timeout=30
            )
        assert 0 < len(first.jobs) < len(jobs) and first.next_page_token
        assert [job.name for job in client.list_jobs(page_size=1000)] == jobs[::-1]
        with grpc.insecure_channel(server.target) as channel:
            shown = datasets_pb2_grpc.DatasetServiceStub(channel).ListDatasets(
                datasets_pb2.ListDatasetsRequest(page_size=1000), timeout=30
            )
        assert 0 < len(shown.datasets) < len(datasets) and shown.next_page_token
        assert [d.name for d in client.list_datasets(page_size=1000)] == datasets[::-1]


def test_metrics_of_a_job_logging_every_step_are_read_page_by_page(tmp_path: Path) -> None:
    """Every step's batch_loss made ListJobMetrics answers past the message limit, and then a
    job's metrics could not be read at all: both SDKs now follow its pages, and a client from
    before paging is refused with what to do rather than sent part of them."""
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    small = {"TRAINWIRE_MAX_MESSAGE_BYTES": str(64 * 1024)}
    x = np.random.default_rng(3).normal(size=(8000, 2)).astype(np.float32)
    with local_server(url, workers=1, extra_env=small) as server, Client(server.target) as client:
        data = client.upload_dataset(x, x[:, 0].astype(np.float64))
        job = client.create_job(
            data, {"layers": [{"type": "dense", "units": 1}]}, epochs=1, batch_size=1,
            log_every_steps=1, optimizer={"name": "sgd", "learning_rate": 0.001},
        )  # fmt: skip
        assert job.wait(timeout=120).state == "SUCCEEDED"
        metrics = client.job_metrics(job)
        assert list(metrics.steps("batch_loss")) == list(range(1, 8001))
        assert list(metrics.steps("loss")) == [8000]

        async def read_async() -> Any:
            async with AsyncClient(server.target, timeout=30) as aio:
                return await aio.job_metrics(job.name)

        again = asyncio.run(read_async())
        assert sorted(again) == sorted(metrics)
        assert all(np.array_equal(again[name], metrics[name]) for name in metrics)
        with grpc.insecure_channel(server.target) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListJobMetrics(jobs_pb2.ListJobMetricsRequest(name=job.name), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "set page_size and follow next_page_token" in (refused.value.details() or "")


def _store_checkpoints(url: str, job: str, checkpoints: list[dict[str, Any]]) -> list[str]:
    """Writes `checkpoints` (each `metrics`, and `is_partial` or `is_final` if set) to the job
    in one insert, as an older server kept them (new jobs keep at most 1,000, and training that
    many is slow); returns their names, oldest first."""
    database = Database(url)
    try:
        with database.write() as session:
            rows = [
                CheckpointRow(
                    job_id=job.removeprefix("jobs/"),
                    epoch=number + 1,
                    step=10 * (number + 1),
                    metrics=checkpoint["metrics"],
                    is_final=checkpoint.get("is_final", False),
                    is_partial=checkpoint.get("is_partial", False),
                    size_bytes=100,
                    created_at=datetime.datetime.now(datetime.UTC),
                )
                for number, checkpoint in enumerate(checkpoints)
            ]
            session.add_all(rows)
            session.flush()
            return [f"{job}/checkpoints/{row.id}" for row in rows]
    finally:
        database.dispose()


def _list_checkpoints(target: str, **fields: Any) -> jobs_pb2.ListCheckpointsResponse:
    with grpc.insecure_channel(target) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        return stub.ListCheckpoints(jobs_pb2.ListCheckpointsRequest(**fields), timeout=30)


def test_checkpoints_of_a_job_past_one_page_are_listed_page_by_page_with_its_one_best(
    database_url: str,
) -> None:
    """A job an older server kept tens of thousands of checkpoints of passed the message limit
    in its one ListCheckpoints answer, which then failed for good: the answer is paged, a client
    sending no page_size gets 1,002 (every checkpoint of a job within today's bound), both SDKs
    follow the pages, and `is_best` marks the best of all of them on whatever page it is."""
    many, best = 2500, 1700
    checkpoints: list[dict[str, Any]] = [
        {"metrics": {"loss": 1.0, "val_loss": 2.0 - i / many}} for i in range(many)
    ]
    checkpoints[best]["metrics"] = {"loss": 1.0, "val_loss": 0.1}
    checkpoints[2400] = {"metrics": {"val_loss": 0.01}, "is_partial": True}  # never the best
    checkpoints[-1]["is_final"] = True
    with local_server(database_url, workers=0) as server, Client(server.target) as client:
        data = client.upload_dataset(np.zeros((10, 4), np.float32), np.arange(10) % 3)
        job = client.create_job(data, MLP, epochs=1).name  # no worker: stays QUEUED
        names = _store_checkpoints(database_url, job, checkpoints)
        other = client.create_job(data, MLP, epochs=1).name
        _store_checkpoints(database_url, other, checkpoints[:3])

        first = _list_checkpoints(server.target, name=job)  # as a client from before paging
        assert [c.name for c in first.checkpoints] == names[:1002] and first.next_page_token
        assert not any(c.is_best for c in first.checkpoints)
        clamped = _list_checkpoints(server.target, name=job, page_size=5000)
        assert [c.name for c in clamped.checkpoints] == names[:1002]
        pages, token = [], ""
        while True:
            page = _list_checkpoints(server.target, name=job, page_size=1000, page_token=token)
            pages.append(page.checkpoints)
            token = page.next_page_token
            if not token:
                break
        assert [len(page) for page in pages] == [1000, 1000, 500]
        listed = [c for page in pages for c in page]
        assert [c.name for c in listed] == names
        assert [c.name for c in listed if c.is_best] == [names[best]]
        assert [c.name for c in listed if c.is_final] == [names[-1]]
        assert [c.name for c in listed if c.is_partial] == [names[2400]]
        # The other job's listing is its own, with its own best.
        shown = _list_checkpoints(server.target, name=other, page_size=1)
        assert len(shown.checkpoints) == 1 and shown.next_page_token
        assert [c.is_best for c in client.job_checkpoints(other)] == [False, False, True]

        got = client.job_checkpoints(job)
        assert [c.name for c in got] == names
        assert [c.name for c in got if c.is_best] == [names[best]]
        assert [c.name for c in client.get_job(job).checkpoints() if c.is_best] == [names[best]]

        async def read_async() -> list[tuple[str, bool]]:
            async with AsyncClient(server.target, timeout=30) as aio:
                return [(c.name, c.is_best) for c in await aio.job_checkpoints(job)]

        assert asyncio.run(read_async()) == [(name, name == names[best]) for name in names]


def test_a_bad_checkpoints_page_token_or_page_size_is_invalid_argument_naming_it(
    database_url: str,
) -> None:
    """As ListJobs and ListDatasets refuse them: a token ListCheckpoints did not return for
    this job, and a negative page_size, are INVALID_ARGUMENT naming the field."""
    with local_server(database_url, workers=0) as server, Client(server.target) as client:
        data = client.upload_dataset(np.zeros((10, 4), np.float32), np.arange(10) % 3)
        job, other = (client.create_job(data, MLP, epochs=1).name for _ in range(2))
        for name in (job, other):
            _store_checkpoints(database_url, name, [{"metrics": {"loss": 1.0}}] * 3)
        others = _list_checkpoints(server.target, name=other, page_size=1).next_page_token
        with grpc.insecure_channel(server.target) as channel:
            jobs_token = (
                jobs_pb2_grpc.JobServiceStub(channel)
                .ListJobs(jobs_pb2.ListJobsRequest(page_size=1), timeout=30)
                .next_page_token
            )
        assert others and jobs_token
        for token in ("not a token", others, jobs_token, "x" * 300):
            with pytest.raises(grpc.RpcError) as refused:
                _list_checkpoints(server.target, name=job, page_token=token)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, token
            assert (refused.value.details() or "").startswith("page_token: "), token
        with pytest.raises(grpc.RpcError) as negative:
            _list_checkpoints(server.target, name=job, page_size=-1)
        assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert negative.value.details() == "page_size: must not be negative. Received: -1"


def test_checkpoints_past_the_message_limit_end_their_page_early(tmp_path: Path) -> None:
    """Under a smaller message limit a page ends, with a token, where one more checkpoint would
    pass it (the whole answer failed RESOURCE_EXHAUSTED), and the SDK pages on to the end."""
    url = f"sqlite:///{tmp_path / 'checkpoints.db'}"
    small = {"TRAINWIRE_MAX_MESSAGE_BYTES": str(64 * 1024)}
    metrics = {f"metric_{i}": float(i) for i in range(8)} | {"val_loss": 0.5}
    with local_server(url, workers=0, extra_env=small) as server, Client(server.target) as client:
        data = client.upload_dataset(np.zeros((10, 4), np.float32), np.arange(10) % 3)
        job = client.create_job(data, MLP, epochs=1).name
        names = _store_checkpoints(url, job, [{"metrics": metrics}] * 900)  # ~250 KB
        first = _list_checkpoints(server.target, name=job)
        assert 0 < len(first.checkpoints) < len(names) and first.next_page_token
        got = client.job_checkpoints(job)
        assert [c.name for c in got] == names
        assert [c.name for c in got if c.is_best] == [names[-1]]  # the newest on ties


def test_abandoned_watches_give_back_their_slot_and_hold_no_thread(tmp_path: Path) -> None:
    """A watch the client leaves (cancel, deadline) is released at once, and an idle watch holds
    no server thread: with a pool of 2 threads, 12 abandoned watches leave every RPC working."""
    env = {"TRAINWIRE_GRPC_THREADS": "2", "TRAINWIRE_MAX_WATCHES_PER_CLIENT": "2"}
    url = f"sqlite:///{tmp_path / 'watches.db'}"
    with local_server(url, workers=0, extra_env=env) as server, Client(server.target) as client:
        data = client.upload_dataset(np.zeros((10, 4), np.float32), np.arange(10) % 3)
        job = client.create_job(data, MLP, epochs=1)  # no worker: stays QUEUED
        with grpc.insecure_channel(server.target) as channel:
            jobs = jobs_pb2_grpc.JobServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(6):
                watch = jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name), timeout=30)
                assert next(watch).sequence == 1
                watch.cancel()
                status = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
                assert next(status).status == health_pb2.HealthCheckResponse.SERVING
                status.cancel()
            for _ in range(6):  # and watches that time out
                with pytest.raises(grpc.RpcError) as expired:
                    list(jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name), timeout=0.5))
                assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # Plain RPCs (thread pool) still answer, and the watch slots are free again once
            # the cancellations have reached the server.
            assert job.status().state == "QUEUED"
            wait_for(lambda: _two_watches_open(job), 30, "both watch slots to be free")
    assert server.process.returncode == 0, "".join(server.output[-40:])


def test_a_projects_keys_share_its_watch_limit(tmp_path: Path) -> None:
    """Open watches are counted per project, its API keys together: each key had its own count,
    so a project given several keys held TRAINWIRE_MAX_WATCHES_PER_CLIENT watches per key. One
    past the limit with the project's second key is refused RESOURCE_EXHAUSTED naming the limit,
    another project's watch is admitted meanwhile, and the slot is back once a watch ends."""
    url = f"sqlite:///{tmp_path / 'watches.db'}"
    alpha, alpha_too, beta = _keys_of_two_projects(url)
    env = {"TRAINWIRE_MAX_WATCHES_PER_CLIENT": "2"}
    with (
        local_server(url, workers=0, extra_env=env) as server,
        Client(server.target, api_key=alpha) as a,
        Client(server.target, api_key=alpha_too) as a_too,
        Client(server.target, api_key=beta) as b,
    ):
        x, y = np.zeros((10, 4), np.float32), np.arange(10) % 3
        # No worker: the jobs stay QUEUED, so their watches stay open.
        alpha_job, beta_job = (c.create_job(c.upload_dataset(x, y), MLP, epochs=1) for c in (a, b))
        alpha_job_too = a_too.get_job(alpha_job.name)
        held = [alpha_job.watch(), alpha_job.watch()]
        try:
            assert [next(watch).sequence for watch in held] == [1, 1]
            with pytest.raises(ResourceExhausted) as refused:
                next(alpha_job_too.watch())
            message = refused.value.message
            assert "max_watches_per_client is limited to 2. Received: 3" in message
            assert "per project" in message
            beta_watch = beta_job.watch()
            try:
                assert next(beta_watch).sequence == 1
            finally:
                beta_watch.close()
            held.pop().close()  # one ends: the project's slot is back, for either key

            def opens() -> bool:
                watch = alpha_job_too.watch()
                try:
                    return next(watch).sequence == 1
                except ResourceExhausted:
                    return False
                finally:
                    watch.close()

            wait_for(opens, 30, "a watch slot of the project")
        finally:
            for watch in held:
                watch.close()
    assert server.process.returncode == 0, "".join(server.output[-40:])


def _ten_rows_header() -> datasets_pb2.DatasetHeader:
    """The header of a 10-row regression upload, for uploads that stall after it."""
    return datasets_pb2.DatasetHeader(
        task=datasets_pb2.TASK_KIND_REGRESSION,
        features=tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[10, 4]),
        targets=tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[10]),
    )


def test_stalled_uploads_hold_no_thread(tmp_path: Path) -> None:
    """An upload waiting for its client holds no server thread: with a pool of 2 threads, 4
    uploads that sent their header and nothing more (two in progress, two waiting for a slot)
    leave every RPC working (each held a thread for as long as its stream was open, and
    GetDataset waited for one until its deadline)."""
    url = f"sqlite:///{tmp_path / 'uploads.db'}"
    env = {"TRAINWIRE_GRPC_THREADS": "2", "TRAINWIRE_MAX_UPLOADS_PER_CLIENT": "4"}
    with local_server(url, workers=0, extra_env=env) as server, Client(server.target) as client:
        data = client.upload_dataset(np.zeros((10, 4), np.float32), np.arange(10) % 3)
        header = _ten_rows_header()
        sent, release = threading.Semaphore(0), threading.Event()

        def stalled() -> Iterator[datasets_pb2.UploadDatasetRequest]:
            yield datasets_pb2.UploadDatasetRequest(header=header)
            sent.release()  # grpc asks for the next message: the header is on its way
            release.wait(30)

        with grpc.insecure_channel(server.target) as channel:
            datasets = datasets_pb2_grpc.DatasetServiceStub(channel)
            uploads = [datasets.UploadDataset.future(stalled(), timeout=60) for _ in range(4)]
            try:
                # The calls that follow on this connection reach the server after the headers.
                assert all(sent.acquire(timeout=30) for _ in uploads)
                got = datasets.GetDataset(
                    datasets_pb2.GetDatasetRequest(name=data.name), timeout=10
                )
                assert got.name == data.name
                listed = datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), timeout=10)
                assert [d.name for d in listed.datasets] == [data.name]
            finally:
                release.set()
            for upload in uploads:  # and each ends as before, refused for the bytes it lacks
                with pytest.raises(grpc.RpcError) as short:
                    upload.result(timeout=30)
                assert short.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "the upload ended after 0 of the 200 bytes" in (short.value.details() or "")
    assert server.process.returncode == 0, "".join(server.output[-40:])


def test_uploads_beyond_the_thread_count_wait_for_one_to_end(tmp_path: Path) -> None:
    """Uploads in progress are bounded by TRAINWIRE_GRPC_THREADS again: as a coroutine an upload
    held no thread, and any number of them, each up to max_dataset_bytes, could run at once.
    One beyond the bound waits for a slot (within its deadline) and then succeeds."""
    url = f"sqlite:///{tmp_path / 'uploads.db'}"
    env = {"TRAINWIRE_GRPC_THREADS": "2", "TRAINWIRE_MAX_UPLOADS_PER_CLIENT": "4"}
    with local_server(url, workers=0, extra_env=env) as server, Client(server.target) as client:
        data = client.upload_dataset(np.zeros((10, 4), np.float32), np.arange(10) % 3)
        header = _ten_rows_header()
        sent = threading.Semaphore(0)
        releases = [threading.Event(), threading.Event()]

        def stalled(release: threading.Event) -> Iterator[datasets_pb2.UploadDatasetRequest]:
            yield datasets_pb2.UploadDatasetRequest(header=header)
            sent.release()
            release.wait(30)

        upload = prepare_upload(
            np.ones((8, 3), np.float32), np.arange(8) % 2, task="binary", name="late",
            num_classes=0, feature_names=(), class_names=(), labels=None,
        )  # fmt: skip
        with grpc.insecure_channel(server.target) as channel:
            datasets = datasets_pb2_grpc.DatasetServiceStub(channel)
            holding = [datasets.UploadDataset.future(stalled(r), timeout=60) for r in releases]
            try:
                assert all(sent.acquire(timeout=30) for _ in holding)
                late = datasets.UploadDataset.future(upload.requests(4 << 20), timeout=60)
                with pytest.raises(grpc.RpcError) as expired:
                    datasets.UploadDataset(upload.requests(4 << 20), timeout=1)
                assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                # Waiting uploads hold no thread: other calls are answered.
                got = datasets.GetDataset(
                    datasets_pb2.GetDatasetRequest(name=data.name), timeout=10
                )
                assert got.name == data.name
                time.sleep(1)
                assert not late.done(), "a third upload ran beside two in progress"
                releases[0].set()
                assert late.result(timeout=30).display_name == "late"
            finally:
                for release in releases:
                    release.set()
            for stopped in holding:
                with pytest.raises(grpc.RpcError) as short:
                    stopped.result(timeout=30)
                assert short.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.process.returncode == 0, "".join(server.output[-40:])


def test_uploads_that_send_no_header_hold_no_upload_slot(tmp_path: Path) -> None:
    """An upload takes its slot once its header is checked: as many streams as there are slots
    (TRAINWIRE_GRPC_THREADS), open and silent, leave an upload free to run (each took a slot
    before its first message, and every other upload waited for one until its deadline)."""
    url = f"sqlite:///{tmp_path / 'uploads.db'}"
    env = {"TRAINWIRE_GRPC_THREADS": "2", "TRAINWIRE_MAX_UPLOADS_PER_CLIENT": "3"}
    with local_server(url, workers=0, extra_env=env) as server:
        opened, release = threading.Semaphore(0), threading.Event()

        def silent() -> Iterator[datasets_pb2.UploadDatasetRequest]:
            opened.release()  # grpc asks for the first message: the call has started
            release.wait(120)  # past the upload's deadline: it must not wait for them
            yield from ()

        upload = prepare_upload(
            np.ones((8, 3), np.float32), np.arange(8) % 2, task="binary", name="beside",
            num_classes=0, feature_names=(), class_names=(), labels=None,
        )  # fmt: skip
        with grpc.insecure_channel(server.target) as channel:
            datasets = datasets_pb2_grpc.DatasetServiceStub(channel)
            silents = [datasets.UploadDataset.future(silent(), timeout=180) for _ in range(2)]
            try:
                assert all(opened.acquire(timeout=30) for _ in silents)
                # A call that follows on this connection reaches the server after the silent
                # streams, whose handlers are then running.
                datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), timeout=30)
                stored = datasets.UploadDataset(upload.requests(4 << 20), timeout=60)
                assert stored.display_name == "beside"
                assert not any(s.done() for s in silents)
            finally:
                release.set()
            for stopped in silents:  # and each ends as before, refused for its missing header
                with pytest.raises(grpc.RpcError) as headless:
                    stopped.result(timeout=30)
                assert headless.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "the first message of an upload must be the header" in (
                    headless.value.details() or ""
                )
    assert server.process.returncode == 0, "".join(server.output[-40:])


def test_an_idle_upload_is_ended_and_frees_its_slot(tmp_path: Path) -> None:
    """An upload that sends nothing for TRAINWIRE_STREAM_IDLE_TIMEOUT_S, after its header and a
    chunk or before any header, is ended DEADLINE_EXCEEDED saying how long the server waited and
    what had arrived (a client without a deadline held its slot and bytes for good), which the
    SDK does not retry; the only upload slot is then free for the next upload."""
    url = f"sqlite:///{tmp_path / 'uploads.db'}"
    env = {"TRAINWIRE_GRPC_THREADS": "1", "TRAINWIRE_STREAM_IDLE_TIMEOUT_S": "0.5"}
    with local_server(url, workers=0, extra_env=env) as server, Client(server.target) as client:
        release = threading.Event()

        def stalled(first: list[datasets_pb2.UploadDatasetRequest]) -> Iterator[Any]:
            yield from first
            release.wait(120)  # past the wait for the outcome below: the server must end it

        header = datasets_pb2.UploadDatasetRequest(header=_ten_rows_header())
        chunk = datasets_pb2.UploadDatasetRequest(chunk=bytes(40))
        expected = {
            "after a chunk": (
                [header, chunk],
                "the upload sent nothing for 0.5 s after 40 of the 200 bytes its header announces",
            ),
            "before a header": ([], "the upload sent no header in 0.5 s"),
        }
        with grpc.insecure_channel(server.target) as channel:
            datasets = datasets_pb2_grpc.DatasetServiceStub(channel)
            try:
                for first, message in expected.values():
                    call = datasets.UploadDataset.future(stalled(first), timeout=180)
                    with pytest.raises(grpc.RpcError) as idle:
                        call.result(timeout=60)
                    code, details = idle.value.code(), idle.value.details() or ""
                    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details
                    assert message in details and "TRAINWIRE_STREAM_IDLE_TIMEOUT_S" in details
                    assert not RetryPolicy().retryable(code, details)
            finally:
                release.set()
        data = client.upload_dataset(np.zeros((10, 4), np.float32), np.arange(10) % 3, timeout=60)
        assert data.num_examples == 10
    assert server.process.returncode == 0, "".join(server.output[-40:])


def test_one_client_cannot_hold_every_upload_slot(tmp_path: Path) -> None:
    """One project's uploads, as many as there are slots (TRAINWIRE_GRPC_THREADS) and each
    stalled after its header (or trickling a byte within the idle timeout), held every slot,
    and every other project's upload waited until its deadline: a project may have
    TRAINWIRE_MAX_UPLOADS_PER_CLIENT open, its keys together (each key had its own count, so a
    project's second key held the slot left), one more is refused at once RESOURCE_EXHAUSTED
    naming the limit, and another project's upload takes the slot left."""
    url = f"sqlite:///{tmp_path / 'uploads.db'}"
    alpha, alpha_too, beta = _keys_of_two_projects(url)
    env = {"TRAINWIRE_GRPC_THREADS": "3", "TRAINWIRE_MAX_UPLOADS_PER_CLIENT": "2"}
    with (
        local_server(url, workers=0, extra_env=env) as server,
        Client(server.target, api_key=alpha) as a,
        Client(server.target, api_key=beta) as b,
    ):
        header = datasets_pb2.UploadDatasetRequest(header=_ten_rows_header())
        release = threading.Event()
        x, y = np.zeros((10, 4), np.float32), np.arange(10) % 3
        with grpc.insecure_channel(server.target) as channel:
            datasets = datasets_pb2_grpc.DatasetServiceStub(channel)
            uploads = [
                datasets.UploadDataset.future(
                    _held([header], release),
                    metadata=(("authorization", f"Bearer {key}"),),
                    timeout=180,
                )
                for key in (alpha, alpha, alpha_too)
            ]
            try:
                refused, code, details = _the_one_refused(uploads)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
                assert "max_uploads_per_client is limited to 2. Received: 3" in details
                assert "per project" in details
                assert b.upload_dataset(x, y, timeout=60).num_examples == 10
            finally:
                release.set()
            # The two held end as before, short of their bytes.
            _end_short_of_their_bytes(u for u in uploads if u is not refused)
        assert a.upload_dataset(x, y, timeout=60).num_examples == 10  # its slots are back
    assert server.process.returncode == 0, "".join(server.output[-40:])


def test_uploads_waiting_for_a_slot_are_bounded(tmp_path: Path) -> None:
    """Uploads waiting for a slot each held their checked header (up to a quarter of a message
    in names), and any number could wait (200 grew the server by 250 MiB): as many may wait as
    there are slots (TRAINWIRE_GRPC_THREADS), one more is refused at once RESOURCE_EXHAUSTED
    naming the limit, which the SDK retries as a busy server's refusal (see
    test_an_upload_refused_a_place_to_wait_for_a_slot_is_retried), and those that waited go on
    once a slot is free."""
    url = f"sqlite:///{tmp_path / 'uploads.db'}"
    # One slot; the per-client limit (one channel, one peer) is not what is tested here.
    env = {"TRAINWIRE_GRPC_THREADS": "1", "TRAINWIRE_MAX_UPLOADS_PER_CLIENT": "3"}
    with local_server(url, workers=0, extra_env=env) as server, Client(server.target) as client:
        header = datasets_pb2.UploadDatasetRequest(header=_ten_rows_header())
        release = threading.Event()
        with grpc.insecure_channel(server.target) as channel:
            datasets = datasets_pb2_grpc.DatasetServiceStub(channel)
            # Whichever reaches the server first takes the slot, the next waits, the last is
            # refused.
            uploads = [
                datasets.UploadDataset.future(_held([header], release), timeout=180)
                for _ in range(3)
            ]
            try:
                refused, code, details = _the_one_refused(uploads)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
                assert (
                    "the number of uploads waiting for a slot is limited to 1. Received: 2"
                ) in details
                assert "TRAINWIRE_GRPC_THREADS" in details
                assert RetryPolicy().retryable(code, details)
            finally:
                release.set()
            # The other two end as before, short of their bytes.
            _end_short_of_their_bytes(u for u in uploads if u is not refused)
        data = client.upload_dataset(np.zeros((10, 4), np.float32), np.arange(10) % 3, timeout=60)
        assert data.num_examples == 10
    assert server.process.returncode == 0, "".join(server.output[-40:])


def test_an_upload_refused_a_place_to_wait_for_a_slot_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """That refusal sheds the whole server's load, whoever sends the uploads, and says to upload
    again once some end: the SDK raised it at once, as a configured limit. Its upload is
    retried: here refused while two held uploads take the one slot and the one place to wait,
    then stored once they end."""
    url = f"sqlite:///{tmp_path / 'uploads.db'}"
    env = {"TRAINWIRE_GRPC_THREADS": "1", "TRAINWIRE_MAX_UPLOADS_PER_CLIENT": "3"}
    # Retried until the held uploads end, whatever the machine's pace.
    patient = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.2)
    caplog.set_level(logging.DEBUG, logger="trainwire.client")
    retried = "retrying after StatusCode.RESOURCE_EXHAUSTED"
    with (
        local_server(url, workers=0, extra_env=env) as server,
        Client(server.target, retry=patient) as client,
    ):
        header = datasets_pb2.UploadDatasetRequest(header=_ten_rows_header())
        release = threading.Event()
        uploaded: list[Any] = []  # the SDK's dataset, or what it raised

        def upload() -> None:
            try:
                x, y = np.zeros((10, 4), np.float32), np.arange(10) % 3
                uploaded.append(client.upload_dataset(x, y, timeout=60))
            except BaseException as error:  # handed to the test's thread
                uploaded.append(error)

        uploading = threading.Thread(target=upload, daemon=True)
        with grpc.insecure_channel(server.target) as channel:
            datasets = datasets_pb2_grpc.DatasetServiceStub(channel)
            uploads = [
                datasets.UploadDataset.future(_held([header], release), timeout=180)
                for _ in range(3)
            ]
            try:
                # The third is refused: the other two hold the slot and the place to wait.
                refused, _, _ = _the_one_refused(uploads)
                uploading.start()
                wait_for(lambda: retried in caplog.text or uploaded, 30, "the SDK's refusal")
                assert not uploaded, uploaded
            finally:
                release.set()
            _end_short_of_their_bytes(u for u in uploads if u is not refused)
        uploading.join(60)
        assert not uploading.is_alive(), "the SDK's upload still retrying"
        assert len(uploaded) == 1 and isinstance(uploaded[0], DatasetInfo), uploaded
        assert uploaded[0].num_examples == 10
    assert server.process.returncode == 0, "".join(server.output[-40:])


def _the_one_refused(uploads: list[Any]) -> tuple[Any, grpc.StatusCode, str]:
    """The one of `uploads` (held open) the server ended at once, with its code and details."""
    wait_for(lambda: any(u.done() for u in uploads), 30, "an upload to be refused")
    [refused] = [u for u in uploads if u.done()]
    error = refused.exception()
    assert isinstance(error, grpc.RpcError)
    return refused, error.code(), error.details() or ""


def _end_short_of_their_bytes(uploads: Iterable[Any]) -> None:
    """Held uploads, released, end INVALID_ARGUMENT: their header announced more bytes."""
    for upload in uploads:
        with pytest.raises(grpc.RpcError) as short:
            upload.result(timeout=30)
        assert short.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _held(
    first: list[Any], release: threading.Event, sent: threading.Semaphore | None = None
) -> Iterator[Any]:
    """A client stream's messages: `first`, then nothing until `release` (or 120 s, past the
    waits for outcomes: the server must end what it holds); `sent` is released once `first`
    is on its way (grpc asks for the next message)."""
    yield from first
    if sent is not None:
        sent.release()
    release.wait(120)


def _predict_request(job: Job, x: np.ndarray) -> predictions_pb2.PredictRequest:
    return predictions_pb2.PredictRequest(job=job.name, inputs=to_tensor(x))


def test_an_idle_prediction_stream_is_ended_and_lets_go_of_its_model(tmp_path: Path) -> None:
    """A PredictStream that sends nothing for TRAINWIRE_STREAM_IDLE_TIMEOUT_S, after a request
    or before any, is ended DEADLINE_EXCEEDED saying so (a client's idle streams pinned the
    model cache for as long as they liked, and every other project's stream was refused
    RESOURCE_EXHAUSTED), which the SDK does not retry; its model is let go of, so a stream of
    another model, for which the cache has no room beside it, is answered."""
    url = f"sqlite:///{tmp_path / 'streams.db'}"
    # Room for one model of MLP (131 float32 parameters: 524 bytes, counted with 12 KiB for its
    # objects), not two.
    env = {"TRAINWIRE_MODEL_CACHE_BYTES": "20000", "TRAINWIRE_STREAM_IDLE_TIMEOUT_S": "0.5"}
    with local_server(url, workers=1, extra_env=env) as server, Client(server.target) as client:
        x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
        data = client.upload_dataset(x, np.arange(30) % 3)
        idle_job, other_job = (client.create_job(data, MLP, epochs=1) for _ in range(2))
        for job in (idle_job, other_job):
            assert job.wait(timeout=120).state == "SUCCEEDED"
        expected = {
            "after a request": (
                [_predict_request(idle_job, x[:2])],
                "the prediction stream sent nothing for 0.5 s after 1 requests",
            ),
            "before a request": ([], "the prediction stream sent no request in 0.5 s"),
        }
        release = threading.Event()
        with grpc.insecure_channel(server.target) as channel:
            stub = predictions_pb2_grpc.PredictionServiceStub(channel)
            try:
                for first, message in expected.values():
                    # A deadline long past the idle timeout, yet short of the wait for release.
                    stream = stub.PredictStream(_held(first, release), timeout=60)
                    with pytest.raises(grpc.RpcError) as idle:
                        for _ in stream:  # the first request's answer, then the stream's end
                            pass
                    code, details = idle.value.code(), idle.value.details() or ""
                    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details
                    assert message in details and "TRAINWIRE_STREAM_IDLE_TIMEOUT_S" in details
                    assert not RetryPolicy().retryable(code, details)
            finally:
                release.set()
        [answer] = client.predict_stream(other_job, [x[:3]])
        assert len(answer.outputs) == 3
    assert server.process.returncode == 0, "".join(server.output[-40:])


def test_a_client_may_hold_only_so_many_prediction_streams(tmp_path: Path) -> None:
    """One project's open PredictStreams pinned the model cache, and every other project's
    streams were refused: a project may have TRAINWIRE_MAX_PREDICT_STREAMS_PER_CLIENT open, its
    keys together (each key had its own count, so a project's second key opened as many again),
    one more is refused RESOURCE_EXHAUSTED naming the limit (which the SDK does not retry),
    another project's stream is answered meanwhile, and the project's slot is back once a
    stream ends."""
    url = f"sqlite:///{tmp_path / 'streams.db'}"
    alpha, alpha_too, beta = _keys_of_two_projects(url)
    env = {"TRAINWIRE_MAX_PREDICT_STREAMS_PER_CLIENT": "2"}
    with (
        local_server(url, workers=1, extra_env=env) as server,
        Client(server.target, api_key=alpha) as a,
        Client(server.target, api_key=beta) as b,
        Client(server.target, api_key=alpha_too) as a_too,
    ):
        x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
        jobs = [c.create_job(c.upload_dataset(x, np.arange(30) % 3), MLP, epochs=1) for c in (a, b)]
        for job in jobs:
            assert job.wait(timeout=120).state == "SUCCEEDED"
        alpha_job, beta_job = jobs
        releases = [threading.Event(), threading.Event()]
        with grpc.insecure_channel(server.target) as channel:
            stub = predictions_pb2_grpc.PredictionServiceStub(channel)
            held = [
                stub.PredictStream(
                    _held([_predict_request(alpha_job, x[:2])], release),
                    metadata=(("authorization", f"Bearer {alpha}"),),
                    timeout=180,
                )
                for release in releases
            ]
            try:
                assert all(next(stream).checkpoint for stream in held)
                # The project's other key counts with the first.
                alpha_job_too = a_too.get_job(alpha_job.name)
                with pytest.raises(ResourceExhausted) as refused:
                    list(alpha_job_too.predict_stream([x[:2]]))
                message = refused.value.message
                assert "max_predict_streams_per_client is limited to 2. Received: 3" in message
                assert "per project" in message
                assert not RetryPolicy().retryable(refused.value.code, message)
                assert [len(p.outputs) for p in beta_job.predict_stream([x[:2]])] == [2]
                releases[0].set()  # its stream ends: a slot is free again
                wait_for(lambda: _streams(alpha_job_too, x), 30, "a prediction stream slot")
            finally:
                for release in releases:
                    release.set()
    assert server.process.returncode == 0, "".join(server.output[-40:])


def _streams(job: Job, x: np.ndarray) -> bool:
    """Whether a prediction stream of the job is answered (not refused for the per-client
    limit)."""
    try:
        return [len(p.outputs) for p in job.predict_stream([x[:2]])] == [2]
    except ResourceExhausted:
        return False


def _refused(call: Callable[[], object]) -> bool:
    """Whether the call is refused as UNAUTHENTICATED (any other error fails the test)."""
    try:
        call()
    except TrainwireError as error:
        assert error.code == grpc.StatusCode.UNAUTHENTICATED, error
        return True
    return False


def _two_watches_open(job: Job) -> bool:
    """Whether two watches of the job open at once (the server allows a client two)."""
    first, second = job.watch(), job.watch()
    try:
        return next(first).sequence == 1 and next(second).sequence == 1
    except ResourceExhausted:
        return False
    finally:
        first.close()
        second.close()


# --- API keys and projects ----------------------------------------------------------------------


def create_key(url: str, project: str) -> str:
    result = subprocess.run(
        [*CLI, "keys", "create", "--project", project, "--database-url", url],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def _keys_of_two_projects(url: str) -> tuple[str, str, str]:
    """A new database at `url` with two keys of project alpha and one of beta, in that order:
    for limits counted per project, its keys together."""
    upgrade(url)
    return create_key(url, "alpha"), create_key(url, "alpha"), create_key(url, "beta")


def test_api_keys_isolate_projects_on_every_rpc(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    upgrade(url)
    alpha, beta = create_key(url, "alpha"), create_key(url, "beta")
    listing = subprocess.run(
        [*CLI, "keys", "list", "--database-url", url], capture_output=True, text=True, check=True
    ).stdout
    assert "alpha" in listing and "beta" in listing
    # tw_<id>_<secret>; the secret is URL-safe base64 and may itself hold "_" (or start with it).
    for key in (alpha, beta):
        secret = key.split("_", 2)[2]
        assert len(secret) >= 20 and secret not in listing, "secrets are never shown again"

    with local_server(url, workers=1) as server:
        with Client(server.target) as anonymous, pytest.raises(TrainwireError) as refused:
            anonymous.list_datasets().__next__()
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in refused.value.message
        forged = alpha[:-4] + "AAAA"
        with Client(server.target, api_key=forged) as bad, pytest.raises(TrainwireError) as wrong:
            list(bad.list_jobs())
        assert wrong.value.code == grpc.StatusCode.UNAUTHENTICATED
        # A method the server lacks is judged as any other: the key first.
        with grpc.insecure_channel(server.target) as channel:
            nope = channel.unary_unary("/trainwire.v1.JobService/Nope")
            codes = []
            for metadata in ((), (("authorization", f"Bearer {alpha}"),)):
                with pytest.raises(grpc.RpcError) as unknown:
                    nope(b"", timeout=30, metadata=metadata)
                codes.append(unknown.value.code())
        assert codes == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED]

        with Client(server.target, api_key=alpha) as a, Client(server.target, api_key=beta) as b:
            x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
            data = a.upload_dataset(x, np.arange(30) % 3)
            job = a.create_job(data, MLP, epochs=2)
            job.wait(timeout=120)
            assert [d.name for d in a.list_datasets()] == [data.name]
            assert list(b.list_datasets()) == [] and list(b.list_jobs()) == []
            other = b.get_job  # every RPC of another project's resources is NOT_FOUND
            calls = [
                lambda: b.get_dataset(data.name),
                lambda: b.delete_dataset(data.name),
                lambda: b.create_job(data, MLP),
                lambda: other(job.name),
                lambda: b.cancel_job(job.name),
                lambda: b.delete_job(job.name),
                lambda: list(b.watch_job(job.name)),
                lambda: b.job_metrics(job.name),
                lambda: b.job_checkpoints(job.name),
                lambda: b.predict(job.name, x),
                lambda: b.model_metadata(job.name),
                lambda: list(b.predict_stream(job.name, [x[:5], x[5:]])),
            ]
            for call in calls:
                with pytest.raises(NotFound, match="does not exist"):
                    call()
            assert a.predict(job.name, x).labels is not None
            streamed = list(a.predict_stream(job.name, [x[:5], x[5:]]))
            assert [len(p.outputs) for p in streamed] == [5, 25]

            subprocess.run(
                [*CLI, "keys", "revoke", alpha.split("_")[1], "--database-url", url], check=True
            )
            # The key table is re-read every second.
            wait_for(lambda: _refused(lambda: a.get_job(job.name)), 30, "the revocation")


def test_a_revoked_key_ends_the_streams_opened_with_it(tmp_path: Path) -> None:
    """A key was checked when a call started only: a watch opened with it went on for as long
    as its job ran after the key was revoked (new calls were refused within 2 s)."""
    url = f"sqlite:///{tmp_path / 'streams.db'}"
    upgrade(url)
    key = create_key(url, "alpha")
    create_key(url, "alpha")  # another key stays active: the server stays closed
    with local_server(url, workers=0) as server, Client(server.target, api_key=key) as client:
        x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
        job = client.create_job(client.upload_dataset(x, np.arange(30) % 3), MLP, epochs=1)
        events: list[JobEvent] = []
        ended: list[BaseException] = []

        def watch() -> None:
            try:
                for event in client.watch_job(job.name):
                    events.append(event)
            except BaseException as error:  # what ended it is the result
                ended.append(error)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        wait_for(lambda: bool(events), 30, "the watch's first event")
        subprocess.run(
            [*CLI, "keys", "revoke", key.split("_")[1], "--database-url", url], check=True
        )
        watcher.join(30)
        assert not watcher.is_alive(), "the watch of a QUEUED job went on after the revocation"
        assert isinstance(ended[0], TrainwireError)
        assert ended[0].code == grpc.StatusCode.UNAUTHENTICATED
        assert "this stream was opened with has been revoked" in ended[0].message


def test_a_key_read_with_its_newline_is_sent_without_it_and_a_bad_one_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`api_key=open("key").read()` (or TRAINWIRE_API_KEY) ends with a newline, which gRPC cannot
    send: the sync client raised `Internal: Invalid metadata` at its first call (a server error,
    of a server that never saw it), the async one a raw cygrpc ExecuteBatchError. Surrounding
    whitespace is dropped; a key still unsendable is a ValueError at construction naming where
    it came from, and never showing the secret."""
    url = f"sqlite:///{tmp_path / 'newline.db'}"
    upgrade(url)
    key = create_key(url, "alpha")
    monkeypatch.delenv("TRAINWIRE_API_KEY", raising=False)
    with local_server(url, workers=0) as server:
        with Client(server.target, api_key=f" {key}\n", timeout=10) as client:
            assert list(client.list_datasets()) == []

        async def list_async(api_key: str) -> list[DatasetInfo]:
            async with AsyncClient(server.target, api_key=api_key, timeout=10) as client:
                return [dataset async for dataset in client.list_datasets()]

        assert asyncio.run(list_async(f"{key}\r\n")) == []
        monkeypatch.setenv("TRAINWIRE_API_KEY", f"{key}\n")
        with Client.from_env(target=server.target, timeout=10) as client:
            assert list(client.list_datasets()) == []
        code = main(["datasets", "list", "--target", server.target, "--api-key", f"{key}\n"])
        out, err = capsys.readouterr()
        assert code == 0, err

        secret = key.split("_", 2)[2]
        for bad in (f"{key}é", f"{key[:5]}\n{key[5:]}"):
            with pytest.raises(ValueError, match=r"^api_key holds a (non-ASCII|control) char"):
                Client(server.target, api_key=bad)
            with pytest.raises(ValueError, match=r"^api_key holds a (non-ASCII|control) char"):
                AsyncClient(server.target, api_key=bad)
            monkeypatch.setenv("TRAINWIRE_API_KEY", bad)
            with pytest.raises(ValueError, match=r"^TRAINWIRE_API_KEY holds") as refused:
                Client.from_env(target=server.target)
            assert secret not in str(refused.value)
            monkeypatch.delenv("TRAINWIRE_API_KEY")
            code = main(["datasets", "list", "--target", server.target, "--api-key", bad])
            out, err = capsys.readouterr()
            assert code == 2 and "--api-key holds a" in err and secret not in err + out


def test_public_address_without_keys_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'open.db'}"
    result = subprocess.run(
        [*CLI, "serve", "--host", "0.0.0.0", "--port", "0", "--workers", "0",
         "--database-url", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, "the README's exit code for a configuration to change"
    assert "without API keys" in result.stderr and "trainwire keys create" in result.stderr
    # Both ways to run open anyway, in one message after the new database's migration logs.
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("trainwire: refusing to serve 0.0.0.0 without API keys")
    assert "--allow-open-public" in message and "TRAINWIRE_ALLOW_OPEN_PUBLIC=true" in message
    # On the database given by the option, not the default one (a key there is none of this
    # server's).
    assert (
        f"create one with `trainwire keys create --project NAME --database-url {url}`, " in message
    )
    assert "Traceback" not in result.stderr


def assert_refused_for_want_of_an_active_key(target: str) -> None:
    """A call without a key is refused (UNAUTHENTICATED), and once the server has re-read its
    keys (every second), with the message telling the operator to create one."""
    with Client(target) as anonymous:
        deadline = time.monotonic() + 60
        while True:
            with pytest.raises(TrainwireError) as refused:
                list(anonymous.list_datasets())
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
            if "none is active" in refused.value.message or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert "trainwire keys create" in refused.value.message


def test_public_server_stays_closed_when_its_last_key_is_revoked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'closed.db'}"
    upgrade(url)
    key = create_key(url, "alpha")
    with local_server(url, workers=0, host="0.0.0.0") as server:
        with Client(server.target, api_key=key) as client:
            assert list(client.list_datasets()) == []
        revoke = [*CLI, "keys", "revoke", key.split("_")[1], "--database-url", url]
        subprocess.run(revoke, check=True)
        assert_refused_for_want_of_an_active_key(server.target)


def test_public_server_allowed_open_stays_closed_once_a_key_was_created(tmp_path: Path) -> None:
    """It fell open again when its last key was revoked (docker-compose.yml sets the flag)."""
    url = f"sqlite:///{tmp_path / 'allowed.db'}"
    upgrade(url)
    allowed_open = {"TRAINWIRE_ALLOW_OPEN_PUBLIC": "true"}
    with local_server(url, workers=0, host="0.0.0.0", extra_env=allowed_open) as server:
        with Client(server.target) as anonymous:
            assert list(anonymous.list_datasets()) == [], "open: no key was ever created"
        key = create_key(url, "alpha")
        revoke = [*CLI, "keys", "revoke", key.split("_")[1], "--database-url", url]
        subprocess.run(revoke, check=True)
        assert_refused_for_want_of_an_active_key(server.target)
    # Restarted so, it starts (the flag allows that) and still refuses, saying so in its log.
    with local_server(url, workers=0, host="0.0.0.0", extra_env=allowed_open) as server:
        assert_refused_for_want_of_an_active_key(server.target)
    log = "".join(server.output)
    assert "every API key was revoked: the server refuses every call" in log
    assert "open to anyone" not in log


# --- TLS ----------------------------------------------------------------------------------------


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for localhost signed by it with its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("trainwire test CA"))
        .issuer_name(name("trainwire test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    client = (
        x509.CertificateBuilder()
        .subject_name(name("a trainwire client"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "client.pem").write_bytes(client.public_bytes(serialization.Encoding.PEM))
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_whole_path_over_tls(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    url = f"sqlite:///{tmp_path / 'tls.db'}"
    env = {"TRAINWIRE_TLS_CERT": str(cert), "TRAINWIRE_TLS_KEY": str(key)}
    with local_server(url, workers=1, extra_env=env) as server:
        assert "(TLS;" in "".join(server.output)
        target = server.target.replace("127.0.0.1", "localhost")
        with Client(target, tls=str(ca)) as client:
            x = np.random.default_rng(1).normal(size=(40, 4)).astype(np.float32)
            data = client.upload_dataset(x, np.arange(40) % 3)
            job = client.create_job(data, MLP, epochs=2)
            assert job.wait(timeout=120).state == "SUCCEEDED"
            assert job.predict(x).labels is not None
        with Client(target) as plaintext, pytest.raises(TrainwireError) as refused:
            plaintext.get_dataset(data.name)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    url = f"sqlite:///{tmp_path / 'mtls.db'}"
    env = {
        "TRAINWIRE_TLS_CERT": str(cert),
        "TRAINWIRE_TLS_KEY": str(key),
        "TRAINWIRE_TLS_CLIENT_CA": str(ca),
    }
    with local_server(url, workers=0, extra_env=env) as server:
        target = server.target.replace("127.0.0.1", "localhost")
        pair = (str(tmp_path / "client.pem"), str(key))
        with Client(target, tls=str(ca), client_cert=pair) as client:
            assert list(client.list_datasets()) == []
        with Client(target, tls=str(ca)) as anonymous, pytest.raises(TrainwireError) as refused:
            list(anonymous.list_datasets())
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE


def test_tls_files_given_as_paths_are_read_sync_and_async(tmp_path: Path) -> None:
    """`tls=` and `client_cert=` take a `pathlib.Path` as they take a str: a Path CA was taken
    for `tls=True`, the server then verified with the system's CAs (and a publicly signed one
    trusted on any public CA's word). A `tls` of no known type is refused, not taken so."""
    ca, cert, key = make_certificates(tmp_path)
    url = f"sqlite:///{tmp_path / 'paths.db'}"
    env = {
        "TRAINWIRE_TLS_CERT": str(cert),
        "TRAINWIRE_TLS_KEY": str(key),
        "TRAINWIRE_TLS_CLIENT_CA": str(ca),
    }
    with local_server(url, workers=0, extra_env=env) as server:
        target = server.target.replace("127.0.0.1", "localhost")
        pair = (tmp_path / "client.pem", key)
        with Client(target, tls=ca, client_cert=pair, timeout=10) as client:
            assert list(client.list_datasets()) == []

        async def list_async() -> list[DatasetInfo]:
            async with AsyncClient(target, tls=ca, client_cert=pair, timeout=10) as client:
                return [dataset async for dataset in client.list_datasets()]

        assert asyncio.run(list_async()) == []
        # True still means the system's CAs, which did not sign this server's certificate.
        system = Client(target, tls=True, client_cert=pair, timeout=2)
        with system, pytest.raises(TrainwireError) as unverified:
            list(system.list_datasets())
        assert unverified.value.code == grpc.StatusCode.UNAVAILABLE
    for wrong in (1, ["ca.pem"]):
        with pytest.raises(TypeError, match=r"^tls must be True .* Received: "):
            Client("localhost:1", tls=wrong)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^tls must be True"):
            AsyncClient("localhost:1", tls=wrong)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^client_cert key must be a PEM file's path"):
        Client("localhost:1", tls=ca, client_cert=(ca, 1))  # type: ignore[arg-type]


def test_user_commands_show_a_client_certificate_to_a_mutual_tls_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's mutual TLS from the command line: `--client-cert` with `--client-key`, or
    TRAINWIRE_CLIENT_CERT with TRAINWIRE_CLIENT_KEY (which `Client.from_env` reads too); one
    without the other is a usage error. The user commands had no way to show a certificate. The
    options (`client_cert=`) override both variables: one of them set alone was refused even
    then."""
    ca, cert, key = make_certificates(tmp_path)
    client_cert = str(tmp_path / "client.pem")
    env = {
        "TRAINWIRE_TLS_CERT": str(cert),
        "TRAINWIRE_TLS_KEY": str(key),
        "TRAINWIRE_TLS_CLIENT_CA": str(ca),
    }
    for name in (
        "TRAINWIRE_API_KEY",
        "TRAINWIRE_TLS",
        "TRAINWIRE_CLIENT_CERT",
        "TRAINWIRE_CLIENT_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    with local_server(f"sqlite:///{tmp_path / 'cli.db'}", workers=0, extra_env=env) as server:
        target = server.target.replace("127.0.0.1", "localhost")

        def datasets_list(*options: str) -> tuple[int, str, str]:
            code = main(
                ["datasets", "list", "--target", target, "--tls", str(ca), "--timeout", "10",
                 "--json", *options]
            )  # fmt: skip
            out, err = capsys.readouterr()
            return code, out, err

        code, out, err = datasets_list("--client-cert", client_cert, "--client-key", str(key))
        assert (code, out) == (0, "[]\n"), err
        monkeypatch.setenv("TRAINWIRE_CLIENT_CERT", client_cert)
        monkeypatch.setenv("TRAINWIRE_CLIENT_KEY", str(key))
        code, out, err = datasets_list()
        assert (code, out) == (0, "[]\n"), err
        with Client.from_env(target=target, tls=str(ca)) as client:
            assert list(client.list_datasets()) == []
        monkeypatch.delenv("TRAINWIRE_CLIENT_KEY")
        code, _, err = datasets_list()
        assert code == 2, err
        assert "TRAINWIRE_CLIENT_CERT and TRAINWIRE_CLIENT_KEY must be given together" in err
        code, out, err = datasets_list("--client-cert", client_cert, "--client-key", str(key))
        assert (code, out) == (0, "[]\n"), err
        pair = (client_cert, str(key))
        with Client.from_env(target=target, tls=str(ca), client_cert=pair) as client:
            assert list(client.list_datasets()) == []
        monkeypatch.delenv("TRAINWIRE_CLIENT_CERT")
        code, _, err = datasets_list("--client-key", str(key))
        assert code == 2, err
        assert "--client-cert and --client-key must be given together" in err
        assert "Received --client-key without --client-cert" in err
        # Refused for want of a certificate ("Socket closed", unless gRPC names the refused ::1
        # of localhost last): the hint names the options, not the --tls that was given.
        code, _, err = datasets_list()
        assert code == 5, err
        assert "if the server uses TLS" not in err and "pass --client-cert CERT" in err
        # Refused a certificate another CA signed: the hint says which CA must have signed it.
        other = tmp_path / "other"
        other.mkdir()
        _, _, other_key = make_certificates(other)
        code, _, err = datasets_list(
            "--client-cert", str(other / "client.pem"), "--client-key", str(other_key)
        )
        assert code == 5, err
        assert "the server's client CA (its --tls-client-ca) signed that certificate" in err


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_health_command_probes_a_tls_server_over_tls(tmp_path: Path, mutual: bool) -> None:
    """`trainwire health` trusts the server's certificate (TRAINWIRE_TLS_CERT) and, given its key
    too, shows it as its client certificate: a server that requires client certificates accepts
    it (their CA signed it) whether or not the probe sees TRAINWIRE_TLS_CLIENT_CA, which a server
    started with `--tls-client-ca` never set (the probe showed it only with that variable, and
    found such a server unreachable). A server that requires none is probed with the certificate
    alone (once refused as a configuration error, exit 2). An unreachable probe says what to
    check. The target is --target, else 127.0.0.1:TRAINWIRE_PORT: never the user commands'
    TRAINWIRE_TARGET, which an environment shared with clients would turn a health check to.
    `status --target` probes alike and gives the same hint (it gave none): on stderr under its
    table, as server.hint in its JSON."""
    # The certificate names localhost; the probe reaches 127.0.0.1, as the Dockerfile's does.
    ca, cert, key = make_certificates(tmp_path)
    tls = {"TRAINWIRE_TLS_CERT": str(cert), "TRAINWIRE_TLS_KEY": str(key)}
    serve_env = {**tls, "TRAINWIRE_TLS_CLIENT_CA": str(ca)} if mutual else tls
    database_url = f"sqlite:///{tmp_path / 'health.db'}"
    with local_server(database_url, workers=0, extra_env=serve_env) as server:
        port = server.target.rsplit(":", 1)[1]
        serving = (0, f"127.0.0.1:{port}: SERVING")
        unreachable = (1, f"127.0.0.1:{port}: unreachable (UNAVAILABLE)")

        def health(
            probe_env: dict[str, str], *options: str, command: str = "health"
        ) -> tuple[int, str, str]:
            """The probe in a container: the server's settings in its environment, or some."""
            env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINWIRE_")}
            result = subprocess.run(
                [*CLI, command, *options],
                env={**env, "TRAINWIRE_PORT": port, **probe_env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            return result.returncode, result.stdout.strip(), result.stderr

        for probe_env in (serve_env, tls):  # tls: the server's client CA unknown to the probe
            code, out, err = health(probe_env)
            assert (code, out) == serving, err
        # --target, else this machine's TRAINWIRE_PORT; TRAINWIRE_TARGET is not read.
        code, out, err = health({**tls, "TRAINWIRE_TARGET": "127.0.0.1:9"})
        assert (code, out) == serving, err
        code, out, err = health({**tls, "TRAINWIRE_PORT": "9"}, "--target", f"localhost:{port}")
        assert (code, out) == (0, f"localhost:{port}: SERVING"), err
        code, out, err = health({"TRAINWIRE_TLS_CERT": str(cert)})
        if mutual:
            assert (code, out) == unreachable, err
            assert "if the server requires client certificates" in err
            assert "set TRAINWIRE_TLS_KEY too" in err
        else:
            assert (code, out) == serving, err
        code, out, err = health({})
        assert (code, out) == unreachable, err
        assert "if the server uses TLS, set TRAINWIRE_TLS_CERT" in err
        hint = err.strip().removeprefix("trainwire: ")

        def status(probe_env: dict[str, str], *options: str) -> tuple[int, str, str]:
            return health(
                probe_env, "--database-url", database_url, "--target", f"127.0.0.1:{port}",
                *options, command="status",
            )  # fmt: skip

        code, out, err = status({})
        assert code == 0 and f"127.0.0.1:{port}: unreachable (UNAVAILABLE)" in out, err
        assert err == f"trainwire: {hint}\n"
        code, out, err = status({}, "--json")
        assert (code, err) == (0, ""), "the hint is in the JSON, which stays one document"
        assert json.loads(out)["server"] == {
            "target": f"127.0.0.1:{port}", "health": "unreachable (UNAVAILABLE)", "hint": hint
        }  # fmt: skip
        code, out, err = status(serve_env, "--json")
        assert (code, err) == (0, "")
        assert json.loads(out)["server"] == {
            "target": f"127.0.0.1:{port}", "health": "SERVING", "hint": None
        }  # fmt: skip
        code, out, err = status(serve_env)
        assert (code, err) == (0, "") and f"127.0.0.1:{port}: SERVING" in out


# --- health while the database is unreachable ---------------------------------------------------


@pytest.mark.postgres
def test_health_is_not_serving_while_the_database_is_unreachable(
    postgres_server_url: str,
) -> None:
    url = fresh_postgres_database(postgres_server_url)
    upgrade(url)
    parsed = make_url(url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    proxied = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with (
            local_server(proxied, workers=0) as server,
            grpc.insecure_channel(server.target) as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel)

            def status() -> int:
                request = health_pb2.HealthCheckRequest(service="trainwire.v1.JobService")
                return health.Check(request, timeout=5).status

            assert status() == health_pb2.HealthCheckResponse.SERVING
            proxy.cut()
            deadline = time.monotonic() + 60
            while status() != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "health never reported NOT_SERVING"
                time.sleep(0.2)
            with Client(server.target) as client, pytest.raises(TrainwireError) as down:
                client.get_job(f"jobs/{uuid.uuid4().hex}")
            assert down.value.code == grpc.StatusCode.UNAVAILABLE
            proxy.restore()
            deadline = time.monotonic() + 60
            while status() != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "health never recovered"
                time.sleep(0.2)
    finally:
        proxy.close()


def _scrape(port: int) -> dict[str, float]:
    """The unlabelled samples of a /metrics endpoint by name. Bounded: a scrape that waited on a
    hung database never answered."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


@pytest.mark.postgres
def test_a_hung_database_turns_health_not_serving_and_metrics_still_answer(
    postgres_server_url: str,
) -> None:
    """A database that hangs (its connections open, nothing answered: a frozen proxy, a network
    partition that still acknowledges) kept health SERVING for as long as it lasted, since the
    health check's ping waited on it without a limit, and every /metrics scrape waited on it too
    (the deployment's gauges were read in the scrape): every series was lost. No series said the
    database was down: now `trainwire_database_up` does."""
    url = fresh_postgres_database(postgres_server_url)
    upgrade(url)
    parsed = make_url(url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    proxied = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    metrics_port = free_ports(1)
    env = {"TRAINWIRE_METRICS_PORT": str(metrics_port)}
    try:
        with (
            local_server(proxied, workers=0, extra_env=env) as server,
            grpc.insecure_channel(server.target) as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel)

            def status() -> int:
                request = health_pb2.HealthCheckRequest(service="trainwire.v1.JobService")
                return health.Check(request, timeout=10).status

            serving, not_serving = (
                health_pb2.HealthCheckResponse.SERVING,
                health_pb2.HealthCheckResponse.NOT_SERVING,
            )
            assert status() == serving
            wait_for(
                lambda: "trainwire_workers_alive" in _scrape(metrics_port), 30, "deployment gauges"
            )
            assert _scrape(metrics_port)["trainwire_database_up"] == 1
            proxy.freeze()
            try:
                wait_for(lambda: status() == not_serving, 60, "health to report NOT_SERVING")
                frozen = _scrape(metrics_port)  # answers while the database does not
                # The database is said to be down; the last values read stay, with their age.
                assert frozen["trainwire_database_up"] == 0
                assert frozen["trainwire_workers_alive"] == 0
                assert frozen["trainwire_deployment_read_age_seconds"] >= 0
            finally:
                proxy.thaw()
            wait_for(lambda: status() == serving, 60, "health to report SERVING again")
            wait_for(
                lambda: _scrape(metrics_port)["trainwire_database_up"] == 1, 30, "database_up 1"
            )
            wait_for(
                lambda: any("database reachable again" in line for line in server.output),
                30,
                "the end of the outage in the log",
            )
    finally:
        proxy.close()


def test_invalid_argument_names_the_field(client: Client, iris_dataset: DatasetInfo) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.create_job(iris_dataset, MLP, learning_rate=float("nan"))
    assert caught.value.field_violations[0][0] == "training.optimizer.learning_rate"
    with pytest.raises(InvalidArgument, match=r"U\+0000 at position 1 "):
        client.create_job(iris_dataset, MLP, display_name="a\x00b")


def test_a_malformed_tensor_is_refused_before_its_job_is_looked_up(client: Client) -> None:
    """Predict and PredictStream alike: the tensor is checked first, so the answer is about it,
    not about the job (which does not exist here) or a model loaded for nothing."""
    bad = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[1, 4], data=bytes(15))
    request = predictions_pb2.PredictRequest(job="jobs/" + "0" * 32, inputs=bad)
    with grpc.insecure_channel(client.target) as channel:
        stub = predictions_pb2_grpc.PredictionServiceStub(channel)
        for call in (
            lambda: stub.Predict(request, timeout=30),
            lambda: list(stub.PredictStream(iter([request]), timeout=30)),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "bytes" in (refused.value.details() or ""), refused.value.details()


def test_schedules_and_early_stopping_reach_the_engine(
    client: Client, iris_dataset: DatasetInfo
) -> None:
    job = client.create_job(
        iris_dataset,
        MLP,
        epochs=40,
        validation_fraction=0.25,
        schedule={"name": "step", "step_size": 1, "gamma": 0.5},
        early_stopping={"monitor": "val_loss", "patience": 2, "restore_best_weights": True},
    )
    status = job.wait(timeout=120)
    rates = job.metrics(["learning_rate"])["learning_rate"][:, 2]
    np.testing.assert_allclose(rates[1:] / rates[:-1], 0.5, rtol=1e-6)
    assert status.epoch < 40, "the learning rate halves each epoch, so training stalls early"
    with pytest.raises(InvalidArgument, match="schedule"):
        client.create_job(iris_dataset, MLP, schedule="no-such-schedule")
