"""gRPC servicers: convert the request, call a service, convert the result. Nothing else.

Errors raised by the services are mapped to statuses by the wrappers that `server.wrappers` puts
around every method, which also set the caller's project (`server.auth`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

import grpc

from trainwire.client.retry import WATCH_OPENED
from trainwire.client.tensors import write_tensor
from trainwire.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    predictions_pb2,
    predictions_pb2_grpc,
    tensor_pb2,
)

from .auth import check_key_still_active, current_client, current_project
from .config import MIN_MESSAGE_BYTES, Settings
from .convert import (
    ITEM_FRAMING_BYTES,
    STATES_TO_PROTO,
    ListAnswer,
    checkpoint_name,
    checkpoint_to_proto,
    dataset_to_proto,
    job_to_proto,
    model_spec_to_proto,
    progress_to_proto,
    timestamp,
    without_layers_past,
)
from .datasets import DatasetService, Upload
from .errors import DeadlineExceeded, ResourceExhausted, Unavailable
from .jobs import WATCH_POLL_S, JobService
from .predictions import Prediction, PredictionService, Served, ServedPin
from .records import Checkpoint, Dataset, Job, JobEvent, TaskKind
from .wrappers import Draining, in_pool

# A message of a client stream.
Message = TypeVar("Message")
# The most a WatchJobBatches message carries: what the smallest message limit a client may have
# (64 KiB) takes, whatever the server's, as WatchJob's single events fit any client (a batch
# sized by a 4 MiB server limit failed on a client of 64 KiB). About 380 events of an epoch.
WATCH_BATCH_BYTES = MIN_MESSAGE_BYTES - 1024
# A message of a watch's stream: an event (WatchJob) or a batch of them (WatchJobBatches).
Watched = TypeVar("Watched", jobs_pb2.JobEvent, jobs_pb2.JobEventBatch)


async def _next_message(
    requests: AsyncIterator[Message], idle_s: float, idle: Callable[[], DeadlineExceeded]
) -> Message | None:
    """The next message of a client stream (None once it ends), waited for at most `idle_s`
    (stream_idle_timeout_s), else raises `idle()`: a client silent without a deadline held what
    its stream holds (an upload slot, a model pinned in the cache) for good."""
    try:
        async with asyncio.timeout(idle_s):
            return await anext(requests, None)
    except TimeoutError:
        raise idle() from None


def _client(context: grpc.aio.ServicerContext) -> str:
    """Whom a per-client limit counts a call against: the project of the API key that admitted
    it (`project:<name>`, its keys together: a project given several keys would otherwise hold
    that many times the streams), else, on an open server, its connection (the peer)."""
    return f"project:{current_project()}" if current_client() else context.peer()


class ClientLimiter:
    """Counts one kind of open stream per client (`_client`: a key's project, or a peer of an
    open server), refusing one past `limit` with RESOURCE_EXHAUSTED naming `setting`: one
    tenant's open streams held what every other project needed."""

    def __init__(self, setting: str, limit: int, counted: str) -> None:
        self.setting = setting
        self.limit = limit
        self.counted = counted  # what is counted, for the refusal's message
        self.open: Counter[str] = Counter()
        self.lock = threading.Lock()

    def acquire(self, client: str) -> None:
        with self.lock:
            if self.open[client] >= self.limit:
                raise ResourceExhausted.limit(
                    self.setting, self.limit, self.open[client] + 1, self.counted
                )
            self.open[client] += 1

    def release(self, client: str) -> None:
        with self.lock:
            self.open[client] -= 1
            if self.open[client] <= 0:
                del self.open[client]


