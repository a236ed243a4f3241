"""Retries, deadlines and reconnecting watches, against a small gRPC server that misbehaves."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2

from trainwire.client import (
    Client,
    ClientClosed,
    DeadlineExceeded,
    Dense,
    FailedPrecondition,
    JobEvent,
    JobWatch,
    NotFound,
    ResourceExhausted,
    RetryPolicy,
    Unavailable,
)
from trainwire.client.aio import AsyncClient
from trainwire.client.retry import RECONNECT_WINDOW_S, WATCH_OPENED, CallAttempts
from trainwire.client.rpc import MAX_RECONNECT_BACKOFF_S, channel_options
from trainwire.client.wire import prepare_upload, upload_attempts
from trainwire.v1 import datasets_pb2, jobs_pb2

from ..support.waiting import wait_for

JOB = "jobs/" + "a" * 32
DATASET = "datasets/" + "b" * 32
FAST = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05)
# How the server refuses a watch past its client's max_watches_per_client (server/app.py).
WATCH_LIMIT_REFUSAL = (
    "max_watches_per_client is limited to 1. Received: 2 (watches (WatchJob, WatchJobBatches) "
    "open at once per project (its API keys together), or per peer of an open server)"
)


@dataclass
class Flaky:
    """Answers GetJob/CreateJob after refusing the first `failures` calls with `code`."""

    failures: int = 0
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    details: str = "try again"
    retry_delay_s: float | None = None  # sent with each refusal as google.rpc.RetryInfo
    delay_s: float = 0.0
    busy_before_deleting: bool = False
    opened_then_dropped: int = 0
    watch_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE  # how the first streams break
    refused_opens: int = 0  # streams ended with `watch_code` before they open
    # Opens (1-based) refused as the server refuses one past max_watches_per_client.
    watch_limit_refusals: set[int] = field(default_factory=set)
    calls: dict[str, int] = field(default_factory=dict)
    watch_requests: list[int] = field(default_factory=list)
    # Of each upload attempt: its header's request_id, and the chunk bytes it received.
    uploads: list[tuple[str, int]] = field(default_factory=list)
    existing: set[str] = field(default_factory=lambda: {JOB, DATASET})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _count(self, method: str) -> int:
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            return self.calls[method]

    def unary(self, method: str) -> Any:
        def handle(request: Any, context: grpc.ServicerContext) -> jobs_pb2.Job:
            if self._count(method) <= self.failures:
                if self.retry_delay_s is not None:
                    context.set_trailing_metadata(self._retry_info())
                context.abort(self.code, self.details)
            time.sleep(self.delay_s)
            return jobs_pb2.Job(name=JOB, state=jobs_pb2.JOB_STATE_QUEUED)

        return handle

    def _retry_info(self) -> tuple[tuple[str, bytes]]:
        assert self.retry_delay_s is not None
        retry_info = error_details_pb2.RetryInfo()
        retry_info.retry_delay.FromNanoseconds(round(self.retry_delay_s * 1e9))
        status = status_pb2.Status(code=self.code.value[0], message=self.details)
        status.details.add().Pack(retry_info)
        return (("grpc-status-details-bin", status.SerializeToString()),)

    def delete(self, method: str, response: Any) -> Any:
        """Deletes the named resource, then fails the first `failures` calls with `code`: the
        delete is done but its answer is lost. A missing resource is NOT_FOUND."""

        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            count = self._count(method)
            if self.busy_before_deleting and count <= self.failures:
                context.abort(self.code, self.details)  # refused: nothing was deleted
            if request.name not in self.existing:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} does not exist")
            self.existing.discard(request.name)
            if count <= self.failures:
                context.abort(self.code, self.details)
            return response

        return handle

    def upload(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        """Ends the first `failures` attempts with `code` once their header and first chunk have
        arrived (an upload cut, as by a stopping server); receives the others whole."""
        header = next(requests).header
        refused = self._count("UploadDataset") <= self.failures
        received = 0
        for request in requests:
            received += len(request.chunk)
            if refused:
                break
        self.uploads.append((header.request_id, received))
        if refused:
            context.abort(self.code, self.details)
        return datasets_pb2.Dataset(name=DATASET)

    def list_datasets(self, request: Any, context: grpc.ServicerContext) -> Any:
        return datasets_pb2.ListDatasetsResponse()

    def watch(self, request: jobs_pb2.WatchJobRequest, context: grpc.ServicerContext) -> Any:
        """Events 1..6; the first two streams break after two events each. A resumed stream
        also resends the last event the client saw (the client must drop the duplicate). With
        `opened_then_dropped`, that many streams are first opened and dropped at once."""
        self.watch_requests.append(request.after_sequence)
        if len(self.watch_requests) in self.watch_limit_refusals:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, WATCH_LIMIT_REFUSAL)
        if len(self.watch_requests) <= self.refused_opens:
            context.abort(self.watch_code, "shutting down")
        if len(self.watch_requests) <= self.opened_then_dropped:
            context.send_initial_metadata((WATCH_OPENED,))
            context.abort(grpc.StatusCode.UNAVAILABLE, "opened, then gone at once")
        first = max(request.after_sequence, 1)
        for sent, sequence in enumerate(range(first, 7), start=1):
            state = jobs_pb2.JOB_STATE_SUCCEEDED if sequence == 6 else jobs_pb2.JOB_STATE_RUNNING
            yield jobs_pb2.JobEvent(sequence=sequence, state=state)
            if sent == 2 and len(self.watch_requests) <= 2:
                if self.retry_delay_s is not None:
                    context.set_trailing_metadata(self._retry_info())
                context.abort(self.watch_code, "server going away")


@pytest.fixture
def flaky() -> Iterator[tuple[Flaky, str]]:
    behaviour = Flaky()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    job_handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            behaviour.unary(name),
            request_deserializer=message.FromString,
            response_serializer=jobs_pb2.Job.SerializeToString,
        )
        for name, message in (
            ("GetJob", jobs_pb2.GetJobRequest),
            ("CreateJob", jobs_pb2.CreateJobRequest),
            ("CancelJob", jobs_pb2.CancelJobRequest),
        )
    }
    job_handlers["WatchJob"] = grpc.unary_stream_rpc_method_handler(
        behaviour.watch,
        request_deserializer=jobs_pb2.WatchJobRequest.FromString,
        response_serializer=jobs_pb2.JobEvent.SerializeToString,
    )
    job_handlers["DeleteJob"] = grpc.unary_unary_rpc_method_handler(
        behaviour.delete("DeleteJob", jobs_pb2.DeleteJobResponse()),
        request_deserializer=jobs_pb2.DeleteJobRequest.FromString,
        response_serializer=jobs_pb2.DeleteJobResponse.SerializeToString,
    )
    dataset_handlers = {
        "DeleteDataset": grpc.unary_unary_rpc_method_handler(
            behaviour.delete("DeleteDataset", datasets_pb2.DeleteDatasetResponse()),
            request_deserializer=datasets_pb2.DeleteDatasetRequest.FromString,
            response_serializer=datasets_pb2.DeleteDatasetResponse.SerializeToString,
        ),
        "UploadDataset": grpc.stream_unary_rpc_method_handler(
            behaviour.upload,
            request_deserializer=datasets_pb2.UploadDatasetRequest.FromString,
            response_serializer=datasets_pb2.Dataset.SerializeToString,
        ),
        "ListDatasets": grpc.unary_unary_rpc_method_handler(
            behaviour.list_datasets,
            request_deserializer=datasets_pb2.ListDatasetsRequest.FromString,
            response_serializer=datasets_pb2.ListDatasetsResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("trainwire.v1.JobService", job_handlers),
            grpc.method_handlers_generic_handler("trainwire.v1.DatasetService", dataset_handlers),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield behaviour, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


# CANCELLED: what a stopping server answers the calls it received and had not started.
@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED],
)
def test_refused_calls_are_retried_until_they_succeed(
    flaky: tuple[Flaky, str], code: grpc.StatusCode
) -> None:
    behaviour, target = flaky
    behaviour.failures, behaviour.code = 3, code
    with Client(target, retry=FAST, timeout=10) as client:
        assert client.get_job(JOB).name == JOB
        # CreateJob carries a request_id, so it is retried too.
        assert client.create_job("datasets/x", [{"type": "dense", "units": 3}]).name == JOB
    assert behaviour.calls == {"GetJob": 4, "CreateJob": 4}


def test_a_cancelled_call_of_a_closed_client_is_not_retried() -> None:
    """A sync client's `close()` cancels its calls in flight: that CANCELLED is its own."""
    cancelled = grpc.StatusCode.CANCELLED
    assert CallAttempts(RetryPolicy(), 10).delay_after(cancelled, "", closed=True) is None
    assert CallAttempts(RetryPolicy(), 10).delay_after(cancelled, "", closed=False) is not None


