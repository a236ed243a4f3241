"""Uploads retried through a real server (`trainwire serve`'s, in this process) on SQLite and on
PostgreSQL: one request_id per upload makes every retry store at most one dataset.

The server's failures are made by wrapping the dataset service's steps: an upload cut after its
first chunk (UNAVAILABLE, as by a server refusing; CANCELLED, as by a stopping one), and one whose
answer is lost once its dataset is stored.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest

from trainwire.client import Client, RetryPolicy, TrainwireError, wire
from trainwire.client.aio import AsyncClient
from trainwire.client.wire import prepare_upload
from trainwire.server import api as api_module
from trainwire.server import datasets as datasets_module
from trainwire.server.app import RunningServer
from trainwire.server.config import Settings
from trainwire.server.datasets import DatasetService
from trainwire.server.db import Database
from trainwire.server.errors import Cancelled, Unavailable
from trainwire.server.store import Store
from trainwire.v1 import datasets_pb2, datasets_pb2_grpc

from ..support.tcp_proxy import TcpProxy
from .conftest import blobs

FAST = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05)
# Three chunks of features (1 MiB each at most), then the targets: a cut after the first chunk
# leaves most of the upload unsent.
ROWS = 300_000


@pytest.fixture
def served(database_url: str) -> Iterator[tuple[str, Store]]:
    """A server on a migrated, empty database (each kind), and a store of that database."""
    database = Database(database_url)
    store = Store(database)
    settings = Settings(database_url=database_url, port=0, workers=0)
    server = RunningServer(settings, store, "127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{server.port}", store
    finally:
        server.stop(0)
        database.dispose()


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.normal(size=(ROWS, 2)).astype(np.float32), np.arange(ROWS) % 2


def _stored(store: Store) -> list[Any]:
    return store.list_datasets(100, "")[0]


@pytest.mark.parametrize("error", [Unavailable, Cancelled], ids=["UNAVAILABLE", "CANCELLED"])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_an_upload_cut_after_its_first_chunk_is_retried_and_stored_once(
    served: tuple[str, Store],
    monkeypatch: pytest.MonkeyPatch,
    error: type[Exception],
    asynchronous: bool,
) -> None:
    target, store = served
    add = datasets_module.Upload.add
    chunks: list[int] = []

    def cut_first_attempt(upload: Any, request: Any) -> None:
        chunks.append(len(request.chunk))
        if len(chunks) == 1:
            raise error("the server went away")
        add(upload, request)

    monkeypatch.setattr(datasets_module.Upload, "add", cut_first_attempt)
    x, y = _data()
    name = _upload(target, x, y, asynchronous)
    assert [d.id for d in _stored(store)] == [name.removeprefix("datasets/")]
    assert len(chunks) > 2, "the retry sent the upload again, whole"
    assert store.get_dataset(name.removeprefix("datasets/")).request_id


def test_an_async_upload_cut_mid_stream_reports_the_servers_status(
    served: tuple[str, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpc.aio replaced the status of an upload the server ended while the client was still
    writing with INTERNAL ("Internal error from Core", grpc/grpc#36066): 3 in 10 of these large
    uploads, cut at their first chunk, lost the server's UNAVAILABLE. The AsyncClient writes an
    upload's messages itself, so the server's status is what it reports, and what its retries
    judge. Retries are off here, so each cut is raised."""
    target, _ = served

    def cut(upload: Any, request: Any) -> None:
        raise Unavailable("the server went away")

    monkeypatch.setattr(datasets_module.Upload, "add", cut)
    rows = 6_000_000  # 96 MB: the client is still writing when the refusal comes
    x = np.random.default_rng(8).normal(size=(rows, 2)).astype(np.float32)
    y = np.arange(rows) % 2

    async def uploads() -> list[tuple[grpc.StatusCode, str]]:
        statuses = []
        async with AsyncClient(target, retry=RetryPolicy(max_attempts=1), timeout=60) as client:
            for _ in range(10):
                with pytest.raises(TrainwireError) as refused:
                    await client.upload_dataset(x, y, dedupe=False, progress=False)
                statuses.append((refused.value.code, refused.value.message))
        return statuses

    statuses = asyncio.run(uploads())
    assert statuses == [(grpc.StatusCode.UNAVAILABLE, "the server went away")] * 10


