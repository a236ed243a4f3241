"""The SDK's clients shared between threads and tasks: a close() racing calls, one watch iterated
from two threads, concurrent uploads of one dataset, a prediction stream abandoned early."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc._cython import cygrpc

from trainwire.client import Client, ClientClosed, DatasetInfo, Job, JobWatch, NotFound
from trainwire.client.aio import AsyncClient
from trainwire.server.local import LocalServer

from ..support.h2_proxy import HeldRepliesProxy
from ..support.waiting import wait_for
from .conftest import MODEL, blobs

MISSING_JOB = "jobs/" + "0" * 32  # well formed, never created: the server answers NotFound


@pytest.mark.parametrize("rpc", ["get_dataset", "predict_stream", "watch_job_batches"])
def test_a_call_racing_close_from_another_thread_raises_client_closed(
    live_server: LocalServer, monkeypatch: pytest.MonkeyPatch, rpc: str
) -> None:
    """A call checks that its client is open, then invokes the RPC: a close() from another thread
    between the two made gRPC refuse the call with its own ValueError ("Cannot invoke RPC: Channel
    closed!"), no SDK error. The close() is made to come exactly there."""
    features, _ = blobs()
    client = Client(live_server.target, timeout=10)
    invoke = getattr(client._rpc, rpc)

    def closed_meanwhile(*args: object, **kwargs: object) -> object:
        client.close()  # as another thread's, once the call has found the client open
        return invoke(*args, **kwargs)

    monkeypatch.setattr(client._rpc, rpc, closed_meanwhile)
    calls = {
        "get_dataset": lambda: client.get_dataset("datasets/any"),
        "predict_stream": lambda: list(client.predict_stream(MISSING_JOB, [features])),
        "watch_job_batches": lambda: list(client.watch_job(MISSING_JOB)),
    }
    with pytest.raises(ClientClosed, match=r"^Client\('.*'\) is closed"):
        calls[rpc]()


ASYNC_CALLS: dict[str, Callable[[AsyncClient], Awaitable[object]]] = {
    "unary": lambda client: client.get_job(MISSING_JOB),
    "predict": lambda client: client.predict(MISSING_JOB, blobs()[0]),
    "stream": lambda client: anext(client.predict_stream(MISSING_JOB, [blobs()[0]])),
    "watch": lambda client: anext(client.watch_job(MISSING_JOB)),
}


@pytest.mark.parametrize("kind", ASYNC_CALLS)
def test_calls_in_flight_when_an_async_client_closes_raise_client_closed(
    live_server: LocalServer, kind: str
) -> None:
    """close() cancels the calls in flight, which grpc.aio reported to the tasks awaiting them as
    a bare CancelledError, though no one had cancelled those tasks: a caller's `except
    TrainwireError` missed it. The proxy holds the server's answers, so the call is in flight."""

    async def closed(client: AsyncClient, call: asyncio.Task[object]) -> None:
        await client.close()
        with pytest.raises(ClientClosed, match=r"^AsyncClient\('.*'\) is closed"):
            await call

    _with_a_call_in_flight(live_server, ASYNC_CALLS[kind], closed)


def test_a_task_cancelled_as_its_async_client_closes_is_cancelled(live_server: LocalServer) -> None:
    async def cancelled_and_closed(client: AsyncClient, call: asyncio.Task[object]) -> None:
        call.cancel()
        await client.close()
        with pytest.raises(asyncio.CancelledError):
            await call

    _with_a_call_in_flight(
        live_server, lambda client: client.get_job(MISSING_JOB), cancelled_and_closed
    )


def _with_a_call_in_flight(
    live_server: LocalServer,
    start: Callable[[AsyncClient], Awaitable[object]],
    then: Callable[[AsyncClient, asyncio.Task[object]], Awaitable[None]],
) -> None:
    """Runs `then` with an AsyncClient and a task of its call `start` in flight: a proxy holds
    the server's answers once the client is connected, and the server has answered the call
    (a stream's model_metadata too), so the answer is held and the call goes on."""
    host, port = live_server.target.rsplit(":", 1)
    proxy = HeldRepliesProxy(host, int(port))

    async def scenario() -> None:
        client = AsyncClient(f"127.0.0.1:{proxy.port}", timeout=30)
        with pytest.raises(NotFound):
            await client.job_status(MISSING_JOB)  # connected
        proxy.hold()
        call = asyncio.create_task(start(client))
        assert await asyncio.to_thread(proxy.stream_ended.wait, 30), "never answered"
        await then(client, call)

    try:
        asyncio.run(scenario())
    finally:
        proxy.close()


def waiting_for_an_event(watch: JobWatch) -> bool:
    """Whether a thread waits inside gRPC for the watch's stream's next message."""
    stream: Any = watch._stream  # gRPC's own: a read it waits for is in its state's `due`
    return stream is not None and cygrpc.OperationType.receive_message in stream._state.due


def test_one_watch_iterated_from_two_threads_hands_out_each_event_once(
    client: Client, dataset: DatasetInfo
) -> None:
    """Each thread called next() on the one gRPC stream: the second, while the first waited
    there, failed inside gRPC (`ValueError: Internal gRPC call error 8`). The second thread's
    next() is made to come exactly then."""
    job = client.create_job(dataset, MODEL, epochs=1, queue="nobody-listens")
    watch = job.watch(timeout=60)
    events: list[list[int]] = [[], []]
    errors: list[BaseException] = []

    def follow(k: int) -> None:
        try:
            for event in watch:
                events[k].append(event.sequence)
        except BaseException as error:
            errors.append(error)

    first = threading.Thread(target=follow, args=(0,))
    first.start()
    try:
        wait_for(lambda: waiting_for_an_event(watch), 30, "the first thread to wait on the stream")
        second = threading.Thread(target=follow, args=(1,))
        second.start()
        second.join(1)  # time to collide; with the lock it waits for its turn
    finally:
        job.cancel()
    first.join(30)
    second.join(30)
    assert not first.is_alive() and not second.is_alive()
    assert errors == []
    sequences = sorted(events[0] + events[1])
    assert sequences == list(range(1, len(sequences) + 1)) and len(sequences) >= 2
    assert watch.last_sequence == sequences[-1]


def test_a_watch_closed_while_it_opens_its_stream_hands_out_nothing(
    client: Client, dataset: DatasetInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close() from another thread after `__next__` found the watch open, and before the
    stream it was opening was stored, found no stream to cancel: the stream went on, and the
    watch handed out the job's QUEUED event after close(). The close() is made to come there."""
    job = client.create_job(dataset, MODEL, epochs=1, queue="nobody-listens")
    watch = job.watch(timeout=60)
    watch_job = client._rpc.watch_job_batches

    def closed_meanwhile(*args: Any, **kwargs: Any) -> Any:
        watch.close()  # as another thread's, once the watch has found itself open
        return watch_job(*args, **kwargs)

    monkeypatch.setattr(client._rpc, "watch_job_batches", closed_meanwhile)
    try:
        assert list(watch) == []
    finally:
        job.cancel()


def test_a_watch_in_flight_when_its_client_closes_raises_client_closed(
    live_server: LocalServer, dataset: DatasetInfo
) -> None:
    """The close() cancels the watch's stream: CANCELLED, which the watch re-opens when a server
    sends it, must be `ClientClosed` at once here, not gRPC's "Channel closed" nor a reconnect."""
    client = Client(live_server.target, timeout=30)
    job = client.create_job(dataset, MODEL, epochs=1, queue="nobody-listens")
    watch = job.watch(timeout=None)
    raised: list[BaseException] = []

    def follow() -> None:
        try:
            list(watch)
        except BaseException as error:  # handed to the test's thread
            raised.append(error)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        wait_for(lambda: waiting_for_an_event(watch), 30, "the watch to wait for an event")
        client.close()
        follower.join(30)
        assert not follower.is_alive(), "the watch went on after its client closed"
        assert len(raised) == 1 and isinstance(raised[0], ClientClosed), raised
        assert watch.reconnects == 0
    finally:
        with Client(live_server.target, timeout=30) as other:
            other.cancel_job(job.name)


def test_a_prediction_stream_in_flight_when_its_client_closes_raises_client_closed(
    live_server: LocalServer, dataset: DatasetInfo
) -> None:
    """As a watch's: the close() cancels the stream, which raised `Cancelled` (gRPC's "Channel
    closed"); a stream goes on over a new call after a CANCELLED a server sends, not this one."""
    client = Client(live_server.target, timeout=30)
    job = client.create_job(dataset, MODEL, epochs=1)
    assert job.wait(timeout=60, poll_interval=0.1).state == "SUCCEEDED"
    features, _ = blobs()
    waiting, release = threading.Event(), threading.Event()

    def batches() -> Iterator[np.ndarray]:
        yield features[:2]
        waiting.set()
        release.wait(60)  # the next batch does not come: the stream waits for it

    stream = client.predict_stream(job.name, batches())
    try:
        assert len(next(stream).outputs) == 2
        assert waiting.wait(30)
        client.close()
        with pytest.raises(ClientClosed, match=r"^Client\('.*'\) is closed"):
            next(stream)
    finally:
        release.set()


def test_a_watch_closed_while_it_waits_to_reconnect_ends_at_once(
    client: Client, dataset: DatasetInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch whose stream failed waits before re-opening it, holding its lock: a close() from
    another thread was seen only once the wait was over (up to the backoff's ceiling), by it
    and by every thread queued behind it. The wait here would be an hour."""
    job = client.create_job(dataset, MODEL, epochs=1, queue="nobody-listens")
    watch = job.watch(timeout=None)
    waits: list[float] = []

    def dropped(*args: Any, **kwargs: Any) -> Any:
        return _DroppedStream()

    def an_hour(error: Exception, server_delay: float = 0.0, *, refused: bool = False) -> float:
        waits.append(3600.0)
        return 3600.0

    monkeypatch.setattr(client._rpc, "watch_job_batches", dropped)
    monkeypatch.setattr(watch._outage, "next_delay", an_hour)
    follower = threading.Thread(target=lambda: list(watch), daemon=True)
    follower.start()
    try:
        wait_for(lambda: waits, 30, "the watch to wait before reconnecting")
        watch.close()
        follower.join(30)
        assert not follower.is_alive(), "still waiting to reconnect after close()"
    finally:
        job.cancel()


def test_an_async_watch_closed_while_it_waits_to_reconnect_ends_at_once(
    live_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the sync watch above: an `async for` over a watch waiting to reconnect saw a close()
    from another task only once the wait was over. The wait here would be an hour."""

    async def scenario() -> None:
        async with AsyncClient(live_server.target, timeout=30) as client:
            watch = client.watch_job(MISSING_JOB, timeout=None)
            waits: list[float] = []

            def an_hour(
                error: Exception, server_delay: float = 0.0, *, refused: bool = False
            ) -> float:
                waits.append(3600.0)
                return 3600.0

            monkeypatch.setattr(
                client._rpc, "watch_job_batches", lambda *a, **k: _DroppedAsyncStream()
            )
            monkeypatch.setattr(watch._outage, "next_delay", an_hour)
            following = asyncio.create_task(anext(watch, None))
            while not waits:
                await asyncio.sleep(0.01)
            watch.close()
            assert await asyncio.wait_for(following, 30) is None

    asyncio.run(scenario())


def test_a_watch_waiting_to_reconnect_when_its_client_closes_raises_client_closed_at_once(
    live_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's close() ended its calls' waits to retry at once, but a watch's wait to re-open
    its stream (up to 2 s) only at the watch's own close(): the watch raised `ClientClosed` once
    its wait was over. The wait here would be an hour."""
    client = Client(live_server.target, timeout=30)
    watch = client.watch_job(MISSING_JOB, timeout=None)
    waits: list[float] = []

    def an_hour(error: Exception, server_delay: float = 0.0, *, refused: bool = False) -> float:
        waits.append(3600.0)
        return 3600.0

    monkeypatch.setattr(client._rpc, "watch_job_batches", lambda *a, **k: _DroppedStream())
    monkeypatch.setattr(watch._outage, "next_delay", an_hour)
    raised: list[BaseException] = []

    def follow() -> None:
        try:
            list(watch)
        except BaseException as error:  # handed to the test's thread
            raised.append(error)

    follower = threading.Thread(target=follow, daemon=True)  # a daemon: it may wait an hour
    follower.start()
    wait_for(lambda: waits, 30, "the watch to wait before reconnecting")
    client.close()
    follower.join(30)
    assert not follower.is_alive(), "still waiting to reconnect after its client's close()"
    assert len(raised) == 1 and isinstance(raised[0], ClientClosed), raised


def test_an_async_watch_waiting_to_reconnect_when_its_client_closes_raises_client_closed(
    live_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the sync watch above. The wait here would be an hour."""

    async def scenario() -> None:
        client = AsyncClient(live_server.target, timeout=30)
        watch = client.watch_job(MISSING_JOB, timeout=None)
        waits: list[float] = []

        def an_hour(error: Exception, server_delay: float = 0.0, *, refused: bool = False) -> float:
            waits.append(3600.0)
            return 3600.0

        monkeypatch.setattr(client._rpc, "watch_job_batches", lambda *a, **k: _DroppedAsyncStream())
        monkeypatch.setattr(watch._outage, "next_delay", an_hour)
        following = asyncio.create_task(anext(watch, None))
        while not waits:
            await asyncio.sleep(0.01)
        await client.close()
        with pytest.raises(ClientClosed):
            await asyncio.wait_for(following, 30)

    asyncio.run(scenario())


class _DroppedAsyncStream:
    """An asyncio stream that fails at its first read as a dropped connection does."""

    def __aiter__(self) -> _DroppedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="connection dropped",
        )

    def cancel(self) -> bool:
        return False


class _DroppedStream(grpc.RpcError):
    """A stream that fails at its first read as a dropped connection does (UNAVAILABLE), before
    the server opened it."""

    def __iter__(self) -> _DroppedStream:
        return self

    def __next__(self) -> Any:
        raise self

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection dropped"

    def initial_metadata(self) -> tuple[()]:
        return ()

    def cancel(self) -> bool:
        return False


def test_concurrent_uploads_sharing_a_stale_entry_of_the_upload_cache_both_upload(
    live_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two uploads of a dataset this client remembers, deleted since by another client: each
    found it gone and forgot it, and the second to forget it raised KeyError. A barrier holds
    both until each has found the entry."""
    features, labels = blobs(rows=30, seed=41)  # data of this test alone
    with Client(live_server.target, timeout=30) as client, Client(live_server.target) as other:
        other.delete_dataset(client.upload_dataset(features, labels, name="stale"))
        both_looked = threading.Barrier(2, timeout=30)
        get_dataset = client.get_dataset

        def looked_up_together(name: str | DatasetInfo) -> DatasetInfo:
            both_looked.wait()
            return get_dataset(name)

        monkeypatch.setattr(client, "get_dataset", looked_up_together)
        uploaded: list[DatasetInfo] = []
        errors: list[BaseException] = []

        def upload() -> None:
            try:
                uploaded.append(client.upload_dataset(features, labels, name="stale"))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=upload) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        # The second may find the first's upload and return it: each is deleted once.
        for name in {info.name for info in uploaded}:
            other.delete_dataset(name)
        assert errors == [] and len(uploaded) == 2


def test_concurrent_async_uploads_sharing_a_stale_entry_of_the_upload_cache_both_upload(
    live_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    features, labels = blobs(rows=30, seed=42)

    async def scenario() -> list[DatasetInfo | BaseException]:
        async with AsyncClient(live_server.target, timeout=30) as client:
            with Client(live_server.target) as other:
                data = await client.upload_dataset(features, labels, name="stale")
                assert data.name in client._uploaded.values()  # remembered
                other.delete_dataset(data)
            both_looked = asyncio.Barrier(2)
            get_dataset = client.get_dataset

            async def looked_up_together(name: str | DatasetInfo) -> DatasetInfo:
                await both_looked.wait()
                return await get_dataset(name)

            monkeypatch.setattr(client, "get_dataset", looked_up_together)
            upload = client.upload_dataset(features, labels, name="stale")
            again = client.upload_dataset(features, labels, name="stale")
            results = await asyncio.gather(upload, again, return_exceptions=True)
            # The second may find the first's upload and return it: each is deleted once.
            for name in {result.name for result in results if isinstance(result, DatasetInfo)}:
                await client.delete_dataset(name)
            return results

    results = asyncio.run(scenario())
    assert [type(result) for result in results] == [DatasetInfo, DatasetInfo], results


@pytest.fixture(scope="module")
def trained(client: Client, dataset: DatasetInfo) -> Job:
    job = client.create_job(dataset, MODEL, epochs=1, batch_size=8)
    assert job.wait(timeout=60, poll_interval=0.1).state == "SUCCEEDED"
    return job


def test_a_prediction_stream_stopped_early_is_cancelled_and_stops_reading_its_batches(
    live_server: LocalServer, trained: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync stream's caller stopped early (`close()`, a `break`) while its live feed of
    batches waited: the call stayed open, and gRPC's thread went on reading and sending the
    feed's batches for no one."""
    features, _ = blobs()
    waiting, go_on = threading.Event(), threading.Event()
    fed: list[threading.Thread] = []

    def live_feed() -> Iterator[np.ndarray]:
        yield features[:2]
        waiting.set()
        go_on.wait(60)  # a feed with nothing new yet
        while True:
            fed.append(threading.current_thread())
            yield features[:2]
            if len(fed) >= 3:
                go_on.clear()
                go_on.wait(60)

    with Client(live_server.target, timeout=60) as client:
        invoke = client._rpc.predict_stream
        calls: list[Any] = []

        def recorded(*args: Any, **kwargs: Any) -> Any:
            calls.append(invoke(*args, **kwargs))
            return calls[-1]

        monkeypatch.setattr(client._rpc, "predict_stream", recorded)
        predictions = client.predict_stream(trained, live_feed())
        assert len(next(predictions).outputs) == 2
        assert waiting.wait(30), "gRPC's thread never asked for a second batch"
        predictions.close()  # the caller stops, the feed waiting
        assert calls[0].cancelled(), "the call is left open"
        go_on.set()  # the feed's next batch: gRPC's thread takes it, and sends no more
        wait_for(lambda: len(fed) > 0, 30, "the feed's next batch to be taken")
        fed[0].join(30)
        assert not fed[0].is_alive() and len(fed) == 1, "gRPC's thread reads on"
