"""Random and mutated messages at every RPC of a live server (hypothesis).

Each answer must be OK or a deliberate status (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
RESOURCE_EXHAUSTED, ...): never UNKNOWN or INTERNAL, never a stack trace, and the server must still
answer a health check afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainwire.client import Client
from trainwire.server.local import local_server
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

EXAMPLES = int(os.environ.get("TRAINWIRE_FUZZ_EXAMPLES", "100"))
DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
}
# Only a watch (WatchJob, WatchJobBatches) of a job that never ends runs into its short deadline;
# any other call that does hung.
DEADLINE_ALLOWED = {"WatchJob", "WatchJobBatches"}
SENT: dict[str, int] = {}
ANSWERS: dict[str, dict[str, int]] = {}


class Live:
    def __init__(self, target: str, dataset: str, job: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.datasets = datasets_pb2_grpc.DatasetServiceStub(self.channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.predictions = predictions_pb2_grpc.PredictionServiceStub(self.channel)
        self.dataset = dataset
        self.job = job


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
    limits = {
        "TRAINWIRE_MAX_EPOCHS": "3",
        "TRAINWIRE_MAX_PARAMETERS": "5000",
        "TRAINWIRE_MAX_DATASET_BYTES": "100000",
    }
    with local_server(url, workers=1, extra_env=limits) as server:
        with Client(server.target) as client:
            x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
            data = client.upload_dataset(x, np.arange(30) % 3)
            model = {"layers": [{"type": "dense", "units": 3}]}
            job = client.create_job(data, model, epochs=2)
            job.wait(timeout=60)
        live = Live(server.target, data.name, job.name)
        yield live
        health = health_pb2_grpc.HealthStub(live.channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        live.channel.close()
        log = "".join(server.output)
    # The servicers hit no unexpected error (the interceptor logs each one with its trace).
    assert "unexpected error in" not in log, log[-4000:]
    print(f"fuzz messages sent per RPC: {SENT}")
    print(f"answers per RPC: {ANSWERS}")


def call(name: str, method: Callable[..., Any], request: Any, timeout: float = 10) -> None:
    SENT[name] = SENT.get(name, 0) + 1
    answers = ANSWERS.setdefault(name, {})
    try:
        response = method(request, timeout=timeout)
        if hasattr(response, "__iter__") and not hasattr(response, "ListFields"):
            for _ in response:
                pass
        answers["OK"] = answers.get("OK", 0) + 1
        return
    except grpc.RpcError as error:
        code = error.code()
        details = error.details() or ""
    answers[code.name] = answers.get(code.name, 0) + 1
    allowed = DELIBERATE | (
        {grpc.StatusCode.DEADLINE_EXCEEDED} if name in DEADLINE_ALLOWED else set()
    )
    assert code in allowed, f"{name} answered {code}: {details}"
    assert "Traceback" not in details and 'File "' not in details
    assert details, f"{name} answered {code} without a message"


text = st.text(max_size=40)
small_ints = st.integers(-(2**31), 2**31 - 1)
floats = st.floats(allow_nan=True, allow_infinity=True)
dtypes = st.integers(-3, 8)
shapes = st.lists(st.one_of(st.integers(-5, 40), st.integers(-(2**62), 2**62)), max_size=4)


def names(live_name: Callable[[Live], str]) -> st.SearchStrategy[Callable[[Live], str]]:
    """A real resource name, a well-formed unknown one, or junk."""
    return st.one_of(
        st.just(live_name),
        st.just(live_name),
        st.just(lambda _: f"jobs/{uuid.uuid4().hex}"),
        st.just(lambda _: f"datasets/{uuid.uuid4().hex}"),
        text.map(lambda t: lambda _: t),
    )


finite = st.floats(-1e3, 1e3, width=32)


@st.composite
def tensors(draw: st.DrawFn) -> tensor_pb2.Tensor:
    """Mostly well-formed inputs for the 4-feature model (some with NaN/Inf or a wrong width),
    otherwise arbitrary dtype, shape and bytes."""
    shape = draw(shapes)
    dtype = draw(dtypes)
    if draw(st.integers(0, 3)) > 0:
        rows = draw(st.integers(0, 5))
        cols = draw(st.sampled_from([4, 4, 4, 3, 0]))
        values = draw(
            st.lists(st.one_of(finite, floats), min_size=rows * cols, max_size=rows * cols)
        )
        with np.errstate(over="ignore"):  # huge floats become inf: wanted
            data = np.array(values, dtype="<f4").tobytes()
        shape, dtype = [rows, cols], tensor_pb2.DATA_TYPE_FLOAT32
    else:
        data = draw(st.binary(max_size=64))
    return tensor_pb2.Tensor(dtype=dtype, shape=shape, data=data)


@st.composite
def layers(draw: st.DrawFn) -> models_pb2.LayerSpec:
    kind = draw(st.sampled_from(["dense", "dropout", "batch_norm", "activation", "empty"]))
    if kind == "dense":
        return models_pb2.LayerSpec(
            dense=models_pb2.DenseLayer(
                units=draw(st.one_of(st.integers(-3, 8), small_ints)),
                activation=draw(st.one_of(st.sampled_from(["relu", "tanh", ""]), text)),
                no_bias=draw(st.booleans()),
                kernel_initializer=draw(st.one_of(st.just(""), text)),
            )
        )
    if kind == "dropout":
        return models_pb2.LayerSpec(dropout=models_pb2.DropoutLayer(rate=draw(floats)))
    if kind == "batch_norm":
        return models_pb2.LayerSpec(
            batch_norm=models_pb2.BatchNormLayer(momentum=draw(floats), epsilon=draw(floats))
        )
    if kind == "activation":
        return models_pb2.LayerSpec(
            activation=models_pb2.ActivationLayer(
                name=draw(st.one_of(st.sampled_from(["relu", "leaky_relu", "gelu"]), text)),
                params=draw(st.dictionaries(text, floats, max_size=2)),
            )
        )
    return models_pb2.LayerSpec()


@st.composite
def create_requests(draw: st.DrawFn) -> Callable[[Live], jobs_pb2.CreateJobRequest]:
    """A valid CreateJob (on a queue no worker takes) with a few fields replaced by random ones."""
    fields: dict[str, Any] = {
        "dataset": lambda live: live.dataset,
        "model": models_pb2.ModelSpec(
            layers=[
                models_pb2.LayerSpec(dense=models_pb2.DenseLayer(units=8, activation="relu")),
                models_pb2.LayerSpec(dense=models_pb2.DenseLayer(units=3)),
            ]
        ),
        "training": models_pb2.TrainingConfig(epochs=1),
        "labels": {},
        "display_name": "fuzz",
        "queue": "fuzz",
        "priority": 0,
        "max_attempts": 0,
        "request_id": "",
    }
    mutations: dict[str, st.SearchStrategy[Any]] = {
        "dataset": names(lambda live: live.dataset),
        "model": st.builds(
            models_pb2.ModelSpec,
            input_dim=st.one_of(st.integers(-2, 6), small_ints),
            layers=st.lists(layers(), max_size=3),
        ),
        "training": st.builds(
            models_pb2.TrainingConfig,
            epochs=st.integers(-2, 4),
            batch_size=st.one_of(st.integers(-2, 64), small_ints),
            loss=st.one_of(st.sampled_from(["", "mse", "softmax_cross_entropy"]), text),
            optimizer=st.builds(
                models_pb2.OptimizerSpec,
                name=st.one_of(st.sampled_from(["", "adam", "sgd"]), text),
                learning_rate=floats,
                params=st.dictionaries(text, floats, max_size=2),
            ),
            validation_fraction=floats,
            seed=st.integers(0, 2**64 - 1),
            metrics=st.lists(text, max_size=2),
            checkpoint_every_epochs=st.integers(-2, 3),
            dtype=dtypes,
            keep_checkpoints=st.integers(-2, 3),
        ),
        "labels": st.dictionaries(text, text, max_size=3),
        "display_name": text,
        "queue": text,
        "priority": small_ints,
        "max_attempts": st.integers(-2, 200),
        "request_id": text,
    }
    for field in draw(st.lists(st.sampled_from(sorted(mutations)), max_size=3, unique=True)):
        value = draw(mutations[field])
        fields[field] = value
    dataset = fields.pop("dataset")
    return lambda live: jobs_pb2.CreateJobRequest(dataset=dataset(live), **fields)


@st.composite
def uploads(draw: st.DrawFn) -> list[datasets_pb2.UploadDatasetRequest]:
    header = datasets_pb2.DatasetHeader(
        display_name=draw(text),
        task=draw(st.integers(-1, 5)),
        num_classes=draw(st.one_of(st.just(0), st.integers(-2, 5), small_ints)),
        features=tensor_pb2.TensorInfo(dtype=draw(dtypes), shape=draw(shapes)),
        targets=tensor_pb2.TensorInfo(dtype=draw(dtypes), shape=draw(shapes)),
        sha256=draw(st.one_of(st.just(""), st.just(""), text)),
        labels=draw(st.dictionaries(text, text, max_size=2)),
        feature_names=draw(st.one_of(st.just([]), st.lists(text, max_size=3))),
        class_names=draw(st.one_of(st.just([]), st.lists(text, max_size=3))),
    )
    if draw(st.booleans()):
        # A consistent small upload, then mutated: NaN/Inf values, truncated or extra bytes.
        rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 4))
        header.features.CopyFrom(tensor_pb2.TensorInfo(dtype=1, shape=[rows, cols]))
        header.targets.CopyFrom(tensor_pb2.TensorInfo(dtype=4, shape=[rows]))
        header.task = draw(st.integers(1, 3))
        values = draw(st.lists(floats, min_size=rows * cols, max_size=rows * cols))
        labels = draw(st.lists(st.integers(-2, 4), min_size=rows, max_size=rows))
        with np.errstate(over="ignore"):
            payload = np.array(values, "<f4").tobytes() + np.array(labels, "<i8").tobytes()
        if draw(st.booleans()):  # truncated, or with bytes to spare
            cut = draw(st.integers(0, len(payload) + 8))
            payload = (payload + b"\x00" * 8)[:cut]
        size = draw(st.integers(1, 16))
        chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
    else:
        chunks = draw(st.lists(st.binary(max_size=32), max_size=4))
    # (The header message copies `header`, so it is built after the header's last change.)
    requests = [datasets_pb2.UploadDatasetRequest(header=header)]
    requests += [datasets_pb2.UploadDatasetRequest(chunk=c) for c in chunks]
    if draw(st.integers(0, 4)) == 0:
        requests.insert(draw(st.integers(0, len(requests))), requests[0])  # a second header
    if draw(st.integers(0, 9)) == 0:
        requests = requests[1:]  # no header at all
    return requests


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(uploads())
def test_upload_dataset(live: Live, requests: list[datasets_pb2.UploadDatasetRequest]) -> None:
    call("UploadDataset", live.datasets.UploadDataset, iter(requests))


@FUZZ
@given(names(lambda live: live.dataset), st.integers(-5, 2000), text)
def test_dataset_reads(live: Live, name: Callable[[Live], str], size: int, token: str) -> None:
    call("GetDataset", live.datasets.GetDataset, datasets_pb2.GetDatasetRequest(name=name(live)))
    request = datasets_pb2.ListDatasetsRequest(page_size=size, page_token=token)
    call("ListDatasets", live.datasets.ListDatasets, request)


@FUZZ
@given(names(lambda live: f"datasets/{uuid.uuid4().hex}"))
def test_delete_dataset(live: Live, name: Callable[[Live], str]) -> None:
    request = datasets_pb2.DeleteDatasetRequest(name=name(live))
    call("DeleteDataset", live.datasets.DeleteDataset, request)


@FUZZ
@given(create_requests())
def test_create_job(live: Live, request: Callable[[Live], jobs_pb2.CreateJobRequest]) -> None:
    call("CreateJob", live.jobs.CreateJob, request(live))


@FUZZ
@given(
    names(lambda live: live.job),
    st.integers(-5, 2000),
    text,
    st.integers(-2, 9),
    st.dictionaries(text, text, max_size=2),
    st.lists(text, max_size=2),
)
def test_job_reads(
    live: Live,
    name: Callable[[Live], str],
    size: int,
    token: str,
    state: int,
    labels: dict[str, str],
    metric_names: list[str],
) -> None:
    job = name(live)
    call("GetJob", live.jobs.GetJob, jobs_pb2.GetJobRequest(name=job))
    listing = jobs_pb2.ListJobsRequest(
        page_size=size, page_token=token, state=state, dataset=job, labels=labels
    )
    call("ListJobs", live.jobs.ListJobs, listing)
    metrics = jobs_pb2.ListJobMetricsRequest(name=job, metric_names=metric_names)
    call("ListJobMetrics", live.jobs.ListJobMetrics, metrics)
    call("ListCheckpoints", live.jobs.ListCheckpoints, jobs_pb2.ListCheckpointsRequest(name=job))


@FUZZ
@given(names(lambda live: live.job), st.integers(-(2**63), 2**63 - 1))
def test_watch_job(live: Live, name: Callable[[Live], str], after: int) -> None:
    request = jobs_pb2.WatchJobRequest(name=name(live), after_sequence=after)
    call("WatchJob", live.jobs.WatchJob, request, timeout=3)
    call("WatchJobBatches", live.jobs.WatchJobBatches, request, timeout=3)


@FUZZ
@given(names(lambda live: f"jobs/{uuid.uuid4().hex}"))
def test_cancel_and_delete_job(live: Live, name: Callable[[Live], str]) -> None:
    job = name(live)
    call("CancelJob", live.jobs.CancelJob, jobs_pb2.CancelJobRequest(name=job))
    call("DeleteJob", live.jobs.DeleteJob, jobs_pb2.DeleteJobRequest(name=job))


selectors = st.one_of(
    st.sampled_from(["", "latest", "best", "epoch/2"]),
    st.sampled_from(["epoch/1", "epoch/99", "epoch/x", "epoch/-1", "jobs/x/checkpoints/1"]),
    text,
)


@FUZZ
@given(names(lambda live: live.job), selectors, tensors())
def test_predict(
    live: Live, name: Callable[[Live], str], selector: str, inputs: tensor_pb2.Tensor
) -> None:
    request = predictions_pb2.PredictRequest(job=name(live), checkpoint=selector, inputs=inputs)
    call("Predict", live.predictions.Predict, request)
    metadata = predictions_pb2.GetModelMetadataRequest(job=request.job, checkpoint=selector)
    call("GetModelMetadata", live.predictions.GetModelMetadata, metadata)


@FUZZ
@given(st.lists(st.tuples(names(lambda live: live.job), selectors, tensors()), max_size=4))
def test_predict_stream(live: Live, parts: list[tuple[Callable[[Live], str], str, Any]]) -> None:
    requests = [
        predictions_pb2.PredictRequest(job=name(live), checkpoint=selector, inputs=inputs)
        for name, selector, inputs in parts
    ]
    call("PredictStream", live.predictions.PredictStream, iter(requests))
