"""The whole path over a real gRPC channel: upload, train in worker processes, poll, predict."""

from __future__ import annotations

import time
import uuid

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from trainwire.client import (
    AlreadyExists,
    Client,
    DatasetInfo,
    FailedPrecondition,
    InvalidArgument,
    JobFailed,
    NotFound,
)
from trainwire.server.local import LocalServer

MLP = {
    "layers": [
        {"type": "dense", "units": 16, "activation": "relu"},
        {"type": "dense", "units": 16, "activation": "relu"},
        {"type": "dense", "units": 3},
    ]
}


def test_train_to_accuracy_and_predict(
    client: Client, iris_dataset: DatasetInfo, iris: dict[str, np.ndarray]
) -> None:
    assert (iris_dataset.num_examples, iris_dataset.num_features) == (120, 4)
    assert iris_dataset.num_classes == 3 and iris_dataset.task == "multiclass"
    job = client.create_job(
        iris_dataset,
        MLP,
        epochs=40,
        batch_size=16,
        optimizer={"name": "adam", "learning_rate": 0.01},
        validation_fraction=0.2,
        seed=1,
    )
    assert job.last_status.state in {"QUEUED", "RUNNING", "SUCCEEDED"}
    status = job.wait(timeout=120, poll_interval=0.2)
    assert status.state == "SUCCEEDED"
    assert status.epoch == status.total_epochs == 40
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(status.metrics)
    assert list(status.metrics) == sorted(status.metrics), "in name order, as printed"
    assert status.metrics["accuracy"] >= 0.9

    prediction = job.predict(iris["x_test"])
    assert prediction.labels is not None and prediction.probabilities is not None
    assert prediction.outputs.shape == (30, 3) and prediction.labels.dtype == np.int64
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = (prediction.labels == iris["y_test"]).mean()
    assert accuracy >= 0.9, f"test accuracy {accuracy}"
    assert prediction.checkpoint.startswith(f"{job.name}/checkpoints/")
    raw = job.predict(iris["x_test"], outputs_only=True)
    assert raw.probabilities is None and raw.labels is None
    assert np.array_equal(raw.outputs, prediction.outputs)
    [streamed] = job.predict_stream([iris["x_test"]], outputs_only=True)
    assert streamed.probabilities is None and np.array_equal(streamed.outputs, raw.outputs)

    listed = [j.name for j in client.list_jobs(dataset=iris_dataset.name)]
    assert job.name in listed
    assert client.get_job(job.name).status().state == "SUCCEEDED"


def test_regression_and_binary_jobs(client: Client) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 3)).astype(np.float32)
    y_reg = (x @ np.array([1.5, -2.0, 0.5], dtype=np.float32) + 0.3).astype(np.float32)
    y_bin = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    regression = client.upload_dataset(x, y_reg, name="linear")
    binary = client.upload_dataset(x, y_bin, name="halfplane")
    assert regression.task == "regression" and binary.task == "binary"
    linear = client.create_job(
        regression, {"layers": [{"type": "dense", "units": 1}]}, epochs=60, learning_rate=0.05
    )
    logistic = client.create_job(
        binary, {"layers": [{"type": "dense", "units": 1}]}, epochs=60, learning_rate=0.05
    )
    assert linear.wait(timeout=120).metrics["r2"] > 0.99
    assert logistic.wait(timeout=120).metrics["accuracy"] > 0.95
    # A sigmoid head under mse: every answer would be sigmoid(sigmoid(z)) >= 0.5, class 1.
    with pytest.raises(InvalidArgument) as sigmoid_head:
        head = {"layers": [{"type": "dense", "units": 1, "activation": "sigmoid"}]}
        client.create_job(binary, head, loss="mse", validate=False)
    assert sigmoid_head.value.field_violations[0][0] == "model.layers[0].activation"
    assert "a sigmoid here" in sigmoid_head.value.field_violations[0][1]
    prediction = logistic.predict(x[:10])
    assert prediction.probabilities is not None and prediction.probabilities.shape == (10, 2)
    assert prediction.labels is not None
    np.testing.assert_array_equal(
        prediction.labels, (prediction.outputs[:, 0] > 0).astype(np.int64)
    )


