"""The SDK's result types made from messages, without a server: Python types where the messages
have protobuf's."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from trainwire.client import (
    Activation,
    BatchNorm,
    Checkpoint,
    DatasetInfo,
    Dense,
    Dropout,
    JobEvent,
    JobStatus,
    ModelInfo,
    Sequential,
)
from trainwire.client.results import event_to_dict
from trainwire.client.specs import model_spec_to_proto
from trainwire.v1 import datasets_pb2, jobs_pb2, predictions_pb2, tensor_pb2

from .conftest import epoch_end_event

CREATED = Timestamp(seconds=1767225600, nanos=123456789)  # 2026-01-01T00:00:00.123456789Z
STARTED = Timestamp(seconds=1767225601)


def test_every_time_the_sdk_returns_is_timezone_aware_utc() -> None:
    created = datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)  # cut to microseconds
    dataset = DatasetInfo.from_proto(datasets_pb2.Dataset(name="datasets/x", create_time=CREATED))
    checkpoint = Checkpoint.from_proto(
        jobs_pb2.Checkpoint(name="jobs/x/checkpoints/1", create_time=CREATED)
    )
    job = JobStatus.from_proto(jobs_pb2.Job(name="jobs/x", create_time=CREATED, start_time=STARTED))
    # An aware time is never equal to a naive one, so these also say that each carries UTC.
    assert dataset.create_time == created and dataset.create_time.tzinfo is UTC
    assert checkpoint.create_time == created and checkpoint.create_time.tzinfo is UTC
    assert job.create_time == created and job.create_time.tzinfo is UTC
    assert job.start_time == datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert job.start_time.tzinfo is UTC
    assert job.end_time is None, "a job still running has not ended"


def test_an_unset_time_is_none() -> None:
    assert DatasetInfo.from_proto(datasets_pb2.Dataset(name="datasets/x")).create_time is None
    assert (
        Checkpoint.from_proto(jobs_pb2.Checkpoint(name="jobs/x/checkpoints/1")).create_time is None
    )
    job = JobStatus.from_proto(jobs_pb2.Job(name="jobs/x", state=jobs_pb2.JOB_STATE_QUEUED))
    assert (job.create_time, job.start_time, job.end_time) == (None, None, None)


def test_model_metadata_has_python_types_and_the_spec_as_users_write_it() -> None:
    model = Sequential(
        [
            Dense(8, activation="relu", kernel_initializer="he_normal"),
            BatchNorm(momentum=0.0),
            Dropout(0.25),
            Activation("leaky_relu", negative_slope=0.5),
            Dense(3, use_bias=False),
        ],
        input_dim=2,
    )
    message = predictions_pb2.ModelMetadata(
        job="jobs/0123abcd",
        checkpoint="jobs/0123abcd/checkpoints/7",
        inputs=tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT64, shape=[-1, 2]),
        outputs=tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT64, shape=[-1, 3]),
        num_classes=3,
        model=model_spec_to_proto(model.to_dict()),
        num_parameters=2 * 8 + 8 + 2 * 8 + 8 * 3,
        class_names=["alpha", "beta", "gamma"],
        feature_names=["x", "y"],
        max_message_bytes=65536,
    )
    info = ModelInfo.from_proto(message)
    assert (info.job, info.checkpoint) == ("jobs/0123abcd", "jobs/0123abcd/checkpoints/7")
    assert info.input_dtype == info.output_dtype == np.dtype(np.float64) == "float64"
    assert info.input_dtype.isnative and info.output_dtype.itemsize == 8
    assert (info.input_shape, info.output_shape) == ((-1, 2), (-1, 3))
    assert info.num_classes == 3 and info.num_parameters == 64
    assert info.class_names == ("alpha", "beta", "gamma") and info.feature_names == ("x", "y")
    assert info.max_message_bytes == 65536
    # The builders' dict, with the defaults the message carries (linear, a bias) written out.
    assert info.model == {
        "input_dim": 2,
        "layers": [
            {"type": "dense", "units": 8, "activation": "relu", "use_bias": True,
             "kernel_initializer": "he_normal"},
            {"type": "batch_norm", "momentum": 0.0, "epsilon": 1e-5},
            {"type": "dropout", "rate": 0.25},
            {"type": "activation", "activation": {"name": "leaky_relu", "negative_slope": 0.5}},
            {"type": "dense", "units": 3, "activation": "linear", "use_bias": False},
        ],
    }  # fmt: skip

    document = info.to_dict()
    assert json.loads(json.dumps(document)) == {
        "job": "jobs/0123abcd",
        "checkpoint": "jobs/0123abcd/checkpoints/7",
        "input_dtype": "float64",
        "input_shape": [-1, 2],
        "output_dtype": "float64",
        "output_shape": [-1, 3],
        "num_classes": 3,
        "class_names": ["alpha", "beta", "gamma"],
        "feature_names": ["x", "y"],
        "num_parameters": 64,
        "model": info.model,
        "max_message_bytes": 65536,
    }
    document["model"]["layers"].clear()
    assert len(info.model["layers"]) == 5, "the JSON is a copy: the snapshot keeps its spec"


def test_a_job_event_has_python_types() -> None:
    """What `watch()` yields: the state by name, the progress lifted, the metrics a dict in name
    order, the time aware UTC; the message is kept as `raw`."""
    message = epoch_end_event(CREATED)
    event = JobEvent.from_proto(message)
    assert (event.sequence, event.state, event.message) == (9, "RUNNING", "epoch 2 done")
    assert event.time == datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert event.time.tzinfo is UTC
    assert (event.epoch, event.total_epochs, event.step, event.total_steps) == (2, 5, 16, 40)
    assert (event.examples_per_second, event.eta_seconds) == (1250.5, 0.75)
    assert list(event.metrics.items()) == [("loss", 0.5), ("val_loss", 0.25)]
    assert event.raw is message

    empty = JobEvent.from_proto(jobs_pb2.JobEvent(sequence=1, state=jobs_pb2.JOB_STATE_QUEUED))
    assert (empty.state, empty.time, empty.metrics, empty.message) == ("QUEUED", None, {}, "")
    assert empty.to_dict() == {
        "sequence": 1,
        "time": None,
        "state": "QUEUED",
        "epoch": 0,
        "total_epochs": 0,
        "eta_seconds": 0.0,
        "metrics": {},
        "message": "",
    }
    document = event.to_dict()
    document["metrics"].clear()
    assert event.metrics, "the JSON is a copy: the snapshot keeps its metrics"


def test_a_job_status_has_its_labels_queue_priority_and_model() -> None:
    """Attributes of their own, no longer reached through `raw`; the spec as the dict
    `create_job` takes. `to_dict()` keeps its fields (the CLI's JSON tests pin its text)."""
    model = Sequential([Dense(8, activation="relu"), Dropout(0.25), Dense(3)], input_dim=4)
    message = jobs_pb2.Job(
        name="jobs/x",
        queue="gpu",
        priority=7,
        labels={"team": "vision", "run": "a"},
        model=model_spec_to_proto(model.to_dict()),
    )
    status = JobStatus.from_proto(message)
    assert status.labels == {"team": "vision", "run": "a"} and type(status.labels) is dict
    assert (status.queue, status.priority) == ("gpu", 7)
    assert status.model == {
        "input_dim": 4,
        "layers": [
            {"type": "dense", "units": 8, "activation": "relu", "use_bias": True},
            {"type": "dropout", "rate": 0.25},
            {"type": "dense", "units": 3, "activation": "linear", "use_bias": True},
        ],
    }
    document = status.to_dict()
    assert "model" not in document
    assert (document["labels"], document["queue"], document["priority"]) == (
        {"team": "vision", "run": "a"}, "gpu", 7,
    )  # fmt: skip
    document["labels"].clear()
    assert status.labels, "the JSON is a copy: the snapshot keeps its labels"


def test_event_to_dict_is_kept_for_its_callers() -> None:
    """Watches yield `JobEvent`s now; the function of the message's dict stays, the same dict."""
    message = jobs_pb2.JobEvent(sequence=3, state=jobs_pb2.JOB_STATE_RUNNING, message="epoch 1")
    assert event_to_dict(message) == JobEvent.from_proto(message).to_dict()


def test_a_jobs_training_shows_its_zero_settings_and_leaves_out_the_parts_not_given() -> None:
    """patience 0 and restore_best_weights false were left out (protobuf's JSON mapping leaves
    out zeros), and the empty early_stopping the server sends for none must not show."""
    job = jobs_pb2.Job(name="jobs/" + "0" * 32)
    job.training.epochs = 3
    job.training.optimizer.name = "adam"
    job.training.early_stopping.monitor = "val_loss"
    job.training.schedule.SetInParent()
    training = JobStatus.from_proto(job).training
    assert training["early_stopping"] == {
        "monitor": "val_loss",
        "patience": 0,
        "min_delta": 0.0,
        "restore_best_weights": False,
    }
    assert training["optimizer"] == {"name": "adam", "learning_rate": 0.0}, "no empty params"
    assert "schedule" not in training and training["seed"] == 0
    job.training.ClearField("early_stopping")
    job.training.early_stopping.SetInParent()
    assert "early_stopping" not in JobStatus.from_proto(job).training
