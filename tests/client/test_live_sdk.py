"""Every SDK method against a live `trainwire serve`."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import uuid
import zlib
from datetime import UTC, timedelta, timezone
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from trainwire.client import (
    BatchNorm,
    Client,
    ClientClosed,
    DatasetInfo,
    Dense,
    Dropout,
    FailedPrecondition,
    InvalidArgument,
    JobFailed,
    Metrics,
    ModelInfo,
    NotFound,
    ResourceExhausted,
    Sequential,
    SpecError,
    TimedOut,
)
from trainwire.client.aio import AsyncClient
from trainwire.client.client import env_settings
from trainwire.client.errors import field_violations
from trainwire.client.wire import prepare_upload
from trainwire.engine import schedules
from trainwire.server.cli import main
from trainwire.server.local import LocalServer
from trainwire.server.wrappers import STATUS_DETAILS_KEY
from trainwire.v1 import jobs_pb2, jobs_pb2_grpc, models_pb2, tensor_pb2

from ..support.checkpoints import assert_same_checkpoints, server_checkpoints
from ..support.tcp_proxy import TcpProxy
from .conftest import CERTIFICATE_PEM, MODEL, blobs


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG, each checked against its CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "PNG signature"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def test_from_env_reads_target_and_key(
    live_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINWIRE_TARGET", live_server.target)
    monkeypatch.setenv("TRAINWIRE_API_KEY", "tw_secret")
    monkeypatch.setenv("TRAINWIRE_TIMEOUT", "7")
    with Client.from_env() as client:
        assert client.target == live_server.target and client.timeout == 7
        assert client._metadata == (("authorization", "Bearer tw_secret"),)


@pytest.mark.parametrize(
    ("value", "tls"), [("system", True), ("true", True), ("false", None), ("", None)]
)
def test_tls_from_the_environment_means_what_the_tls_flag_does(value: str, tls: object) -> None:
    """`--tls system` and TRAINWIRE_TLS=system both verify with the system's CAs (not a CA
    file named "system")."""
    assert env_settings({"TRAINWIRE_TLS": value}).get("tls") == tls


def test_tls_from_the_environment_may_name_a_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(CERTIFICATE_PEM)
    # Read once, there, where the variable can be named; the client takes the bytes.
    assert env_settings({"TRAINWIRE_TLS": str(ca)})["tls"] == ca.read_bytes()


def test_a_connection_whose_handshake_takes_longer_than_a_tenth_of_a_second_is_waited_for(
    live_server: LocalServer,
) -> None:
    """The SDK once set `grpc.min_reconnect_backoff_ms` to 100, which is how long gRPC lets one
    connection attempt take: a slower handshake (a distant server, a loaded machine) was
    abandoned and tried again, several times (and the CI's h2 proxy, which takes one
    connection, then timed out)."""
    host, port = live_server.target.rsplit(":", 1)
    proxy = TcpProxy(host, int(port), delay_s=0.4)
    try:
        with Client(f"127.0.0.1:{proxy.port}", timeout=30) as client:
            list(client.list_datasets())
        assert proxy.accepted == 1, "one connection, waited for"
    finally:
        proxy.close()


def test_a_closed_client_says_so_on_every_kind_of_call(
    live_server: LocalServer, dataset: DatasetInfo
) -> None:
    """gRPC's own ValueError ("Cannot invoke RPC on closed channel!", a watch's and a stream's
    "Channel closed!") was no SDK exception; `ClientClosed` is a FailedPrecondition (and still a
    ValueError) naming the client."""
    features, labels = blobs()
    client = Client(live_server.target, timeout=10)
    with client:
        assert client.get_dataset(dataset.name) == dataset
    calls = {
        "unary": lambda: client.get_dataset(dataset.name),
        "pages": lambda: list(client.list_datasets()),
        "upload": lambda: client.upload_dataset(features, labels, dedupe=False),
        "predict": lambda: client.predict("jobs/any", features),
        "watch": lambda: list(client.watch_job("jobs/any")),
        "stream": lambda: list(client.predict_stream("jobs/any", [features])),
    }
    for call in calls.values():
        with pytest.raises(ClientClosed, match=r"^Client\('.*'\) is closed"):
            call()
    client.close()  # again: nothing to do
    assert issubclass(ClientClosed, FailedPrecondition) and issubclass(ClientClosed, ValueError)


def test_uploads_are_content_addressed(client: Client, dataset: DatasetInfo) -> None:
    features, labels = blobs()
    before = len(list(client.list_datasets()))
    again = client.upload_dataset(features.copy(), labels.copy(), name="blobs again")
    assert again == dataset, "the same arrays give the stored dataset back"
    with Client(client.target) as fresh:  # no local memory: found by listing
        assert fresh.upload_dataset(features, labels).name == dataset.name
    assert len(list(client.list_datasets())) == before
    forced = client.upload_dataset(features, labels, dedupe=False)
    assert forced.name != dataset.name and forced.sha256 == dataset.sha256
    other = client.upload_dataset(features[:39], labels[:39])
    assert other.name not in (dataset.name, forced.name)
    client.delete_dataset(forced.name)
    client.delete_dataset(other.name)
    with pytest.raises(NotFound):
        client.get_dataset(forced.name)


def test_a_reused_dataset_is_the_one_the_upload_would_create(client: Client) -> None:
    """Reuse once matched the arrays, shapes and task alone: an upload got back an earlier one of
    the same arrays made with num_classes=5 (a model of 3 logits then refused), and an upload
    naming its features and classes got back the unnamed one."""
    features, labels = blobs(24, seed=7)
    five = client.upload_dataset(features, labels, num_classes=5)
    with Client(client.target) as fresh:  # no local memory: found by listing
        three = fresh.upload_dataset(features, labels)
    assert three.name != five.name and three.num_classes == 3
    # This client remembers the 5-class upload: that memory must not answer either.
    assert client.upload_dataset(features, labels).name == three.name
    assert client.upload_dataset(features, labels, num_classes=3).name == three.name
    names = {"feature_names": ["a", "b", "c", "d"], "class_names": ["x", "y", "z"]}
    named = client.upload_dataset(features, labels, **names)
    assert named.name not in (five.name, three.name)
    assert (named.feature_names, named.class_names) == (("a", "b", "c", "d"), ("x", "y", "z"))
    assert client.upload_dataset(features, labels, **names).name == named.name
    assert client.upload_dataset(features, labels).name == three.name, "names are not optional"
    for info in (five, three, named):
        client.delete_dataset(info.name)


def test_a_regression_of_words_is_refused_before_the_upload(client: Client, tmp_path: Path) -> None:
    """`task="regression"` on a CSV whose targets are words sent the words' class names with a
    regression, and the server answered "has 3 names for 0 classes"."""
    csv = tmp_path / "flowers.csv"
    csv.write_text("a,species\n1.0,setosa\n2.0,versicolor\n3.0,virginica\n")
    before = list(client.list_datasets())
    with pytest.raises(ValueError, match=r"are words \(3 classes: setosa, versicolor, virginica\)"):
        client.upload_dataset(csv, task="regression")
    features, _ = blobs(6, seed=1)
    with pytest.raises(ValueError, match="a regression has none"):
        client.upload_dataset(features, features[:, 0], class_names=["x", "y"])
    assert list(client.list_datasets()) == before


def test_integer_features_and_small_integer_labels_are_uploaded(client: Client) -> None:
    features, labels = blobs(30, seed=4)
    counts = np.rint(features * 10).astype(np.int64)
    info = client.upload_dataset(counts, labels, name="counts")
    assert (info.task, info.num_classes, info.feature_shape) == ("multiclass", 3, (30, 4))
    # Sent as float32 features: the same values as float32 are the same dataset.
    assert client.upload_dataset(counts.astype(np.float32), labels).name == info.name
    for y in (labels.astype(np.uint8), labels.astype(np.int16), labels.astype(np.uint32)):
        assert client.upload_dataset(counts, y).name == info.name, "labels sent as int64"
    binary = client.upload_dataset(counts > 5, labels == 1, name="flags")
    assert (binary.task, binary.num_classes) == ("binary", 2)
    upload = prepare_upload(
        features.astype(np.float64), labels, task=None, name="", num_classes=0,
        feature_names=(), class_names=(), labels=None,
    )  # fmt: skip
    assert upload.header.features.dtype == tensor_pb2.DATA_TYPE_FLOAT64, "float64 stays float64"


def test_uploads_from_csv_and_npy_files(client: Client, tmp_path: Path) -> None:
    features, labels = blobs(30, seed=3)
    names = ["setosa", "versicolor", "virginica"]
    csv = tmp_path / "flowers.csv"
    csv.write_text(
        "a,b,c,d,species\n"
        + "".join(f"{','.join(f'{v:.6f}' for v in row)},{names[k]}\n" for row, k in zip(
            features, labels, strict=True))
    )  # fmt: skip
    from_csv = client.upload_dataset(csv, target_column="species", progress=True)
    assert (from_csv.display_name, from_csv.task, from_csv.num_examples) == (
        "flowers",
        "multiclass",
        30,
    )
    assert from_csv.feature_shape == (30, 4) and from_csv.num_classes == 3
    np.save(tmp_path / "x.npy", features)
    np.save(tmp_path / "y.npy", labels)
    from_npy = client.upload_dataset(tmp_path / "x.npy", tmp_path / "y.npy", name="npy")
    assert from_npy.target_shape == (30,) and from_npy.task == "multiclass"
    assert from_npy.name != from_csv.name  # float32 text round trip differs from the arrays
    assert client.upload_dataset(features, labels).name == from_npy.name


def test_a_features_file_with_a_targets_array_keeps_every_column(
    client: Client, tmp_path: Path
) -> None:
    """A features file with targets given as an array once lost its last column (read as the
    file's targets, then replaced by the array), and an .npy one was refused as if no targets
    were given."""
    features, labels = blobs(30, seed=5)
    csv = tmp_path / "feats.csv"
    csv.write_text("".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in features))
    from_csv = client.upload_dataset(csv, labels)
    assert from_csv.feature_shape == (30, 4) and from_csv.num_classes == 3
    np.save(tmp_path / "X.npy", features)
    from_npy = client.upload_dataset(tmp_path / "X.npy", labels.tolist())
    assert from_npy.feature_shape == (30, 4)
    assert client.upload_dataset(features, labels).name == from_npy.name, "the same arrays"
    with pytest.raises(
        ValueError, match=r"X\.npy has 30 rows of features but the targets array has 29"
    ):
        client.upload_dataset(tmp_path / "X.npy", labels[:29])
    np.savez(tmp_path / "both.npz", X=features, y=labels)
    with pytest.raises(ValueError, match=r"targets must not be given with .*both\.npz"):
        client.upload_dataset(tmp_path / "both.npz", labels)
    for info in (from_csv, from_npy):
        client.delete_dataset(info.name)


def test_train_follow_and_use_a_job(
    client: Client, dataset: DatasetInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = Sequential([Dense(16, activation="relu"), Dropout(0.05), Dense(3)])
    job = client.create_job(
        dataset, model, epochs=12, batch_size=8, validation_fraction=0.25,
        optimizer={"name": "adam", "learning_rate": 0.05}, checkpoint_every_epochs=6,
        display_name="blobs-mlp", labels={"suite": "sdk"},
    )  # fmt: skip
    status = job.wait(timeout=60, poll_interval=0.1, progress=True)
    bar = capsys.readouterr().err
    assert "epoch" in bar and "12/12" in bar and "loss=" in bar and "state=succeeded" in bar
    assert status.state == "SUCCEEDED" and status.epoch == 12 and status.finished
    assert (status.labels, status.queue, status.priority) == ({"suite": "sdk"}, "default", 0)
    assert job.status().metrics["accuracy"] > 0.9

    events = list(job.watch())
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert [e.sequence for e in job.watch(after_sequence=3)] == [e.sequence for e in events[3:]]

    metrics = job.metrics()
    assert isinstance(metrics, Metrics) and {"loss", "val_loss", "accuracy"} <= set(metrics)
    assert metrics.epochs("loss").tolist() == list(range(1, 13))
    assert metrics.values_of("loss")[-1] < metrics.values_of("loss")[0]
    assert metrics.to_dict()["loss"]["epoch"] == list(range(1, 13))
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            metrics.to_pandas()
    else:
        assert set(metrics.to_pandas().columns) == {"metric", "step", "epoch", "value"}

    checkpoints = job.checkpoints()
    assert [c.epoch for c in checkpoints] == [6, 12]
    assert_same_checkpoints(checkpoints, server_checkpoints(client.target, job.name))
    features, labels = blobs()
    prediction = job.predict(features)
    assert prediction.labels is not None and prediction.probabilities is not None
    assert (prediction.labels == labels).mean() > 0.9
    assert prediction.probabilities.shape == (40, 3)
    assert (
        job.predict(features[:2].tolist(), checkpoint="epoch/6").checkpoint == checkpoints[0].name
    )
    info = job.model_metadata()
    assert isinstance(info, ModelInfo) and info.num_classes == 3
    assert client.model_metadata(job) == info == client.model_metadata(job.name), "handle or name"
    assert (info.job, info.checkpoint) == (job.name, checkpoints[-1].name)
    assert info.input_shape == (-1, 4) and info.input_dtype == "float32"
    # The spec is the one create_job takes: it trains the same model again.
    again = client.create_job(dataset, info.model, epochs=1, batch_size=8)
    again.wait(timeout=60, poll_interval=0.1)
    assert again.model_metadata().model == info.model
    assert again.model_metadata().num_parameters == info.num_parameters == 4 * 16 + 16 + 16 * 3 + 3

    listed = [j.name for j in client.list_jobs(labels={"suite": "sdk"}, state="succeeded")]
    assert listed == [job.name]

    path = job.plot(tmp_path / "curves.png")
    chunks = png_chunks(path.read_bytes())
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert width >= 600 and height >= 300
    text = dict(body.split(b"\0", 1) for kind, body in chunks if kind == b"tEXt")
    curves = text[b"Curves"].decode().split(",")
    assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(curves)
    assert text[b"Title"] == b"blobs-mlp"
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.05, "the image is not blank"

    job.delete()
    with pytest.raises(NotFound):
        job.status()


def test_cancel_a_queued_job_and_errors_keep_their_status(
    client: Client, dataset: DatasetInfo
) -> None:
    job = client.create_job(dataset, MODEL, epochs=1, queue="nobody-listens")
    with pytest.raises(FailedPrecondition) as caught:
        job.delete()
    assert caught.value.code_name == "FAILED_PRECONDITION"
    assert job.cancel().state == "CANCELLED"
    assert job.wait(timeout=10).state == "CANCELLED"
    assert list(job.watch())[-1].state == "CANCELLED"
    job.delete()
    with pytest.raises(NotFound, match="does not exist"):
        client.get_job(job.name)


def test_a_wait_or_watch_past_its_timeout_raises_timed_out(
    client: Client, dataset: DatasetInfo
) -> None:
    job = client.create_job(dataset, MODEL, epochs=1, queue="nobody-listens")
    try:
        with pytest.raises(TimedOut, match=f"waiting for {job.name}: still QUEUED after 0.5s"):
            job.wait(timeout=0.5, poll_interval=0.1)
        with pytest.raises(TimeoutError):  # as wait raised before TimedOut
            job.wait(timeout=0.1)
        watch = job.watch(timeout=0.5)
        with pytest.raises(TimedOut, match=r"no end of the job within 0.5s; watch\(after_seq"):
            list(watch)
        assert watch.last_sequence == 1
    finally:
        job.cancel()


def test_a_failed_job_s_error_carries_its_final_status(client: Client) -> None:
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(64, 2)) * 1e3).astype(np.float32)
    y = (rng.normal(size=64) * 1e3).astype(np.float32)
    job = client.create_job(
        client.upload_dataset(x, y), [Dense(1)], epochs=20, optimizer="sgd", learning_rate=1e3
    )
    with pytest.raises(JobFailed, match="loss became") as caught:
        job.wait(timeout=60, poll_interval=0.1)
    assert caught.value.status.state == "FAILED" and "loss became" in caught.value.status.error
    assert (caught.value.code, caught.value.code_name) == (None, "FAILED")


def test_a_batch_norm_momentum_of_zero_reaches_the_server(
    client: Client, dataset: DatasetInfo
) -> None:
    # 0.0 is protobuf's default value: without presence the server read it as unset (0.1).
    model = Sequential([Dense(8), BatchNorm(momentum=0.0), Dense(3)])
    job = client.create_job(dataset, model, epochs=1, queue="nobody-listens")
    try:
        stored = job.status().raw.model.layers[1].batch_norm
        assert stored.momentum == 0.0 and stored.HasField("momentum")
        assert stored.epsilon == pytest.approx(1e-5)
    finally:
        job.cancel()


def test_a_job_s_model_trains_again_as_it_is(client: Client, dataset: DatasetInfo) -> None:
    """`JobStatus.model` is the spec as the server stored it (the width and defaults written
    out), in the form `create_job` takes: a job made from it has the same model."""
    model = Sequential([Dense(8, activation="relu"), BatchNorm(momentum=0.0), Dense(3)])
    first = client.create_job(dataset, model, epochs=1, queue="nobody-listens", priority=3)
    again = client.create_job(dataset, first.last_status.model, epochs=1, queue="nobody-listens")
    try:
        stored = first.status()
        assert (stored.queue, stored.priority) == ("nobody-listens", 3)
        assert stored.model["input_dim"] == 4
        assert [layer["type"] for layer in stored.model["layers"]] == [
            "dense", "batch_norm", "dense",
        ]  # fmt: skip
        assert stored.model["layers"][1]["momentum"] == 0.0
        assert again.status().model == stored.model
    finally:
        first.cancel()
        again.cancel()


def test_optimizer_flags_and_prelu_layers_reach_the_server_and_train(
    client: Client, dataset: DatasetInfo
) -> None:
    """`nesterov` and `centered` are flags, which the request carries as 1 or 0: the SDK refused
    True ("must be a number") and the engine refused RMSprop's 1.0 ("must be a boolean"), so
    `centered` could not be set at all. A PReLU layer, which the engine builds, was refused by
    the SDK's own check, even in the model a job had stored."""
    model = [
        {"type": "dense", "units": 8},
        {"type": "prelu", "init": 0.1},
        {"type": "dense", "units": 3},
    ]
    optimizers = [
        {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "nesterov": True},
        {"name": "rmsprop", "learning_rate": 0.01, "centered": True},
    ]
    jobs = [
        client.create_job(dataset, model, epochs=2, batch_size=8, optimizer=optimizer)
        for optimizer in optimizers
    ]
    for job, flag in zip(jobs, ("nesterov", "centered"), strict=True):
        final = job.wait(timeout=60, poll_interval=0.1)
        assert final.state == "SUCCEEDED", final.error
        assert final.raw.training.optimizer.params[flag] == 1.0
        # Stored as the engine's PReLU, shown as the activation layer it travels as.
        assert final.model["layers"][1]["activation"] == {"name": "prelu", "init": 0.1}
    again = client.create_job(dataset, jobs[1].last_status.model, epochs=1, queue="nobody-listens")
    try:
        assert again.status().model == jobs[1].last_status.model
    finally:
        again.cancel()
    with pytest.raises(SpecError) as caught:
        client.create_job(dataset, model, optimizer={"name": "rmsprop", "centered": 0.5})
    [(field, description)] = caught.value.field_violations
    assert field == "training.optimizer.params['centered']" and "true or false" in description


@pytest.mark.parametrize(
    ("after", "error", "says"),
    [
        (-1, ValueError, "or 0 for every event (0 to 9223372036854775807). Received: -1"),
        (2**63, ValueError, "(0 to 9223372036854775807). Received: 9223372036854775808"),
        (1.5, TypeError, "must be a whole number: the sequence of the last event received, or 0"),
        (True, TypeError, "Received: True (bool)"),
        (None, TypeError, "Received: None (NoneType)"),
    ],
)
def test_a_watch_refuses_an_after_sequence_it_cannot_send_naming_it(
    live_server: LocalServer, client: Client, after: object, error: type[Exception], says: str
) -> None:
    """2**63 was protobuf's "Value out of range: 9223372036854775808" and 1.5 "'float' object
    cannot be interpreted as an integer", naming nothing; -1 was sent for the server to refuse."""
    job = "jobs/" + "0" * 32
    with pytest.raises(error, match=r"^after_sequence must be ") as refused:
        client.watch_job(job, after)  # type: ignore[arg-type]
    assert says in str(refused.value)

    async def watch() -> None:
        async with AsyncClient(live_server.target) as aio:
            with pytest.raises(error, match=re.escape(says)):
                aio.watch_job(job, after)  # type: ignore[arg-type]

    asyncio.run(watch())


@pytest.mark.parametrize(
    ("size", "error", "says"),
    [
        (-1, ValueError, "page_size must be 0 for the server's default page, or the most "),
        (2**31, ValueError, "(0 to 2147483647). Received: 2147483648"),
        (2.5, TypeError, "page_size must be a whole number: 0 for the server's default page"),
    ],
)
def test_a_listing_refuses_a_page_size_it_cannot_send_naming_it(
    live_server: LocalServer, client: Client, size: object, error: type[Exception], says: str
) -> None:
    """2**31 was protobuf's "Value out of range: 2147483648", naming nothing."""
    for listing in (client.list_datasets, client.list_jobs):
        with pytest.raises(error, match=re.escape(says)):
            next(iter(listing(page_size=size)))  # type: ignore[arg-type]

    async def list_datasets() -> None:
        async with AsyncClient(live_server.target) as aio:
            with pytest.raises(error, match=re.escape(says)):
                await anext(aio.list_datasets(page_size=size))  # type: ignore[arg-type]

    asyncio.run(list_datasets())
    assert [j.name for j in client.list_jobs(page_size=0)] == [j.name for j in client.list_jobs()]


def test_every_method_taking_a_name_also_takes_the_handle(client: Client) -> None:
    features, labels = blobs(rows=12, seed=7)
    data = client.upload_dataset(features, labels, name="handles", dedupe=False)
    job = client.create_job(data, MODEL, epochs=1, queue="nobody-listens")
    assert client.get_dataset(data) == client.get_dataset(data.name)
    assert client.get_job(job).name == client.job_status(job).name == job.name
    assert [j.name for j in client.list_jobs(dataset=data)] == [job.name]
    assert (client.job_metrics(job), client.job_checkpoints(job)) == (Metrics({}), [])
    assert client.cancel_job(job).state == "CANCELLED"
    assert list(client.watch_job(job))[-1].state == "CANCELLED"
    client.delete_job(job)
    client.delete_dataset(data)
    with pytest.raises(NotFound):
        client.get_dataset(data)


@pytest.mark.parametrize("wrong", [42, None, Path("jobs/x")])
def test_a_name_of_another_type_is_a_type_error_naming_the_argument(
    client: Client, dataset: DatasetInfo, wrong: object
) -> None:
    job_calls = [client.get_job, client.job_status, client.watch_job, client.cancel_job,
                 client.delete_job, client.job_metrics, client.job_checkpoints]  # fmt: skip
    for call in job_calls:
        with pytest.raises(TypeError, match=r"^name must be a job name \(str\) or a Job\. "):
            call(wrong)  # type: ignore[operator]
    for call in (client.get_dataset, client.delete_dataset):
        with pytest.raises(TypeError, match=r"^name must be a dataset name \(str\) or a Data"):
            call(wrong)  # type: ignore[operator]
    with pytest.raises(TypeError, match=r"^job must be a job name \(str\) or a Job\. Received"):
        client.predict(wrong, [[0.0] * 4])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^dataset must be a dataset name \(str\) or a Data"):
        client.create_job(wrong, MODEL)  # type: ignore[arg-type]
    if wrong is not None:  # None: no filter
        with pytest.raises(TypeError, match=r"^dataset must be a dataset name"):
            list(client.list_jobs(dataset=wrong))  # type: ignore[arg-type]


def test_an_int32_value_over_a_server_limit_is_the_server_s_resource_exhausted(
    client: Client, dataset: DatasetInfo
) -> None:
    # One past the int32 range cannot be sent (SpecError, test_specs.py); the range's top can.
    with pytest.raises(ResourceExhausted, match="max_epochs is limited to"):
        client.create_job(dataset, MODEL, epochs=2**31 - 1, queue="nobody-listens")


# What a security review stored in a name: a window title, a cleared screen, a fake line in red.
ESCAPES = "\x1b]0;pwned-title\x07\x1b[2J\x1b[31mFAKE: all jobs SUCCEEDED\x1b[0m\r"


@pytest.mark.parametrize(
    ("kind", "options", "field", "position"),
    [
        ("dataset", {"name": "evil" + ESCAPES}, "header.display_name", 4),
        ("dataset", {"class_names": ["no" + ESCAPES, "b", "c"]}, "header.class_names[0]", 2),
        ("dataset", {"feature_names": ["a", "b", "c", "f\x1b[8m"]}, "header.feature_names[3]", 1),
        ("dataset", {"labels": {"team": "ml\x9b2J"}}, "header.labels['team']", 2),
        ("job", {"display_name": "job" + ESCAPES}, "display_name", 3),
        ("job", {"labels": {"k\r": "v"}}, "labels", 1),
        ("job", {"labels": {"k": "\tv"}}, "labels['k']", 0),
    ],
)
def test_names_and_labels_holding_control_characters_are_refused_over_the_wire(
    client: Client,
    dataset: DatasetInfo,
    kind: str,
    options: dict[str, object],
    field: str,
    position: int,
) -> None:
    """Every user's CLI printed them raw (`datasets list`, `jobs list`, predictions' classes):
    whoever could write into a project could rewrite another user's terminal."""
    features, labels = blobs()
    with pytest.raises(InvalidArgument) as refused:
        if kind == "dataset":
            client.upload_dataset(features, labels, dedupe=False, **options)  # type: ignore[arg-type]
        else:
            client.create_job(dataset, MODEL, epochs=1, **options)  # type: ignore[arg-type]
    assert refused.value.field_violations[0][0] == field
    assert f"at position {position} (from 0)" in refused.value.message
    assert "\x1b" not in refused.value.message and "\r" not in refused.value.message


LONG = "x" * 10_000


def dense(units: int, **options: str) -> models_pb2.LayerSpec:
    return models_pb2.LayerSpec(dense=models_pb2.DenseLayer(units=units, **options))


def relu(**params: float) -> models_pb2.LayerSpec:
    activation = models_pb2.ActivationLayer(name="relu", params=params)
    return models_pb2.LayerSpec(activation=activation)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        (
            {"training": models_pb2.TrainingConfig(
                optimizer=models_pb2.OptimizerSpec(name="sgd", params={LONG: 1.0})
            )},
            "training.optimizer.params['xxxx",
        ),
        (
            {"training": models_pb2.TrainingConfig(
                schedule=models_pb2.ScheduleSpec(name="step", params={LONG: 1.0})
            )},
            "training.schedule.params['xxxx",
        ),
        ({"model": models_pb2.ModelSpec(layers=[dense(4), relu(**{LONG: 1}), dense(3)])}, "model"),
        ({"model": models_pb2.ModelSpec(layers=[dense(3, activation=LONG)])}, "model"),
        ({"model": models_pb2.ModelSpec(layers=[dense(3, kernel_initializer=LONG)])}, "model"),
        ({"training": models_pb2.TrainingConfig(metrics=[LONG])}, "training.metrics[0]"),
        ({"queue": LONG}, "queue"),
        ({"dataset": LONG}, "dataset"),
    ],
)  # fmt: skip
def test_a_refusal_quoting_a_huge_value_reaches_the_caller_bounded(
    live_server: LocalServer,
    dataset: DatasetInfo,
    request_fields: dict[str, object],
    field: str,
) -> None:
    """A 10,000-character name, quoted whole (twice: in the message and in the field
    violation), made the status's trailing metadata exceed the client's 16 KiB limit: the caller
    saw RESOURCE_EXHAUSTED "received metadata size exceeds hard limit", not the refusal."""
    fields: dict[str, object] = {
        "dataset": dataset.name,
        "model": models_pb2.ModelSpec(layers=[dense(3)]),
        **request_fields,
    }
    with grpc.insecure_channel(live_server.target) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            jobs.CreateJob(jobs_pb2.CreateJobRequest(**fields), timeout=30)  # type: ignore[arg-type]
    error = refused.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert field_violations(error)[0][0].startswith(field)
    assert re.search(r"…\(100\d\d characters\)", error.details()), error.details()
    trailer = dict(error.trailing_metadata() or ())[STATUS_DETAILS_KEY]
    assert len(error.details().encode()) + len(trailer) < 2048


