"""`AsyncClient`: the SDK for asyncio services, with the same surface as `Client`.

    async with AsyncClient("localhost:50051") as client:
        data = await client.upload_dataset(X, y, name="iris")
        job = await client.create_job(data, Sequential([Dense(16, activation="relu"), Dense(3)]))
        async for event in job.watch():
            ...
        print((await job.predict(X[:5])).labels)

Deadlines, retries (`RetryPolicy`), local validation, reconnecting watches and errors behave as in
the sync client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np

from trainwire.v1 import datasets_pb2, jobs_pb2, predictions_pb2

from .builders import ModelLike
from .client import (
    DEFAULT_MESSAGE_BYTES,
    DEFAULT_TARGET,
    Client,
    JobWaiting,
    Outage,
    call_timeout,
    env_settings,
    is_gone,
    may_have_run,
    reconnectable,
    reopen_refused_by_the_watch_count,
    upload_bar,
    watch_timed_out,
)
from .errors import (
    ClientClosed,
    NotFound,
    ResourceExhausted,
    TrainwireError,
    from_rpc_error,
    retry_delay_of,
    status_of,
)
from .feeds import AsyncBatchFeed
from .files import PathLike
from .results import (
    Checkpoint,
    DatasetInfo,
    JobEvent,
    JobStatus,
    Metrics,
    ModelInfo,
    Prediction,
)
from .retry import CallAttempts, RetryPolicy, watch_was_open
from .rpc import AioRpc, Pem, auth_metadata, channel_credentials, channel_options
from .wire import (
    ChunkedPrediction,
    StreamedPrediction,
    Upload,
    as_inputs,
    create_job_request,
    dataset_name,
    list_job_metrics_request,
    list_jobs_request,
    metrics_from_responses,
    name_of,
    page_size_arg,
    schedule_options_ignored,
    upload_attempts,
    upload_refused,
    watch_start,
)

log = logging.getLogger("trainwire.client")
R = TypeVar("R")
T = TypeVar("T")


class AsyncClient:
    """An asyncio connection to a Trainwire server; use `async with`, or `await close()`.

    Arguments are those of `Client`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        tls: bool | Pem = False,
        client_cert: tuple[Pem, Pem] | None = None,
        timeout: float = 30.0,
        max_message_bytes: int = DEFAULT_MESSAGE_BYTES,
        retry: RetryPolicy | None = None,
        watch_reconnect_s: float = 300.0,
    ) -> None:
        self.target = target
        self.timeout = call_timeout(timeout, "timeout")
        self.max_message_bytes = max_message_bytes
        self.retry = retry or RetryPolicy()
        self.watch_reconnect_s = watch_reconnect_s
        self._metadata = auth_metadata(api_key)  # checked before a channel is opened
        self._closed = False  # for `ClientClosed` in place of grpc's UsageError (see `Client`)
        self._closing = asyncio.Event()  # set by close(): it ends the pauses under way (`_pause`)
        options = channel_options(max_message_bytes)
        credentials = channel_credentials(tls, client_cert)
        if credentials is not None:
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._rpc = AioRpc(self._channel)
        self._uploaded: dict[str, str] = {}

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncClient:
        """A client configured like `Client.from_env`."""
        return cls(**env_settings(**overrides))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self.target!r})"

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled, and later ones raise
        `ClientClosed`."""
        self._closed = True
        self._closing.set()
        await self._channel.close(None)

    async def _pause(self, seconds: float, woken: asyncio.Event | None = None) -> None:
        """Waits between a call's attempts (or a wait's polls, a watch's reconnections); a close()
        cuts it short (see `Client._pause`), and so does `woken` once set (a watch's own
        close())."""
        events = [self._closing] if woken is None else [self._closing, woken]
        waits = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _call(
        self,
        method: Callable[..., Awaitable[R]],
        request: Any,
        timeout: float | None = None,
        *,
        gone_on_retry: Callable[[], R] | None = None,
    ) -> R:
        """One call with a deadline, retried within it as `Client._call` is (a client stream's
        `request` makes its requests anew for each attempt, and a delete's retry that finds the
        resource gone answers `gone_on_retry()`, see `Client._call`)."""
        attempts = CallAttempts(self.retry, timeout or self.timeout)
        answer_lost = False
        while True:
            if self._closed:  # also between attempts: close() may come during a retry's sleep
                raise ClientClosed(self)
            timeout_s = attempts.next_timeout()
            sent = request() if callable(request) else request
            try:
                with closing_raises_client_closed(self):
                    return await method(sent, timeout=timeout_s, metadata=self._metadata)
            except grpc.aio.AioRpcError as error:
                code, details = status_of(error)
                if gone_on_retry is not None and is_gone(answer_lost, code):
                    return gone_on_retry()
                answer_lost = answer_lost or may_have_run(code)
                delay = attempts.delay_after(
                    code, details, closed=self._closed, server_delay=retry_delay_of(error)
                )
                if delay is None:
                    raise from_rpc_error(error) from None
                log.debug("retrying after %s (attempt %d, %.2fs)", code, attempts.attempt, delay)
                await self._pause(delay)

    # --- datasets -----------------------------------------------------------------------------

    async def upload_dataset(
        self,
        features: np.ndarray | PathLike,
        targets: np.ndarray | PathLike | None = None,
        *,
        task: str | None = None,
        name: str = "",
        num_classes: int = 0,
        feature_names: Sequence[str] = (),
        class_names: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        target_column: str | int | None = None,
        header: bool | None = None,
        dedupe: bool = True,
        progress: bool | None = None,
        timeout: float | None = None,
    ) -> DatasetInfo:
        """Uploads a dataset, content-addressed, as `Client.upload_dataset`."""
        upload = Client._prepare(
            features, targets, task, name, num_classes, feature_names, class_names, labels,
            target_column, header,
        )  # fmt: skip
        if dedupe:
            existing = await self.find_dataset(upload)
            if existing is not None:
                return existing
        bar = upload_bar(upload, progress)
        try:
            # Idempotent by its request_id: each attempt sends the whole upload again.
            response = await self._call(
                self._send_upload,
                upload_attempts(upload, self.max_message_bytes, bar),
                timeout or max(self.timeout, 300.0),
            )
        except ResourceExhausted as error:
            raise upload_refused(error, self.max_message_bytes) from None
        finally:
            if bar is not None:
                bar.close()
        info = DatasetInfo.from_proto(response)
        self._uploaded[upload.sha256] = info.name
        return info

    async def _send_upload(
        self,
        requests: Iterator[datasets_pb2.UploadDatasetRequest],
        timeout: float | None = None,
        metadata: Any = None,
    ) -> datasets_pb2.Dataset:
        """One attempt of an upload. Its requests are written by a task of ours, as a
        `predict_stream`'s are, not by grpc.aio from a request iterator: grpc.aio replaced the
        status of an upload the server ended while a write was under way (a stopping server's
        cut, a refusal, an early answer) with INTERNAL, "Internal error from Core"
        (grpc/grpc#36066; 3 in 10 uploads of 96 MB cut after their first chunk). A write that
        fails here ends the writing, and the call's own status is what the answer reports."""
        call = self._rpc.upload_dataset(None, timeout=timeout, metadata=metadata)
        failure: list[Exception] = []

        async def write_requests() -> None:
            try:
                for request in requests:
                    await call.write(request)
                await call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return  # the call has ended: its answer reports its status
            except Exception as error:  # of the requests themselves: the call is abandoned
                failure.append(error)
                call.cancel()

        writer = asyncio.create_task(write_requests())
        call.add_done_callback(_cancelling(writer))
        try:
            return await call
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            if failure:  # the call cancelled above (grpc.aio raises CancelledError for it)
                raise failure[0] from None
            raise
        finally:
            call.cancel()  # a caller's cancellation ends the call, and with it the writing

    async def find_dataset(self, upload: Upload) -> DatasetInfo | None:
        """A stored dataset of this project holding exactly `upload`'s arrays, if any."""
        known = self._uploaded.get(upload.sha256)
        if known is not None:
            try:
                info = await self.get_dataset(known)
                if upload.matches(info):
                    return info
            except NotFound:
                pass
            self._uploaded.pop(upload.sha256, None)  # a concurrent call may have forgotten it
        async for info in self.list_datasets():
            if upload.matches(info):
                self._uploaded[upload.sha256] = info.name
                return info
        return None

    async def get_dataset(self, name: str | DatasetInfo) -> DatasetInfo:
        """One dataset by name or handle."""
        request = datasets_pb2.GetDatasetRequest(name=dataset_name(name, "name"))
        return DatasetInfo.from_proto(await self._call(self._rpc.get_dataset, request))

    async def list_datasets(self, page_size: int = 100) -> AsyncIterator[DatasetInfo]:
        """The project's datasets, newest first."""
        token = ""
        while True:
            request = datasets_pb2.ListDatasetsRequest(
                page_size=page_size_arg(page_size), page_token=token
            )
            response = await self._call(self._rpc.list_datasets, request)
            for dataset in response.datasets:
                yield DatasetInfo.from_proto(dataset)
            token = response.next_page_token
            if not token:
                return

    async def delete_dataset(self, name: str | DatasetInfo) -> None:
        """Deletes a dataset; refused (FailedPrecondition) while an unfinished job uses it."""
        name = dataset_name(name, "name")
        await self._call(
            self._rpc.delete_dataset,
            datasets_pb2.DeleteDatasetRequest(name=name),
            gone_on_retry=datasets_pb2.DeleteDatasetResponse,
        )
        self._uploaded = {k: v for k, v in self._uploaded.items() if v != name}

    # --- jobs ---------------------------------------------------------------------------------

    async def create_job(
        self,
        dataset: str | DatasetInfo,
        model: ModelLike,
        *,
        epochs: int = 10,
        batch_size: int = 32,
        optimizer: str | Mapping[str, Any] = "adam",
        learning_rate: float = 0.0,
        loss: str = "",
        metrics: Sequence[str] = (),
        validation_fraction: float = 0.0,
        seed: int = 0,
        checkpoint_every_epochs: int = 0,
        schedule: str | Mapping[str, float | str] | None = None,
        early_stopping: Mapping[str, Any] | None = None,
        dtype: str = "float32",
        display_name: str = "",
        labels: Mapping[str, str] | None = None,
        queue: str = "",
        priority: int = 0,
        max_attempts: int = 0,
        request_id: str | None = None,
        log_every_steps: int = 0,
        keep_checkpoints: int = 0,
        validate: bool = True,
    ) -> AsyncJob:
        """Submits a training job (see `Client.create_job`)."""
        request = create_job_request(
            dataset, model, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
            learning_rate=learning_rate, loss=loss, metrics=metrics,
            validation_fraction=validation_fraction, seed=seed,
            checkpoint_every_epochs=checkpoint_every_epochs, schedule=schedule,
            early_stopping=early_stopping, dtype=dtype, display_name=display_name, labels=labels,
            queue=queue, priority=priority, max_attempts=max_attempts, request_id=request_id,
            log_every_steps=log_every_steps, keep_checkpoints=keep_checkpoints, validate=validate,
        )  # fmt: skip
        job = await self._call(self._rpc.create_job, request)
        ignored = schedule_options_ignored(request, job)
        if ignored is not None:
            await self._call(self._rpc.cancel_job, jobs_pb2.CancelJobRequest(name=job.name))
            raise ignored
        return AsyncJob(self, JobStatus.from_proto(job))

    async def get_job(self, name: str | AsyncJob) -> AsyncJob:
        """A handle on an existing job, with its current status."""
        return AsyncJob(self, await self.job_status(name))

    async def job_status(self, name: str | AsyncJob) -> JobStatus:
        """The current status of a job."""
        request = jobs_pb2.GetJobRequest(name=job_name(name, "name"))
        return JobStatus.from_proto(await self._call(self._rpc.get_job, request))

    async def list_jobs(
        self,
        *,
        state: str | None = None,
        dataset: str | DatasetInfo | None = None,
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
        created_before: datetime | None = None,
    ) -> AsyncIterator[AsyncJob]:
        """Jobs, newest first, optionally filtered (`created_before`: an aware datetime, the
        jobs created before it)."""
        token = ""
        while True:
            request = list_jobs_request(
                token,
                state=state,
                dataset=dataset,
                labels=labels,
                page_size=page_size,
                created_before=created_before,
            )
            response = await self._call(self._rpc.list_jobs, request)
            for job in response.jobs:
                yield AsyncJob(self, JobStatus.from_proto(job))
            token = response.next_page_token
            if not token:
                return

    async def cancel_job(self, name: str | AsyncJob) -> JobStatus:
        """Cancels a job: a queued one at once, a running one at its next batch."""
        request = jobs_pb2.CancelJobRequest(name=job_name(name, "name"))
        return JobStatus.from_proto(await self._call(self._rpc.cancel_job, request))

    async def delete_job(self, name: str | AsyncJob) -> None:
        """Deletes a finished job with its metrics and checkpoints."""
        await self._call(
            self._rpc.delete_job,
            jobs_pb2.DeleteJobRequest(name=job_name(name, "name")),
            gone_on_retry=jobs_pb2.DeleteJobResponse,
        )

    def watch_job(
        self,
        name: str | AsyncJob,
        after_sequence: int = 0,
        timeout: float | None = None,
        *,
        reconnect: bool = True,
    ) -> AsyncJobWatch:
        """The job's `JobEvent`s after `after_sequence` (see `Client.watch_job`); `async for`
        it."""
        start = watch_start(after_sequence)
        return AsyncJobWatch(self, job_name(name, "name"), start, timeout, reconnect)

    async def job_metrics(self, name: str | AsyncJob, names: Sequence[str] = ()) -> Metrics:
        """Each metric as an array of shape (points, 3): step, epoch, value (every page)."""
        responses = []
        token = ""
        while True:
            request = list_job_metrics_request(job_name(name, "name"), names, token)
            responses.append(await self._call(self._rpc.list_job_metrics, request))
            token = responses[-1].next_page_token
            if not token:
                return metrics_from_responses(responses)

    async def job_checkpoints(self, name: str | AsyncJob) -> list[Checkpoint]:
        """The job's checkpoints, oldest first (every page)."""
        checkpoints: list[Checkpoint] = []
        token = ""
        while True:
            request = jobs_pb2.ListCheckpointsRequest(name=job_name(name, "name"), page_token=token)
            response = await self._call(self._rpc.list_checkpoints, request)
            checkpoints.extend(Checkpoint.from_proto(c) for c in response.checkpoints)
            token = response.next_page_token
            if not token:
                return checkpoints

    async def model_metadata(self, job: str | AsyncJob, checkpoint: str = "") -> ModelInfo:
        """A job's trained model: its checkpoint, input and output dtypes and shapes, classes,
        feature names, size and spec (see `ModelInfo`). `job` and `checkpoint` as for `predict`."""
        name = job_name(job)
        request = predictions_pb2.GetModelMetadataRequest(job=name, checkpoint=checkpoint)
        return ModelInfo.from_proto(await self._call(self._rpc.get_model_metadata, request))

    async def predict(
        self,
        job: str | AsyncJob,
        inputs: np.ndarray | Sequence[Sequence[float]],
        *,
        checkpoint: str = "",
        outputs_only: bool = False,
    ) -> Prediction:
        """Predicts for the rows of `inputs` (see `Client.predict`)."""
        name = job_name(job)
        chunks = ChunkedPrediction(
            name, as_inputs(inputs), checkpoint, self.max_message_bytes, outputs_only
        )
        while (request := chunks.next_request()) is not None:
            try:
                chunks.answered(await self._call(self._rpc.predict, request))
            except TrainwireError as error:
                if not chunks.retry_after(error):
                    raise
        return chunks.result()

    async def predict_stream(
        self,
        job: str | AsyncJob,
        batches: Iterable[np.ndarray | Sequence[Sequence[float]]]
        | AsyncIterable[np.ndarray | Sequence[Sequence[float]]],
        *,
        checkpoint: str = "",
        outputs_only: bool = False,
    ) -> AsyncIterator[Prediction]:
        """Predictions for each batch of rows, over one PredictStream call, in order; `batches`
        is read as the stream goes, and a stream the server drops goes on over a new call (see
        `Client.predict_stream`)."""
        if self._closed:
            raise ClientClosed(self)
        name = job_name(job)
        streamed = StreamedPrediction(name, checkpoint, self.max_message_bytes, outputs_only)
        feed = AsyncBatchFeed(batches, streamed)

        async def write_requests(call: Any) -> None:
            # A batch that cannot be encoded (or an exception of `batches` itself) ends the
            # requests, and is raised once the batches before it are answered.
            sent = feed.first_unanswered()
            try:
                while (x := await feed.next_batch(sent)) is not None:
                    if streamed.answer_row_bytes is None:  # once, after the first batch is encoded
                        streamed.describe(await self.model_metadata(name, checkpoint))
                    for request in streamed.requests(x):
                        try:
                            await call.write(request)
                        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                            return  # the call has ended: the responses report its status
                    sent += 1
            except Exception as error:
                feed.failure = feed.failure or error
            # A half-close racing the call's end fails with grpc's own ExecuteBatchError (no
            # AioRpcError); the responses report the call's status.
            with contextlib.suppress(Exception):
                await call.done_writing()

        attempts = CallAttempts(self.retry, self.timeout)
        try:
            while True:
                if self._closed:  # close() may come while a new call is waited for
                    raise ClientClosed(self)
                # The requests are written by a task of ours, not by grpc.aio from a request
                # iterator: a write made once the client's gRPC has the server's refusal (of an
                # earlier message) but before asyncio has seen it fails, and grpc.aio then
                # replaces the call's status with INTERNAL ("Internal error from Core",
                # grpc/grpc#36066), the server's own lost. The done callback cancels the writing
                # task as the status is set, so no such write is left to report its failure.
                call = self._rpc.predict_stream(
                    None, timeout=attempts.next_timeout(), metadata=self._metadata
                )
                writer = asyncio.create_task(write_requests(call))
                call.add_done_callback(_cancelling(writer))
                try:
                    with closing_raises_client_closed(self):
                        async for response in call:
                            prediction = streamed.answered(response)
                            if prediction is not None:
                                feed.answered(prediction.checkpoint)
                                attempts.answered()
                                yield prediction
                    break
                except grpc.aio.AioRpcError as error:
                    code, details = status_of(error)
                    delay = attempts.delay_after(
                        code, details, closed=self._closed, server_delay=retry_delay_of(error)
                    )
                    if delay is None:
                        raise from_rpc_error(error) from None
                    # The failed call's writer is cancelled: once it has stopped, its messages
                    # no longer count, and the next call sends its batches again.
                    await asyncio.wait([writer])
                    feed.restart()
                    log.info(
                        "prediction stream of %s lost (%s); resuming in %.2fs", name, code, delay
                    )
                    await self._pause(delay)
                finally:
                    # The caller may stop early (or fail to read an answer): end the call, and
                    # with it the writing task, rather than leave it sending for an abandoned
                    # call.
                    call.cancel()
        finally:
            feed.close()  # a read of `batches` still under way is for no call
        if feed.failure is not None:
            raise feed.failure


def _cancelling(task: asyncio.Task[None]) -> Callable[[object], None]:
    """A done callback that cancels `task`."""

    def cancel(_: object) -> None:
        task.cancel()

    return cancel


def cancelled_by_close(closed: bool) -> bool:
    """In an `except asyncio.CancelledError`: whether the error is a `close()`'s (`closed`: of
    the client or of a watch), which cancels the calls in flight, and grpc.aio then raises
    CancelledError in the tasks awaiting them though no one cancelled those tasks; not a
    cancellation of the current task itself, which must go on."""
    task = asyncio.current_task()
    return closed and (task is None or not task.cancelling())


@contextlib.contextmanager
def closing_raises_client_closed(client: AsyncClient) -> Iterator[None]:
    """Around the awaits of a call on `client`'s channel: its close() from another task is
    `ClientClosed` there, not a bare CancelledError (which a caller's `except TrainwireError`
    missed, and took for its own task's cancellation)."""
    try:
        yield
    except asyncio.CancelledError:
        if cancelled_by_close(client._closed):
            raise ClientClosed(client) from None
        raise


class AsyncJobWatch(AsyncIterator[JobEvent]):
    """An async iterator of a job's events (`JobEvent`s) that survives dropped connections and
    restarts."""

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        after_sequence: int,
        timeout: float | None,
        reconnect: bool,
    ) -> None:
        self.client = client
        self.name = name
        self.last_sequence = after_sequence
        self.reconnects = 0
        self.reconnect = reconnect
        self.timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._stream: grpc.aio.UnaryStreamCall[jobs_pb2.WatchJobRequest, Any] | None = None
        self._events: AsyncIterator[jobs_pb2.JobEvent] | None = None
        self._batched = True  # WatchJobBatches, until a server answers it UNIMPLEMENTED
        self._outage = Outage(f"watching {name}", client.watch_reconnect_s, reached=False)
        self._closed = False
        self._woken = asyncio.Event()  # set by close(): it ends a wait before reconnecting

    def __aiter__(self) -> AsyncJobWatch:
        return self

    async def __anext__(self) -> JobEvent:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._stream is None:
                if self.client._closed:
                    raise ClientClosed(self.client)
                request = jobs_pb2.WatchJobRequest(
                    name=self.name, after_sequence=self.last_sequence
                )
                remaining = (
                    None if self._deadline is None else max(self._deadline - time.monotonic(), 0)
                )
                rpc = self.client._rpc
                watch = rpc.watch_job_batches if self._batched else rpc.watch_job
                self._stream = watch(request, timeout=remaining, metadata=self.client._metadata)
                stream = self._stream.__aiter__()
                self._events = unbatched_async(stream) if self._batched else stream
            assert self._events is not None
            # close() from another task, of this watch (which then ends) or of its client, cancels
            # the call, which grpc.aio reports as a CancelledError here.
            with closing_raises_client_closed(self.client):
                try:
                    event = await anext(self._events)
                except StopAsyncIteration:
                    self.close()
                    raise
                except asyncio.CancelledError:
                    if cancelled_by_close(self._closed):
                        raise StopAsyncIteration from None
                    raise
                except grpc.aio.AioRpcError as error:
                    self._stream = self._events = None
                    if self._batched and error.code() is grpc.StatusCode.UNIMPLEMENTED:
                        self._batched = False  # a server older than WatchJobBatches
                        continue
                    await self._recover(error, watch_was_open(error.initial_metadata()))
                    continue
            self._outage.ended()
            # The rest of a batch read before a close() is not handed out (see `JobWatch`).
            if self._closed:
                raise StopAsyncIteration
            if self.client._closed:
                raise ClientClosed(self.client)
            if event.sequence <= self.last_sequence:
                continue
            self.last_sequence = event.sequence
            return JobEvent.from_proto(event)

    async def _recover(self, error: grpc.aio.AioRpcError, opened: bool) -> None:
        """Sleeps before re-opening the stream, or raises the SDK error (see `JobWatch`)."""
        code, details = status_of(error)
        if self._closed:
            raise StopAsyncIteration
        if self.client._closed:  # its close() cancelled the stream (see `JobWatch._recover`)
            raise ClientClosed(self.client) from None
        if self.timeout is not None and code is grpc.StatusCode.DEADLINE_EXCEEDED:
            # The stream's deadline is the watch's own.
            raise watch_timed_out(self.name, self.timeout, self.last_sequence) from None
        refused = reopen_refused_by_the_watch_count(self.reconnects, code, details)
        if not self.reconnect or not (reconnectable(code, details) or refused):
            raise from_rpc_error(error) from None
        if opened:  # a new outage begins; the backoff goes on (see `JobWatch._recover`)
            self._outage.since = None
            self._outage.reached = True
        delay = self._outage.next_delay(
            from_rpc_error(error), retry_delay_of(error), refused=refused
        )
        late = self._deadline is not None and time.monotonic() + delay >= self._deadline
        if late and self.timeout is not None:
            raise watch_timed_out(self.name, self.timeout, self.last_sequence) from None
        log.info("watch of %s lost (%s); reconnecting in %.2fs", self.name, code, delay)
        self.reconnects += 1
        # Cut short by this watch's close() or its client's (the next open raises
        # `ClientClosed`).
        await self.client._pause(delay, self._woken)

    def close(self) -> None:
        """Stops the watch and cancels its stream; an `async for` over it in another task ends
        (as the sync watch's does when closed from another thread), waiting to reconnect too."""
        self._closed = True
        self._woken.set()
        if self._stream is not None:
            self._stream.cancel()
        self._stream = self._events = None


