"""Requests and responses shared by the sync and asyncio clients (no I/O here).

Everything the two clients have in common that is not transport lives here: turning arguments
into request messages (with local validation first), and response messages into results.
"""

from __future__ import annotations

import hashlib
import numbers
import re
import reprlib
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import grpc
import numpy as np

from trainwire.engine.errors import quoted
from trainwire.v1 import datasets_pb2, jobs_pb2, models_pb2, predictions_pb2, tensor_pb2

from .builders import ModelLike, model_to_dict
from .errors import FailedPrecondition, SpecError, TrainwireError, error_for
from .results import TASKS, DatasetInfo, Metrics, ModelInfo, Prediction, state_code
from .specs import model_spec_to_proto
from .tensors import dtype_code, from_tensor, to_tensor
from .validation import (
    DEFAULT_LOSSES,
    INT32,
    check_labels,
    check_model,
    metric_misfits,
    numeric_params,
    optimizer_flags,
    output_activation_misfits,
)
from .validation import check_training as _check_training

# Uploads and predictions are split so each message stays well under the message limit.
CHUNK_BYTES = 1024 * 1024
#: Room an upload chunk leaves in its message for what wraps it (its field's tag and length: 4
#: bytes for a 1 MiB chunk), so that a chunk sized by a small message limit stays under it.
FRAMING_BYTES = 1024
#: Uploads at least this large show a progress bar unless told otherwise.
PROGRESS_BYTES = 16 * 1024 * 1024


class Named(Protocol):
    """A handle on a resource: a `Job`, an `AsyncJob`, a `DatasetInfo`."""

    @property
    def name(self) -> str: ...


def name_of(value: object, argument: str, kind: str, handles: tuple[type[Named], ...]) -> str:
    """The resource name `value` stands for: a name (str) as it is, a handle by its `name`.
    Anything else is a TypeError naming `argument` (protobuf's own names neither the argument nor
    what it takes)."""
    if isinstance(value, str):
        return value
    if isinstance(value, handles):
        return value.name
    accepted = " or ".join(
        f"{'an' if handle.__name__[0] in 'AEIOU' else 'a'} {handle.__name__}" for handle in handles
    )
    raise TypeError(
        f"{argument} must be a {kind} name (str) or {accepted}. "
        f"Received: {reprlib.repr(value)} ({type(value).__name__})"
    )


# The largest sequence a watch can send (WatchJobRequest.after_sequence is an int64).
MAX_SEQUENCE = 2**63 - 1


def whole_number_arg(value: object, argument: str, high: int, meaning: str) -> int:
    """`value` as a request's integer field carries it: a whole number from 0 to `high`;
    TypeError or ValueError naming `argument` and saying what it is (`meaning`) otherwise:
    protobuf's own ("Value out of range: 9223372036854775808", "'float' object cannot be
    interpreted as an integer") named nothing, and a negative one was sent for the server to
    refuse."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{argument} must be a whole number: {meaning}. Received: {reprlib.repr(value)} "
            f"({type(value).__name__})"
        )
    number = int(value)
    if not 0 <= number <= high:
        raise ValueError(f"{argument} must be {meaning} (0 to {high}). Received: {number}")
    return number


def watch_start(after_sequence: object) -> int:
    """A watch's `after_sequence` (see `whole_number_arg`)."""
    meaning = "the sequence of the last event received, or 0 for every event"
    return whole_number_arg(after_sequence, "after_sequence", MAX_SEQUENCE, meaning)


def page_size_arg(page_size: object) -> int:
    """A listing's `page_size`, an int32 (see `whole_number_arg`)."""
    meaning = "0 for the server's default page, or the most items a page may hold"
    return whole_number_arg(page_size, "page_size", INT32[1], meaning)


def dataset_name(dataset: object, argument: str = "dataset") -> str:
    """A dataset's name from its name or its `DatasetInfo` (see `name_of`)."""
    return name_of(dataset, argument, "dataset", (DatasetInfo,))