# A refusal asking for an hour's wait before the retry, which the policy allows.
HOUR_LONG_RETRIES = RetryPolicy(max_attempts=5, initial_backoff=1, max_backoff=3600)


def test_a_close_ends_a_retry_s_wait_at_once(flaky: tuple[Flaky, str]) -> None:
    """A sync call waiting to retry slept its whole backoff (up to `max_backoff`) through a
    close() from another thread, and only then raised ClientClosed. The wait here would be an
    hour."""
    behaviour, target = flaky
    behaviour.failures, behaviour.code = 5, grpc.StatusCode.RESOURCE_EXHAUSTED
    behaviour.retry_delay_s = 3600.0
    client = Client(target, retry=HOUR_LONG_RETRIES, timeout=7200)
    raised: list[BaseException] = []

    def call() -> None:
        try:
            client.get_job(JOB)
        except BaseException as error:  # handed to the test's thread
            raised.append(error)

    caller = threading.Thread(target=call, daemon=True)  # a daemon: it may wait an hour
    caller.start()
    wait_for(lambda: behaviour.calls.get("GetJob") == 1, 30, "the first attempt's refusal")
    client.close()
    caller.join(30)
    assert not caller.is_alive(), "still waiting to retry after close()"
    assert len(raised) == 1 and isinstance(raised[0], ClientClosed), raised
    assert behaviour.calls == {"GetJob": 1}


