"""The dataset service's checks of an upload, against a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import numpy as np
import pytest

from trainwire.server.config import Settings
from trainwire.server.datasets import MAX_CLASSES, DatasetService
from trainwire.server.errors import InvalidArgument
from trainwire.server.store import Store
from trainwire.v1 import datasets_pb2, tensor_pb2


def multiclass_upload(labels: list[int]) -> list[datasets_pb2.UploadDatasetRequest]:
    """A header and one chunk: one feature per example, int64 labels."""
    features = np.zeros((len(labels), 1), "<f4")
    targets = np.array(labels, "<i8")
    header = datasets_pb2.DatasetHeader(
        task=datasets_pb2.TASK_KIND_MULTICLASS_CLASSIFICATION,
        features=tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[len(labels), 1]),
        targets=tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_INT64, shape=[len(labels)]),
    )
    return [
        datasets_pb2.UploadDatasetRequest(header=header),
        datasets_pb2.UploadDatasetRequest(chunk=features.tobytes() + targets.tobytes()),
    ]


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