def test_upload_larger_than_one_message(client: Client) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20_000, 64)).astype(np.float32)  # 5 MiB: several chunks
    y = rng.integers(0, 4, size=20_000)
    dataset = client.upload_dataset(x, y, task="multiclass")
    assert dataset.num_examples == 20_000 and dataset.size_bytes == x.nbytes + y.nbytes
    assert client.get_dataset(dataset.name) == dataset
    assert dataset.name in [d.name for d in client.list_datasets()]


def test_failed_job_reports_reason_and_worker_lives_on(
    client: Client, iris_dataset: DatasetInfo
) -> None:
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(64, 2)) * 1e3).astype(np.float32)
    y = (rng.normal(size=64) * 1e3).astype(np.float32)
    wild = client.upload_dataset(x, y)
    diverging = client.create_job(
        wild, {"layers": [{"type": "dense", "units": 1}]}, epochs=20, optimizer="sgd",
        learning_rate=1e3,
    )  # fmt: skip
    with pytest.raises(JobFailed, match="loss became"):
        diverging.wait(timeout=120)
    assert diverging.status().state == "FAILED"
    after = client.create_job(iris_dataset, MLP, epochs=2)
    assert after.wait(timeout=120).state == "SUCCEEDED"


def test_create_job_is_idempotent_by_request_id(client: Client, iris_dataset: DatasetInfo) -> None:
    request_id = uuid.uuid4().hex
    first = client.create_job(iris_dataset, MLP, epochs=1, request_id=request_id)
    second = client.create_job(iris_dataset, MLP, epochs=1, request_id=request_id)
    assert first.name == second.name
    # The same id on another request was answered with the first job, its epochs dropped.
    with pytest.raises(AlreadyExists, match=f"{request_id}' was already used by {first.name}"):
        client.create_job(iris_dataset, MLP, epochs=3, request_id=request_id)
    first.wait(timeout=120)