def test_an_async_close_ends_a_retry_s_wait_at_once(flaky: tuple[Flaky, str]) -> None:
    behaviour, target = flaky
    behaviour.failures, behaviour.code = 5, grpc.StatusCode.RESOURCE_EXHAUSTED
    behaviour.retry_delay_s = 3600.0

    async def scenario() -> None:
        client = AsyncClient(target, retry=HOUR_LONG_RETRIES, timeout=7200)
        call = asyncio.create_task(client.get_job(JOB))
        while behaviour.calls.get("GetJob") != 1:
            await asyncio.sleep(0.01)
        await client.close()
        with pytest.raises(ClientClosed):
            await asyncio.wait_for(call, 30)

    asyncio.run(scenario())
    assert behaviour.calls == {"GetJob": 1}


def test_retries_give_up_after_max_attempts(flaky: tuple[Flaky, str]) -> None:
    behaviour, target = flaky
    behaviour.failures, behaviour.code = 10_000, grpc.StatusCode.RESOURCE_EXHAUSTED
    with (
        Client(target, retry=FAST, timeout=10) as client,
        pytest.raises(ResourceExhausted) as caught,
    ):
        client.get_job(JOB)
    assert behaviour.calls == {"GetJob": 5}
    assert caught.value.message == "try again"


def test_unavailable_is_retried_past_max_attempts_for_the_reconnect_window(
    flaky: tuple[Flaky, str],
) -> None:
    behaviour, target = flaky
    behaviour.failures = 10_000
    policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, reconnect_window=0.5)
    started = time.monotonic()
    with Client(target, retry=policy, timeout=10) as client, pytest.raises(Unavailable) as caught:
        client.get_job(JOB)
    assert time.monotonic() - started >= 0.5
    assert behaviour.calls["GetJob"] > 5
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.message == "try again"