def test_an_async_upload_whose_own_requests_fail_raises_their_error(
    served: tuple[str, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AsyncClient abandons the call when making an upload's messages fails, and grpc.aio
    then raises CancelledError from the call, as though the caller's task were cancelled: the
    error itself is raised, not the CancelledError."""
    target, store = served
    requests = wire.Upload.requests

    def failing(self: wire.Upload, *args: Any) -> Iterator[Any]:
        for index, request in enumerate(requests(self, *args)):
            if index == 2:
                raise RuntimeError("the disk went away")
            yield request

    monkeypatch.setattr(wire.Upload, "requests", failing)
    x, y = _data()

    async def upload() -> None:
        async with AsyncClient(target, retry=FAST, timeout=60) as client:
            await client.upload_dataset(x, y, dedupe=False, progress=False)

    with pytest.raises(RuntimeError, match="the disk went away"):
        asyncio.run(upload())
    assert _stored(store) == []


def _upload(target: str, x: np.ndarray, y: np.ndarray, asynchronous: bool) -> str:
    """The name of the dataset `upload_dataset(x, y, dedupe=False)` answers, of either client."""
    if asynchronous:

        async def upload() -> str:
            async with AsyncClient(target, retry=FAST, timeout=60) as client:
                return (await client.upload_dataset(x, y, dedupe=False)).name

        return asyncio.run(upload())
    with Client(target, retry=FAST, timeout=60) as client:
        return client.upload_dataset(x, y, dedupe=False).name


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_an_upload_whose_answer_was_lost_is_found_by_its_request_id(
    served: tuple[str, Store], monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    """The first attempt stores its dataset, then fails UNAVAILABLE; the retry gets that dataset
    at its header, its bytes unsent and unstored, with `dedupe=False` too."""
    target, store = served
    finish, start = DatasetService.finish, DatasetService.start
    finished: list[str] = []
    started: list[str] = []

    def answer_lost(self: DatasetService, upload: Any, project: str) -> Any:
        finished.append(finish(self, upload, project).id)
        raise Unavailable("the connection dropped after the dataset was stored")

    def counted_start(self: DatasetService, first: Any) -> Any:
        started.append(first.header.request_id)
        return start(self, first)

    monkeypatch.setattr(DatasetService, "finish", answer_lost)
    monkeypatch.setattr(DatasetService, "start", counted_start)
    x, y = _data()
    name = _upload(target, x, y, asynchronous)
    assert [d.id for d in _stored(store)] == finished == [name.removeprefix("datasets/")]
    assert len(started) == 1, "the retry was answered at its header"


def _requests(
    features: np.ndarray, targets: np.ndarray, request_id: str, name: str = "blobs"
) -> Iterator[datasets_pb2.UploadDatasetRequest]:
    upload = prepare_upload(
        features, targets, task=None, name=name, num_classes=0, feature_names=(),
        class_names=(), labels=None,
    )  # fmt: skip
    return upload.requests(4 << 20, None, request_id)


def test_a_request_id_reused_for_another_upload_is_refused_naming_what_differs(
    served: tuple[str, Store],
) -> None:
    target, store = served
    features, labels = blobs()
    with grpc.insecure_channel(target) as channel:
        stub = datasets_pb2_grpc.DatasetServiceStub(channel)
        first = stub.UploadDataset(_requests(features, labels, "once"), timeout=30)
        again = stub.UploadDataset(_requests(features, labels, "once"), timeout=30)
        assert again == first, "the same upload again gets the dataset stored"
        other_labels = (labels + 1) % 3
        with pytest.raises(grpc.RpcError) as other_bytes:
            stub.UploadDataset(_requests(features, other_labels, "once"), timeout=30)
        with pytest.raises(grpc.RpcError) as other_name:
            stub.UploadDataset(_requests(features, labels, "once", "renamed"), timeout=30)
        with pytest.raises(grpc.RpcError) as other_shape:
            stub.UploadDataset(_requests(features[:30], labels[:30], "once"), timeout=30)
    assert other_bytes.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert other_bytes.value.details() == (
        f"request_id 'once' was already used by {first.name}, created with a different "
        "sha256; send a new request_id to create another dataset (a retry must repeat the "
        "request unchanged)"
    )
    assert "created with a different display_name;" in other_name.value.details()
    assert "created with a different features, targets, sha256;" in other_shape.value.details()
    assert [d.id for d in _stored(store)] == [first.name.removeprefix("datasets/")]


def test_a_request_id_is_checked_as_create_job_s(served: tuple[str, Store]) -> None:
    target, store = served
    features, labels = blobs()
    with grpc.insecure_channel(target) as channel:
        stub = datasets_pb2_grpc.DatasetServiceStub(channel)
        with pytest.raises(grpc.RpcError) as too_long:
            stub.UploadDataset(_requests(features, labels, "r" * 129), timeout=30)
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert too_long.value.details().startswith("header.request_id: ")
    assert _stored(store) == []


def test_deleting_a_dataset_frees_its_request_id(served: tuple[str, Store]) -> None:
    """As deleting a job frees CreateJob's: the row, and its key, are gone."""
    target, store = served
    features, labels = blobs()
    with grpc.insecure_channel(target) as channel:
        stub = datasets_pb2_grpc.DatasetServiceStub(channel)
        first = stub.UploadDataset(_requests(features, labels, "key"), timeout=30)
        assert stub.UploadDataset(_requests(features, labels, "key"), timeout=30) == first
        stub.DeleteDataset(datasets_pb2.DeleteDatasetRequest(name=first.name), timeout=30)
        second = stub.UploadDataset(_requests(features, labels, "key"), timeout=30)
    assert second.name != first.name
    assert [d.id for d in _stored(store)] == [second.name.removeprefix("datasets/")]


def test_two_concurrent_uploads_with_one_request_id_store_one_dataset(
    served: tuple[str, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both pass the header's check (nothing stored yet) and are received whole; the unique
    constraint lets one store its dataset, and the other answers with it."""
    target, store = served
    finish = DatasetService.finish
    both_received = threading.Barrier(2, timeout=30)

    def together(self: DatasetService, upload: Any, project: str) -> Any:
        both_received.wait()
        return finish(self, upload, project)

    monkeypatch.setattr(DatasetService, "finish", together)
    features, labels = blobs()
    with grpc.insecure_channel(target) as channel, ThreadPoolExecutor(2) as pool:
        stub = datasets_pb2_grpc.DatasetServiceStub(channel)
        answers = list(
            pool.map(
                lambda _: stub.UploadDataset(_requests(features, labels, "race"), timeout=60),
                range(2),
            )
        )
    assert answers[0] == answers[1]
    assert [d.id for d in _stored(store)] == [answers[0].name.removeprefix("datasets/")]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_retry_refused_by_its_own_attempt_still_being_stored_waits_for_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    """The connection drops while the server stores the upload. The server holds the upload's
    count of its project's open uploads until the dataset is stored (its client gone or not),
    so the retry was refused RESOURCE_EXHAUSTED "max_uploads_per_client is limited to 1" and
    raised at once, though the dataset was then stored. The retry now waits for that count."""
    database = Database(database_url)
    store = Store(database)
    key = store.create_api_key("research").key  # the count is per project
    settings = Settings(database_url=database_url, port=0, workers=0, max_uploads_per_client=1)
    server = RunningServer(settings, store, "127.0.0.1:0")
    server.start()
    proxy = TcpProxy("127.0.0.1", server.port)
    finish, acquire = DatasetService.finish, api_module.ClientLimiter.acquire
    storing, refused, release = threading.Event(), threading.Event(), threading.Event()

    def slow_first(self: DatasetService, upload: Any, project: str) -> Any:
        if not storing.is_set():
            storing.set()
            assert release.wait(30), "never released"
        return finish(self, upload, project)

    def noted(self: Any, client: str) -> None:
        try:
            acquire(self, client)
        except Exception:
            refused.set()
            raise

    def cut_while_storing() -> None:
        assert storing.wait(30), "never stored"
        proxy.cut()
        proxy.restore()
        refused.wait(30)  # the retry meets the count the first attempt holds
        release.set()

    monkeypatch.setattr(DatasetService, "finish", slow_first)
    monkeypatch.setattr(api_module.ClientLimiter, "acquire", noted)
    cutter = threading.Thread(target=cut_while_storing)
    cutter.start()
    x, y = _data()
    target = f"127.0.0.1:{proxy.port}"
    try:
        if asynchronous:

            async def upload() -> str:
                async with AsyncClient(target, api_key=key, retry=FAST, timeout=60) as client:
                    return (await client.upload_dataset(x, y, dedupe=False)).name

            name = asyncio.run(upload())
        else:
            with Client(target, api_key=key, retry=FAST, timeout=60) as client:
                name = client.upload_dataset(x, y, dedupe=False).name
        assert refused.is_set(), "the retry came once the first attempt was stored"
        assert [d.id for d in _stored(store)] == [name.removeprefix("datasets/")]
    finally:
        release.set()
        cutter.join()
        proxy.close()
        server.stop(0)
        database.dispose()