async def unbatched_async(
    batches: AsyncIterator[jobs_pb2.JobEventBatch],
) -> AsyncIterator[jobs_pb2.JobEvent]:
    """The events of a WatchJobBatches stream, one at a time (see `client.unbatched`)."""
    async for batch in batches:
        for event in batch.events:
            yield event


def job_name(job: object, argument: str = "job") -> str:
    """A job's name from its name or its `AsyncJob` handle (see `wire.name_of`)."""
    return name_of(job, argument, "job", (AsyncJob,))


class AsyncJob:
    """A handle on one training job, for asyncio code (see `Job`)."""

    def __init__(self, client: AsyncClient, status: JobStatus) -> None:
        self.client = client
        self.name = status.name
        self.last_status = status

    def __repr__(self) -> str:
        return f"AsyncJob({self.name!r}, state={self.last_status.state})"

    async def status(self) -> JobStatus:
        """The job's current status (also kept as `last_status`)."""
        self.last_status = await self.client.job_status(self.name)
        return self.last_status

    async def wait(
        self,
        timeout: float | None = None,
        *,
        poll_interval: float = 0.5,
        progress: bool = False,
    ) -> JobStatus:
        """Waits until the job finishes, riding out server outages (see `Job.wait`); raises
        JobFailed or `TimedOut`."""
        waiting = JobWaiting(
            self.name, self.last_status, self.client.watch_reconnect_s, timeout, poll_interval,
            progress,
        )  # fmt: skip
        try:
            while True:
                delay: float | None
                try:
                    status = await self.status()
                except TrainwireError as error:
                    delay = waiting.failed(error)
                else:
                    delay = waiting.polled(status)
                if delay is None:
                    return waiting.result()
                await self.client._pause(delay)
        finally:
            waiting.close()

    def watch(
        self, after_sequence: int = 0, *, timeout: float | None = None, reconnect: bool = True
    ) -> AsyncJobWatch:
        """The job's events, reconnecting transparently; `async for` it."""
        return self.client.watch_job(self.name, after_sequence, timeout, reconnect=reconnect)

    async def metrics(self, names: Sequence[str] = ()) -> Metrics:
        """Each metric as an (points, 3) array of step, epoch, value."""
        return await self.client.job_metrics(self.name, names)

    async def checkpoints(self) -> list[Checkpoint]:
        """The job's checkpoints, oldest first."""
        return await self.client.job_checkpoints(self.name)

    async def model_metadata(self, checkpoint: str = "") -> ModelInfo:
        """The trained model's checkpoint, dtypes, shapes, classes, size and spec (see
        `Client.model_metadata`)."""
        return await self.client.model_metadata(self.name, checkpoint)

    async def delete(self) -> None:
        """Deletes the finished job with its metrics and checkpoints."""
        await self.client.delete_job(self.name)

    async def cancel(self) -> JobStatus:
        """Cancels the job."""
        self.last_status = await self.client.cancel_job(self.name)
        return self.last_status

    async def predict(
        self,
        inputs: np.ndarray | Sequence[Sequence[float]],
        *,
        checkpoint: str = "",
        outputs_only: bool = False,
    ) -> Prediction:
        """Predictions of the job's model (see `Client.predict`)."""
        return await self.client.predict(
            self.name, inputs, checkpoint=checkpoint, outputs_only=outputs_only
        )

    def predict_stream(
        self,
        batches: Iterable[np.ndarray | Sequence[Sequence[float]]]
        | AsyncIterable[np.ndarray | Sequence[Sequence[float]]],
        *,
        checkpoint: str = "",
        outputs_only: bool = False,
    ) -> AsyncIterator[Prediction]:
        """Predictions for each batch of rows over one stream (see
        `AsyncClient.predict_stream`)."""
        return self.client.predict_stream(
            self.name, batches, checkpoint=checkpoint, outputs_only=outputs_only
        )

    async def plot(self, path: PathLike | None = None, *, dpi: int = 100) -> Path:
        """Saves a PNG of the training curves (see `Job.plot`); drawing runs in a thread."""
        from .plot import save_metrics_plot

        metrics = await self.metrics()
        target = path if path is not None else f"{self.name.rsplit('/', 1)[-1]}.png"
        title = self.last_status.display_name or self.name
        return await asyncio.to_thread(save_metrics_plot, metrics, target, title, dpi)


__all__ = ["AsyncClient", "AsyncJob", "AsyncJobWatch"]