@dataclass(frozen=True)
class Upload:
    """A dataset ready to stream: its header and the bytes of features then targets."""

    header: datasets_pb2.DatasetHeader
    payloads: tuple[bytes, bytes]
    #: The class count the server gives the dataset (0 for regression).
    num_classes: int

    @property
    def size_bytes(self) -> int:
        """Bytes to send."""
        return sum(len(p) for p in self.payloads)

    @property
    def sha256(self) -> str:
        """The content address: SHA-256 of features then targets, as the server computes it."""
        return str(self.header.sha256)

    def matches(self, dataset: DatasetInfo) -> bool:
        """Whether `dataset` is the dataset this upload would create: the same arrays, task,
        class count and feature and class names (a job trains and a model answers by all of
        them). Only the display name and labels may differ, as they describe the data."""
        return (
            dataset.sha256 == self.sha256
            and dataset.feature_shape == tuple(self.header.features.shape)
            and dataset.target_shape == tuple(self.header.targets.shape)
            and TASKS.get(dataset.task) == self.header.task
            and dataset.num_classes == self.num_classes
            and dataset.feature_names == tuple(self.header.feature_names)
            and dataset.class_names == tuple(self.header.class_names)
        )

    def requests(
        self,
        max_message_bytes: int,
        on_chunk: Callable[[int], object] | None = None,
        request_id: str = "",
    ) -> Iterator[datasets_pb2.UploadDatasetRequest]:
        """The header message (with `request_id`, the upload's idempotency key, if given), then
        chunks of at most CHUNK_BYTES, fewer under a message limit below it (a client configured
        with a server's 64 KiB limit sends 63 KiB chunks)."""
        size = max(1, min(CHUNK_BYTES, max_message_bytes - FRAMING_BYTES))
        header = self.header
        if request_id:
            header = datasets_pb2.DatasetHeader()
            header.CopyFrom(self.header)
            header.request_id = request_id
        yield datasets_pb2.UploadDatasetRequest(header=header)
        for payload in self.payloads:
            for start in range(0, len(payload), size):
                chunk = payload[start : start + size]
                yield datasets_pb2.UploadDatasetRequest(chunk=chunk)
                if on_chunk is not None:
                    on_chunk(len(chunk))


class Progress(Protocol):
    """What an upload reports its bytes sent to (a tqdm bar)."""

    def update(self, n: float) -> object: ...

    def reset(self) -> object: ...


def upload_attempts(
    upload: Upload, max_message_bytes: int, progress: Progress | None
) -> Callable[[], Iterator[datasets_pb2.UploadDatasetRequest]]:
    """The request stream of each attempt of one upload (the clients' `_call` asks for one per
    attempt: an iterator is used up by one). Every attempt sends the same fresh request_id, the
    server's idempotency key: a retry gets the dataset an earlier attempt stored, at its header,
    and never stores a second one. `progress` starts over with each attempt and counts only the
    chunks of the latest (gRPC's sending thread may read a failed attempt's stream once more)."""
    request_id = uuid.uuid4().hex
    latest = 0

    def attempt() -> Iterator[datasets_pb2.UploadDatasetRequest]:
        nonlocal latest
        latest += 1
        this = latest
        if progress is not None:
            progress.reset()

        def sent(size: int) -> None:
            if progress is not None and this == latest:
                progress.update(size)

        return upload.requests(max_message_bytes, sent, request_id)

    return attempt


def infer_task(targets: np.ndarray) -> str:
    """Integer targets are multiclass (binary for 0/1), anything else regression."""
    if targets.dtype.kind in "iub":
        return (
            "binary"
            if targets.size and set(np.unique(targets).tolist()) <= {0, 1}
            else "multiclass"
        )
    return "regression"


