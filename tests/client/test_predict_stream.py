"""PredictStream through both clients: batches read as the stream goes, a bad batch raised to the
caller as itself, every batch encoded as `predict` encodes its inputs, messages sized by the
larger of their inputs and their answers, the stream's model held within the model cache's
bound until the stream ends, and a refusal reported as the server's though a write follows it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import sqlalchemy

from trainwire.client import (
    Client,
    DatasetInfo,
    Dense,
    InvalidArgument,
    Job,
    ModelInfo,
    Prediction,
    ResourceExhausted,
    Sequential,
    SpecError,
)
from trainwire.client.aio import AsyncClient
from trainwire.client.feeds import BatchFeed
from trainwire.client.tensors import to_tensor
from trainwire.client.wire import StreamedPrediction
from trainwire.server.local import LocalServer, local_server
from trainwire.server.predictions import ENTRY_BYTES, JOB_TTL_S, LAYER_ENTRY_BYTES
from trainwire.v1 import predictions_pb2, predictions_pb2_grpc

from ..e2e.test_topology import scrape
from ..support.h2_proxy import HeldRepliesProxy
from ..support.ports import free_ports
from ..support.tcp_proxy import TcpProxy
from ..support.waiting import wait_for
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


def test_the_async_stream_reports_the_servers_refusal_though_a_write_follows_it(
    live_server: LocalServer, job: Job
) -> None:
    # grpc.aio replaced the status of a refused stream with INTERNAL ("Internal error from
    # Core", grpc/grpc#36066) when a request was written after the client's gRPC core had the
    # refusal but before asyncio had seen it: the write failed, and its failure overwrote the
    # status. The proxy holds the refusal, so that moment is made, not waited for.
    host, port = live_server.target.rsplit(":", 1)
    proxy = HeldRepliesProxy(host, int(port))
    features, _ = blobs()
    wrong = np.ones((2, 5), np.float32)  # the model takes 4 features: the server refuses it

    async def scenario() -> list[Prediction]:
        async with AsyncClient(f"127.0.0.1:{proxy.port}", timeout=30) as client:
            answered, written = asyncio.Event(), asyncio.Event()

            async def batches() -> AsyncIterator[np.ndarray]:
                yield features[:3]
                await answered.wait()
                proxy.hold()
                yield wrong
                assert await asyncio.to_thread(proxy.stream_ended.wait, 30), "never refused"
                # Forwards the refusal and returns once the client's gRPC has read it, the event
                # loop blocked meanwhile: asyncio has not seen the call end when the step that
                # takes the next batch writes it.
                proxy.release()
                written.set()
                yield features[3:5]

            received = []
            with pytest.raises(InvalidArgument, match=r"must be \(rows, 4\)"):
                async for prediction in client.predict_stream(job.name, batches()):
                    received.append(prediction)
                    answered.set()
                    await written.wait()
                    # A call through the proxy and back before the stream's end is read, so the
                    # failed write's completion is handled first (as in a busier program): an
                    # SDK open to the race then reads INTERNAL every time, not nearly every time.
                    await client.model_metadata(job.name)
            return received

    try:
        assert [len(p.outputs) for p in asyncio.run(scenario())] == [3]
    finally:
        proxy.close()


def test_float64_inputs_reach_a_float64_model_as_they_do_through_predict(
    client: Client, dataset: DatasetInfo
) -> None:
    features, _ = blobs()
    precise = client.create_job(dataset, MODEL, epochs=1, batch_size=8, dtype="float64")
    assert precise.wait(timeout=60, poll_interval=0.1).state == "SUCCEEDED"
    rng = np.random.default_rng(1)
    x = features.astype(np.float64) + rng.normal(scale=1e-6, size=features.shape)
    [streamed] = client.predict_stream(precise, [x])
    assert np.array_equal(streamed.outputs, precise.predict(x).outputs)


def test_a_one_dimensional_batch_is_one_row_as_in_predict(client: Client, job: Job) -> None:
    features, _ = blobs()
    [one_row] = client.predict_stream(job, [features[0]])
    assert one_row.outputs.shape == (1, 3)
    assert np.array_equal(one_row.outputs, job.predict(features[0]).outputs)


def test_an_empty_batch_is_refused_as_in_predict(client: Client, job: Job) -> None:
    features, _ = blobs()
    received = []
    with pytest.raises(SpecError, match="has no rows"):
        for prediction in client.predict_stream(job, [features[:2], np.empty((0, 4))]):
            received.append(prediction)
    assert len(received) == 1
    with pytest.raises(SpecError, match="has no rows"):
        job.predict(np.empty((0, 4)))


def test_a_batch_beyond_the_message_limit_goes_as_several_messages(
    live_server: LocalServer, job: Job
) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6000, 4)).astype(np.float32)  # 96 KB, the limit 64 KiB
    with Client(live_server.target, timeout=30, max_message_bytes=64 * 1024) as small:
        streamed = list(small.predict_stream(job.name, [x[:5], x, x[5:9]]))
        whole = small.predict(job.name, x)
    assert [len(p.outputs) for p in streamed] == [5, 6000, 4]
    assert whole.labels is not None and np.array_equal(streamed[1].labels, whole.labels)
    assert np.array_equal(streamed[1].outputs, whole.outputs)

    async def scenario() -> list[Prediction]:
        async with AsyncClient(live_server.target, max_message_bytes=64 * 1024) as client:
            return [p async for p in client.predict_stream(job.name, [x, x[:3]])]

    assert [len(p.outputs) for p in asyncio.run(scenario())] == [6000, 3]


@pytest.fixture
def one_model_server(tmp_path: Path) -> Iterator[tuple[LocalServer, int]]:
    """A server whose model cache has room for one model of MODEL, not two: counted as its
    268 bytes of weights and 12 KiB for its objects (predictions.ENTRY_BYTES and
    LAYER_ENTRY_BYTES for its two layers)."""
    metrics_port = free_ports(2)  # the server's, then its worker's
    env = {
        "TRAINWIRE_POLL_INTERVAL_S": "0.1",
        "TRAINWIRE_QUEUES": "default",
        "TRAINWIRE_METRICS_PORT": str(metrics_port),
        "TRAINWIRE_MODEL_CACHE_BYTES": "20000",
    }
    with local_server(f"sqlite:///{tmp_path / 'trainwire.db'}", workers=1, extra_env=env) as server:
        yield server, metrics_port


def test_a_model_larger_than_the_whole_cache_is_served_not_kept_and_never_streamed(
    tmp_path: Path,
) -> None:
    """With no stream open, a model larger than TRAINWIRE_MODEL_CACHE_BYTES was kept and could
    be pinned: the cache held more than its bound. It is now answered and not kept (the log
    names the setting), and a stream is refused naming the bytes the model needs."""
    env = {"TRAINWIRE_POLL_INTERVAL_S": "0.1", "TRAINWIRE_MODEL_CACHE_BYTES": "100"}
    database = f"sqlite:///{tmp_path / 'trainwire.db'}"
    with local_server(database, workers=1, extra_env=env) as server:
        features, labels = blobs()
        with Client(server.target, timeout=30) as client:
            job = client.create_job(client.upload_dataset(features, labels), MODEL, epochs=1)
            assert job.wait(timeout=60, poll_interval=0.1).state == "SUCCEEDED"
            assert len(job.predict(features[:2]).outputs) == 2
            assert len(job.predict(features[:2]).outputs) == 2
            with pytest.raises(ResourceExhausted) as refused:
                list(job.predict_stream([features[:2]]))
        # 268 bytes of weights and 12 KiB for the objects of a model of two layers.
        needs = 268 + ENTRY_BYTES + 2 * LAYER_ENTRY_BYTES
        assert f"needs {needs} bytes, more than the server's model cache holds" in (
            refused.value.message
        )
        assert "TRAINWIRE_MODEL_CACHE_BYTES=100" in refused.value.message
        assert (
            sum("is larger than TRAINWIRE_MODEL_CACHE_BYTES=100" in line for line in server.output)
            == 1
        ), "loaded for each request (the log says so once)"


def test_a_stream_holds_its_model_in_the_cache_until_it_ends_or_is_cancelled(
    one_model_server: tuple[LocalServer, int],
) -> None:
    server, metrics_port = one_model_server
    features, labels = blobs()

    def pins() -> float:
        return scrape(metrics_port)["trainwire_model_cache_pins"]

    def request(job: Job) -> predictions_pb2.PredictRequest:
        return predictions_pb2.PredictRequest(job=job.name, inputs=to_tensor(features[:2]))

    with Client(server.target, timeout=30) as client:
        data = client.upload_dataset(features, labels)
        held, other = (client.create_job(data, MODEL, epochs=1, batch_size=8) for _ in range(2))
        for job in (held, other):
            assert job.wait(timeout=60, poll_interval=0.1).state == "SUCCEEDED"
    go_on = threading.Event()

    def slices() -> Iterator[predictions_pb2.PredictRequest]:
        yield request(held)
        go_on.wait(60)  # the stream stays open until the client cancels it
        yield request(held)

    with grpc.insecure_channel(server.target) as channel:
        stub = predictions_pb2_grpc.PredictionServiceStub(channel)
        call = stub.PredictStream(slices(), timeout=60)
        next(call)
        assert pins() == 1
        # Its model fills the cache: another stream's model cannot be held beside it, while a
        # lone Predict is answered, its model not kept.
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.PredictStream(iter([request(other)]), timeout=30))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "held by open prediction streams" in (refused.value.details() or "")
        assert len(stub.Predict(request(other), timeout=30).checkpoint) > 0
        call.cancel()
        go_on.set()
        wait_for(lambda: pins() == 0, 10, "the cancelled stream to let go of its model")
        answers = list(stub.PredictStream(iter([request(other), request(other)]), timeout=30))
        assert len(answers) == 2
        assert pins() == 0, "a stream that ended lets go of its model before its status is sent"
        # A stream ended by an error in a later message lets go too, so the first model fits.
        narrow = predictions_pb2.PredictRequest(job=held.name, inputs=to_tensor(features[:2, :3]))
        with pytest.raises(grpc.RpcError) as malformed:
            list(stub.PredictStream(iter([request(held), narrow]), timeout=30))
        assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert pins() == 0
        assert len(list(stub.PredictStream(iter([request(other)]), timeout=30))) == 1


@pytest.fixture(scope="module")
def wide_job(client: Client) -> Job:
    """A classifier of 2 float32 features and 1,000 classes: 8 bytes in, 8,008 out per row."""
    rng = np.random.default_rng(3)
    features = rng.normal(size=(64, 2)).astype(np.float32)
    data = client.upload_dataset(features, np.arange(64), num_classes=1000, name="wide")
    trained = client.create_job(data, Sequential([Dense(1000)]), epochs=1, batch_size=32)
    assert trained.wait(timeout=60, poll_interval=0.1).state == "SUCCEEDED"
    return trained


def _in_pieces(client: Client, job: Job, x: np.ndarray) -> Prediction:
    """Unary predictions of 100 rows at a time (800 KB answers, under the server's 4 MiB)."""
    parts = [client.predict(job.name, x[start : start + 100]) for start in range(0, len(x), 100)]
    labels = np.concatenate([p.labels for p in parts if p.labels is not None])
    probabilities = np.concatenate([p.probabilities for p in parts if p.probabilities is not None])
    outputs = np.concatenate([p.outputs for p in parts])
    return Prediction(outputs, probabilities, labels, parts[0].checkpoint)


def _assert_same(streamed: Prediction, expected: Prediction) -> None:
    assert streamed.probabilities is not None and expected.probabilities is not None
    assert np.array_equal(streamed.outputs, expected.outputs)
    assert np.array_equal(streamed.probabilities, expected.probabilities)
    assert np.array_equal(streamed.labels, expected.labels)


# 1,000 rows are 8 KB of inputs, one message within a quarter of 256 KiB, but 8 MB of answers:
# over the server's 4 MiB, which refuses them (RESOURCE_EXHAUSTED) unless they go in pieces.
WIDE_ROWS = 1000
SMALL_MESSAGE_BYTES = 256 * 1024


def test_a_stream_of_wide_answers_is_split_by_their_size(
    live_server: LocalServer, client: Client, wide_job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = np.random.default_rng(4).normal(size=(WIDE_ROWS, 2)).astype(np.float32)
    expected = _in_pieces(client, wide_job, x)
    with Client(live_server.target, timeout=30, max_message_bytes=SMALL_MESSAGE_BYTES) as small:
        described: list[str] = []
        metadata = small.model_metadata

        def counted(job: str, checkpoint: str = "") -> ModelInfo:
            described.append(job)
            return metadata(job, checkpoint)

        monkeypatch.setattr(small, "model_metadata", counted)
        streamed = list(small.predict_stream(wide_job, [x[:3], x, x[3:10]]))
    assert described == [wide_job.name], "the model is described once per stream"
    sizing = StreamedPrediction(wide_job.name, "", SMALL_MESSAGE_BYTES)
    sizing.describe(client.model_metadata(wide_job.name))
    arrays = (expected.outputs, expected.probabilities, expected.labels)
    assert sizing.answer_row_bytes == sum(a.nbytes for a in arrays if a is not None) // WIDE_ROWS
    assert [len(p.outputs) for p in streamed] == [3, WIDE_ROWS, 7]
    _assert_same(streamed[1], expected)
    # Each message of a stream is answered as that input alone, the same as a unary request of
    # it. Not as the same rows inside a larger input: there a row may go through a matrix
    # product of whole blocks (engine.inference), whose last bits may differ from a lone row's.
    _assert_same(streamed[0], client.predict(wide_job.name, x[:3]))
    _assert_same(streamed[2], client.predict(wide_job.name, x[3:10]))


def test_predict_of_wide_answers_fits_a_client_limit_below_the_servers(
    live_server: LocalServer, client: Client, wide_job: Job
) -> None:
    # Unary predict, not a stream: the server refuses the first request's 8 MB answer, naming
    # the 523 rows its 4 MiB allow; a quarter of those would still answer 1 MB, beyond the
    # 256 KiB this client may receive. Both clients size the retry by this client's limit.
    x = np.random.default_rng(6).normal(size=(WIDE_ROWS, 2)).astype(np.float32)
    expected = _in_pieces(client, wide_job, x)
    with Client(live_server.target, timeout=30, max_message_bytes=SMALL_MESSAGE_BYTES) as small:
        _assert_same(small.predict(wide_job, x), expected)
        # 200 rows answer 1.6 MB: within the server's limit, so the server sends it, but beyond
        # this client's; refused on receipt, the first request goes again with fewer rows.
        _assert_same(small.predict(wide_job, x[:200]), _in_pieces(client, wide_job, x[:200]))

    async def scenario() -> tuple[Prediction, Prediction]:
        async with AsyncClient(
            live_server.target, timeout=30, max_message_bytes=SMALL_MESSAGE_BYTES
        ) as small:
            return await small.predict(wide_job.name, x), await small.predict(
                wide_job.name, x[:200]
            )

    whole, first_rows = asyncio.run(scenario())
    _assert_same(whole, expected)
    _assert_same(first_rows, _in_pieces(client, wide_job, x[:200]))


def test_an_async_stream_of_wide_answers_is_split_by_their_size(
    live_server: LocalServer, client: Client, wide_job: Job
) -> None:
    x = np.random.default_rng(5).normal(size=(WIDE_ROWS, 2)).astype(np.float32)
    expected = _in_pieces(client, wide_job, x)

    async def scenario() -> list[Prediction]:
        async with AsyncClient(
            live_server.target, timeout=30, max_message_bytes=SMALL_MESSAGE_BYTES
        ) as small:
            return [p async for p in small.predict_stream(wide_job.name, [x, x[:4]])]

    streamed = asyncio.run(scenario())
    assert [len(p.outputs) for p in streamed] == [WIDE_ROWS, 4]
    _assert_same(streamed[0], expected)
    _assert_same(streamed[1], client.predict(wide_job.name, x[:4]))  # as that input alone


BATCHES = [np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32) for _ in range(8)]


def _each_alone(client: Client, job: Job) -> list[np.ndarray]:
    return [client.predict(job.name, x).outputs for x in BATCHES]


def _assert_resumed(
    proxy: TcpProxy, reads: list[int], received: list[np.ndarray], expected: list[np.ndarray]
) -> None:
    """The stream went on over a new connection, each batch read once and answered once, in
    order, as each alone is."""
    assert proxy.accepted >= 2, "the stream went on over a new connection"
    assert reads == list(range(len(BATCHES)))
    assert len(received) == len(expected)
    assert all(np.array_equal(got, want) for got, want in zip(received, expected, strict=True))


def test_a_stream_whose_connection_drops_goes_on_over_a_new_call(
    live_server: LocalServer, client: Client, job: Job
) -> None:
    """A dropped connection (a server restarting) ended the stream UNAVAILABLE, and the caller
    had to start over, its iterable half read. The stream goes on: the batches sent and not
    answered go again, the one the iterable was giving as the connection dropped is sent on
    the new call, and each batch is read once and answered once, in order."""
    expected = _each_alone(client, job)
    host, port = live_server.target.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    dropped = threading.Event()
    reads: list[int] = []

    def batches() -> Iterator[np.ndarray]:
        for index, x in enumerate(BATCHES):
            if index == 3:
                assert dropped.wait(30), "the connection was never dropped"
            reads.append(index)
            yield x

    try:
        with Client(f"127.0.0.1:{proxy.port}", timeout=60) as resumed:
            received = []
            for prediction in resumed.predict_stream(job.name, batches()):
                received.append(prediction.outputs)
                if not dropped.is_set():  # batches 1 and 2 are sent, maybe answered
                    proxy.cut()
                    proxy.restore()
                    dropped.set()
    finally:
        proxy.close()
    _assert_resumed(proxy, reads, received, expected)


def test_an_async_stream_whose_connection_drops_goes_on_over_a_new_call(
    live_server: LocalServer, client: Client, job: Job
) -> None:
    expected = _each_alone(client, job)
    host, port = live_server.target.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    reads: list[int] = []

    async def scenario() -> list[np.ndarray]:
        dropped = asyncio.Event()

        async def batches() -> AsyncIterator[np.ndarray]:
            for index, x in enumerate(BATCHES):
                if index == 3:
                    await asyncio.wait_for(dropped.wait(), 30)
                reads.append(index)
                yield x

        async with AsyncClient(f"127.0.0.1:{proxy.port}", timeout=60) as resumed:
            received = []
            async for prediction in resumed.predict_stream(job.name, batches()):
                received.append(prediction.outputs)
                if not dropped.is_set():
                    proxy.cut()
                    proxy.restore()
                    dropped.set()
            return received

    try:
        received = asyncio.run(scenario())
    finally:
        proxy.close()
    _assert_resumed(proxy, reads, received, expected)


def test_a_new_call_of_a_stream_resends_the_unanswered_batches_to_the_checkpoint_that_answered(
    client: Client, job: Job
) -> None:
    """The feed of a stream's calls: the next call sends the batches kept (sent, unanswered),
    asking the checkpoint that answered the first, then the batch that the failed call's thread
    was still reading from the iterable (it hands it over, sending nothing more itself)."""
    model = client.model_metadata(job.name)
    reading, release = threading.Event(), threading.Event()
    reads: list[int] = []

    def batches() -> Iterator[np.ndarray]:
        for index, x in enumerate(BATCHES[:3]):
            if index == 2:
                reading.set()
                assert release.wait(30)
            reads.append(index)
            yield x

    feed = BatchFeed(batches(), StreamedPrediction(job.name, "best", 4 << 20))
    failed = threading.Event()
    first_call = feed.requests(failed, lambda: model)
    sent = [next(first_call), next(first_call)]  # batches 0 and 1, a message each
    assert [request.checkpoint for request in sent] == ["best", "best"]
    feed.answered("jobs/x/checkpoints/7")  # batch 0, by that checkpoint; then the call fails
    with ThreadPoolExecutor(2) as pool:
        rest_of_first = pool.submit(list, first_call)  # waits inside the iterable for batch 2
        assert reading.wait(30)
        feed.restart(failed)
        second_call = feed.requests(threading.Event(), lambda: model)
        replayed = next(second_call)
        third = pool.submit(next, second_call)  # waits for the first call's read
        release.set()
        assert rest_of_first.result(30) == [], "the failed call sent nothing more"
        assert third.result(30).inputs == to_tensor(BATCHES[2])
    assert replayed.inputs == to_tensor(BATCHES[1])
    assert replayed.checkpoint == "jobs/x/checkpoints/7"
    assert reads == [0, 1, 2]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_stream_keeps_the_model_that_answered_it_though_its_checkpoint_is_deleted(
    tmp_path: Path, asynchronous: bool
) -> None:
    """The server holds the model that answered a call's first message for every message that
    asks as the first did. The SDK switched a call's later messages to that checkpoint's name
    once it answered, and the server looked each up: retention deleting it meanwhile (a job
    still training, the stream asking "latest") failed the open stream (NOT_FOUND, or here
    FAILED_PRECONDITION: the job had no checkpoint left). A call's
    messages now all ask alike; only a new call (a resumed stream) asks by name. The batches
    after the first are read once it is answered and its checkpoint deleted."""
    url = f"sqlite:///{tmp_path / 'trainwire.db'}"
    env = {"TRAINWIRE_POLL_INTERVAL_S": "0.1"}
    received: list[Prediction] = []
    deleted = threading.Event()

    def delete(checkpoint: str) -> None:
        """As retention deletes a checkpoint; then past the server's view of the job's list."""
        engine = sqlalchemy.create_engine(url)
        key = {"id": int(checkpoint.rsplit("/", 1)[1])}
        with engine.begin() as connection:
            for table, column in (("checkpoint_blobs", "checkpoint_id"), ("checkpoints", "id")):
                connection.execute(
                    sqlalchemy.text(f"DELETE FROM {table} WHERE {column} = :id"), key
                )
        engine.dispose()
        time.sleep(2 * JOB_TTL_S + 0.5)
        deleted.set()

    def batches() -> Iterator[np.ndarray]:
        yield BATCHES[0]
        assert deleted.wait(30)
        yield from BATCHES[1:4]

    with local_server(url, workers=1, extra_env=env) as server:
        with Client(server.target, timeout=30) as client:
            job = client.create_job(client.upload_dataset(*blobs()), MODEL, epochs=2)
            assert job.wait(timeout=60, poll_interval=0.1).state == "SUCCEEDED"
            if not asynchronous:
                for prediction in client.predict_stream(job.name, batches()):
                    received.append(prediction)
                    if len(received) == 1:
                        delete(prediction.checkpoint)

        async def abatches() -> AsyncIterator[np.ndarray]:
            yield BATCHES[0]
            assert await asyncio.to_thread(deleted.wait, 30)
            for x in BATCHES[1:4]:
                yield x

        async def stream() -> None:
            async with AsyncClient(server.target, timeout=30) as aclient:
                async for prediction in aclient.predict_stream(job.name, abatches()):
                    received.append(prediction)
                    if len(received) == 1:
                        await asyncio.to_thread(delete, prediction.checkpoint)

        if asynchronous:
            asyncio.run(stream())
    assert len(received) == 4
    assert {prediction.checkpoint for prediction in received} == {received[0].checkpoint}