def test_one_attempt_turns_every_retry_off(flaky: tuple[Flaky, str]) -> None:
    behaviour, target = flaky
    behaviour.failures = 10_000

    async def scenario() -> None:
        async with AsyncClient(target, retry=RetryPolicy(max_attempts=1)) as client:
            with pytest.raises(Unavailable):
                await client.get_job(JOB)

    with Client(target, retry=RetryPolicy(max_attempts=1)) as client, pytest.raises(Unavailable):
        client.get_job(JOB)
    asyncio.run(scenario())
    assert behaviour.calls == {"GetJob": 2}


def test_hard_limits_are_not_retried_uploads_included(flaky: tuple[Flaky, str]) -> None:
    behaviour, target = flaky
    behaviour.failures, behaviour.code = 100, grpc.StatusCode.RESOURCE_EXHAUSTED
    behaviour.details = "max_epochs is limited to 5. Received: 6"
    with Client(target, retry=FAST) as client:
        with pytest.raises(ResourceExhausted, match="limited to 5"):
            client.get_job(JOB)
        assert behaviour.calls == {"GetJob": 1}
        behaviour.details = "max_uploads_per_client is limited to 4. Received: 5"
        x, y = np.zeros((4, 2), np.float32), np.arange(4) % 2
        with pytest.raises(ResourceExhausted, match="limited to 4"):
            client.upload_dataset(x, y, dedupe=False)
    assert behaviour.calls["UploadDataset"] == 1, "a configured limit is raised at once"


# How the server refuses an upload beyond as many waiting for a slot as there are slots
# (server/api.py).
UPLOAD_SLOT_REFUSAL = (
    "the number of uploads waiting for a slot is limited to 16. Received: 17 (as many as "
    "TRAINWIRE_GRPC_THREADS, the uploads in progress at once; upload again once some end)"
)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_an_upload_refused_a_place_to_wait_for_a_slot_is_retried(
    flaky: tuple[Flaky, str], asynchronous: bool
) -> None:
    """That bound sheds the whole server's load, every client's uploads, not the caller's own
    over-use: the SDK raised it at once as a configured limit ("is limited to"). It is retried
    as a busy server's refusal, within the retry policy."""
    behaviour, target = flaky
    behaviour.failures, behaviour.code = 2, grpc.StatusCode.RESOURCE_EXHAUSTED
    behaviour.details = UPLOAD_SLOT_REFUSAL
    x, y = np.zeros((4, 2), np.float32), np.arange(4) % 2
    if asynchronous:

        async def upload() -> str:
            async with AsyncClient(target, retry=FAST, timeout=30) as client:
                return (await client.upload_dataset(x, y, dedupe=False)).name

        name = asyncio.run(upload())
    else:
        with Client(target, retry=FAST, timeout=30) as client:
            name = client.upload_dataset(x, y, dedupe=False).name
    assert name == DATASET
    assert behaviour.calls == {"UploadDataset": 3}


# Three chunks of features (1 MiB each at most) and the targets: an attempt cut after its first
# chunk has sent part of the upload.
CUT_ROWS = 300_000


# UNAVAILABLE: a server gone or refusing; CANCELLED: one that stopped with the upload running.
@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_an_upload_cut_is_sent_again_whole_with_the_same_request_id(
    flaky: tuple[Flaky, str], code: grpc.StatusCode, asynchronous: bool
) -> None:
    behaviour, target = flaky
    behaviour.failures, behaviour.code = 2, code
    x, y = np.ones((CUT_ROWS, 2), np.float32), np.arange(CUT_ROWS) % 2
    if asynchronous:

        async def upload() -> str:
            async with AsyncClient(target, retry=FAST, timeout=30) as client:
                return (await client.upload_dataset(x, y, dedupe=False)).name

        name = asyncio.run(upload())
    else:
        with Client(target, retry=FAST, timeout=30) as client:
            name = client.upload_dataset(x, y, dedupe=False).name
    assert name == DATASET
    assert behaviour.calls == {"UploadDataset": 3}
    (first_id, cut), (second_id, _), (last_id, received) = behaviour.uploads
    assert len(first_id) == 32 and first_id == second_id == last_id, "one request_id per upload"
    assert 0 < cut < received == x.nbytes + y.astype(np.int64).nbytes, "each retry sends it all"