def prepare_upload(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    task: str | None,
    name: str,
    num_classes: int,
    feature_names: Sequence[str],
    class_names: Sequence[str],
    labels: Mapping[str, str] | None,
) -> Upload:
    """Checks and encodes arrays for `UploadDataset`.

    The server trains on float32 or float64 features: integer, bool and float16 features are
    sent as float32 (float64 ones stay float64). Labels of a dtype the wire does not carry (bool,
    unsigned, int8, int16) are sent as int64.
    """
    x = np.ascontiguousarray(features)
    y = np.ascontiguousarray(targets)
    if x.dtype.kind in "iub" or x.dtype == np.float16:
        x = x.astype(np.float32)
    if y.dtype.kind in "ub" or (y.dtype.kind == "i" and y.dtype.itemsize < 4):
        y = y.astype(np.int64)
    check_labels(labels)
    task = task or infer_task(y)
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}. Received: task={task!r}")
    if task != "regression" and y.ndim != 1:
        # The server refuses it too, but only once every byte has been sent.
        raise ValueError(
            f"classification targets must be labels of shape ({len(y)},), one class per example "
            f"(of one-hot rows, send each row's argmax); {y.shape[-1] if y.ndim else 1} target "
            f"columns make a regression. Received: task={task!r}, targets of shape "
            f"{list(y.shape)}"
        )
    if task == "regression" and class_names:
        raise ValueError(
            "class_names name a classification's classes, and a regression has none: "
            f"leave them out, or choose a classification task. Received: task={task!r}"
        )
    if isinstance(num_classes, bool) or not 0 <= num_classes <= INT32[1]:
        # The field is an int32: protobuf's own refusal ("Value out of range") named nothing.
        raise ValueError(
            f"num_classes must be 0 (from the labels) to {INT32[1]}. Received: {num_classes}"
        )
    for kind, names in (("class_names", class_names), ("feature_names", feature_names)):
        _check_names(kind, names)
    classes = expected_classes(task, y, num_classes)
    # Labels not integers are judged by the server, which refuses fractions as such.
    counted_here = task == "binary" or num_classes or y.dtype.kind in "iu"
    if class_names and classes and counted_here and len(class_names) != classes:
        # The server refuses it too, but a count the labels make only after the whole upload.
        if task == "binary":
            counted = "of a binary task (labels 0 and 1)"
            remedy = "give two names, or choose task 'multiclass' and num_classes for more"
        elif num_classes:
            counted, remedy = "num_classes gives", "give one name per class"
        else:
            counted = f"the labels make (0 to {classes - 1}, num_classes being 0)"
            remedy = "give one name per class, or set num_classes to the classes they are for"
        raise ValueError(
            f"class_names has {len(class_names)} names for the {classes} classes {counted}: "
            f"{remedy}"
        )
    x_bytes, y_bytes = to_tensor(x).data, to_tensor(y).data
    digest = hashlib.sha256(x_bytes)
    digest.update(y_bytes)  # not of `x_bytes + y_bytes`, a copy of the whole dataset
    header = datasets_pb2.DatasetHeader(
        display_name=name,
        task=TASKS[task],
        num_classes=num_classes,
        features=tensor_pb2.TensorInfo(dtype=dtype_code(x.dtype), shape=x.shape),
        targets=tensor_pb2.TensorInfo(dtype=dtype_code(y.dtype), shape=y.shape),
        sha256=digest.hexdigest(),
        labels=dict(labels or {}),
        feature_names=list(feature_names),
        class_names=list(class_names),
    )
    return Upload(header, (x_bytes, y_bytes), expected_classes(task, y, num_classes))


def _check_names(kind: str, names: Sequence[str]) -> None:
    """Class or feature names (`kind`) as the server takes them, the bad one named by its index:
    text, not blank, each once (a repeated one was sent, and refused after the whole upload; one
    not text raised AttributeError)."""
    thing = "class" if kind == "class_names" else "feature"
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"{kind}[{index}] must be text. Received: {quoted(name)}")
        if not name.strip():
            raise ValueError(
                f"{kind}[{index}] is an empty name: give each {thing} a name, or send no names. "
                f"Received: {quoted(name)}"
            )
        if name in seen:
            raise ValueError(
                f"{kind}[{index}] names {quoted(name)}, as {kind}[{seen[name]}] does: each "
                f"{thing} needs a name of its own"
            )
        seen[name] = index


def expected_classes(task: str, targets: np.ndarray, num_classes: int) -> int:
    """The class count the server gives a dataset of these targets (`_check_targets` in
    server/datasets.py): none for regression, 2 for binary, else the one asked for or the
    largest label + 1."""
    if task == "regression":
        return 0
    if task == "binary":
        return 2
    if num_classes or not targets.size:
        return num_classes
    # Targets the server refuses (NaN, fractions) match no stored dataset whatever this gives.
    top = float(targets.max())
    return int(top) + 1 if np.isfinite(top) else 0


