"""The dataset service: receives a chunked upload, checks every array, stores it immutably."""

from __future__ import annotations

import hashlib
import re
import traceback
from collections.abc import Iterable
from types import TracebackType

import numpy as np

from trainwire.client.tensors import DTYPES, TensorError, dtype_name, dtype_of, expected_nbytes
from trainwire.engine.errors import quoted
from trainwire.engine.serialization import state_header
from trainwire.v1 import datasets_pb2, tensor_pb2

from .config import MAX_STORED_DATASET_BYTES, Settings
from .convert import TASKS_FROM_PROTO
from .errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from .jobs import MAX_REQUEST_ID, check_labels
from .names import FLOAT_DTYPES, MAX_NAME_LENGTH, check_enum, check_text, parse_name
from .records import Dataset, TaskKind
from .store import Fits, Store, new_id, refuse_another_request, utcnow

MAX_CLASSES = 100_000
SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class DatasetService:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def upload(
        self, requests: Iterable[datasets_pb2.UploadDatasetRequest], project: str
    ) -> Dataset:
        """Receives a whole upload (header, then chunks), checks it and stores it; a retry of an
        upload already stored gets its dataset at the header (`stored_for`)."""
        stream = iter(requests)
        first = next(stream, None)
        stored = self.stored_for(first, project)
        if stored is not None:
            return stored
        with self.start(first) as upload:
            for request in stream:
                upload.add(request)
            return self.finish(upload, project)

    def stored_for(
        self, first: datasets_pb2.UploadDatasetRequest | None, project: str
    ) -> Dataset | None:
        """The dataset an earlier attempt of this upload stored (its header's request_id is
        already used in `project`), or None for an upload to receive. Answered at the header, so
        a retry whose first attempt was stored sends no bytes again; and before the limits are
        checked, as CreateJob's retry is: they may have been lowered since. A header that
        describes another dataset than the one stored is refused ALREADY_EXISTS, naming what
        differs (`refuse_another_request`)."""
        header = _header_of(first)
        if not header.request_id:
            return None
        stored = self.store.dataset_by_request_id(header.request_id, project)
        if stored is None:
            return None
        refuse_another_request(
            header.request_id,
            f"datasets/{stored.id}",
            "dataset",
            _asked_by(header, stored),
            _described(stored),
        )
        return stored

    def start(self, first: datasets_pb2.UploadDatasetRequest | None) -> Upload:
        """An upload begun by its first message, which must be a header within the limits."""
        header = _header_of(first)
        features_shape, targets_shape = self._check_header(header)
        feature_dtype = dtype_of(header.features.dtype)
        target_dtype = dtype_of(header.targets.dtype)
        feature_bytes = expected_nbytes(feature_dtype, features_shape)
        total = feature_bytes + expected_nbytes(target_dtype, targets_shape)
        if total > self.settings.max_dataset_bytes:
            raise ResourceExhausted.limit(
                "max_dataset_bytes", self.settings.max_dataset_bytes, total
            )
        # The stored state's header, known from the upload's: the chunks then arrive where the
        # stored state keeps them, and the buffer they fill is what is stored (see `finish`).
        task = TASKS_FROM_PROTO[header.task]
        stored_targets = _stored_target_dtype(task, target_dtype)
        prefix = state_header(
            [
                ("features", feature_dtype, features_shape),
                ("targets", stored_targets, targets_shape),
            ]
        )
        stored = len(prefix) + feature_bytes + expected_nbytes(stored_targets, targets_shape)
        if stored > MAX_STORED_DATASET_BYTES:
            # Within max_dataset_bytes (bounded by the same figure), but labels are stored as
            # int64 and whole-number targets as float64: refused before any byte is sent, not
            # by the database once all of them were (an INTERNAL error).
            raise ResourceExhausted(
                f"the dataset would be stored in {stored} bytes (its targets as "
                f"{stored_targets}), more than the {MAX_STORED_DATASET_BYTES} the database "
                "stores in one value: upload fewer rows"
            )
        return Upload(
            header, features_shape, targets_shape, feature_bytes, total, prefix, stored_targets
        )

    def idle(self, upload: Upload | None) -> DeadlineExceeded:
        """The error that ends an upload whose client sent nothing for stream_idle_timeout_s:
        before its header (`upload` None), or after the bytes `upload` holds."""
        waited = f"{self.settings.stream_idle_timeout_s:g} s"
        setting = self.settings.setting("stream_idle_timeout_s")
        if upload is None:
            return DeadlineExceeded.idle(
                f"the upload sent no header in {waited}", setting, "its slot",
                "send the header as the stream's first message, then the chunks without pausing",
            )  # fmt: skip
        return DeadlineExceeded.idle(
            f"the upload sent nothing for {waited} after {upload.received} of the "
            f"{upload.total} bytes its header announces",
            setting,
            "its slot and bytes",
            "upload the dataset again, sending its chunks without pausing",
        )

    def finish(self, upload: Upload, project: str) -> Dataset:
        """Checks the bytes of an upload whose stream has ended, and stores them.

        The upload's buffer is stored as it is, a safetensors state (`Upload`): serialised
        apart, the arrays were a second copy of the upload, held with it while it was stored."""
        header = upload.header
        features_shape, targets_shape = upload.features_shape, upload.targets_shape
        feature_dtype = dtype_of(header.features.dtype)
        target_dtype = dtype_of(header.targets.dtype)
        buffer, total, feature_bytes = upload.buffer, upload.total, upload.feature_bytes
        if upload.received != total:
            raise InvalidArgument.field(
                "chunk",
                f"the upload ended after {upload.received} of the {total} bytes its header "
                "announces",
            )
        start = upload.prefix_bytes  # the uploaded bytes follow the state's header
        raw = memoryview(buffer)[start:]
        digest = hashlib.sha256(raw).hexdigest()
        if header.sha256 and header.sha256.lower() != digest:
            raise InvalidArgument.field(
                "header.sha256", f"does not match the uploaded bytes (their SHA-256 is {digest})"
            )

        features = np.frombuffer(raw[:feature_bytes], dtype=feature_dtype).reshape(features_shape)
        targets = np.frombuffer(raw[feature_bytes:], dtype=target_dtype).reshape(targets_shape)
        task = TASKS_FROM_PROTO[header.task]
        _check_finite("features", features)
        _check_finite("targets", targets)
        targets, num_classes = _check_targets(task, targets, header.num_classes)
        if header.class_names and len(header.class_names) != num_classes:
            # Only a count the labels made is left to judge here (`_check_class_names`).
            raise InvalidArgument.field(
                "header.class_names",
                f"has {len(header.class_names)} names for the {num_classes} classes the labels "
                f"make (0 to {num_classes - 1}, header.num_classes being 0): give one name per "
                "class, or set header.num_classes to the classes the names are for",
            )

        targets_stored_as = str(targets.dtype)
        if targets.dtype.newbyteorder("<") != target_dtype:
            # Targets stored as another dtype than they were sent (labels as int64, whole-number
            # regression targets as float64; the header `start` wrote says so): their bytes, at
            # the buffer's end, give way to the stored ones, little-endian as safetensors keeps
            # them. The views of the buffer go first: a bytearray they view cannot be resized.
            replacement = np.ascontiguousarray(targets, dtype=targets.dtype.newbyteorder("<"))
            del features, targets, raw
            del buffer[start + feature_bytes :]
            buffer += replacement.data.cast("B")
        written = np.dtype(targets_stored_as).newbyteorder("<")
        if written != upload.stored_target_dtype.newbyteorder("<"):
            # The state's header (`start`) names the dtype `_stored_target_dtype` gave: bytes of
            # another under it would load as other values, or not at all. Never stored so.
            raise RuntimeError(
                f"targets checked as {written}, but the stored state's header says "
                f"{upload.stored_target_dtype}"
            )
        dataset = Dataset(
            id=new_id(),
            project=project,
            display_name=header.display_name,
            task=task,
            num_classes=num_classes,
            num_examples=features_shape[0],
            feature_dtype=str(feature_dtype.newbyteorder("=")),
            feature_shape=features_shape,
            target_dtype=targets_stored_as,
            target_shape=targets_shape,
            size_bytes=total,
            sha256=digest,
            labels=dict(header.labels),
            feature_names=list(header.feature_names),
            class_names=list(header.class_names),
            created_at=utcnow(),
            request_id=header.request_id or None,
        )
        stored = self.store.create_dataset(dataset, buffer)
        if stored.id != dataset.id:
            # Another attempt of this upload (its request_id) stored its dataset first, while this
            # one was sent: the answer is that dataset, if it holds what this one would have.
            refuse_another_request(
                header.request_id,
                f"datasets/{stored.id}",
                "dataset",
                _described(dataset),
                _described(stored),
            )
        return stored

    def _check_names_fit_answers(self, header: datasets_pb2.DatasetHeader) -> None:
        """The feature and class names are shown by every answer about the dataset, and by a
        model's metadata beside its model (up to half an answer): 100,000 class names of 256
        characters were accepted, and made every GetDataset, ListDatasets page and
        GetModelMetadata that showed them fail for the message limit."""
        shown = sum(
            len(name.encode()) + 3  # a repeated string's tag and length, at most
            for name in (*header.feature_names, *header.class_names)
        )
        limit = self.settings.max_answer_bytes() // 4
        if shown > limit:
            raise ResourceExhausted.limit(
                "header.feature_names and header.class_names",
                limit,
                shown,
                "bytes of names every answer about the dataset and its models shows: a quarter "
                "of max_message_bytes less framing; send shorter names, or none, or raise "
                "TRAINWIRE_MAX_MESSAGE_BYTES",
            )

    def _check_header(
        self, header: datasets_pb2.DatasetHeader
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if header.task not in TASKS_FROM_PROTO:
            check_enum("header.task", datasets_pb2.TaskKind, header.task, list(TASKS_FROM_PROTO))
        check_text("header.display_name", header.display_name, MAX_NAME_LENGTH)
        check_labels("header.labels", header.labels)
        if header.sha256 and not SHA256.fullmatch(header.sha256):
            raise InvalidArgument.field(
                "header.sha256",
                "must be 64 hex digits (the SHA-256 of the bytes uploaded), or empty. "
                f"Received: {quoted(header.sha256)}",
            )
        for field, kind in (("feature_names", "feature"), ("class_names", "class")):
            names = getattr(header, field)
            if len(names) > MAX_CLASSES:
                raise InvalidArgument.field(f"header.{field}", f"at most {MAX_CLASSES} names")
            # Each name's index is in the field: "holds an empty name" left whoever sent
            # 100,000 of them to find which.
            seen: dict[str, int] = {}
            for index, name in enumerate(names):
                check_text(f"header.{field}[{index}]", name, MAX_NAME_LENGTH)
                if not name.strip():
                    raise InvalidArgument.field(
                        f"header.{field}[{index}]",
                        f"is an empty name: give each {kind} a name, or send no names. "
                        f"Received: {quoted(name)}",
                    )
                # The CLI finds a feature's CSV column by its name, and a label by its class's.
                if name in seen:
                    raise InvalidArgument.field(
                        f"header.{field}[{index}]",
                        f"names {quoted(name)}, as header.{field}[{seen[name]}] does: each "
                        f"{kind} needs a name of its own",
                    )
                seen[name] = index
        self._check_names_fit_answers(header)
        dtypes = tensor_pb2.DataType
        check_enum("header.features.dtype", dtypes, header.features.dtype, FLOAT_DTYPES)
        check_enum("header.targets.dtype", dtypes, header.targets.dtype, list(DTYPES))
        features = tuple(int(s) for s in header.features.shape)
        targets = tuple(int(s) for s in header.targets.shape)
        if len(features) != 2 or any(s < 0 for s in features):
            raise InvalidArgument.field(
                "header.features.shape",
                f"must be (num_examples, num_features). Received: {list(features)}",
            )
        if features[0] == 0:
            raise InvalidArgument.field(
                "header.features.shape", "the dataset is empty (0 examples)"
            )
        if features[1] == 0:
            raise InvalidArgument.field("header.features.shape", "examples have 0 features")
        # Before the other sizes are compared with it: a features shape of [2**62, 2**62] was
        # refused for its targets' shape, which would have had to be (2**62,).
        feature_bytes = expected_nbytes(dtype_of(header.features.dtype), features)
        if feature_bytes > self.settings.max_dataset_bytes:
            raise ResourceExhausted.limit(
                "max_dataset_bytes",
                self.settings.max_dataset_bytes,
                feature_bytes,
                f"the features alone: {list(features)} of {dtype_name(header.features.dtype)}",
            )
        if header.feature_names and len(header.feature_names) != features[1]:
            raise InvalidArgument.field(
                "header.feature_names",
                f"has {len(header.feature_names)} names for {features[1]} features",
            )
        if len(targets) not in (1, 2) or targets[0] != features[0] or any(s <= 0 for s in targets):
            raise InvalidArgument.field(
                "header.targets.shape",
                f"must be ({features[0]},) or ({features[0]}, k) to match the features. "
                f"Received: {list(targets)}",
            )
        if header.num_classes < 0 or header.num_classes > MAX_CLASSES:
            raise InvalidArgument.field(
                "header.num_classes",
                f"must be in [0, {MAX_CLASSES}]. Received: {header.num_classes}",
            )
        task = TASKS_FROM_PROTO[header.task]
        if task.is_classification and len(targets) != 1:
            # Known from the header: it was refused only once every byte had been sent.
            raise InvalidArgument.field(
                "header.targets.shape",
                f"classification targets must be labels of shape ({features[0]},), one class per "
                f"example (of one-hot rows, send each row's argmax); {targets[1]} target columns "
                f"make a regression. Received: {list(targets)}",
            )
        if task is TaskKind.BINARY_CLASSIFICATION and header.num_classes not in (0, 2):
            raise InvalidArgument.field(
                "header.num_classes",
                "must be 2 or 0 (unset) for binary classification; upload the data as "
                f"multiclass for another count. Received: {header.num_classes}",
            )
        if task is TaskKind.REGRESSION and header.num_classes != 0:
            raise InvalidArgument.field(
                "header.num_classes",
                "must be 0 (unset) for regression, which has no classes; upload the data as "
                f"classification to give a class count. Received: {header.num_classes}",
            )
        _check_class_names(task, header)
        return features, targets

    def get(self, name: str, project: str) -> Dataset:
        return self.store.get_dataset(parse_name(name, "datasets", "name"), project)

    def list_datasets(
        self, page_size: int, page_token: str, project: str, fits: Fits | None = None
    ) -> tuple[list[Dataset], str]:
        return self.store.list_datasets(page_size, page_token, project, fits)

    def delete(self, name: str, project: str) -> None:
        self.store.delete_dataset(parse_name(name, "datasets", "name"), project)

    def arrays(
        self, dataset_id: str, feature_dtype: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The stored (features, targets) of a dataset, the features as `feature_dtype` if given
        (converted as they are read: a float64 model's float32 features are never held twice)."""
        dtypes = None if feature_dtype is None else {"features": np.dtype(feature_dtype)}
        arrays, _ = self.store.dataset_state(dataset_id, dtypes)
        return arrays["features"], arrays["targets"]


class Upload:
    """An upload in progress: its checked header and the bytes received so far.

    The buffer is the safetensors state that will be stored: it starts with the state's header
    (`prefix`, from the upload's header), and the chunks are appended after it, features then
    targets, where the state keeps them. It grows with the chunks that arrive, never from the
    size the header announces (a header alone, a hundred bytes, used to reserve and zero-fill up
    to `max_dataset_bytes`). Used as a context manager, it lets go of them at once if the upload
    fails.
    """

    def __init__(
        self,
        header: datasets_pb2.DatasetHeader,
        features_shape: tuple[int, ...],
        targets_shape: tuple[int, ...],
        feature_bytes: int,
        total: int,
        prefix: bytes,
        stored_target_dtype: np.dtype,
    ) -> None:
        self.header = header
        self.features_shape = features_shape
        self.targets_shape = targets_shape
        self.feature_bytes = feature_bytes
        self.total = total
        self.buffer = bytearray(prefix)
        self.prefix_bytes = len(prefix)
        self.stored_target_dtype = stored_target_dtype  # as the prefix, the stored header, says

    @property
    def received(self) -> int:
        """The uploaded bytes received so far."""
        return len(self.buffer) - self.prefix_bytes

    def add(self, request: datasets_pb2.UploadDatasetRequest) -> None:
        """Appends a chunk (one copy: the bytes are extended in place, not joined at the end)."""
        if request.WhichOneof("content") != "chunk":
            raise InvalidArgument.field("header", "only the first message may carry a header")
        chunk = request.chunk  # read once: each read of a bytes field makes a new object
        if self.received + len(chunk) > self.total:
            raise InvalidArgument.field(
                "chunk",
                f"the upload sent more than the {self.total} bytes its header announces "
                f"(features {list(self.features_shape)}, targets {list(self.targets_shape)})",
            )
        self.buffer += chunk

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self, _kind: object, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if error is None:
            return
        # grpc.aio keeps a failed call's error with the call's state, which the error's frames
        # reference in turn: a cycle that only the cyclic collector frees, so the bytes the
        # frames held stayed (four failed 512 MiB uploads left 2 GiB behind). The buffer is
        # dropped, and the locals of the finished frames (views of it) cleared; the traceback
        # keeps its lines for the log.
        self.buffer = bytearray()
        self.prefix_bytes = 0
        traceback.clear_frames(trace)


def _header_of(first: datasets_pb2.UploadDatasetRequest | None) -> datasets_pb2.DatasetHeader:
    """The header an upload's first message must be, its request_id checked as CreateJob's."""
    if first is None or first.WhichOneof("content") != "header":
        raise InvalidArgument.field("header", "the first message of an upload must be the header")
    check_text("header.request_id", first.header.request_id, MAX_REQUEST_ID)
    return first.header


def _described(dataset: Dataset) -> dict[str, object]:
    """What an upload's header describes of the dataset it stores, keyed by the header's
    fields (a retry reusing a request_id is compared with the dataset by these)."""
    return {
        "display_name": dataset.display_name,
        "task": dataset.task.value,
        "num_classes": dataset.num_classes,
        "features": [dataset.feature_dtype, list(dataset.feature_shape)],
        "targets": [dataset.target_dtype, list(dataset.target_shape)],
        "sha256": dataset.sha256,
        "labels": dataset.labels,
        "feature_names": dataset.feature_names,
        "class_names": dataset.class_names,
    }


def _asked_by(header: datasets_pb2.DatasetHeader, stored: Dataset) -> dict[str, object]:
    """`_described` of the dataset `header` would store, as far as a header tells: what the
    bytes decide that it leaves unset is taken from `stored` (a class count of 0, inferred from
    the labels; no sha256, when the bytes are not compared)."""
    task = TASKS_FROM_PROTO.get(header.task)
    return {
        "display_name": header.display_name,
        "task": header.task if task is None else task.value,  # an unknown task differs
        "num_classes": header.num_classes or stored.num_classes,
        "features": [_dtype_name(header.features.dtype), list(header.features.shape)],
        "targets": [
            _dtype_name(header.targets.dtype, task),
            list(header.targets.shape),
        ],
        "sha256": header.sha256.lower() or stored.sha256,
        "labels": dict(header.labels),
        "feature_names": list(header.feature_names),
        "class_names": list(header.class_names),
    }


def _dtype_name(code: int, task: TaskKind | None = None) -> str:
    """The dtype a tensor of wire type `code` is stored as (targets: for `task`), by name."""
    try:
        dtype = dtype_of(code)
    except TensorError:
        return f"unknown data type {code}"
    # Features are stored in native byte order (as `finish` stores them), targets as their task
    # keeps them: named so, a little-endian wire type is the stored one on any host.
    stored = dtype.newbyteorder("=") if task is None else _stored_target_dtype(task, dtype)
    return str(stored)


def _stored_target_dtype(task: TaskKind, dtype: np.dtype) -> np.dtype:
    """The dtype targets uploaded as `dtype` are stored as: labels of a classification as int64,
    a regression's floats as they are (native byte order), its other numbers as float64."""
    if task.is_classification:
        return np.dtype(np.int64)
    return (dtype if dtype.kind == "f" else np.dtype(np.float64)).newbyteorder("=")


def _check_class_names(task: TaskKind, header: datasets_pb2.DatasetHeader) -> None:
    """The class names must suit the task, and be as many as the classes, when the header says
    how many there are (a binary task's 2, or num_classes): checked only once the whole upload
    was received, a mismatch was refused after every byte was sent."""
    if not header.class_names:
        return
    if task is TaskKind.REGRESSION:
        raise InvalidArgument.field(
            "header.class_names",
            "a regression has no classes: send class names only with a classification task",
        )
    given = len(header.class_names)
    if task is TaskKind.BINARY_CLASSIFICATION and given != 2:
        raise InvalidArgument.field(
            "header.class_names",
            f"has {given} names for the 2 classes of a binary classification (labels 0 and 1): "
            "give two names, or upload the data as multiclass",
        )
    if header.num_classes and given != header.num_classes:
        raise InvalidArgument.field(
            "header.class_names",
            f"has {given} names for the {header.num_classes} classes header.num_classes gives: "
            "give one name per class",
        )


# Values checked finite at a time: np.isfinite of all of them at once made a boolean for each,
# a quarter of float32 features' size beside the upload (its peak on the server, the upload
# itself being stored without another copy).
_FINITE_BLOCK = 1 << 20


def _check_finite(field: str, values: np.ndarray) -> None:
    if values.dtype.kind != "f":
        return
    flat = values.reshape(-1)  # a view: the arrays of an upload are C-contiguous
    for start in range(0, flat.size, _FINITE_BLOCK):
        finite = np.isfinite(flat[start : start + _FINITE_BLOCK])
        if not finite.all():
            # The first one (argmin of booleans): np.argwhere listed every one, 16 bytes each
            # per dimension, twice the upload's size for data of NaN.
            bad = np.unravel_index(start + int(np.argmin(finite)), values.shape)
            where = ", ".join(str(int(i)) for i in bad)
            raise InvalidArgument.field(
                field, f"must be finite; found {values[bad]} at index ({where})"
            )


def _check_targets(task: TaskKind, targets: np.ndarray, num_classes: int) -> tuple[np.ndarray, int]:
    """Classification targets become int64 labels; returns them with the class count."""
    if task is TaskKind.REGRESSION:
        return targets.astype(_stored_target_dtype(task, targets.dtype), copy=False), 0
    if targets.ndim != 1:
        raise InvalidArgument.field(
            "header.targets.shape",
            f"classification targets must be labels of shape (n,). Received: {list(targets.shape)}",
        )
    labels = targets.astype(_stored_target_dtype(task, targets.dtype))
    if not np.array_equal(labels, targets):
        raise InvalidArgument.field("targets", "classification labels must be whole numbers")
    if labels.min() < 0:
        raise InvalidArgument.field(
            "targets", f"labels must not be negative. Received: {labels.min()}"
        )
    seen = int(labels.max()) + 1
    if task is TaskKind.BINARY_CLASSIFICATION:
        if seen > 2:
            raise InvalidArgument.field(
                "targets", f"binary labels must be 0 or 1. Received: {seen - 1}"
            )
        return labels, 2
    if num_classes and seen > num_classes:
        raise InvalidArgument.field(
            "targets", f"label {seen - 1} is out of range for num_classes={num_classes}"
        )
    if seen > MAX_CLASSES:
        # Checked here too: without num_classes the count comes from the labels alone.
        raise InvalidArgument.field(
            "targets",
            f"label {seen - 1} is out of range: a dataset has at most {MAX_CLASSES:,} classes, "
            f"labelled 0 to {MAX_CLASSES - 1}",
        )
    classes = num_classes or seen
    if classes < 2:
        raise InvalidArgument.field("targets", "multiclass data needs at least 2 classes")
    return labels, classes
