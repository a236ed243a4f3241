"""The dataset service's checks of an upload, against a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import tracemalloc
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from trainwire.server import datasets
from trainwire.server.api import ClientLimiter, DatasetServicer
from trainwire.server.config import Settings
from trainwire.server.datasets import MAX_CLASSES, DatasetService
from trainwire.server.errors import FieldViolation, InvalidArgument, ResourceExhausted
from trainwire.server.store import Store
from trainwire.v1 import datasets_pb2, tensor_pb2


def upload(
    task: datasets_pb2.TaskKind.ValueType, targets: np.ndarray, num_classes: int = 0
) -> list[datasets_pb2.UploadDatasetRequest]:
    """A header and one chunk: one feature per example, int64 or float32 targets."""
    features = np.zeros((len(targets), 1), "<f4")
    dtype = (
        tensor_pb2.DATA_TYPE_INT64 if targets.dtype.kind == "i" else tensor_pb2.DATA_TYPE_FLOAT32
    )
    header = datasets_pb2.DatasetHeader(
        task=task,
        num_classes=num_classes,
        features=tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[len(targets), 1]),
        targets=tensor_pb2.TensorInfo(dtype=dtype, shape=[len(targets)]),
    )
    return [
        datasets_pb2.UploadDatasetRequest(header=header),
        datasets_pb2.UploadDatasetRequest(chunk=features.tobytes() + targets.tobytes()),
    ]


def multiclass_upload(labels: list[int]) -> list[datasets_pb2.UploadDatasetRequest]:
    return upload(datasets_pb2.TASK_KIND_MULTICLASS_CLASSIFICATION, np.array(labels, "<i8"))


@pytest.mark.parametrize("label", [MAX_CLASSES, 1_000_000, 2**40, 2**63 - 1])
def test_inferred_class_count_is_capped(store: Store, label: int) -> None:
    service = DatasetService(store, Settings())
    with pytest.raises(InvalidArgument) as caught:
        service.upload(multiclass_upload([0, 1, label]), "default")
    assert caught.value.violations[0].field == "targets"
    assert f"label {label}" in caught.value.message
    assert f"{MAX_CLASSES:,}" in caught.value.message
    assert store.list_datasets(10, "")[0] == []


def test_the_largest_label_allowed_is_accepted(store: Store) -> None:
    dataset = DatasetService(store, Settings()).upload(
        multiclass_upload([0, MAX_CLASSES - 1]), "default"
    )
    assert dataset.num_classes == MAX_CLASSES


BINARY = datasets_pb2.TASK_KIND_BINARY_CLASSIFICATION
REGRESSION = datasets_pb2.TASK_KIND_REGRESSION
TARGETS = {BINARY: np.array([0, 1, 1], "<i8"), REGRESSION: np.array([0.5, 1, 2], "<f4")}


@pytest.mark.parametrize(
    ("task", "num_classes", "says"),
    [
        (BINARY, 1, "must be 2 or 0 (unset) for binary classification"),
        (BINARY, 5, "must be 2 or 0 (unset) for binary classification"),
        (REGRESSION, 2, "must be 0 (unset) for regression"),
    ],
    ids=["binary-1", "binary-5", "regression-2"],
)
def test_a_class_count_the_task_cannot_have_is_refused(
    store: Store, task: datasets_pb2.TaskKind.ValueType, num_classes: int, says: str
) -> None:
    """It was ignored: a binary dataset always has 2 classes, a regression one none."""
    with pytest.raises(InvalidArgument) as refused:
        DatasetService(store, Settings()).upload(
            upload(task, TARGETS[task], num_classes), "default"
        )
    assert refused.value.violations[0].field == "header.num_classes"
    assert says in refused.value.message and f"Received: {num_classes}" in refused.value.message
    assert store.list_datasets(10, "")[0] == []


@pytest.mark.parametrize(
    ("task", "num_classes", "stored"), [(BINARY, 0, 2), (BINARY, 2, 2), (REGRESSION, 0, 0)]
)
def test_a_class_count_the_task_has_is_accepted(
    store: Store, task: datasets_pb2.TaskKind.ValueType, num_classes: int, stored: int
) -> None:
    service = DatasetService(store, Settings())
    assert service.upload(upload(task, TARGETS[task], num_classes), "default").num_classes == stored


def test_an_empty_label_key_is_refused_as_for_a_job(store: Store) -> None:
    """CreateJob refused an empty label key that UploadDataset stored."""
    requests = multiclass_upload([0, 1, 2])
    requests[0].header.labels[""] = "x"
    with pytest.raises(InvalidArgument) as refused:
        DatasetService(store, Settings()).upload(requests, "default")
    assert refused.value.violations[0] == FieldViolation(
        "header.labels", "label keys must not be empty"
    )
    assert store.list_datasets(10, "")[0] == []


def test_class_names_on_a_regression_are_refused_as_such(store: Store) -> None:
    """It answered "has 3 names for 0 classes", which left a user who picked regression for a
    column of words (the CLI's `--task regression` on iris) guessing."""
    requests = upload(REGRESSION, TARGETS[REGRESSION])
    requests[0].header.class_names.extend(["setosa", "versicolor", "virginica"])
    with pytest.raises(InvalidArgument) as refused:
        DatasetService(store, Settings()).upload(requests, "default")
    assert refused.value.violations[0].field == "header.class_names"
    assert "a regression has no classes" in refused.value.message
    assert store.list_datasets(10, "")[0] == []


def copied(
    requests: list[datasets_pb2.UploadDatasetRequest],
) -> list[datasets_pb2.UploadDatasetRequest]:
    """A parametrized upload's requests to change: the parameters are shared by each store's
    run of a test, and a header changed in place reached the next run changed twice."""
    return [datasets_pb2.UploadDatasetRequest.FromString(r.SerializeToString()) for r in requests]


@pytest.mark.parametrize(
    ("requests", "names", "says"),
    [
        (
            upload(BINARY, TARGETS[BINARY]),
            ["no", "yes", "maybe"],
            "has 3 names for the 2 classes of a binary classification (labels 0 and 1): give "
            "two names, or upload the data as multiclass",
        ),
        (
            upload(datasets_pb2.TASK_KIND_MULTICLASS_CLASSIFICATION, np.array([0, 1, 2]), 4),
            ["a", "b", "c"],
            "has 3 names for the 4 classes header.num_classes gives: give one name per class",
        ),
    ],
    ids=["binary", "num_classes"],
)
def test_class_names_not_one_per_class_of_the_header_are_refused_before_the_bytes(
    store: Store,
    requests: list[datasets_pb2.UploadDatasetRequest],
    names: list[str],
    says: str,
) -> None:
    """The header says how many classes there are: a count of names that does not match was
    refused only once every byte of the upload had been received."""
    requests = copied(requests)
    requests[0].header.class_names.extend(names)
    with pytest.raises(InvalidArgument) as refused:
        DatasetService(store, Settings()).start(requests[0])
    assert refused.value.violations == (FieldViolation("header.class_names", says),)


@pytest.mark.parametrize("task", [BINARY, datasets_pb2.TASK_KIND_MULTICLASS_CLASSIFICATION])
def test_classification_targets_of_several_columns_are_refused_at_the_header(
    store: Store, task: datasets_pb2.TaskKind.ValueType
) -> None:
    """The header says their shape: one-hot rows were refused only once every byte had been
    sent."""
    requests = upload(task, np.array([[1, 0], [0, 1], [1, 0]], "<i8"))
    requests[0].header.targets.shape[:] = [3, 2]
    with pytest.raises(InvalidArgument) as refused:
        DatasetService(store, Settings()).start(requests[0])
    assert refused.value.violations == (
        FieldViolation(
            "header.targets.shape",
            "classification targets must be labels of shape (3,), one class per example (of "
            "one-hot rows, send each row's argmax); 2 target columns make a regression. "
            "Received: [3, 2]",
        ),
    )


def test_class_names_not_one_per_class_the_labels_make_say_where_the_count_came_from(
    store: Store,
) -> None:
    """ "has 4 names for 3 classes" did not say that the labels made the 3, nor that
    num_classes makes room for a class without examples."""
    requests = multiclass_upload([0, 1, 2, 1])
    requests[0].header.class_names.extend(["a", "b", "c", "d"])
    with pytest.raises(InvalidArgument) as refused:
        DatasetService(store, Settings()).upload(requests, "default")
    assert refused.value.violations == (
        FieldViolation(
            "header.class_names",
            "has 4 names for the 3 classes the labels make (0 to 2, header.num_classes being "
            "0): give one name per class, or set header.num_classes to the classes the names "
            "are for",
        ),
    )
    requests[0].header.num_classes = 4
    assert DatasetService(store, Settings()).upload(requests, "default").num_classes == 4


MiB = 1 << 20


def float64_upload(rows: int, chunks: list[bytes]) -> list[datasets_pb2.UploadDatasetRequest]:
    """A header announcing `rows` examples of 4 float64 features and a float64 target (40 bytes
    each), then the given chunks."""
    float64 = tensor_pb2.DATA_TYPE_FLOAT64
    header = datasets_pb2.DatasetHeader(
        task=REGRESSION,
        features=tensor_pb2.TensorInfo(dtype=float64, shape=[rows, 4]),
        targets=tensor_pb2.TensorInfo(dtype=float64, shape=[rows]),
    )
    return [datasets_pb2.UploadDatasetRequest(header=header)] + [
        datasets_pb2.UploadDatasetRequest(chunk=chunk) for chunk in chunks
    ]


@pytest.mark.parametrize(
    ("requests", "says"),
    [
        (float64_upload(64 * MiB // 40, [bytes(MiB)] * 4), "the upload ended after 4194304 of"),
        # 2.5 MiB, complete: refused once the bytes are viewed as arrays.
        (float64_upload(2**16, [np.full(MiB // 16, np.nan).tobytes()] * 5), "must be finite"),
    ],
    ids=["ended-early", "not-finite"],
)
def test_an_upload_holds_the_bytes_received_and_lets_go_when_it_fails(
    store: Store, requests: list[datasets_pb2.UploadDatasetRequest], says: str
) -> None:
    """4 MiB sent: a header announcing 64 MiB allocated (and zero-filled) all 64 at once, and the
    bytes lived as long as the error did, which grpc keeps after the call (in a reference cycle
    with the call's state): the frames in its traceback held them. Data of NaN also took twice its
    size to report the first one."""
    service = DatasetService(store, Settings(max_dataset_bytes=128 * MiB))
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgument, match=says) as refused:
            service.upload(requests, "default")
        left, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, "about the 4 MiB received, not the size announced"
    assert left < MiB, "the error (still alive here) must not hold the upload's bytes"
    assert refused.value.violations


def test_a_stored_upload_holds_one_copy_of_its_bytes(store: Store) -> None:
    """The upload's buffer is stored as it is: serialised apart (`save_state`), the arrays were
    a second copy, held with the first while the dataset was stored (2.08 times the upload at
    the peak here), and the finiteness check's booleans for every value were a quarter of it
    more (1.30 without the copy). Now 1.18: the buffer, which grows by up to an eighth past its
    size, and the booleans of a block of values. The database driver's copies, made outside
    Python's allocator, are not counted here (see test_store)."""
    features = np.random.default_rng(0).standard_normal((4096, 1024)).astype("<f4")  # 16 MiB
    targets = np.arange(4096, dtype="<f4")
    sent = features.tobytes() + targets.tobytes()
    requests = float64_upload(4096, [])
    header = requests[0].header
    header.features.CopyFrom(
        tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[4096, 1024])
    )
    header.targets.CopyFrom(tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[4096]))
    requests += [
        datasets_pb2.UploadDatasetRequest(chunk=sent[at : at + MiB])
        for at in range(0, len(sent), MiB)
    ]
    del sent
    service = DatasetService(store, Settings())
    tracemalloc.start()
    try:
        dataset = service.upload(requests, "default")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.25 * (features.nbytes + targets.nbytes), peak
    stored_features, stored_targets = service.arrays(dataset.id)
    assert np.array_equal(stored_features, features) and np.array_equal(stored_targets, targets)


@pytest.mark.parametrize(
    ("task", "dtype", "stored"),
    [
        (REGRESSION, tensor_pb2.DATA_TYPE_FLOAT32, "float32"),
        (REGRESSION, tensor_pb2.DATA_TYPE_FLOAT64, "float64"),
        (REGRESSION, tensor_pb2.DATA_TYPE_INT32, "float64"),
        (REGRESSION, tensor_pb2.DATA_TYPE_INT64, "float64"),
        (datasets_pb2.TASK_KIND_MULTICLASS_CLASSIFICATION, tensor_pb2.DATA_TYPE_INT32, "int64"),
        (datasets_pb2.TASK_KIND_MULTICLASS_CLASSIFICATION, tensor_pb2.DATA_TYPE_INT64, "int64"),
        (datasets_pb2.TASK_KIND_MULTICLASS_CLASSIFICATION, tensor_pb2.DATA_TYPE_FLOAT64, "int64"),
        (BINARY, tensor_pb2.DATA_TYPE_FLOAT32, "int64"),
    ],
)
def test_targets_stored_as_another_dtype_replace_the_bytes_sent(
    store: Store, task: datasets_pb2.TaskKind.ValueType, dtype: int, stored: str
) -> None:
    """The targets are the end of the buffer stored: converted (labels to int64, whole-number
    regression targets to float64), theirs replace the bytes sent, as the state's header says."""
    values = np.array([0, 1, 1, 0, 1])
    wire = {
        tensor_pb2.DATA_TYPE_FLOAT32: "<f4",
        tensor_pb2.DATA_TYPE_FLOAT64: "<f8",
        tensor_pb2.DATA_TYPE_INT32: "<i4",
        tensor_pb2.DATA_TYPE_INT64: "<i8",
    }[dtype]
    features = np.arange(10, dtype="<f4").reshape(5, 2)
    header = datasets_pb2.DatasetHeader(
        task=task,
        features=tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[5, 2]),
        targets=tensor_pb2.TensorInfo(dtype=dtype, shape=[5]),
    )
    chunk = features.tobytes() + values.astype(wire).tobytes()
    service = DatasetService(store, Settings())
    dataset = service.upload(
        [
            datasets_pb2.UploadDatasetRequest(header=header),
            datasets_pb2.UploadDatasetRequest(chunk=chunk),
        ],
        "default",
    )
    assert dataset.target_dtype == stored and dataset.size_bytes == len(chunk)
    assert dataset.sha256 == hashlib.sha256(chunk).hexdigest()
    stored_features, stored_targets = service.arrays(dataset.id)
    assert stored_features.dtype == np.float32 and np.array_equal(stored_features, features)
    assert stored_targets.dtype == np.dtype(stored) and np.array_equal(stored_targets, values)


@pytest.mark.parametrize(("row", "column"), [(0, 0), (2047, 511), (2048, 0), (3000, 7)])
def test_a_value_not_finite_is_found_at_its_index_in_any_block(
    store: Store, row: int, column: int
) -> None:
    """The values are checked a block (2**20) at a time: the first one not finite is named by
    its index in the array, past the first block too."""
    features = np.zeros((4096, 512), "<f4")  # 2 blocks of values
    features[row, column] = np.inf
    features[3500, 0] = np.nan  # a later one is not the first
    requests = float64_upload(4096, [features.tobytes() + bytes(4096 * 8)])
    requests[0].header.features.CopyFrom(
        tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[4096, 512])
    )
    with pytest.raises(InvalidArgument) as refused:
        DatasetService(store, Settings()).upload(requests, "default")
    assert refused.value.violations[0].field == "features"
    assert f"must be finite; found inf at index ({row}, {column})" in refused.value.message


def test_a_sha256_that_is_no_sha256_is_refused_as_such(store: Store) -> None:
    """It was compared with the bytes' digest and refused as "does not match"."""
    requests = multiclass_upload([0, 1, 2])
    requests[0].header.sha256 = "zz\x00"
    with pytest.raises(InvalidArgument) as refused:
        DatasetService(store, Settings()).upload(requests, "default")
    assert refused.value.violations[0].field == "header.sha256"
    assert "must be 64 hex digits" in refused.value.message
    assert "Received: 'zz\\x00'" in refused.value.message  # quoted, not a raw NUL


def test_a_dataset_stored_larger_than_the_database_takes_is_refused_at_its_header(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within max_dataset_bytes as sent, but int32 labels are stored as int64: the database
    refused the value once every byte had been received, answered INTERNAL. The limit is
    lowered here; SQLite's is 1,000,000,000 bytes."""
    monkeypatch.setattr(datasets, "MAX_STORED_DATASET_BYTES", 1000)
    requests = upload(datasets_pb2.TASK_KIND_MULTICLASS_CLASSIFICATION, np.zeros(100, "<i8"))
    header = requests[0].header
    header.num_classes = 2
    header.targets.dtype = tensor_pb2.DATA_TYPE_INT32  # 400 bytes of features, 400 of labels
    service = DatasetService(store, Settings(max_dataset_bytes=1000))
    with pytest.raises(ResourceExhausted) as refused:
        service.start(requests[0])
    assert refused.value.message.startswith("the dataset would be stored in ")
    assert "(its targets as int64), more than the 1000 the database stores" in (
        refused.value.message
    )


def test_features_past_the_size_limit_are_refused_for_their_size(store: Store) -> None:
    """[2**62, 2**62] was refused as "targets.shape must be (4611686018427387904,)"."""
    requests = multiclass_upload([0, 1, 2])
    requests[0].header.features.shape[:] = [2**62, 2**62]
    with pytest.raises(ResourceExhausted) as refused:
        DatasetService(store, Settings()).upload(requests, "default")
    assert refused.value.message.startswith("max_dataset_bytes is limited to 536870912. Received:")
    assert f"the features alone: [{2**62}, {2**62}] of float32" in refused.value.message


@pytest.mark.parametrize(
    ("requests", "field", "names", "says"),
    [
        (
            float64_upload(3, [bytes(120)]),  # 4 features
            "feature_names[3]",
            ["a", "b", "c", "b"],
            "names 'b', as header.feature_names[1] does: each feature needs a name of its own",
        ),
        (
            multiclass_upload([0, 1, 2]),
            "class_names[2]",
            ["x", "y", "x"],
            "names 'x', as header.class_names[0] does: each class needs a name of its own",
        ),
        (
            multiclass_upload([0, 1, 2]),
            "class_names[1]",
            ["x", " ", "z"],
            "is an empty name: give each class a name, or send no names. Received: ' '",
        ),
        (
            float64_upload(3, [bytes(120)]),
            "feature_names[1]",
            ["a", "", "c", "d"],
            "is an empty name: give each feature a name, or send no names. Received: ''",
        ),
        (
            multiclass_upload([0, 1, 2]),
            "class_names[2]",
            ["x", "y", "z" * 257],
            "must be at most 256 characters. Received: 257",
        ),
        (
            multiclass_upload([0, 1, 2]),
            "class_names[1]",
            ["x", "y\x00", "z"],
            "must not contain control characters",
        ),
    ],
    ids=[
        "feature_names",
        "class_names",
        "empty class name",
        "empty feature name",
        "long class name",
        "NUL in a class name",
    ],
)
def test_a_name_given_twice_or_empty_is_refused(
    store: Store,
    requests: list[datasets_pb2.UploadDatasetRequest],
    field: str,
    names: list[str],
    says: str,
) -> None:
    """They were stored, and the CLI, which matches CSV columns by feature name, could not tell
    the features apart (nor find one of no name). The field names the bad one's index: "holds
    an empty name" left whoever sent 100,000 names to find which."""
    requests = copied(requests)
    getattr(requests[0].header, field.partition("[")[0]).extend(names)
    with pytest.raises(InvalidArgument) as refused:
        DatasetService(store, Settings()).upload(requests, "default")
    [violation] = refused.value.violations
    assert violation.field == f"header.{field}"
    assert violation.description.startswith(says)
    assert store.list_datasets(10, "")[0] == []


def test_names_too_large_for_an_answer_are_refused_before_the_upload_is_stored(
    store: Store,
) -> None:
    """100,000 class names of 256 characters were accepted, and every answer showing the
    dataset (GetDataset, ListDatasets, a model's metadata) then failed for the message limit."""
    settings = Settings(max_message_bytes=1 << 20)
    requests = multiclass_upload([0, 1, 2])
    requests[0].header.feature_names.append("x" * 200)
    requests[0].header.num_classes = 2000
    requests[0].header.class_names.extend(f"{i:04d}" + "c" * 250 for i in range(2000))
    with pytest.raises(ResourceExhausted) as refused:
        DatasetService(store, settings).upload(requests, "default")
    assert "header.feature_names and header.class_names is limited to" in refused.value.message
    assert "raise TRAINWIRE_MAX_MESSAGE_BYTES" in refused.value.message
    assert store.list_datasets(10, "")[0] == []
    del requests[0].header.class_names[1000:]
    requests[0].header.num_classes = 1000
    assert DatasetService(store, settings).upload(requests, "default").num_classes == 1000


def test_an_upload_cancelled_while_it_is_stored_keeps_its_slot_until_the_store_ends(
    store: Store,
) -> None:
    """A pool thread cannot be stopped: an upload cancelled once its last chunk had arrived
    let go of its slot and its client's count at once while the pool went on hashing and
    storing its bytes, so a client cancelling each upload so held twice the slots' bytes and
    every pool thread, counted nowhere. They are held until the storing ends."""
    storing, release = threading.Event(), threading.Event()
    service = DatasetService(store, Settings(grpc_threads=1))
    finish = service.finish

    def slow_finish(upload: Any, project: str) -> Any:
        storing.set()
        assert release.wait(30), "the test never released the store"
        return finish(upload, project)

    service.finish = slow_finish  # type: ignore[method-assign]

    async def requests() -> AsyncIterator[datasets_pb2.UploadDatasetRequest]:
        for request in float64_upload(2, [np.zeros(10).tobytes()]):  # 2 rows of 40 bytes
            yield request

    async def scenario() -> None:
        uploads = ClientLimiter("max_uploads_per_client", 4, "uploads")
        with ThreadPoolExecutor(2) as pool:
            servicer = DatasetServicer(service, uploads, pool)
            context: Any = SimpleNamespace(peer=lambda: "ipv4:127.0.0.1:1")
            call = asyncio.ensure_future(servicer.UploadDataset(requests(), context))
            while not storing.is_set():
                await asyncio.sleep(0.01)
            call.cancel()
            for _ in range(20):  # the cancellation runs its course as far as it can
                await asyncio.sleep(0.01)
            assert servicer.upload_slots.locked(), "the slot is held while the bytes are stored"
            assert uploads.open == {"ipv4:127.0.0.1:1": 1}
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert not servicer.upload_slots.locked() and uploads.open == {}

    asyncio.run(scenario())


def test_a_retry_is_compared_with_its_dataset_as_the_upload_stored_it(store: Store) -> None:
    """What the server derives is not a difference: int32 labels stored as int64, a class
    count of 0 inferred from the labels, a SHA-256 given in capitals, integer regression
    targets stored as float64."""
    service = DatasetService(store, Settings())
    labels = np.array([0, 2, 1, 2], "<i4")
    features = np.zeros((4, 1), "<f4")
    digest = hashlib.sha256(features.tobytes() + labels.tobytes()).hexdigest().upper()
    for task in (datasets_pb2.TASK_KIND_MULTICLASS_CLASSIFICATION, REGRESSION):
        requests = upload(task, labels)
        requests[0].header.targets.dtype = tensor_pb2.DATA_TYPE_INT32
        requests[0].header.sha256 = digest
        requests[0].header.request_id = f"retried-{task}"
        stored = service.upload(requests, "default")
        assert service.stored_for(requests[0], "default") == stored
        assert service.upload(requests, "default") == stored
    assert len(store.list_datasets(10, "")[0]) == 2


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("task", 0, "Received: TASK_KIND_UNSPECIFIED (0: the field unset, or an enum name"),
        ("task", 9, "Received: 9 (no TaskKind has that number)"),
        ("features", tensor_pb2.DATA_TYPE_INT32, "Received: DATA_TYPE_INT32 (3)"),
        ("targets", 0, "Received: DATA_TYPE_UNSPECIFIED (0: the field unset, or an enum name"),
        ("targets", 7, "Received: 7 (no DataType has that number)"),
    ],
)
def test_an_enum_the_header_refuses_is_quoted_by_name(
    store: Store, field: str, value: int, says: str
) -> None:
    """A refused enum was quoted as a bare number: a caller sending names (protobuf.js, JSON)
    had to look "Received: 3" up, and could not tell that "float32", a name protobuf.js does
    not know, had gone out as 0, unset."""
    requests = multiclass_upload([0, 1, 2])
    header = requests[0].header
    if field == "task":
        header.task = value  # type: ignore[assignment]
    else:
        getattr(header, field).dtype = value
    with pytest.raises(InvalidArgument) as refused:
        DatasetService(store, Settings()).start(requests[0])
    assert says in refused.value.message