def schedule_options_ignored(
    request: jobs_pb2.CreateJobRequest, job: jobs_pb2.Job
) -> FailedPrecondition | None:
    """The error for a job whose server dropped the schedule's text parameters the request sent
    (`ScheduleSpec.options`: interval, monitor, mode), being older than them: it would train by
    the schedule's defaults without a word. None when they were kept, or none were sent."""
    sent = request.training.schedule.options
    if not sent or job.training.schedule.options:
        return None
    return FailedPrecondition(
        f"the server does not know a schedule's text parameters ({', '.join(sorted(sent))}), "
        f"being older than them, and would have trained {job.name} by the schedule's defaults; "
        "the job was cancelled. Upgrade the server, or leave them out",
        grpc.StatusCode.FAILED_PRECONDITION,
        [("training.schedule.options", "not known to this server")],
    )


def create_job_request(
    dataset: str | DatasetInfo,
    model: ModelLike,
    *,
    epochs: int,
    batch_size: int,
    optimizer: str | Mapping[str, Any],
    learning_rate: float,
    loss: str,
    metrics: Sequence[str],
    validation_fraction: float,
    seed: int,
    checkpoint_every_epochs: int,
    schedule: str | Mapping[str, float | str] | None,
    early_stopping: Mapping[str, Any] | None,
    dtype: str,
    display_name: str,
    labels: Mapping[str, str] | None,
    queue: str,
    priority: int,
    max_attempts: int,
    request_id: str | None,
    log_every_steps: int = 0,
    keep_checkpoints: int = 0,
    validate: bool = True,
) -> jobs_pb2.CreateJobRequest:
    """A `CreateJobRequest`, after checking the model and training settings locally."""
    violations: list[tuple[str, str]] = []
    try:
        model_dict = model_to_dict(model)
        if validate:
            check_model(model_dict)
    except SpecError as error:
        violations += error.field_violations
    if validate:
        try:
            _check_training(
                epochs=epochs,
                batch_size=batch_size,
                optimizer=optimizer,
                learning_rate=learning_rate,
                loss=loss,
                metrics=metrics,
                validation_fraction=validation_fraction,
                schedule=schedule,
                early_stopping=early_stopping,
                dtype=dtype,
                checkpoint_every_epochs=checkpoint_every_epochs,
                max_attempts=max_attempts,
                seed=seed,
                log_every_steps=log_every_steps,
                keep_checkpoints=keep_checkpoints,
                display_name=display_name,
                labels=labels,
                queue=queue,
                priority=priority,
                request_id=request_id,
            )
        except SpecError as error:
            violations += error.field_violations
        # A dataset's name alone does not say its task: the server checks what needs it.
        task = dataset.task if isinstance(dataset, DatasetInfo) and dataset.task in TASKS else ""
        if isinstance(dataset, DatasetInfo) and task:
            violations += metric_misfits(
                metrics, dataset.name, task, task != "regression", dataset.target_shape
            )
        if not violations:
            violations += output_activation_misfits(
                model_dict["layers"],
                loss or DEFAULT_LOSSES.get(task, ""),
                classification=task not in ("", "regression"),
            )
    if violations:
        raise SpecError(violations)
    optimizer_spec = dict(optimizer) if isinstance(optimizer, Mapping) else {"name": optimizer}
    optimizer_name = str(optimizer_spec.pop("name", "adam"))
    rate = float(optimizer_spec.pop("learning_rate", learning_rate))
    schedule_spec = dict(schedule) if isinstance(schedule, Mapping) else {"name": schedule or ""}
    schedule_name = str(schedule_spec.pop("name", ""))
    # Text goes to the schedule's options (interval, monitor, mode), anything else to params.
    schedule_options = {k: v for k, v in schedule_spec.items() if isinstance(v, str)}
    training = models_pb2.TrainingConfig(
        schedule=models_pb2.ScheduleSpec(
            name=schedule_name,
            params=numeric_params(
                "training.schedule",
                {k: v for k, v in schedule_spec.items() if k not in schedule_options},
            ),
            options=schedule_options,
        ),
        early_stopping=models_pb2.EarlyStopping(**dict(early_stopping or {})),
        epochs=epochs,
        batch_size=batch_size,
        loss=loss,
        optimizer=models_pb2.OptimizerSpec(
            name=optimizer_name,
            learning_rate=rate,
            params=numeric_params(
                "training.optimizer", optimizer_spec, optimizer_flags(optimizer_name)
            ),
        ),
        validation_fraction=validation_fraction,
        seed=seed,
        metrics=list(metrics),
        checkpoint_every_epochs=checkpoint_every_epochs,
        dtype=dtype_code(np.dtype(dtype)),
        log_every_steps=log_every_steps,
        keep_checkpoints=keep_checkpoints,
    )
    return jobs_pb2.CreateJobRequest(
        dataset=dataset_name(dataset),
        model=model_spec_to_proto(model_dict),
        training=training,
        display_name=display_name,
        labels=dict(labels or {}),
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        request_id=request_id or uuid.uuid4().hex,
    )