def test_a_second_upload_of_one_client_has_a_request_id_of_its_own(
    flaky: tuple[Flaky, str],
) -> None:
    behaviour, target = flaky
    x, y = np.ones((4, 2), np.float32), np.arange(4) % 2
    with Client(target, retry=FAST) as client:
        client.upload_dataset(x, y, dedupe=False)
        client.upload_dataset(x, y, dedupe=False)
    (first, _), (second, _) = behaviour.uploads
    assert first and second and first != second


@dataclass
class Bar:
    """A progress bar's calls: each reset, and the bytes counted since the last one."""

    resets: int = 0
    n: int = 0

    def update(self, n: float) -> None:
        self.n += int(n)

    def reset(self) -> None:
        self.resets, self.n = self.resets + 1, 0


def test_each_upload_attempt_restarts_the_progress_bar_and_counts_only_its_own_chunks() -> None:
    """gRPC's sending thread may read a failed attempt's stream once more after the retry has
    begun: those chunks must not count towards the retry's."""
    upload = prepare_upload(
        np.ones((CUT_ROWS, 2), np.float32), np.arange(CUT_ROWS) % 2, task=None, name="",
        num_classes=0, feature_names=(), class_names=(), labels=None,
    )  # fmt: skip
    bar = Bar()
    attempts = upload_attempts(upload, 4 << 20, bar)
    first = attempts()
    header = next(first).header
    next(first)  # one chunk sent, then the attempt fails
    second = attempts()
    assert bar.resets == 2 and bar.n == 0
    next(first)  # read once more by the failed attempt's thread: not counted
    assert next(second).header.request_id == header.request_id != ""
    assert all(request.WhichOneof("content") == "chunk" for request in second)
    assert bar.n == upload.size_bytes


def test_a_delete_whose_answer_was_lost_succeeds_on_its_retry(flaky: tuple[Flaky, str]) -> None:
    behaviour, target = flaky
    behaviour.failures = 1  # each delete is done, then answered UNAVAILABLE once
    with Client(target, retry=FAST, timeout=10) as client:
        client.delete_job(JOB)
        client.delete_dataset(DATASET)
        assert behaviour.calls == {"DeleteJob": 2, "DeleteDataset": 2}, "the retry found it gone"
        assert not behaviour.existing
        with pytest.raises(NotFound, match="does not exist"):
            client.delete_job(JOB)  # at the first attempt, NOT_FOUND still means not found


def test_a_delete_refused_busy_then_not_found_is_not_found(flaky: tuple[Flaky, str]) -> None:
    """RESOURCE_EXHAUSTED means nothing ran: a NOT_FOUND after it is the resource's own."""
    behaviour, target = flaky
    behaviour.code, behaviour.failures = grpc.StatusCode.RESOURCE_EXHAUSTED, 1
    behaviour.busy_before_deleting = True
    with Client(target, retry=FAST, timeout=10) as client, pytest.raises(NotFound):
        client.delete_job("jobs/" + "c" * 32)  # never existed
    assert behaviour.calls == {"DeleteJob": 2}


def test_async_delete_whose_answer_was_lost_succeeds_on_its_retry(
    flaky: tuple[Flaky, str],
) -> None:
    behaviour, target = flaky
    behaviour.failures = 1

    async def scenario() -> None:
        async with AsyncClient(target, retry=FAST, timeout=10) as client:
            await client.delete_job(JOB)
            await client.delete_dataset(DATASET)
            with pytest.raises(NotFound, match="does not exist"):
                await client.delete_dataset(DATASET)

    asyncio.run(scenario())
    assert behaviour.calls == {"DeleteJob": 2, "DeleteDataset": 3}