class DatasetServicer(datasets_pb2_grpc.DatasetServiceServicer):
    """Plain methods run in the server's thread pool; UploadDataset is a coroutine that receives
    the stream on the event loop and checks the header, then hashes, checks and stores the bytes,
    in the thread pool: an open upload holds no thread while it waits for its client (as a
    synchronous handler, 16 stalled uploads took every thread and every other RPC waited)."""

    def __init__(
        self, datasets: DatasetService, uploads: ClientLimiter, executor: Executor
    ) -> None:
        self.datasets = datasets
        self.uploads = uploads
        self.executor = executor
        self.max_answer_bytes = datasets.settings.max_answer_bytes()
        # Uploads in progress, each holding up to max_dataset_bytes, are as many as there are
        # pool threads (the bound they had as synchronous handlers): unbounded, parallel uploads
        # could exhaust memory. An upload takes one once its header is checked; one beyond waits
        # for a slot within its deadline, holding its header alone.
        self.upload_slots = asyncio.Semaphore(datasets.settings.grpc_threads)
        # Uploads waiting for a slot, each holding its checked header (up to a quarter of a
        # message in names): as many may wait as there are slots. Unbounded, 200 waiting uploads
        # grew the server by 250 MiB. Only the event loop counts them.
        self.waiting = 0

    async def UploadDataset(
        self,
        request_iterator: AsyncIterator[datasets_pb2.UploadDatasetRequest],
        context: grpc.aio.ServicerContext,
    ) -> datasets_pb2.Dataset:
        requests = aiter(request_iterator)
        # Counted from the start, whatever the upload holds (nothing yet, its header waiting for
        # a slot, a slot and its bytes): one client's uploads, trickling a byte a message, held
        # every slot for good while every other project's upload waited.
        client = _client(context)
        project = current_project()
        self.uploads.acquire(client)
        try:
            first = await self._next_message(requests, None)
            # A retry of an upload already stored is answered at its header, its bytes unsent.
            stored = await in_pool(self.executor, self.datasets.stored_for, first, project)
            if stored is not None:
                return dataset_to_proto(stored)
            upload = await in_pool(self.executor, self.datasets.start, first)
            # The slot is taken once the header is checked: the bytes it bounds come after it,
            # and streams that sent nothing took every slot while every other upload waited.
            async with self._upload_slot():
                dataset = await self._upload(upload, requests, project)
        finally:
            self.uploads.release(client)
        return dataset_to_proto(dataset)

    @contextlib.asynccontextmanager
    async def _upload_slot(self) -> AsyncIterator[None]:
        """Holds an upload slot, waiting for one if need be; an upload that would wait beside
        as many as there are slots is refused at once."""
        slots = self.datasets.settings.grpc_threads
        if self.upload_slots.locked() and self.waiting >= slots:
            raise ResourceExhausted.limit(
                "the number of uploads waiting for a slot",
                slots,
                self.waiting + 1,
                f"as many as {self.datasets.settings.setting('grpc_threads')}, the uploads in "
                "progress at once; upload again once some end",
            )
        self.waiting += 1  # for an instant only when a slot is free: acquire() does not wait
        try:
            await self.upload_slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.upload_slots.release()

    async def _upload(
        self,
        upload: Upload,
        requests: AsyncIterator[datasets_pb2.UploadDatasetRequest],
        project: str,
    ) -> Dataset:
        """Receives the chunks of an upload begun by its header, checks and stores them in
        `project` (the caller holds its slot)."""
        with upload:  # its bytes are let go of at once if the upload fails
            while (request := await self._next_message(requests, upload)) is not None:
                upload.add(request)  # one copy per chunk; the hashing waits for the pool
            storing = asyncio.ensure_future(
                in_pool(self.executor, self.datasets.finish, upload, project)
            )
            try:
                return await asyncio.shield(storing)
            except asyncio.CancelledError:
                # A pool thread cannot be stopped: it goes on hashing and storing the bytes, and
                # the slot and the client's count, let go of once this returns, must cover it
                # until it ends (a client cancelling each upload after its last chunk held twice
                # the slots' bytes, and every pool thread, with none counted).
                await asyncio.wait([storing])
                raise

    async def _next_message(
        self,
        requests: AsyncIterator[datasets_pb2.UploadDatasetRequest],
        upload: Upload | None,
    ) -> datasets_pb2.UploadDatasetRequest | None:
        """The next message of an upload (None once its stream ends), within the idle timeout."""
        idle_s = self.datasets.settings.stream_idle_timeout_s
        return await _next_message(requests, idle_s, lambda: self.datasets.idle(upload))

    def GetDataset(
        self, request: datasets_pb2.GetDatasetRequest, context: grpc.ServicerContext
    ) -> datasets_pb2.Dataset:
        return dataset_to_proto(self.datasets.get(request.name, current_project()))

    def ListDatasets(
        self, request: datasets_pb2.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> datasets_pb2.ListDatasetsResponse:
        answer = ListAnswer(dataset_to_proto, self.max_answer_bytes)
        items, token = self.datasets.list_datasets(
            request.page_size, request.page_token, current_project(), answer.fits
        )
        return datasets_pb2.ListDatasetsResponse(
            datasets=answer.messages(items), next_page_token=token
        )

    def DeleteDataset(
        self, request: datasets_pb2.DeleteDatasetRequest, context: grpc.ServicerContext
    ) -> datasets_pb2.DeleteDatasetResponse:
        self.datasets.delete(request.name, current_project())
        return datasets_pb2.DeleteDatasetResponse()


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    """Plain methods run in the server's thread pool; the watches (WatchJob, WatchJobBatches)
    are coroutines that read the database and build their messages there and wait between polls
    on the event loop, so an idle or abandoned watch holds no thread."""

    def __init__(
        self,
        jobs: JobService,
        predictions: PredictionService,
        watches: ClientLimiter,
        executor: Executor,
        draining: Draining,
    ) -> None:
        self.jobs = jobs
        self.predictions = predictions
        self.watches = watches
        self.executor = executor
        self.draining = draining  # a stopping server's: its watches end UNAVAILABLE
        self.max_answer_bytes = jobs.settings.max_answer_bytes()

    def _job_to_proto(self, job: Job) -> jobs_pb2.Job:
        return job_to_proto(job, self.max_answer_bytes)

    def CreateJob(
        self, request: jobs_pb2.CreateJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.Job:
        return self._job_to_proto(self.jobs.create(request, current_project()))

    def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.Job:
        return self._job_to_proto(self.jobs.get(request.name, current_project()))

    def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.Job:
        return self._job_to_proto(self.jobs.cancel(request.name, current_project()))

    def DeleteJob(
        self, request: jobs_pb2.DeleteJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.DeleteJobResponse:
        self.predictions.forget(self.jobs.delete(request.name, current_project()))
        return jobs_pb2.DeleteJobResponse()

    def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        answer = ListAnswer(self._job_to_proto, self.max_answer_bytes)
        items, token = self.jobs.list_jobs(request, current_project(), answer.fits)
        return jobs_pb2.ListJobsResponse(jobs=answer.messages(items), next_page_token=token)

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.JobEvent]:
        async with contextlib.aclosing(self._watch(request, context, _events_to_proto)) as looks:
            async for events in looks:
                for event in events:
                    yield event

    async def WatchJobBatches(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.JobEventBatch]:
        def batched(events: list[JobEvent]) -> list[jobs_pb2.JobEventBatch]:
            return [
                jobs_pb2.JobEventBatch(events=batch)
                for batch in event_batches(_events_to_proto(events), WATCH_BATCH_BYTES)
            ]

        async with contextlib.aclosing(self._watch(request, context, batched)) as looks:
            async for batches in looks:
                for batch in batches:
                    yield batch

    async def _watch(
        self,
        request: jobs_pb2.WatchJobRequest,
        context: grpc.aio.ServicerContext,
        to_messages: Callable[[list[JobEvent]], list[Watched]],
    ) -> AsyncGenerator[list[Watched], None]:
        """A watch's messages, a look at the job at a time (up to 1,000 events), until the job
        finishes: `to_messages` makes them of each look's events, in the thread pool with the
        read, so that the event loop only sends them."""
        project = current_project()
        client = _client(context)
        self.watches.acquire(client)
        try:
            job_id = await in_pool(
                self.executor, self.jobs.watched_job, request.name, request.after_sequence, project
            )
            # Tells the client the stream is open, so a later drop starts a new outage for its
            # reconnect budget even if the job stays quiet (see `trainwire.client.retry`).
            await context.send_initial_metadata((WATCH_OPENED,))
            after = request.after_sequence
            while True:
                check_key_still_active()
                if self.draining.closed:
                    # Left open, a watch held the stop for its whole grace period and then
                    # ended CANCELLED, which clients do not reconnect on: UNAVAILABLE, which
                    # they do, reconnects it to the restarted server (or another one).
                    raise Unavailable(
                        "the server is shutting down; watch again after the last event received"
                    )
                messages, after, over = await in_pool(
                    self.executor, self._look, job_id, after, project, to_messages
                )
                if messages:
                    yield messages
                elif over:
                    return
                else:
                    await asyncio.sleep(WATCH_POLL_S)
        finally:
            self.watches.release(client)

    def _look(
        self,
        job_id: str,
        after: int,
        project: str,
        to_messages: Callable[[list[JobEvent]], list[Watched]],
    ) -> tuple[list[Watched], int, bool]:
        """One look at a watched job (`JobService.new_events`): the messages of its new events,
        the last event's sequence, and whether the watch is over."""
        events, over = self.jobs.new_events(job_id, after, project)
        if not events:
            return [], after, over
        return to_messages(events), events[-1].sequence, over

    def ListJobMetrics(
        self, request: jobs_pb2.ListJobMetricsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ListJobMetricsResponse:
        series, token = self.jobs.metrics(request, current_project())
        return jobs_pb2.ListJobMetricsResponse(
            next_page_token=token,
            series=[
                jobs_pb2.MetricSeries(
                    name=name,
                    steps=[v.step for v in values],
                    epochs=[v.epoch for v in values],
                    values=[v.value for v in values],
                )
                for name, values in sorted(series.items())
            ],
        )

    def ListCheckpoints(
        self, request: jobs_pb2.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ListCheckpointsResponse:
        @functools.cache  # one answer, sized by the store's `fits`, then sent
        def answer(best_id: int | None) -> ListAnswer[Checkpoint, jobs_pb2.Checkpoint]:
            """The answer's messages, each checkpoint's `is_best` judged by `best_id`: the best
            of all of the job's checkpoints, which the store finds with the page."""
            return ListAnswer(
                lambda c: checkpoint_to_proto(c, c.id == best_id), self.max_answer_bytes
            )

        items, best_id, token = self.jobs.checkpoints(
            request, current_project(), lambda best: answer(best).fits
        )
        return jobs_pb2.ListCheckpointsResponse(
            checkpoints=answer(best_id).messages(items), next_page_token=token
        )


def _events_to_proto(events: list[JobEvent]) -> list[jobs_pb2.JobEvent]:
    return [_event_to_proto(event) for event in events]


def event_batches(
    events: list[jobs_pb2.JobEvent], max_bytes: int
) -> Iterator[list[jobs_pb2.JobEvent]]:
    """`events` in order, cut into runs that each fit one message of `max_bytes` (an event
    bigger than that alone goes alone, and fails as it would in WatchJob)."""
    batch: list[jobs_pb2.JobEvent] = []
    used = 0
    for event in events:
        size = event.ByteSize() + ITEM_FRAMING_BYTES
        if batch and used + size > max_bytes:
            yield batch
            batch, used = [], 0
        batch.append(event)
        used += size
    if batch:
        yield batch


def _event_to_proto(event: JobEvent) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(
        sequence=event.sequence,
        time=timestamp(event.created_at),
        state=STATES_TO_PROTO[event.state],
        progress=progress_to_proto(event.progress),
        metrics=[
            jobs_pb2.MetricPoint(
                name=name,
                value=value,
                step=int(event.progress.get("step", 0)),
                epoch=int(event.progress.get("epoch", 0)),
            )
            for name, value in sorted(event.metrics.items())
        ],
        message=event.message,
    )


def _prediction_response(result: Prediction) -> predictions_pb2.PredictResponse:
    response = predictions_pb2.PredictResponse(checkpoint=checkpoint_name(result.checkpoint))
    write_tensor(response.outputs, result.outputs)
    if result.probabilities is not None and result.labels is not None:
        write_tensor(response.probabilities, result.probabilities)
        write_tensor(response.labels, result.labels)
    return response


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on the `time.monotonic()` clock, if the client set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class PredictionServicer(predictions_pb2_grpc.PredictionServiceServicer):
    """Predict and PredictStream run on the event loop (micro-batched, see `server.batching`);
    GetModelMetadata in the thread pool like the other services."""

    def __init__(
        self, predictions: PredictionService, streams: ClientLimiter, settings: Settings
    ) -> None:
        self.predictions = predictions
        self.streams = streams
        self.settings = settings

    async def Predict(
        self, request: predictions_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predictions_pb2.PredictResponse:
        result = await self.predictions.predict(
            request.job,
            request.checkpoint,
            request.inputs,
            current_project(),
            deadline=_deadline(context),
            outputs_only=request.outputs_only,
        )
        return _prediction_response(result)

    async def PredictStream(
        self,
        request_iterator: AsyncIterator[predictions_pb2.PredictRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[predictions_pb2.PredictResponse]:
        project = current_project()
        deadline = _deadline(context)
        client = _client(context)
        # The slices of one stream are one input: the model that answered the first answers the
        # rest, even if a newer checkpoint becomes "latest" or "best" meanwhile, or retention
        # deletes the first one's. It stays pinned in the model cache, counted in its bound,
        # until the stream ends however it ends: its last message, an error, its client idle
        # for stream_idle_timeout_s, or the client cancelling (grpc.aio then ends the request
        # iterator, or cancels this generator).
        first: tuple[str, str] | None = None
        pinned: Served | None = None
        pin: ServedPin | None = None
        received = 0
        requests = aiter(request_iterator)
        self.streams.acquire(client)
        try:
            while (request := await self._next_request(requests, received)) is not None:
                received += 1
                check_key_still_active()
                selector = (request.job, request.checkpoint)
                if first is None:
                    # As Predict does: a malformed tensor is refused before any model is loaded.
                    self.predictions.decode_inputs(request.inputs)
                    first = selector
                    pinned, pin = await self.predictions.pin_served(*selector, project)
                result = await self.predictions.predict(
                    request.job,
                    request.checkpoint,
                    request.inputs,
                    project,
                    deadline=deadline,
                    served=pinned if selector == first else None,
                    outputs_only=request.outputs_only,
                )
                yield _prediction_response(result)
        finally:
            if pin is not None:
                self.predictions.unpin(pin)
            self.streams.release(client)

    async def _next_request(
        self, requests: AsyncIterator[predictions_pb2.PredictRequest], received: int
    ) -> predictions_pb2.PredictRequest | None:
        """The next request of a stream that has sent `received` (None once it ends), within
        the idle timeout."""
        idle_s = self.settings.stream_idle_timeout_s
        return await _next_message(requests, idle_s, lambda: self._idle(received))

    def _idle(self, received: int) -> DeadlineExceeded:
        """The error that ends a prediction stream whose client sent nothing for
        stream_idle_timeout_s, after `received` requests."""
        waited = f"{self.settings.stream_idle_timeout_s:g} s"
        setting = self.settings.setting("stream_idle_timeout_s")
        if received == 0:
            return DeadlineExceeded.idle(
                f"the prediction stream sent no request in {waited}", setting, "its model",
                "send the first request as the stream opens",
            )  # fmt: skip
        return DeadlineExceeded.idle(
            f"the prediction stream sent nothing for {waited} after {received} requests",
            setting,
            "its model",
            "open a new stream when more rows are ready",
        )

    def GetModelMetadata(
        self, request: predictions_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> predictions_pb2.ModelMetadata:
        job, checkpoint, batcher = self.predictions.served(
            request.job, request.checkpoint, current_project()
        )
        model = batcher.model
        dtype = (
            tensor_pb2.DATA_TYPE_FLOAT64
            if str(model.dtype) == "float64"
            else tensor_pb2.DATA_TYPE_FLOAT32
        )
        classes = int(job.target.get("num_classes", 0))
        classification = TaskKind(job.target["task"]).is_classification
        metadata = predictions_pb2.ModelMetadata(
            job=f"jobs/{job.id}",
            checkpoint=checkpoint_name(checkpoint),
            inputs=tensor_pb2.TensorInfo(dtype=dtype, shape=[-1, model.input_dim]),
            outputs=tensor_pb2.TensorInfo(dtype=dtype, shape=[-1, model.output_dim]),
            num_classes=classes if classification else 0,
            model=model_spec_to_proto(job.model_spec),
            num_parameters=model.num_parameters,
            class_names=list(job.target.get("class_names", [])),
            feature_names=list(job.target.get("feature_names", [])),
            max_message_bytes=self.settings.max_message_bytes,
        )
        # A job stored under a larger message limit is shown as GetJob shows it.
        return without_layers_past(metadata, self.predictions.max_answer_bytes)
