"""The Python SDK: `Client` for datasets, jobs and predictions, and the `Job` handle."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

from trainwire.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    predictions_pb2,
    predictions_pb2_grpc,
    tensor_pb2,
)

from .errors import JobFailed, from_rpc_error
from .specs import model_spec_to_proto
from .tensors import dtype_code, from_tensor, to_tensor

DEFAULT_TARGET = "localhost:50051"
DEFAULT_MESSAGE_BYTES = 4 * 1024 * 1024
# Uploads and predictions are split so each message stays well under the message limit.
CHUNK_BYTES = 1024 * 1024

TASKS = {
    "regression": datasets_pb2.TASK_KIND_REGRESSION,
    "binary": datasets_pb2.TASK_KIND_BINARY_CLASSIFICATION,
    "multiclass": datasets_pb2.TASK_KIND_MULTICLASS_CLASSIFICATION,
}
TASK_NAMES = {code: name for name, code in TASKS.items()}
FINISHED = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

Response = TypeVar("Response")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    display_name: str
    task: str
    num_examples: int
    num_features: int
    num_classes: int
    size_bytes: int
    sha256: str

    @classmethod
    def from_proto(cls, message: datasets_pb2.Dataset) -> DatasetInfo:
        return cls(
            name=message.name,
            display_name=message.display_name,
            task=TASK_NAMES.get(message.task, "unspecified"),
            num_examples=message.num_examples,
            num_features=int(message.features.shape[1]) if len(message.features.shape) > 1 else 0,
            num_classes=message.num_classes,
            size_bytes=message.size_bytes,
            sha256=message.sha256,
        )


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of a job.

    `state` is QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING or CANCELLED.
    """

    name: str
    state: str
    epoch: int
    total_epochs: int
    metrics: dict[str, float]
    error: str
    attempt: int
    examples_per_second: float
    eta_seconds: float
    raw: jobs_pb2.Job = field(repr=False)

    @classmethod
    def from_proto(cls, message: jobs_pb2.Job) -> JobStatus:
        return cls(
            name=message.name,
            state=jobs_pb2.JobState.Name(message.state).removeprefix("JOB_STATE_"),
            epoch=message.progress.epoch,
            total_epochs=message.progress.total_epochs,
            metrics=dict(message.metrics),
            error=message.error,
            attempt=message.attempt,
            examples_per_second=message.progress.examples_per_second,
            eta_seconds=message.progress.eta_seconds,
            raw=message,
        )

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


@dataclass(frozen=True)
class Prediction:
    """Model outputs; for classifiers also class probabilities and labels."""

    outputs: np.ndarray
    probabilities: np.ndarray | None
    labels: np.ndarray | None
    checkpoint: str