def test_every_call_has_a_deadline(flaky: tuple[Flaky, str]) -> None:
    behaviour, target = flaky
    behaviour.delay_s = 3.0  # without a deadline the call would be answered after this
    with Client(target, timeout=0.3) as client, pytest.raises(DeadlineExceeded):
        client.get_job(JOB)
    assert behaviour.calls == {"GetJob": 1}, "a call's deadline ends it: no retry after it"


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    policy = RetryPolicy(initial_backoff=0.1, multiplier=2, max_backoff=1.0)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= ceiling
        assert max(delays) > ceiling * 0.7, "jitter spreads over the whole range"
    busy, down = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE
    assert policy.next_delay(5, busy, "", 10, unavailable_for=0) is None
    assert policy.next_delay(5, down, "", 10, unavailable_for=policy.reconnect_window) is None
    assert policy.next_delay(1, grpc.StatusCode.NOT_FOUND, "", 10, unavailable_for=0) is None
    assert policy.next_delay(1, down, "", 0.0, unavailable_for=0) is None


def test_the_wait_a_server_asks_for_is_the_least_wait_up_to_the_longest_backoff() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0)
    down = grpc.StatusCode.UNAVAILABLE
    for _ in range(100):
        wait = policy.next_delay(1, down, "", 10, unavailable_for=0, server_delay=0.25)
        assert wait is not None and 0.25 <= wait <= 0.25 + 0.1
    assert policy.next_delay(1, down, "", 10, unavailable_for=0, server_delay=60) == 1.0
    assert policy.next_delay(1, down, "", 0.2, unavailable_for=0, server_delay=0.25) is None


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_both_clients_wait_as_long_as_a_refusal_asks_before_retrying(
    flaky: tuple[Flaky, str], asynchronous: bool
) -> None:
    """A stopping server refuses calls UNAVAILABLE with a RetryInfo (`server.wrappers.Draining`):
    retried at once, the calls would reach it again in the instant its shutdown cancels them."""
    behaviour, target = flaky
    behaviour.failures, behaviour.retry_delay_s = 1, 1.0
    no_jitter = RetryPolicy(initial_backoff=0.0)
    started = time.monotonic()
    if asynchronous:

        async def get_job() -> str:
            async with AsyncClient(target, retry=no_jitter, timeout=10) as client:
                return (await client.job_status(JOB)).name

        assert asyncio.run(get_job()) == JOB
    else:
        with Client(target, retry=no_jitter, timeout=10) as client:
            assert client.get_job(JOB).name == JOB
    assert time.monotonic() - started >= 1.0
    assert behaviour.calls == {"GetJob": 2}


def test_unavailable_is_retried_for_longer_than_the_channel_waits_to_reconnect() -> None:
    """While a channel waits out its reconnection backoff (up to `MAX_RECONNECT_BACKOFF_S` plus
    gRPC's 20 % jitter) it fails calls at once, so retries of UNAVAILABLE outlast that wait."""
    policy = RetryPolicy()
    down = grpc.StatusCode.UNAVAILABLE
    assert policy.reconnect_window == RECONNECT_WINDOW_S > MAX_RECONNECT_BACKOFF_S * 1.2
    options = dict(channel_options(1024))
    assert options["grpc.max_reconnect_backoff_ms"] == MAX_RECONNECT_BACKOFF_S * 1000
    # Past max_attempts, within the window: a wait that never ends past the window.
    for attempt, unavailable_for in [(5, 0.0), (9, 1.0), (30, 2.8)]:
        for _ in range(100):
            wait = policy.next_delay(attempt, down, "", 30, unavailable_for=unavailable_for)
            assert wait is not None and 0 <= wait <= policy.reconnect_window - unavailable_for
    # Never past the call's deadline, nor with retries turned off.
    assert policy.next_delay(9, down, "", 0.0, unavailable_for=1.0) is None
    off = RetryPolicy(max_attempts=1)
    assert off.next_delay(1, down, "", 30, unavailable_for=0) is None