def list_jobs_request(
    token: str,
    *,
    state: str | None,
    dataset: str | DatasetInfo | None,
    labels: Mapping[str, str] | None,
    page_size: int,
    created_before: datetime | None = None,
) -> jobs_pb2.ListJobsRequest:
    """One page's `ListJobsRequest`."""
    request = jobs_pb2.ListJobsRequest(
        page_size=page_size_arg(page_size),
        page_token=token,
        state=state_code(state) if state else jobs_pb2.JOB_STATE_UNSPECIFIED,
        dataset="" if dataset is None else dataset_name(dataset),
        labels=dict(labels or {}),
    )
    if created_before is not None:
        request.created_before.FromDatetime(aware_time(created_before, "created_before"))
    return request


def aware_time(value: object, name: str) -> datetime:
    """`value`, a datetime with its time zone: a naive one would be read as UTC by protobuf,
    hours off a caller who meant local time."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime. Received: {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} must have a time zone (e.g. datetime.now(UTC) - timedelta(days=30)): a "
            f"naive datetime is ambiguous. Received: {value.isoformat()}"
        )
    return value


# Points asked for per ListJobMetrics page: more than any answer holds, so the server sends as
# many as fit under its message limit.
METRICS_PAGE_POINTS = 2**31 - 1


def list_job_metrics_request(
    name: str, names: Sequence[str], token: str
) -> jobs_pb2.ListJobMetricsRequest:
    """One page's `ListJobMetricsRequest`."""
    return jobs_pb2.ListJobMetricsRequest(
        name=name, metric_names=list(names), page_size=METRICS_PAGE_POINTS, page_token=token
    )


def metrics_from_responses(responses: Sequence[jobs_pb2.ListJobMetricsResponse]) -> Metrics:
    """Each series as an array of shape (points, 3): step, epoch, value; a series that goes on
    in a later page is joined up with the rest of it."""
    parts: dict[str, list[np.ndarray]] = {}
    for response in responses:
        for s in response.series:
            points = np.column_stack([s.steps, s.epochs, s.values]).astype(np.float64)
            parts.setdefault(s.name, []).append(points.reshape(-1, 3))
    return Metrics({name: np.concatenate(arrays) for name, arrays in parts.items()})