class Client:
    """A connection to a Trainwire server. Use it as a context manager, or call `close()`."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        tls: bool | str = False,
        client_cert: tuple[str, str] | None = None,
        timeout: float = 30.0,
        max_message_bytes: int = DEFAULT_MESSAGE_BYTES,
    ) -> None:
        """`tls=True` verifies the server with the system's CAs, `tls="ca.pem"` with that CA;
        `client_cert=(cert.pem, key.pem)` for servers that require client certificates."""
        self.target = target
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls or client_cert:
            root = Path(tls).read_bytes() if isinstance(tls, str) else None
            key = chain = None
            if client_cert is not None:
                chain, key = Path(client_cert[0]).read_bytes(), Path(client_cert[1]).read_bytes()
            credentials = grpc.ssl_channel_credentials(root, key, chain)
            channel = grpc.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        # The key travels as metadata (call credentials are refused on plaintext channels).
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._channel = channel
        self._datasets = datasets_pb2_grpc.DatasetServiceStub(self._channel)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._predictions = predictions_pb2_grpc.PredictionServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(
        self, method: Callable[..., Response], request: Any, timeout: float | None = None
    ) -> Response:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    # --- datasets -----------------------------------------------------------------------------

    def upload_dataset(
        self,
        features: np.ndarray,
        targets: np.ndarray,
        *,
        task: str | None = None,
        name: str = "",
        num_classes: int = 0,
        feature_names: Sequence[str] = (),
        class_names: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> DatasetInfo:
        """Uploads (features, targets) in chunks. `task` is regression, binary or multiclass;
        when omitted, integer targets mean multiclass (binary for 0/1) and floats regression."""
        x = np.ascontiguousarray(features)
        y = np.ascontiguousarray(targets)
        task = task or _infer_task(y)
        if task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}. Received: task={task!r}")
        x_bytes, y_bytes = _le_bytes(x), _le_bytes(y)
        header = datasets_pb2.DatasetHeader(
            display_name=name,
            task=TASKS[task],
            num_classes=num_classes,
            features=tensor_pb2.TensorInfo(dtype=dtype_code(x.dtype), shape=x.shape),
            targets=tensor_pb2.TensorInfo(dtype=dtype_code(y.dtype), shape=y.shape),
            sha256=hashlib.sha256(x_bytes + y_bytes).hexdigest(),
            labels=dict(labels or {}),
            feature_names=list(feature_names),
            class_names=list(class_names),
        )

        def requests() -> Iterator[datasets_pb2.UploadDatasetRequest]:
            yield datasets_pb2.UploadDatasetRequest(header=header)
            for payload in (x_bytes, y_bytes):
                for start in range(0, len(payload), CHUNK_BYTES):
                    yield datasets_pb2.UploadDatasetRequest(
                        chunk=payload[start : start + CHUNK_BYTES]
                    )

        response = self._call(
            self._datasets.UploadDataset, requests(), timeout or max(self.timeout, 300.0)
        )
        return DatasetInfo.from_proto(response)

    def get_dataset(self, name: str) -> DatasetInfo:
        return DatasetInfo.from_proto(
            self._call(self._datasets.GetDataset, datasets_pb2.GetDatasetRequest(name=name))
        )

    def list_datasets(self, page_size: int = 100) -> Iterator[DatasetInfo]:
        token = ""
        while True:
            request = datasets_pb2.ListDatasetsRequest(page_size=page_size, page_token=token)
            response = self._call(self._datasets.ListDatasets, request)
            yield from (DatasetInfo.from_proto(d) for d in response.datasets)
            token = response.next_page_token
            if not token:
                return

    def delete_dataset(self, name: str) -> None:
        """Deletes a dataset; refused (FailedPrecondition) while an unfinished job uses it."""
        self._call(self._datasets.DeleteDataset, datasets_pb2.DeleteDatasetRequest(name=name))

    # --- jobs ---------------------------------------------------------------------------------

    def create_job(
        self,
        dataset: str | DatasetInfo,
        model: Mapping[str, Any],
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
    ) -> Job:
        """Submits a training job. A fresh `request_id` makes a retried call create one job only."""
        optimizer_spec = dict(optimizer) if isinstance(optimizer, Mapping) else {"name": optimizer}
        optimizer_name = str(optimizer_spec.pop("name", "adam"))
        rate = float(optimizer_spec.pop("learning_rate", learning_rate))
        schedule_spec = (
            dict(schedule) if isinstance(schedule, Mapping) else {"name": schedule or ""}
        )
        training = models_pb2.TrainingConfig(
            schedule=models_pb2.ScheduleSpec(
                name=str(schedule_spec.pop("name", "")),
                params={k: float(v) for k, v in schedule_spec.items()},
            ),
            early_stopping=models_pb2.EarlyStopping(**dict(early_stopping or {})),
            epochs=epochs,
            batch_size=batch_size,
            loss=loss,
            optimizer=models_pb2.OptimizerSpec(
                name=optimizer_name,
                learning_rate=rate,
                params={k: float(v) for k, v in optimizer_spec.items()},
            ),
            validation_fraction=validation_fraction,
            seed=seed,
            metrics=list(metrics),
            checkpoint_every_epochs=checkpoint_every_epochs,
            dtype=dtype_code(np.dtype(dtype)),
        )
        request = jobs_pb2.CreateJobRequest(
            dataset=dataset.name if isinstance(dataset, DatasetInfo) else dataset,
            model=model_spec_to_proto(model),
            training=training,
            display_name=display_name,
            labels=dict(labels or {}),
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            request_id=request_id or uuid.uuid4().hex,
        )
        return Job(self, JobStatus.from_proto(self._call(self._jobs.CreateJob, request)))

    def get_job(self, name: str) -> Job:
        return Job(self, self._job_status(name))

    def delete_job(self, name: str) -> None:
        """Deletes a finished job with its metrics and checkpoints."""
        self._call(self._jobs.DeleteJob, jobs_pb2.DeleteJobRequest(name=name))

    def watch_job(
        self, name: str, after_sequence: int = 0, timeout: float | None = None
    ) -> Iterator[jobs_pb2.JobEvent]:
        """The job's numbered events after `after_sequence`, until the job finishes."""
        request = jobs_pb2.WatchJobRequest(name=name, after_sequence=after_sequence)
        try:
            yield from self._jobs.WatchJob(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def job_metrics(self, name: str, names: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Each metric as an array of shape (points, 3): step, epoch, value."""
        request = jobs_pb2.ListJobMetricsRequest(name=name, metric_names=list(names))
        response = self._call(self._jobs.ListJobMetrics, request)
        return {
            s.name: np.column_stack([s.steps, s.epochs, s.values]).astype(np.float64)
            for s in response.series
        }

    def job_checkpoints(self, name: str) -> list[jobs_pb2.Checkpoint]:
        request = jobs_pb2.ListCheckpointsRequest(name=name)
        return list(self._call(self._jobs.ListCheckpoints, request).checkpoints)

    def model_metadata(self, job: str, checkpoint: str = "") -> predictions_pb2.ModelMetadata:
        request = predictions_pb2.GetModelMetadataRequest(job=job, checkpoint=checkpoint)
        return self._call(self._predictions.GetModelMetadata, request)

    def cancel_job(self, name: str) -> JobStatus:
        request = jobs_pb2.CancelJobRequest(name=name)
        return JobStatus.from_proto(self._call(self._jobs.CancelJob, request))

    def _job_status(self, name: str) -> JobStatus:
        return JobStatus.from_proto(
            self._call(self._jobs.GetJob, jobs_pb2.GetJobRequest(name=name))
        )

    def list_jobs(
        self,
        *,
        state: str | None = None,
        dataset: str | None = None,
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Jobs, newest first, optionally filtered; pages are fetched as you iterate."""
        token = ""
        state_code = jobs_pb2.JobState.Value(f"JOB_STATE_{state.upper()}") if state else 0
        while True:
            request = jobs_pb2.ListJobsRequest(
                page_size=page_size,
                page_token=token,
                state=state_code,
                dataset=dataset or "",
                labels=dict(labels or {}),
            )
            response = self._call(self._jobs.ListJobs, request)
            yield from (Job(self, JobStatus.from_proto(j)) for j in response.jobs)
            token = response.next_page_token
            if not token:
                return

    # --- predictions --------------------------------------------------------------------------

    def predict(self, job: str | Job, inputs: np.ndarray, *, checkpoint: str = "") -> Prediction:
        """Predicts for the rows of `inputs`, in as many requests as the message limit needs."""
        name = job.name if isinstance(job, Job) else job
        x = np.asarray(inputs)
        if x.dtype.kind != "f":
            x = x.astype(np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        row_bytes = max(1, x.itemsize * int(np.prod(x.shape[1:])))
        rows_per_call = max(1, (self.max_message_bytes // 4) // row_bytes)
        parts = []
        for start in range(0, max(len(x), 1), rows_per_call):
            request = predictions_pb2.PredictRequest(
                job=name, checkpoint=checkpoint, inputs=to_tensor(x[start : start + rows_per_call])
            )
            parts.append(self._call(self._predictions.Predict, request))
        return _join_predictions(parts)

    def predict_stream(
        self, job: str | Job, batches: Iterable[np.ndarray], *, checkpoint: str = ""
    ) -> Iterator[Prediction]:
        """Predictions for each batch of rows, over one PredictStream call, in order."""
        name = job.name if isinstance(job, Job) else job

        def requests() -> Iterator[predictions_pb2.PredictRequest]:
            for batch in batches:
                inputs = to_tensor(np.asarray(batch, dtype=np.float32).reshape(len(batch), -1))
                yield predictions_pb2.PredictRequest(job=name, checkpoint=checkpoint, inputs=inputs)

        stream = self._predictions.PredictStream(
            requests(), timeout=self.timeout, metadata=self._metadata
        )
        try:
            for response in stream:
                yield _join_predictions([response])
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None


class Job:
    """A handle on one training job."""

    def __init__(self, client: Client, status: JobStatus) -> None:
        self.client = client
        self.name = status.name
        self.last_status = status

    def __repr__(self) -> str:
        return f"Job({self.name!r}, state={self.last_status.state})"

    def status(self) -> JobStatus:
        self.last_status = self.client._job_status(self.name)
        return self.last_status

    def wait(
        self,
        timeout: float | None = None,
        *,
        poll_interval: float = 0.5,
        progress: bool = False,
    ) -> JobStatus:
        """Polls until the job finishes. Raises JobFailed if it FAILED, TimeoutError on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=self.last_status.total_epochs or None, unit="epoch", desc=self.name)
        try:
            while True:
                status = self.status()
                if bar is not None:
                    bar.total = status.total_epochs or bar.total
                    bar.update(status.epoch - bar.n)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in sorted(status.metrics.items())})
                if status.finished:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} is still {status.state} after {timeout}s")
                time.sleep(poll_interval)
        finally:
            if bar is not None:
                bar.close()
        if status.state == "FAILED":
            raise JobFailed(f"{self.name} failed: {status.error}")
        return status

    def watch(self, after_sequence: int = 0) -> Iterator[jobs_pb2.JobEvent]:
        return self.client.watch_job(self.name, after_sequence)

    def metrics(self, names: Sequence[str] = ()) -> dict[str, np.ndarray]:
        return self.client.job_metrics(self.name, names)

    def checkpoints(self) -> list[jobs_pb2.Checkpoint]:
        return self.client.job_checkpoints(self.name)

    def delete(self) -> None:
        self.client.delete_job(self.name)

    def cancel(self) -> JobStatus:
        """Cancels the job: a queued job at once, a running one at its next batch."""
        self.last_status = self.client.cancel_job(self.name)
        return self.last_status

    def predict(self, inputs: np.ndarray, *, checkpoint: str = "") -> Prediction:
        return self.client.predict(self.name, inputs, checkpoint=checkpoint)


def _infer_task(targets: np.ndarray) -> str:
    if targets.dtype.kind in "iub":
        return (
            "binary"
            if targets.size and set(np.unique(targets).tolist()) <= {0, 1}
            else "multiclass"
        )
    return "regression"


def _le_bytes(array: np.ndarray) -> bytes:
    return to_tensor(array).data


def _join_predictions(parts: list[predictions_pb2.PredictResponse]) -> Prediction:
    def join(field_name: str) -> np.ndarray | None:
        arrays = [from_tensor(getattr(p, field_name)) for p in parts if p.HasField(field_name)]
        return np.concatenate(arrays) if arrays else None

    outputs = join("outputs")
    assert outputs is not None
    return Prediction(outputs, join("probabilities"), join("labels"), parts[-1].checkpoint)