def test_watch_reconnects_without_losing_or_repeating_events(flaky: tuple[Flaky, str]) -> None:
    behaviour, target = flaky
    with Client(target) as client:
        watch = client.watch_job(JOB)
        events = list(watch)
    assert [event.sequence for event in events] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(event, JobEvent) for event in events)
    assert [event.state for event in events] == ["RUNNING"] * 5 + ["SUCCEEDED"]
    assert behaviour.watch_requests == [0, 2, 3], "each reconnect resumes after the last event"
    assert watch.reconnects == 2 and watch.last_sequence == 6


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sync client's sleeps (a call's between attempts, a watch's before it reconnects),
    recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(Client, "_pause", lambda client, seconds: recorded.append(seconds))
    monkeypatch.setattr(JobWatch, "_pause", lambda watch, seconds: recorded.append(seconds))
    return recorded


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_watch_reopens_after_a_cancelled_it_did_not_cause(
    flaky: tuple[Flaky, str], delays: list[float], asynchronous: bool
) -> None:
    """A stopping server cancels the calls it has received and not started (a watch's first
    open among them) and, after its grace period, the streams still open: CANCELLED, which a
    watch raised though it re-opened after UNAVAILABLE, and unary calls retry it. Here the
    first open is cancelled, then the stream after two events."""
    behaviour, target = flaky
    behaviour.watch_code, behaviour.refused_opens = grpc.StatusCode.CANCELLED, 1

    async def watched_async() -> list[int]:
        async with AsyncClient(target, timeout=10) as client:
            return [event.sequence async for event in client.watch_job(JOB)]

    if asynchronous:
        sequences = asyncio.run(watched_async())
    else:
        with Client(target) as client:
            sequences = [event.sequence for event in client.watch_job(JOB)]
    assert sequences == [1, 2, 3, 4, 5, 6]
    assert behaviour.watch_requests == [0, 0, 2], "re-opened after each CANCELLED, resuming"


def _watched(target: str, asynchronous: bool, **settings: Any) -> list[int]:
    """The sequences of a watch of JOB, from either client."""

    async def watched_async() -> list[int]:
        async with AsyncClient(target, timeout=10, **settings) as client:
            return [event.sequence async for event in client.watch_job(JOB)]

    if asynchronous:
        return asyncio.run(watched_async())
    with Client(target, **settings) as client:
        return [event.sequence for event in client.watch_job(JOB)]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_watch_s_reopen_refused_by_the_watch_limit_is_retried(
    flaky: tuple[Flaky, str], delays: list[float], asynchronous: bool
) -> None:
    """The server may still count a watch's lost stream among its client's watches, not yet
    seen to end: the re-open it refused by max_watches_per_client was raised at once. Here the
    first stream drops after two events and the next two opens are refused so."""
    behaviour, target = flaky
    behaviour.watch_limit_refusals = {2, 3}
    assert _watched(target, asynchronous) == [1, 2, 3, 4, 5, 6]
    assert behaviour.watch_requests == [0, 2, 2, 2]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_watch_s_reopen_refused_by_the_watch_limit_past_its_outage_bound_is_raised(
    flaky: tuple[Flaky, str], delays: list[float], asynchronous: bool
) -> None:
    """Refused for longer than `watch_reconnect_s` (0 here), the refusal itself is raised."""
    behaviour, target = flaky
    behaviour.watch_limit_refusals = {2, 3}
    with pytest.raises(ResourceExhausted, match="max_watches_per_client is limited to 1"):
        _watched(target, asynchronous, watch_reconnect_s=0.0)
    assert behaviour.watch_requests == [0, 2]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_watch_s_first_open_refused_by_the_watch_limit_is_raised_at_once(
    flaky: tuple[Flaky, str], delays: list[float], asynchronous: bool
) -> None:
    """No stream of this watch can be the one counted: the caller's own watches are."""
    behaviour, target = flaky
    behaviour.watch_limit_refusals = {1}
    with pytest.raises(ResourceExhausted, match="max_watches_per_client is limited to 1"):
        _watched(target, asynchronous)
    assert behaviour.watch_requests == [0]