def as_inputs(inputs: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Prediction inputs as a 2-D float array: float64 stays float64, anything else becomes
    float32, and a single row may be given 1-D. Inputs without rows are refused (SpecError), as
    the server refuses them, and so is anything but real numbers (complex, text, None)."""
    try:
        x = np.asarray(inputs)
    except ValueError as error:  # rows of different lengths
        raise SpecError([("inputs", f"must be rows of numbers of one length: {error}")]) from None
    if not real_numbers(x):
        raise SpecError(
            [("inputs", f"must be real numbers (floats, integers or bools). {_received(x)}")]
        )
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)  # float16 and integers too: the wire carries these two
    if x.ndim < 2:
        if x.size == 0:  # [] is no row, not one row without features
            raise SpecError([("inputs.shape", "has no rows")])
        x = x.reshape(1, -1)
    if len(x) == 0:
        raise SpecError([("inputs.shape", "has no rows")])
    return x


def real_numbers(x: np.ndarray) -> bool:
    """Whether `x` holds real numbers only. NumPy would turn anything else into float32 all the
    same, but silently wrong: a complex array's imaginary part dropped, None as NaN."""
    if x.dtype.kind == "O":  # a list mixing numbers and other objects
        # Judged per type, not per value: an isinstance against the ABC costs a microsecond a
        # value (0.6 s for a million), the set of types a few milliseconds.
        return all(issubclass(kind, numbers.Real) for kind in set(map(type, x.flat)))
    return x.dtype.kind in "fiub"


def _received(x: np.ndarray) -> str:
    if x.dtype.kind == "O" and x.ndim == 0:
        return f"Received: {x.item()!r}"
    if x.dtype.kind == "c":
        return (
            f"Received: {x.dtype} values; pass the part the model was trained on "
            "(inputs.real, np.abs(inputs))"
        )
    wrong = [v for v in x.flat[:1000] if not isinstance(v, numbers.Real)][:1]
    example = f" such as {reprlib.repr(wrong[0])}" if wrong else ""
    return f"Received: {x.dtype} values{example}"


def input_row_bytes(x: np.ndarray) -> int:
    """The bytes of one row of prediction inputs."""
    return max(1, x.itemsize * int(np.prod(x.shape[1:])))


def answer_row_bytes(output_dim: int, itemsize: int, with_classes: bool) -> int:
    """The bytes of one row of a prediction's answer: the outputs, and `with_classes` (a
    classifier asked for more than its outputs) its probabilities (two columns for one logit) and
    int64 label.

    What the server sends is the source of truth (`classify` in server/predictions.py shapes the
    answer); this is the one statement of its size, shared as `answer_too_large` is: the server
    refuses a request whose answer would pass its limit by it, and the SDK sizes its stream
    messages by it from `GetModelMetadata`, so the two cannot disagree.
    """
    outputs = output_dim * itemsize
    if not with_classes:
        return outputs
    return outputs + max(output_dim, 2) * itemsize + 8


def predict_request(
    job: str, x: np.ndarray, checkpoint: str, outputs_only: bool
) -> predictions_pb2.PredictRequest:
    return predictions_pb2.PredictRequest(
        job=job, checkpoint=checkpoint, inputs=to_tensor(x), outputs_only=outputs_only
    )


def answer_too_large(max_answer_bytes: int, max_rows: int, rows: int) -> str:
    """The server's refusal of a request whose answer could not be sent (`answer_refused` reads
    it back: server and SDK share this one wording)."""
    return (
        f"an answer's size is limited to the message limit ({max_answer_bytes} bytes): at most "
        f"{max_rows} rows per request for this model. Received: {rows} rows; send them over "
        "several requests (the SDK's predict does) or as slices over PredictStream"
    )


_ANSWER_REFUSED = re.compile(
    r"^an answer's size is limited to the message limit \((\d+) bytes\): "
    r"at most (\d+) rows per request"
)


def answer_refused(message: str) -> tuple[int, int] | None:
    """The answer bytes and rows per request an `answer_too_large` refusal allows; None for any
    other message."""
    found = _ANSWER_REFUSED.match(message)
    return None if found is None else (int(found.group(1)), int(found.group(2)))


# gRPC's own refusal of an incoming message over the receiver's limit (this client's, or the
# server's of a request), with the message's size and that limit.
_RECEIVED_TOO_LARGE = re.compile(r"Received message larger than max \((\d+) vs\. (\d+)\)")


def too_large(error: TrainwireError) -> tuple[int, int] | None:
    """The size of the message and the limit it passed, of gRPC's refusal of a message larger
    than its receiver's limit; None for any other error."""
    found = _RECEIVED_TOO_LARGE.search(error.message)
    return None if found is None else (int(found.group(1)), int(found.group(2)))


def upload_refused(error: TrainwireError, max_message_bytes: int) -> TrainwireError:
    """The error of an upload that failed with `error`: for a chunk over the server's message
    limit (a server configured below this client's `max_message_bytes`), one saying how to size
    the chunks by the server's limit; any other error as it is. Not retried with smaller chunks
    (a message-size refusal is raised at once, as a configured limit is): a client configured
    so sends every later upload right."""
    refused = too_large(error)
    if refused is None:
        return error
    limit = refused[1]
    return error_for(
        error.code,
        f"{error.message}: the server's message limit ({limit} bytes) is below this client's "
        f"({max_message_bytes} bytes), whose size the upload's chunks take. Pass "
        f"max_message_bytes={limit} to the client (or set TRAINWIRE_MAX_MESSAGE_BYTES={limit} "
        "for Client.from_env() and the trainwire commands), then upload again",
        error.field_violations,
    )


class ChunkedPrediction:
    """A prediction of many rows as consecutive requests, each of which, and each answer, stays
    within a quarter of the message limit; the clients send `next_request()` until it is None,
    passing each answer to `answered` (or a failure to `retry_after`), then take `result()`.

    An answer's size per row is not known before the first one (it depends on the model's
    outputs, and a classifier's also carry probabilities and labels), so the first request takes
    at most FIRST_ROWS rows and the rest are sized by the larger of a request's and an answer's
    bytes per row; a first request whose answer the server could not send (a classifier of
    hundreds of classes) is refused with the rows that fit, and sent again with those. A request
    over the server's limit (below this client's), or one whose answer this client could not
    receive (its limit below the server's), is sent again with as many rows as fit a quarter of
    the limit gRPC named, and so is every later request. Every request after the first names
    the checkpoint that answered the first, so a checkpoint written meanwhile never answers part
    of the rows ("latest", "best"); should that checkpoint be deleted before the last request
    (retention on a job still training), the prediction starts over once, with the selector it
    was given.
    """

    FIRST_ROWS = 1024

    def __init__(
        self,
        job: str,
        x: np.ndarray,
        checkpoint: str,
        max_message_bytes: int,
        outputs_only: bool = False,
    ) -> None:
        self.job = job
        self.x = x
        self.selector = checkpoint
        self.checkpoint = checkpoint
        self.outputs_only = outputs_only
        self.budget = max(1, max_message_bytes // 4)
        self.row_bytes = input_row_bytes(x)
        self.max_rows = self.FIRST_ROWS  # until an answer's size is known
        self.answers: list[predictions_pb2.PredictResponse] = []
        self.restarted = False
        self._start = 0  # the first row of the request awaiting its answer
        self._sent = 0  # rows sent

    def next_request(self) -> predictions_pb2.PredictRequest | None:
        if self.answers and self._sent >= len(self.x):
            return None
        rows = self._rows()
        self._start, self._sent = self._sent, self._sent + rows
        x = self.x[self._start : self._sent]
        return predict_request(self.job, x, self.checkpoint, self.outputs_only)

    def _rows(self) -> int:
        """The rows of the next request."""
        return min(max(1, self.budget // self.row_bytes), self.max_rows)

    def answered(self, response: predictions_pb2.PredictResponse) -> None:
        if not self.answers:
            self.checkpoint = response.checkpoint
            rows = max(len(self.x[self._start : self._sent]), 1)
            # Measured, the answer's size replaces any bound a refusal gave (up to 2x too high).
            self.row_bytes = max(input_row_bytes(self.x), -(-response.ByteSize() // rows))
            self.max_rows = len(self.x) or 1
        self.answers.append(response)

    def retry_after(self, error: TrainwireError) -> bool:
        """Whether the request that failed with `error` is worth sending again (then the next
        `next_request` does), else the caller raises it."""
        refused = answer_refused(error.message)
        if refused is not None and 0 < refused[1] < self._sent - self._start:
            answer_bytes, allowed = refused
            # A row's answer takes at most answer_bytes / allowed bytes: sized by it, the next
            # answers stay within a quarter of this client's limit too, which may be below the
            # server's (a quarter of the rows the server allows could not be received here).
            self.row_bytes = max(self.row_bytes, -(-answer_bytes // allowed))
            self.max_rows = max(allowed // 4, 1)
            self._sent = self._start
            return True
        received = too_large(error)
        rows = self._sent - self._start
        if received is not None:
            # A request over the server's limit (below this client's), or an answer over this
            # client's (below the server's): the size tells the bytes a row takes and the limit
            # the budget of this request and every later one. Sent again only with fewer rows:
            # a request of as many would fail the same way.
            size, limit = received
            self.budget = min(self.budget, max(1, limit // 4))
            self.row_bytes = max(self.row_bytes, -(-size // max(rows, 1)))
            if self._rows() < rows:
                self._sent = self._start
                return True
        pinned = bool(self.answers) and self.checkpoint != self.selector
        if error.code is grpc.StatusCode.NOT_FOUND and pinned and not self.restarted:
            self.restarted = True
            self.answers, self.checkpoint = [], self.selector
            self.max_rows, self._sent = self.FIRST_ROWS, 0
            return True
        return False

    def result(self) -> Prediction:
        return join_predictions(self.answers)


class StreamedPrediction:
    """The messages of one PredictStream call and their answers, for both clients: each batch,
    encoded as `predict` encodes its inputs (`as_inputs`), is sent as messages whose inputs and
    whose answers each take at most a quarter of the message limit (the client's, or the
    server's when smaller), their answers joined back into the batch's `Prediction`.
    The clients pass the model's metadata to `describe` once, with the first batch, then send
    `requests(x)` for each batch in turn and pass each answer to `answered`, which returns a
    batch's prediction once the last of its messages is answered.

    Messages are sent ahead of their answers, so unlike `ChunkedPrediction` neither the size of
    an answer nor the server's limit can be learnt from a refusal: both come from
    `GetModelMetadata` (a classifier of few features and many classes answers far more bytes per
    row than it is sent), and the limit is the smaller of the client's and the server's (a
    server older than the field that says it is taken to share the client's).
    """

    def __init__(
        self, job: str, checkpoint: str, max_message_bytes: int, outputs_only: bool = False
    ) -> None:
        self.job = job
        self.checkpoint = checkpoint
        self.outputs_only = outputs_only
        self.max_message_bytes = max_message_bytes
        self.budget = max(1, max_message_bytes // 4)
        self.answer_row_bytes: int | None = None  # known once `describe` has run
        # How many messages each batch sent and not yet answered went as: batches are encoded in
        # gRPC's request thread (or task) and answered in the caller's, and a deque's appends
        # and pops are atomic.
        self._messages: deque[int] = deque()
        self._answers: list[predictions_pb2.PredictResponse] = []

    def describe(self, model: ModelInfo) -> None:
        """Takes the size of an answer's row, and the server's message limit when below the
        client's, from the metadata of the model the stream asks."""
        if 0 < model.max_message_bytes < self.max_message_bytes:
            self.budget = max(1, model.max_message_bytes // 4)
        self.answer_row_bytes = answer_row_bytes(
            output_dim=model.output_shape[-1],
            itemsize=model.output_dtype.itemsize,
            # The server gives 0 classes for regression only.
            with_classes=model.num_classes > 0 and not self.outputs_only,
        )

    def requests(self, x: np.ndarray) -> Iterator[predictions_pb2.PredictRequest]:
        """The messages of one batch `x` (from `as_inputs`), after `describe`."""
        assert self.answer_row_bytes is not None, "describe the model first"
        rows = max(1, self.budget // max(input_row_bytes(x), self.answer_row_bytes))
        self._messages.append(-(-len(x) // rows))
        for start in range(0, len(x), rows):
            yield predict_request(
                self.job, x[start : start + rows], self.checkpoint, self.outputs_only
            )

    def restart(self) -> None:
        """Forgets the messages of a call that failed: a new call sends its batches again."""
        self._messages = deque()
        self._answers = []

    def answered(self, response: predictions_pb2.PredictResponse) -> Prediction | None:
        self._answers.append(response)
        if len(self._answers) < self._messages[0]:
            return None
        self._messages.popleft()
        answers, self._answers = self._answers, []
        return join_predictions(answers)


def join_predictions(parts: Sequence[predictions_pb2.PredictResponse]) -> Prediction:
    """One `Prediction` from the responses of consecutive row slices."""

    def join(field_name: str) -> np.ndarray | None:
        arrays = [from_tensor(getattr(p, field_name)) for p in parts if p.HasField(field_name)]
        return np.concatenate(arrays) if arrays else None

    outputs = join("outputs")
    if outputs is None:
        raise ValueError("the server answered without outputs")
    return Prediction(outputs, join("probabilities"), join("labels"), parts[-1].checkpoint)