@pytest.mark.parametrize(
    ("features", "targets", "message"),
    [
        (np.array([[1.0, np.nan]], np.float32), np.array([0]), "must be finite"),
        (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), "empty"),
        (np.zeros((3, 4), np.float32), np.zeros(2, np.int64), "targets.shape"),
        (np.zeros((3, 4), np.float32), np.array([0, -1, 1]), "negative"),
    ],
)
def test_bad_uploads_are_invalid_argument(
    client: Client, features: np.ndarray, targets: np.ndarray, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as caught:
        client.upload_dataset(features, targets, task="multiclass")
    assert caught.value.field_violations, "the offending field is named"


def test_bad_jobs_get_clear_statuses(client: Client, iris_dataset: DatasetInfo) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        client.create_job(f"datasets/{uuid.uuid4().hex}", MLP)
    with pytest.raises(InvalidArgument, match="dataset"):
        client.create_job("not-a-name", MLP)
    with pytest.raises(InvalidArgument, match="takes 5 features") as wrong_width:
        client.create_job(iris_dataset, {"input_dim": 5, **MLP})
    assert wrong_width.value.field_violations[0][0] == "model.input_dim"
    with pytest.raises(InvalidArgument, match="3 classes"):
        client.create_job(iris_dataset, {"layers": [{"type": "dense", "units": 2}]})
    with pytest.raises(InvalidArgument, match="units"):
        client.create_job(iris_dataset, {"layers": [{"type": "dense", "units": -3}]})
    with pytest.raises(InvalidArgument, match="adamm"):
        client.create_job(iris_dataset, MLP, optimizer="adamm")
    # It was answered under `training` with "Adam.__init__() got an unexpected keyword".
    with pytest.raises(InvalidArgument) as unknown_parameter:
        optimizer = {"name": "adam", "betaa": 0.9}
        client.create_job(iris_dataset, MLP, optimizer=optimizer, validate=False)
    assert unknown_parameter.value.field_violations == [
        (
            "training.optimizer.params['betaa']",
            "is not a parameter of optimizer 'adam', which takes: learning_rate, beta_1, beta_2, "
            "epsilon, weight_decay, clip_norm. Received: 'betaa'=0.9",
        )
    ]
    with pytest.raises(InvalidArgument) as unknown_parameter:
        schedule = {"name": "step", "step_sizee": 3}
        client.create_job(iris_dataset, MLP, schedule=schedule, validate=False)
    assert unknown_parameter.value.field_violations == [
        (
            "training.schedule.params['step_sizee']",
            "is not a parameter of schedule 'step', which takes: step_size, gamma, interval. "
            "Received: 'step_sizee'=3.0",
        )
    ]
    with pytest.raises(InvalidArgument, match="validation_fraction"):
        client.create_job(iris_dataset, MLP, validation_fraction=1.5)
    # A mistake in the training settings and one in the model are reported together: a
    # caller without the SDK's local checks needed a round trip for each.
    with pytest.raises(InvalidArgument) as two_mistakes:
        bad_model = {"layers": [{"type": "dense", "units": 0}]}
        client.create_job(iris_dataset, bad_model, validation_fraction=1.5, validate=False)
    fields = [field for field, _ in two_mistakes.value.field_violations]
    assert fields == ["training.validation_fraction", "model"]
    assert "1.5" in str(two_mistakes.value) and "units=0" in str(two_mistakes.value)
    # A Keras-style softmax head before softmax_cross_entropy, which applies its own: the
    # probabilities answered were softmax(softmax(z)), at most e / (e + 2) = 0.58 for iris.
    head = {"layers": [*MLP["layers"][:-1], {**MLP["layers"][-1], "activation": "softmax"}]}
    with pytest.raises(InvalidArgument) as double_softmax:
        client.create_job(iris_dataset, head, validate=False)
    field, description = double_softmax.value.field_violations[0]
    assert field == f"model.layers[{len(MLP['layers']) - 1}].activation"
    assert description.startswith("softmax_cross_entropy takes logits and applies the softmax")


def test_bad_predictions_get_clear_statuses(
    client: Client, iris_dataset: DatasetInfo, iris: dict[str, np.ndarray]
) -> None:
    with pytest.raises(NotFound):
        client.predict(f"jobs/{uuid.uuid4().hex}", iris["x_test"])
    job = client.create_job(iris_dataset, MLP, epochs=2)
    job.wait(timeout=120)
    with pytest.raises(InvalidArgument, match=r"\(rows, 4\)"):
        job.predict(np.zeros((2, 7), np.float32))
    with pytest.raises(InvalidArgument, match="finite"):
        job.predict(np.full((1, 4), np.inf, np.float32))
    with pytest.raises(NotFound, match="epoch 99"):
        job.predict(iris["x_test"], checkpoint="epoch/99")
    queued = client.create_job(iris_dataset, MLP, epochs=1, queue="nobody-listens")
    time.sleep(1.0)  # longer than the workers' poll interval: they take the default queue only
    assert queued.status().state == "QUEUED"
    with pytest.raises(FailedPrecondition, match=r"no checkpoint yet .* so wait for the job"):
        queued.predict(iris["x_test"])
    # It was told to wait for a checkpoint, which a job that ended never writes.
    queued.cancel()
    time.sleep(2.5)  # past the server's job cache, which still holds the job QUEUED
    with pytest.raises(
        FailedPrecondition,
        match=r"ended CANCELLED without a checkpoint, .*; create a new job to train one",
    ):
        queued.predict(iris["x_test"])


def test_health_and_reflection_answer_stock_tools(live_server: LocalServer) -> None:
    with grpc.insecure_channel(live_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "trainwire.v1.JobService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = reflection.ServerReflectionInfo(iter([request]), timeout=10)
        names = {s.name for s in answer.list_services_response.service}
        assert {
            "trainwire.v1.DatasetService",
            "trainwire.v1.JobService",
            "trainwire.v1.PredictionService",
            "grpc.health.v1.Health",
        } <= names