def test_a_watch_waits_as_long_as_its_end_asks_before_reconnecting(
    flaky: tuple[Flaky, str], delays: list[float]
) -> None:
    """A stopping server ends a watch UNAVAILABLE with a RetryInfo: a watch re-opened at once
    would reach it again in the instant its shutdown cancels calls."""
    behaviour, target = flaky
    behaviour.retry_delay_s = 1.5
    with Client(target) as client:
        assert [event.sequence for event in client.watch_job(JOB)] == [1, 2, 3, 4, 5, 6]
    assert len(delays) == 2 and all(delay >= 1.5 for delay in delays), delays


def test_a_watch_backs_off_from_streams_opened_and_dropped_at_once(
    flaky: tuple[Flaky, str], delays: list[float]
) -> None:
    """Each such stream starts a new outage (the server was there), but the backoff goes on
    growing: the server is not re-dialled every 50 ms for as long as it misbehaves."""
    behaviour, target = flaky
    behaviour.opened_then_dropped = 6
    with Client(target) as client:
        assert [e.sequence for e in client.watch_job(JOB)][-1] == 6
    assert len(delays) >= 6 and max(delays) > 0.5, delays


class Dropped(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "opened, then gone at once"


def test_a_watch_that_never_gives_up_keeps_a_bounded_backoff(delays: list[float]) -> None:
    """A watch whose streams open and drop for ever (no event, so its failures never reset)
    must not overflow the backoff's power after a thousand drops."""
    with Client("127.0.0.1:1") as client:  # never dialled: the drops are handed in
        watch = client.watch_job(JOB)
        for _ in range(1100):
            watch._recover(Dropped(), opened=True)
    assert len(delays) == 1100 and max(delays) <= 2.0


def test_async_client_retries_and_reconnects(flaky: tuple[Flaky, str]) -> None:
    behaviour, target = flaky
    behaviour.failures = 2

    async def scenario() -> list[JobEvent]:
        async with AsyncClient(target, retry=FAST, timeout=10) as client:
            assert (await client.get_job(JOB)).name == JOB
            return [event async for event in client.watch_job(JOB)]

    events = asyncio.run(scenario())
    assert [event.sequence for event in events] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(event, JobEvent) for event in events)
    assert [event.state for event in events] == ["RUNNING"] * 5 + ["SUCCEEDED"]
    assert behaviour.calls["GetJob"] == 3
    assert behaviour.watch_requests == [0, 2, 3]


def test_schedule_options_an_older_server_ignores_cancel_its_job(
    flaky: tuple[Flaky, str],
) -> None:
    """A server older than `ScheduleSpec.options` drops the field unread: the job would train on
    val_loss, or decay per epoch, without a word. Both SDKs see the options missing from the job
    it answers, cancel it and raise. (This fake server answers every job without its settings,
    as such a server shows a job without the options.)"""
    behaviour, target = flaky
    plateau = {"name": "reduce_on_plateau", "monitor": "val_accuracy", "mode": "max"}
    with Client(target) as client:
        with pytest.raises(FailedPrecondition) as refused:
            client.create_job(DATASET, [Dense(3)], schedule=plateau, validate=False)
        assert refused.value.field_violations[0][0] == "training.schedule.options"
        assert "(mode, monitor)" in refused.value.message
        assert behaviour.calls.get("CancelJob") == 1
        client.create_job(DATASET, [Dense(3)], schedule={"name": "step", "step_size": 2})
        assert behaviour.calls.get("CancelJob") == 1  # nothing was dropped

    async def scenario() -> None:
        async with AsyncClient(target) as client:
            with pytest.raises(FailedPrecondition):
                await client.create_job(DATASET, [Dense(3)], schedule=plateau, validate=False)

    asyncio.run(scenario())
    assert behaviour.calls.get("CancelJob") == 2