def test_jobs_created_before_an_instant_are_listed_by_the_sdk_and_the_cli(
    client: Client,
    dataset: DatasetInfo,
    live_server: LocalServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Old jobs to clean up: `list_jobs(created_before=...)`, the async client's too, and
    `jobs list --created-before`; a naive datetime is refused before sending (protobuf would
    read it as UTC, hours off a caller meaning local time), and a time no Timestamp holds is
    INVALID_ARGUMENT naming the field."""
    run = {"cleanup": uuid.uuid4().hex}
    jobs = [
        client.create_job(dataset, MODEL, epochs=1, queue="nobody-listens", labels=run)
        for _ in range(3)
    ]
    try:
        boundary = jobs[2].status().create_time
        assert boundary is not None
        older = [job.name for job in jobs[1::-1]]
        listed = client.list_jobs(labels=run, created_before=boundary, page_size=1)
        assert [job.name for job in listed] == older

        async def listed_async() -> list[str]:
            async with AsyncClient(live_server.target) as aio:
                return [j.name async for j in aio.list_jobs(labels=run, created_before=boundary)]

        assert asyncio.run(listed_async()) == older
        in_utc_plus_2 = boundary.astimezone(timezone(timedelta(hours=2)))
        assert [j.name for j in client.list_jobs(labels=run, created_before=in_utc_plus_2)] == older
        with pytest.raises(ValueError, match="created_before must have a time zone"):
            next(client.list_jobs(created_before=boundary.replace(tzinfo=None)))
        label = f"--label=cleanup={run['cleanup']}"
        assert main(["jobs", "list", label, "--created-before", boundary.isoformat(),
                     "--json", "--target", live_server.target]) == 0  # fmt: skip
        assert [job["name"] for job in json.loads(capsys.readouterr().out)] == older
        naive_utc = boundary.astimezone(UTC).replace(tzinfo=None).isoformat()
        assert main(["jobs", "list", label, "--created-before", naive_utc,
                     "--json", "--target", live_server.target]) == 0  # fmt: skip
        assert [job["name"] for job in json.loads(capsys.readouterr().out)] == older
        code = main(["jobs", "list", "--created-before", "last tuesday",
                     "--target", live_server.target])  # fmt: skip
        assert code == 2 and "takes an ISO 8601 date or time" in capsys.readouterr().err
        with (
            grpc.insecure_channel(live_server.target) as channel,
            pytest.raises(grpc.RpcError) as refused,
        ):
            jobs_pb2_grpc.JobServiceStub(channel).ListJobs(
                jobs_pb2.ListJobsRequest(created_before=Timestamp(seconds=10**12)), timeout=30
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(refused.value)[0][0] == "created_before"
    finally:
        for job in jobs:
            job.cancel()


PLATEAU = {"name": "reduce_on_plateau", "monitor": "val_accuracy", "mode": "max",
           "factor": 0.5, "patience": 0}  # fmt: skip


def test_a_schedules_text_parameters_reach_the_engine_and_are_shown(
    client: Client, dataset: DatasetInfo
) -> None:
    """The SDK refused a schedule's text parameters ("only numeric parameters can be sent"):
    reduce_on_plateau could watch val_loss alone. Sent in the schedule's options, they train,
    GetJob shows them, and the settings shown create the same job again."""
    settings = {"epochs": 4, "batch_size": 8, "validation_fraction": 0.25}
    job = client.create_job(dataset, MODEL, schedule=PLATEAU, **settings)
    final = job.wait(timeout=60, poll_interval=0.1)
    assert final.state == "SUCCEEDED", final.error
    shown = final.raw.training.schedule
    assert shown.name == "reduce_on_plateau"
    assert dict(shown.options) == {"monitor": "val_accuracy", "mode": "max"}
    assert dict(shown.params) == {"factor": 0.5, "patience": 0.0}
    # The rates are the engine's, reducing on val_accuracy's plateaus.
    metrics = job.metrics()
    engine = schedules.get(PLATEAU)
    expected = []
    for epoch, accuracy in enumerate(metrics.values_of("val_accuracy")):
        expected.append(engine.learning_rate(final.raw.training.optimizer.learning_rate, 0, epoch))
        engine.on_epoch_end(epoch, {"val_accuracy": float(accuracy)})
    assert metrics.values_of("learning_rate").tolist() == pytest.approx(expected)
    # Reduced on val_accuracy's plateau (val_loss, the default monitor, improves every epoch).
    assert expected[-1] < expected[0]
    # The settings shown, given to create_job, are the job's.
    again = client.create_job(
        dataset,
        final.model,
        schedule={"name": shown.name, **shown.params, **shown.options},
        queue="nobody-listens",
        **settings,
    )
    try:
        assert again.status().raw.training == final.raw.training
    finally:
        again.cancel()


def test_a_step_decay_per_step_trains_at_the_engines_rates(
    client: Client, dataset: DatasetInfo
) -> None:
    """A StepDecay decayed per epoch only: its interval could not be sent."""
    schedule = {"name": "step", "step_size": 2, "gamma": 0.5, "interval": "step"}
    optimizer = {"name": "sgd", "learning_rate": 0.1}
    # 40 examples in batches of 8: 5 steps an epoch.
    job = client.create_job(
        dataset, MODEL, epochs=3, batch_size=8, optimizer=optimizer, schedule=schedule
    )
    final = job.wait(timeout=60, poll_interval=0.1)
    assert final.state == "SUCCEEDED", final.error
    assert dict(final.raw.training.schedule.options) == {"interval": "step"}
    metrics = job.metrics()
    points = list(zip(metrics.steps("learning_rate"), metrics.epochs("learning_rate"), strict=True))
    assert points == [(5, 1), (10, 2), (15, 3)]

    def rates(interval: str) -> list[float]:
        engine = schedules.get({**schedule, "interval": interval})
        # An epoch's rate is its last step's (the step before the count at its end).
        return [engine.learning_rate(0.1, int(s) - 1, int(e) - 1) for s, e in points]

    assert metrics.values_of("learning_rate").tolist() == pytest.approx(rates("step"))
    assert rates("step") != pytest.approx(rates("epoch"))


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize(
    ("schedule", "validation_fraction", "field", "says", "local"),
    [
        (
            {"name": "step", "step_size": 2, "monitor": "loss"},
            0.0,
            "training.schedule.options['monitor']",
            "is not a parameter of schedule 'step', which takes: step_size, gamma, interval",
            True,
        ),
        (
            {**PLATEAU, "mode": "maximum"},
            0.25,
            "training.schedule.options['mode']",
            "mode must be one of: auto, min, max. Received: mode='maximum'",
            True,
        ),
        (
            PLATEAU,
            0.0,
            "training.schedule.options['monitor']",
            "schedule monitors 'val_accuracy', which this fit does not log",
            False,
        ),
        (
            {**PLATEAU, "monitor": "r2"},  # a classifier's
            0.25,
            "training.schedule.options['monitor']",
            "schedule monitors 'r2', which this fit does not log; it logs: loss, accuracy, "
            "val_loss, val_accuracy, learning_rate",
            False,
        ),
    ],
)
def test_a_bad_schedule_text_parameter_is_refused_naming_it(
    client: Client,
    dataset: DatasetInfo,
    schedule: dict[str, object],
    validation_fraction: float,
    field: str,
    says: str,
    local: bool,
    validate: bool,
) -> None:
    """By the SDK's checks when they can tell, else (and unvalidated) by the server."""
    with pytest.raises(InvalidArgument) as refused:
        client.create_job(
            dataset,
            MODEL,
            schedule=schedule,  # type: ignore[arg-type]
            validation_fraction=validation_fraction,
            validate=validate,
        )
    [(named, description)] = refused.value.field_violations
    assert named == field and says in description
    assert isinstance(refused.value, SpecError) is (local and validate)


def test_a_schedule_parameter_in_both_maps_is_refused_naming_it(
    live_server: LocalServer, dataset: DatasetInfo
) -> None:
    """A raw request can give a key as a number and as text: neither is dropped in silence."""
    schedule = models_pb2.ScheduleSpec(
        name="reduce_on_plateau", params={"patience": 2.0}, options={"patience": "2"}
    )
    create = jobs_pb2.CreateJobRequest(
        dataset=dataset.name,
        model=models_pb2.ModelSpec(layers=[dense(3)]),
        training=models_pb2.TrainingConfig(schedule=schedule, validation_fraction=0.25),
    )
    with grpc.insecure_channel(live_server.target) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            jobs.CreateJob(create, timeout=30)
    error = refused.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    [(named, description)] = field_violations(error)
    assert named == "training.schedule.options['patience']"
    assert "is given in training.schedule.params too (2.0); give it once" in description
