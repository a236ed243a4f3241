"""The `trainwire` user commands against a live server: tables, --json and exit codes."""

from __future__ import annotations

import builtins
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import types
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from trainwire.client import (
    Checkpoint,
    Client,
    DatasetInfo,
    Dense,
    InvalidArgument,
    Job,
    JobEvent,
    JobStatus,
    NotFound,
    Prediction,
    Sequential,
)
from trainwire.client.cli import CLIENT_CERT_HINT
from trainwire.client.results import checkpoint_to_dict, terminal_text
from trainwire.client.rpc import channel_credentials
from trainwire.server.cli import main
from trainwire.server.local import LocalServer
from trainwire.server.migrate import upgrade
from trainwire.v1 import datasets_pb2, jobs_pb2, tensor_pb2

from .conftest import CERTIFICATE_PEM, KEY_PEM, MODEL, blobs, epoch_end_event
from .test_live_sdk import png_chunks

SPEC = """
display_name: {name}
dataset:
  path: {data}
  target_column: label
model:
  layers:
    - {{type: dense, units: 8, activation: relu}}
    - {{type: dense, units: {units}}}
training:
  epochs: {epochs}
  batch_size: 8
  optimizer: {{name: {optimizer}, learning_rate: {rate}}}
  metrics: [accuracy]
queue: {queue}
labels: {{suite: cli}}
"""


class Cli:
    def __init__(self, target: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.target = target
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--target", self.target])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(live_server: LocalServer, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(live_server.target, capsys)


def write_spec(folder: Path, **values: object) -> Path:
    features, labels = blobs(30, seed=5)
    data = folder / "blobs.csv"
    lines = ["a,b,c,d,label"] + [
        ",".join(f"{v:.5f}" for v in row) + f",{k}" for row, k in zip(features, labels, strict=True)
    ]
    data.write_text("\n".join(lines) + "\n")
    settings = {"name": "cli-job", "units": 3, "epochs": 4, "optimizer": "adam", "rate": 0.05,
                "queue": "default", "data": data.name, **values}  # fmt: skip
    spec = folder / "job.yaml"
    spec.write_text(SPEC.format(**settings))
    return spec


def _into_a_closed_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    """`trainwire ARGV | head -0`: stdout a pipe whose reader is gone before anything is read."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "trainwire.server.cli", *argv],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)


def test_a_command_whose_reader_goes_away_ends_quietly(
    live_server: LocalServer, client: Client, tmp_path: Path
) -> None:
    """`trainwire jobs list | head -4` answered "invalid argument: [Errno 32] Broken pipe", exit
    2, whenever head left before the output ended: a user command or an operator one."""
    client.upload_dataset(*blobs(20, seed=9), name="piped")
    url = f"sqlite:///{tmp_path / 'piped.db'}"
    upgrade(url)
    user_command = _into_a_closed_pipe("datasets", "list", "--target", live_server.target)
    operator_command = _into_a_closed_pipe("db", "current", "--database-url", url)
    for result in (user_command, operator_command):
        assert result.returncode == 128 + signal.SIGPIPE, result.stderr
        assert result.stderr == "", "nothing to report: the reader chose to stop"


@pytest.mark.parametrize("follow", ["--wait", "--watch"])
def test_ctrl_c_while_submit_waits_names_the_job_that_goes_on(
    cli: Cli, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, follow: str
) -> None:
    """Ctrl-C during `jobs submit --wait` exited 130 in silence, leaving a job running whose
    name the user had not seen yet."""

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Job, "wait", interrupted)
    monkeypatch.setattr(Client, "watch_job", interrupted)
    code, out, err = cli("jobs", "submit", str(write_spec(tmp_path, epochs=1)), follow)
    assert code == 130 and out == ""
    job = err.split("stopped waiting; ")[1].split()[0]
    assert f"trainwire jobs cancel {job.split('/')[1]}" in err
    assert client.job_status(job).state in ("QUEUED", "RUNNING", "SUCCEEDED"), "not cancelled"
    code, _, err = cli("jobs", "submit", str(write_spec(tmp_path, epochs=1)), follow, "--json")
    error = json.loads(err.splitlines()[-1])["error"]
    assert (code, error["code"], error["exit_code"]) == (130, "INTERRUPTED", 130)
    assert "goes on on the server" in error["message"], "the job was not cancelled"


def listed_jobs(monkeypatch: pytest.MonkeyPatch, metrics: list[dict[str, float]]) -> None:
    """`Client.list_jobs` answers jobs/j0, jobs/j1, ... (newest first) with these metrics."""
    statuses = [
        JobStatus.from_proto(jobs_pb2.Job(name=f"jobs/j{i}", metrics=values))
        for i, values in enumerate(metrics)
    ]
    monkeypatch.setattr(Client, "list_jobs", lambda self, *a, **k: (Job(self, s) for s in statuses))


def test_list_sorts_a_sweep_best_first_by_the_metric_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sweep's best job was found by eye in a newest-first list, or by a script."""
    listed_jobs(
        monkeypatch,
        [
            {"val_accuracy": 0.81, "val_loss": 0.40},
            {"val_loss": 0.10},  # failed before its first validation accuracy
            {"val_accuracy": 0.93, "val_loss": 0.35},
            {"val_accuracy": math.nan, "val_loss": 0.50},
            {"val_accuracy": 0.93, "val_loss": 0.20},
            {"val_accuracy": 0.52, "val_loss": 0.05},
        ],
    )

    def names(*options: str) -> tuple[list[str], str]:
        code = main(["jobs", "list", *options, "--target", "127.0.0.1:9", "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        return [job["name"] for job in json.loads(out)], err

    # Highest first for an accuracy; a tie stays newest first; no value or NaN: last.
    assert names("--sort", "val_accuracy")[0] == [
        "jobs/j2", "jobs/j4", "jobs/j0", "jobs/j5", "jobs/j1", "jobs/j3",
    ]  # fmt: skip
    assert names("--sort", "val_loss")[0] == [
        "jobs/j5", "jobs/j1", "jobs/j4", "jobs/j2", "jobs/j0", "jobs/j3",
    ]  # fmt: skip
    # Every match is read before --limit cuts: the best here is the fifth newest.
    best, err = names("--sort", "val_loss", "--limit", "1")
    assert best == ["jobs/j5"] and "more match" in err
    assert names("--sort", "val_loss", "--limit", "6") == (names("--sort", "val_loss")[0], "")

    code = main(["jobs", "list", "--sort", "val_acc", "--target", "127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "--sort val_acc: no listed job has that metric" in err
    assert "they have: val_accuracy, val_loss" in err


def test_datasets_commands(cli: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    uploaded = cli.json("datasets", "upload", str(spec.parent / "blobs.csv"), "--name", "cli")
    assert uploaded["num_examples"] == 30 and uploaded["task"] == "multiclass"
    name = uploaded["name"]
    assert name in [d["name"] for d in cli.json("datasets", "list")]
    code, out, _ = cli("datasets", "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["NAME", "DISPLAY", "NAME"]
    # CREATED is the UTC minute the JSON gives ("2026-01-01T09:30:00.123456": 2026-01-01 09:30).
    row = next(line.split() for line in out.splitlines() if line.startswith(name))
    assert row[-2:] == uploaded["create_time"][:16].split("T")
    shown = cli.json("datasets", "show", name.split("/")[1])
    assert shown["sha256"] == uploaded["sha256"]
    # The CSV's header names the features (the JSON did not carry them).
    assert (shown["feature_names"], shown["class_names"]) == (["a", "b", "c", "d"], [])
    code, out, _ = cli("datasets", "show", name)
    assert "feature_names: a, b, c, d\n" in out and "class_names:   -\n" in out
    job = cli.json("jobs", "submit", str(spec), "--dataset", name, "--wait")["name"]
    assert cli.json("datasets", "delete", name) == {"deleted": name}
    # The job keeps its model; its dataset line said nothing (an empty `dataset:`).
    code, out, _ = cli("jobs", "show", job)
    assert code == 0 and "dataset:   (deleted)\n" in out
    code, _, err = cli("datasets", "show", name, "--json")
    assert code == 3 and json.loads(err)["error"]["code"] == "NOT_FOUND"
    code, _, err = cli("datasets", "upload", str(tmp_path / "missing.csv"))
    assert code == 2 and "missing.csv" in err


def test_upload_and_predict_take_whether_a_csv_file_has_a_header(cli: Cli, tmp_path: Path) -> None:
    """A header of numbers (pandas' 0,1 of unnamed columns) was always read as data."""
    data = tmp_path / "numbers.csv"
    data.write_text("0,1\n1.5,0\n2.5,1\n3.5,1\n")
    uploaded = cli.json("datasets", "upload", str(data), "--header", "--no-dedupe")
    assert uploaded["num_examples"] == 3 and uploaded["feature_names"] == ["0"]
    guessed = cli.json("datasets", "upload", str(data), "--no-dedupe")
    assert guessed["num_examples"] == 4 and guessed["feature_names"] == []
    named = tmp_path / "named.csv"
    named.write_text("a,b\n1,2\n")
    code, _, err = cli("predict", "0" * 32, "-i", str(named), "--no-header")
    assert code == 2 and "named.csv:1: feature column 0 (counting from 0) holds 'a'" in err


def test_upload_takes_the_classes_and_the_feature_names_as_the_sdk_does(
    cli: Cli, tmp_path: Path
) -> None:
    """`datasets upload` had no --num-classes, --class-names or --feature-names: a file's word
    labels could only be numbered in sorted order, and an NPY file's features had no names."""
    words = tmp_path / "cancer.csv"
    words.write_text("radius,texture,diagnosis\n1.5,2,malignant\n2.5,1,benign\n3.5,4,benign\n")
    uploaded = cli.json(
        "datasets", "upload", str(words), "--class-names", "malignant, benign", "--no-dedupe"
    )
    assert uploaded["class_names"] == ["malignant", "benign"]
    np.save(tmp_path / "x.npy", np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32))
    np.save(tmp_path / "y.npy", np.array([0, 1, 1]))
    arrays = cli.json(
        "datasets", "upload", str(tmp_path / "x.npy"), "--targets", str(tmp_path / "y.npy"),
        "--task", "multiclass", "--num-classes", "3", "--feature-names", "height,weight",
        "--no-dedupe",
    )  # fmt: skip
    assert arrays["num_classes"] == 3 and arrays["feature_names"] == ["height", "weight"]


def test_a_job_spec_reads_its_dataset_file_as_upload_does(cli: Cli, tmp_path: Path) -> None:
    """A spec's dataset took no header, class_names or feature_names: `jobs submit` guessed
    every CSV header and numbered word labels in sorted order."""
    data = tmp_path / "numbers.csv"
    rows = [f"{i % 3 * 2 + 0.1 * i:.2f},{i % 2:.1f},{i * 0.5:.1f},{('b', 'a', 'c')[i % 3]}"
            for i in range(24)]  # fmt: skip
    data.write_text("0,1,2,3\n" + "\n".join(rows) + "\n")
    spec = tmp_path / "job.yaml"
    spec.write_text(
        SPEC.format(name="spec-file", data=data.name, units=3, epochs=1, optimizer="adam",
                    rate=0.05, queue="nobody-listens").replace(
            "  target_column: label\n",
            "  target_column: 3\n  header: true\n  class_names: [c, b, a]\n"
            "  feature_names: [x, y, z]\n",
        )
    )  # fmt: skip
    submitted = cli.json("jobs", "submit", str(spec))
    dataset = cli.json("datasets", "show", submitted["dataset"])
    assert dataset["num_examples"] == 24 and dataset["class_names"] == ["c", "b", "a"]
    assert dataset["feature_names"] == ["x", "y", "z"]
    assert cli("jobs", "cancel", submitted["name"])[0] == 0


def test_a_file_that_is_not_of_its_kind_is_an_invalid_argument(cli: Cli, tmp_path: Path) -> None:
    """An empty .npy, a .npz that is no zip archive or a CSV cell past the csv module's limit
    ended in a traceback and exit 1, even with --json."""
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    (tmp_path / "t.npz").write_bytes(b"PK\x03\x04junk")
    (tmp_path / "huge.csv").write_text("a,b,label\n1," + "2" * 200_000 + ",0\n")
    job = "0" * 32
    for argv, message in (
        (("datasets", "upload", str(empty), "--targets", str(tmp_path / "y.npy")), "empty.npy"),
        (("predict", job, "-i", str(empty)), "empty.npy"),
        (("datasets", "upload", str(tmp_path / "t.npz")), "t.npz is not a readable NumPy"),
        (("datasets", "upload", str(tmp_path / "huge.csv")), "huge.csv:2 is not a readable CSV"),
        (("predict", job, "-i", str(tmp_path / "huge.csv")), "huge.csv:2 is not a readable"),
        (("jobs", "submit", str(write_spec(tmp_path, data="huge.csv"))), "huge.csv:2 is not"),
    ):
        code, _, err = cli(*argv, "--json")
        error = json.loads(err)["error"]
        assert (code, error["code"]) == (2, "INVALID_ARGUMENT") and message in error["message"]


def test_predict_refuses_its_output_path_before_reading_the_inputs(
    cli: Cli, tmp_path: Path
) -> None:
    """An output path of another kind was refused only after the prediction had been computed.
    The inputs here do not exist: refusing the output first shows nothing was read or asked."""
    job, missing = "0" * 32, str(tmp_path / "missing.csv")
    for output, message in (
        ("out.txt", "output must be a .csv, .json or .npy file. Received: "),
        ("no-such-folder/out.csv", "no-such-folder does not exist"),
    ):
        code, _, err = cli("predict", job, "-i", missing, "-o", str(tmp_path / output), "--json")
        error = json.loads(err)["error"]
        assert code == 2 and message in error["message"] and "missing.csv" not in error["message"]


def test_submit_follow_and_predict(cli: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    status = cli.json("jobs", "submit", str(spec), "--wait")
    assert status["state"] == "SUCCEEDED" and status["display_name"] == "cli-job"
    job = status["name"]

    code, out, _ = cli("jobs", "list", "--label", "suite=cli")
    assert code == 0 and job in out and "SUCCEEDED" in out
    # Every metric of the job, where the list showed loss and val_loss alone.
    assert out.splitlines()[0].split()[-1] == "METRICS" and "accuracy=" in out
    assert next(j["name"] for j in cli.json("jobs", "list", "--state", "succeeded")) == job
    shown = cli.json("jobs", "show", job)
    assert [c["epoch"] for c in shown["checkpoints"]] == [4]
    # The settings a sweep's jobs differ by, which only the SDK's raw message showed.
    training = shown["training"]
    assert training["optimizer"] == {"name": "adam", "learning_rate": 0.05}
    assert (training["epochs"], training["batch_size"], training["dtype"]) == (4, 8, "float32")
    assert training["metrics"] == ["accuracy"] and "schedule" not in training
    assert training["log_every_steps"] == 0, "a zero is a setting too"
    code, out, _ = cli("jobs", "show", job.split("/")[1])
    assert code == 0 and "state:     SUCCEEDED" in out and "final" in out
    assert "\nlabels:    suite=cli\n" in out and "\nqueue:     default (priority 0)\n" in out
    assert "training:  epochs=4 batch_size=8 " in out and " optimizer.learning_rate=0.05 " in out

    events = [json.loads(line) for line in cli("jobs", "watch", job, "--json")[1].splitlines()]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["state"] == "SUCCEEDED" and {e["job"] for e in events} == {job}
    # Submitted and watched at once, the JSON lines are the same events, and nothing else.
    code, out, _ = cli("jobs", "submit", str(write_spec(tmp_path, epochs=1)), "--watch", "--json")
    watched = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and {tuple(sorted(e)) for e in watched} == {tuple(sorted(events[0]))}
    assert watched[-1]["state"] == "SUCCEEDED" and len({e["job"] for e in watched}) == 1
    # A list cut at --limit says so: it looked complete, and a count of it undercounted.
    code, out, err = cli("jobs", "list", "--limit", "1")
    assert code == 0 and len(out.splitlines()) == 2, "the header and the newest job"
    assert watched[0]["job"] in out
    assert err == "trainwire: showing the first 1 jobs; more match: raise --limit\n"
    code, out, err = cli("jobs", "list", "--limit", "1000")
    assert code == 0 and len(out.splitlines()) > 2 and err == ""
    sorted_jobs = cli.json("jobs", "list", "--label", "suite=cli", "--sort", "accuracy")
    accuracies = [j["metrics"]["accuracy"] for j in sorted_jobs if "accuracy" in j["metrics"]]
    assert len(accuracies) >= 2 and accuracies == sorted(accuracies, reverse=True)
    code, out, _ = cli("jobs", "watch", job, "--after", str(len(events) - 1))
    assert code == 0 and out.splitlines()[0].startswith(f"#{len(events)}  SUCCEEDED")

    metrics = cli.json("jobs", "metrics", job)
    assert metrics["loss"]["epoch"] == [1, 2, 3, 4]
    code, out, _ = cli("jobs", "metrics", job)
    assert out.splitlines()[0].split() == ["EPOCH", "ACCURACY", "LOSS"]
    assert len(out.splitlines()) == 5

    plotted = cli.json("jobs", "plot", job, "--output", str(tmp_path / "curves.png"))
    assert {"loss", "accuracy"} <= set(plotted["curves"])
    png_chunks((tmp_path / "curves.png").read_bytes())

    features, labels = blobs(6, seed=9)
    np.save(tmp_path / "rows.npy", features)
    predicted = cli.json("predict", job, "--input", str(tmp_path / "rows.npy"))
    assert predicted["labels"] == labels.tolist()
    code, out, _ = cli(
        "predict", job, "-i", str(tmp_path / "rows.npy"), "-o", str(tmp_path / "p.csv")
    )
    assert code == 0 and "wrote 6 predictions" in out
    written = (tmp_path / "p.csv").read_text().splitlines()
    assert (
        written[0] == "label,p0,p1,p2"
        and [int(r.split(",")[0]) for r in written[1:]] == labels.tolist()
    )
    code, out, _ = cli("predict", job, "-i", str(tmp_path / "rows.npy"))
    assert out.splitlines()[0].split() == ["ROW", "LABEL", "PROBABILITY"]
    # The raw outputs alone: a table of the three logits, and JSON without labels.
    code, out, _ = cli("predict", job, "-i", str(tmp_path / "rows.npy"), "--outputs-only")
    assert code == 0 and out.splitlines()[0].split() == ["ROW", "Y0", "Y1", "Y2"]
    raw = cli.json("predict", job, "-i", str(tmp_path / "rows.npy"), "--outputs-only")
    assert np.array(raw["outputs"]).shape == (6, 3) and raw.get("labels") is None

    # A CSV header names the columns: they are matched to the dataset's by name, in any order.
    shuffled = tmp_path / "rows.csv"
    order = [3, 1, 0, 2]
    shuffled.write_text(
        "d,b,a,c\n"
        + "".join(",".join(repr(float(v)) for v in row[order]) + "\n" for row in features)
    )
    assert cli.json("predict", job, "--input", str(shuffled))["labels"] == labels.tolist()
    with_label = tmp_path / "with-label.csv"
    with_label.write_text("a,b,c,d,label\n" + ",".join(["0"] * 5) + "\n")
    code, _, err = cli("predict", job, "--input", str(with_label))
    assert code == 2 and "not features of the model: label" in err
    # Refused by name too when it holds words, as a target column of class names would.
    with_label.write_text("a,b,c,d,species\n" + ",".join(["0"] * 4) + ",setosa\n")
    code, _, err = cli("predict", job, "--input", str(with_label))
    assert code == 2 and "not features of the model: species" in err

    assert cli.json("jobs", "delete", job) == {"deleted": job}


def count_metadata_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The jobs whose model metadata the CLI fetches from now on."""
    calls: list[str] = []
    fetch = Client.model_metadata

    def counted(self: Client, job: str, checkpoint: str = "") -> Any:
        calls.append(job)
        return fetch(self, job, checkpoint)

    monkeypatch.setattr(Client, "model_metadata", counted)
    return calls


def test_a_checkpoint_s_json_is_what_it_was_when_the_sdk_returned_messages() -> None:
    """`jobs show --json` writes a `Checkpoint` as it wrote the protobuf message: times naive UTC
    cut to microseconds, null when unset. The expected lines are the old converter's output."""
    messages = [
        jobs_pb2.Checkpoint(
            name="jobs/0123abcd/checkpoints/17", epoch=4, step=20, size_bytes=1234,
            metrics={"loss": 0.25, "val_loss": 0.5}, is_best=True,
            create_time=Timestamp(seconds=1767225600, nanos=123456789),
        ),
        jobs_pb2.Checkpoint(
            name="jobs/0123abcd/checkpoints/18", epoch=4, step=23, size_bytes=99,
            metrics={"loss": 0.25}, is_partial=True, create_time=Timestamp(seconds=1767225601),
        ),
        jobs_pb2.Checkpoint(name="jobs/0123abcd/checkpoints/19"),
    ]  # fmt: skip
    lines = [
        json.dumps(checkpoint_to_dict(Checkpoint.from_proto(m)), sort_keys=True) for m in messages
    ]
    assert lines == [
        '{"create_time": "2026-01-01T00:00:00.123456", "epoch": 4, "is_best": true, '
        '"is_final": false, "is_partial": false, "metrics": {"loss": 0.25, "val_loss": 0.5}, '
        '"name": "jobs/0123abcd/checkpoints/17", "size_bytes": 1234, "step": 20}',
        '{"create_time": "2026-01-01T00:00:01", "epoch": 4, "is_best": false, '
        '"is_final": false, "is_partial": true, "metrics": {"loss": 0.25}, '
        '"name": "jobs/0123abcd/checkpoints/18", "size_bytes": 99, "step": 23}',
        '{"create_time": null, "epoch": 0, "is_best": false, "is_final": false, '
        '"is_partial": false, "metrics": {}, "name": "jobs/0123abcd/checkpoints/19", '
        '"size_bytes": 0, "step": 0}',
    ]


def test_the_json_of_datasets_jobs_and_events_keeps_its_times_naive_utc() -> None:
    """`datasets ... --json`, `jobs ... --json` and `jobs watch --json` write times as they did
    when the SDK's times were naive: UTC without an offset, cut to microseconds, null when unset.
    The expected lines are the output of the SDK before its times were made aware."""
    created = Timestamp(seconds=1767225600, nanos=123456789)
    dataset = datasets_pb2.Dataset(
        name="datasets/0123abcd",
        display_name="blobs",
        num_examples=40,
        num_classes=3,
        task=datasets_pb2.TASK_KIND_MULTICLASS_CLASSIFICATION,
        size_bytes=960,
        sha256="ab" * 32,
        features=tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[40, 4]),
        targets=tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_INT64, shape=[40]),
        create_time=created,
        labels={"suite": "sdk"},
    )
    job = jobs_pb2.Job(
        name="jobs/0123abcd",
        display_name="mlp",
        dataset="datasets/0123abcd",
        attempt=1,
        state=jobs_pb2.JOB_STATE_RUNNING,
        create_time=created,
        queue="default",
        start_time=Timestamp(seconds=1767225601),
        labels={"suite": "sdk"},
    )
    event = jobs_pb2.JobEvent(
        sequence=3, time=Timestamp(seconds=1767225602, nanos=5000), state=jobs_pb2.JOB_STATE_RUNNING
    )  # fmt: skip
    epoch_end = epoch_end_event(Timestamp(seconds=1767225603, nanos=999999999))
    documents = [
        DatasetInfo.from_proto(dataset).to_dict(),
        DatasetInfo.from_proto(datasets_pb2.Dataset(name="datasets/x")).to_dict(),
        JobStatus.from_proto(job).to_dict(),
        JobEvent.from_proto(event).to_dict(),
        JobEvent.from_proto(epoch_end).to_dict(),
    ]
    assert [json.dumps(d, sort_keys=True) for d in documents] == [
        '{"class_names": [], "create_time": "2026-01-01T00:00:00.123456", '
        '"display_name": "blobs", "feature_names": [], '
        '"feature_shape": [40, 4], "labels": {"suite": "sdk"}, "name": "datasets/0123abcd", '
        '"num_classes": 3, "num_examples": 40, "num_features": 4, "sha256": "' + "ab" * 32 + '", '
        '"size_bytes": 960, "target_shape": [40], "task": "multiclass"}',
        '{"class_names": [], "create_time": null, "display_name": "", "feature_names": [], '
        '"feature_shape": [], "labels": {}, '
        '"name": "datasets/x", "num_classes": 0, "num_examples": 0, "num_features": 0, '
        '"sha256": "", "size_bytes": 0, "target_shape": [], "task": "unspecified"}',
        '{"attempt": 1, "create_time": "2026-01-01T00:00:00.123456", '
        '"dataset": "datasets/0123abcd", "display_name": "mlp", "end_time": null, "epoch": 0, '
        '"error": "", "eta_seconds": 0.0, "examples_per_second": 0.0, '
        '"labels": {"suite": "sdk"}, "metrics": {}, "name": "jobs/0123abcd", "priority": 0, '
        '"queue": "default", "start_time": "2026-01-01T00:00:01", "state": "RUNNING", '
        '"total_epochs": 0}',
        '{"epoch": 0, "eta_seconds": 0.0, "message": "", "metrics": {}, "sequence": 3, '
        '"state": "RUNNING", "time": "2026-01-01T00:00:02.000005", "total_epochs": 0}',
        '{"epoch": 2, "eta_seconds": 0.75, "message": "epoch 2 done", '
        '"metrics": {"loss": 0.5, "val_loss": 0.25}, "sequence": 9, "state": "RUNNING", '
        '"time": "2026-01-01T00:00:03.999999", "total_epochs": 5}',
    ]


def test_predict_names_the_classes_of_a_model_that_knows_them(
    cli: Cli, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table shows each row's class name beside its label, the JSON adds them under
    label_names (labels unchanged), and the CSV output stays numbers only; the metadata that
    holds the names is fetched once per prediction."""
    names = ["alpha", "beta", "gamma"]
    features, labels = blobs(30, seed=5)
    dataset = client.upload_dataset(features, labels, class_names=names, name="named")
    job = client.create_job(dataset, MODEL, epochs=4, learning_rate=0.05)
    job.wait()
    rows, expected = blobs(6, seed=9)
    np.save(tmp_path / "rows.npy", rows)
    calls = count_metadata_calls(monkeypatch)

    predicted = cli.json("predict", job.name, "--input", str(tmp_path / "rows.npy"))
    assert predicted["labels"] == expected.tolist()
    assert predicted["label_names"] == [names[k] for k in expected]
    code, out, _ = cli("predict", job.name, "--input", str(tmp_path / "rows.npy"))
    lines = [line.split() for line in out.splitlines()]
    assert code == 0 and lines[0] == ["ROW", "LABEL", "CLASS", "PROBABILITY"]
    assert [(int(row[1]), row[2]) for row in lines[1:]] == [(k, names[k]) for k in expected]
    # A CSV header asks for the feature names: the same fetch gives the class names.
    (tmp_path / "rows.csv").write_text(
        "x0,x1,x2,x3\n" + "".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows)
    )
    assert cli.json("predict", job.name, "--input", str(tmp_path / "rows.csv"))["label_names"]
    assert calls == [job.name] * 3

    output = tmp_path / "p.json"
    assert cli("predict", job.name, "-i", str(tmp_path / "rows.npy"), "-o", str(output))[0] == 0
    written = json.loads(output.read_text())
    assert written["labels"] == predicted["labels"]
    assert written["label_names"] == predicted["label_names"]
    output = tmp_path / "p.csv"
    assert cli("predict", job.name, "-i", str(tmp_path / "rows.npy"), "-o", str(output))[0] == 0
    assert output.read_text().splitlines()[0] == "label,p0,p1,p2"
    assert np.loadtxt(output, delimiter=",", skiprows=1)[:, 0].tolist() == expected.tolist()
    assert calls == [job.name] * 4, "the names are fetched only for outputs that show them"

    # The prediction is answered: names that cannot be read (the job deleted meanwhile, the
    # server gone) are left out, said on stderr, and the command succeeds.
    def unreadable(self: Client, job: str, checkpoint: str = "") -> Any:
        raise NotFound("jobs/x does not exist", grpc.StatusCode.NOT_FOUND)

    monkeypatch.setattr(Client, "model_metadata", unreadable)
    code, out, err = cli("predict", job.name, "--input", str(tmp_path / "rows.npy"))
    assert code == 0 and out.splitlines()[0].split() == ["ROW", "LABEL", "PROBABILITY"]
    assert "class names left out: jobs/x does not exist" in err


def test_predict_fetches_no_metadata_for_a_regression(
    cli: Cli, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    features, _ = blobs(30, seed=5)
    dataset = client.upload_dataset(features, features[:, 0], task="regression", name="values")
    job = client.create_job(dataset, Sequential([Dense(4), Dense(1)]), epochs=1)
    job.wait()
    np.save(tmp_path / "rows.npy", features[:3])
    calls = count_metadata_calls(monkeypatch)
    predicted = cli.json("predict", job.name, "--input", str(tmp_path / "rows.npy"))
    assert predicted["labels"] is None and predicted["label_names"] is None
    assert calls == []


def test_jobs_cancel_and_delete_take_several_jobs_going_on_past_one_refused(
    cli: Cli, tmp_path: Path
) -> None:
    """Clearing a listing took a command per job. Several are taken in order: a job refused
    alone (a malformed name; not found; running, for delete) is reported by name and the rest
    go on, the exit code the first refusal's."""
    spec = str(write_spec(tmp_path, queue="nobody-listens"))
    first, second, third = (cli.json("jobs", "submit", spec)["name"] for _ in range(3))
    code, out, err = cli("jobs", "cancel", "bad/name/x", first, "--json")
    assert code == 2 and "bad/name/x" in err
    assert [json.loads(line)["name"] for line in out.splitlines()] == [first]
    code, out, err = cli("jobs", "cancel", first, second, "--json")
    assert code == 0, err
    assert [(s["name"], s["state"]) for s in map(json.loads, out.splitlines())] == [
        (first, "CANCELLED"), (second, "CANCELLED"),
    ]  # fmt: skip
    gone = "jobs/" + "0" * 32
    code, out, err = cli("jobs", "delete", first, gone, third, second)
    assert code == 3, err  # the first refusal's: NOT_FOUND (third, queued, is a precondition)
    assert out.splitlines() == [f"deleted {first}", f"deleted {second}"]
    assert err.splitlines() == [
        f"trainwire: not found: {gone} does not exist",
        f"trainwire: failed precondition: {third} is QUEUED; cancel it and let it finish "
        "before deleting",
    ]
    assert cli("jobs", "show", first)[0] == 3 and cli("jobs", "show", second)[0] == 3
    assert cli.json("jobs", "show", third)["state"] == "QUEUED"
    code, _, err = cli("jobs", "delete", third, gone, "--json")
    assert code == 4
    errors = [json.loads(line)["error"] for line in err.splitlines()]
    assert [(e["code"], e["exit_code"]) for e in errors] == [
        ("FAILED_PRECONDITION", 4), ("NOT_FOUND", 3),
    ]  # fmt: skip
    assert errors[0]["message"].startswith(f"{third} is QUEUED")
    # Any other refusal ends the command (every job would meet it).
    code, _, err = main_unreachable_jobs("delete", first, second)
    assert code == 5 and err.count("unavailable") == 1
    cli("jobs", "cancel", third)


def main_unreachable_jobs(command: str, *jobs: str) -> tuple[int, str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "trainwire.server.cli", "jobs", command, *jobs,
         "--target", "127.0.0.1:9", "--timeout", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr


def test_exit_codes(cli: Cli, tmp_path: Path) -> None:
    bad = write_spec(tmp_path, units=0)
    code, _, err = cli("jobs", "submit", str(bad), "--json")
    error = json.loads(err)["error"]
    assert code == 2 and error["field_violations"][0]["field"] == "model.layers[1].units"

    queued = cli.json("jobs", "submit", str(write_spec(tmp_path, queue="nobody-listens")))
    assert queued["state"] == "QUEUED"
    code, _, err = cli("jobs", "delete", queued["name"])
    assert code == 4 and "failed precondition" in err
    assert cli.json("jobs", "cancel", queued["name"])["state"] == "CANCELLED"
    code, out, _ = cli("jobs", "watch", queued["name"])
    assert code == 8 and out.splitlines()[-1] == f"{queued['name']} CANCELLED: cancelled by request"

    diverging = write_spec(tmp_path, optimizer="sgd", rate=1e6, epochs=30)
    code, out, _ = cli("jobs", "submit", str(diverging), "--wait")
    assert code == 1 and "FAILED" in out

    assert cli("jobs", "show", "jobs/" + "0" * 32)[0] == 3
    code, _, err = cli("jobs", "list", "--limit", "0")
    assert code == 2 and "--limit must be at least 1" in err
    code, _, err = main_unreachable()
    assert code == 5 and "unavailable" in err


def count_uploads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The dataset files the CLI uploads from now on."""
    calls: list[str] = []
    upload = Client.upload_dataset

    def counted(self: Client, features: Any, *args: Any, **kwargs: Any) -> DatasetInfo:
        calls.append(str(features))
        return upload(self, features, *args, **kwargs)

    monkeypatch.setattr(Client, "upload_dataset", counted)
    return calls


def test_submit_reports_model_and_training_mistakes_together(cli: Cli, tmp_path: Path) -> None:
    """The model's mistakes were reported alone: the training settings' only after a fixed
    model's dataset had been uploaded."""
    bad = write_spec(tmp_path, units=0, epochs=0)
    code, _, err = cli("jobs", "submit", str(bad), "--json")
    fields = [v["field"] for v in json.loads(err)["error"]["field_violations"]]
    assert code == 2 and fields == ["model.layers[1].units", "training.epochs"]
    code, _, err = cli("jobs", "submit", str(bad))
    assert code == 2 and "model.layers[1].units" in err and "training.epochs" in err


def test_submit_uploads_nothing_for_a_spec_it_refuses(
    cli: Cli, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = client.upload_dataset(*blobs(30, seed=5), name="stored")
    uploads = count_uploads(monkeypatch)
    # A training setting and a top-level one (a queue is a name, not a list).
    bad = write_spec(tmp_path, optimizer="nope", queue="[a, b]")
    assert (tmp_path / "blobs.csv").is_file()
    code, _, err = cli("jobs", "submit", str(bad), "--json")
    fields = [v["field"] for v in json.loads(err)["error"]["field_violations"]]
    assert code == 2 and fields == ["training.optimizer.name", "queue"]
    assert uploads == []
    # --dataset names a stored dataset instead of the spec's file: nothing to upload either.
    spec = write_spec(tmp_path, epochs=1)
    status = cli.json("jobs", "submit", str(spec), "--dataset", stored.name, "--wait")
    assert status["state"] == "SUCCEEDED" and status["dataset"] == stored.name
    assert uploads == []
    # A spec without a dataset is reused across datasets (it was refused: "dataset: is
    # required"); without --dataset the message names it as the other way.
    model_only = tmp_path / "model-only.yaml"
    model_only.write_text(
        "\n".join(line for line in spec.read_text().splitlines() if "dataset" not in line
                  and not line.startswith(("  path", "  target_column")))
    )  # fmt: skip
    status = cli.json("jobs", "submit", str(model_only), "--dataset", stored.name, "--wait")
    assert status["state"] == "SUCCEEDED" and status["dataset"] == stored.name
    code, _, err = cli("jobs", "submit", str(model_only))
    assert code == 2 and "dataset: is required" in err and "--dataset ID" in err
    assert uploads == []


def test_help_lists_the_exit_codes_of_the_readmes_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trainwire.client.cli import EXIT_CODE_MEANINGS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("| code | meaning |") :]
    table = table[: table.index("\n\n")]
    rows = re.findall(r"^\| (\d) \| (.+) \|$", table, re.MULTILINE)
    assert {int(code): meaning.replace("`", "") for code, meaning in rows} == EXIT_CODE_MEANINGS
    # Each command's --help, the operator commands' too (theirs listed none), the groups' (theirs
    # listed none either) and the top-level one.
    operator_commands = (
        ["serve"], ["worker"], ["db", "upgrade"], ["db", "current"], ["keys", "create"],
        ["keys", "list"], ["keys", "revoke"], ["status"], ["health"],
    )  # fmt: skip
    groups = (["jobs"], ["datasets"], ["db"], ["keys"])
    for command in (["jobs", "delete"], *operator_commands, *groups, []):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        shown = " ".join(capsys.readouterr().out.split("exit codes:", 1)[1].split())
        for code, meaning in EXIT_CODE_MEANINGS.items():
            assert f"{code} {meaning}" in shown, command


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["datasets", "list", "--timeout", "abc"], "argument --timeout: invalid float value"),
        (["jobs", "list", "--state", "bogus"], "argument --state: invalid choice: 'BOGUS'"),
        (["predict", "X"], "the following arguments are required: --input/-i"),
        (["status", "--bad"], "unrecognized arguments: --bad"),
    ],
)
def test_a_command_line_mistake_with_json_is_a_json_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    """argparse's usage text came out instead of the documented JSON error."""
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--json"])
    out, err = capsys.readouterr()
    error = json.loads(err)["error"]
    assert exited.value.code == 2 and out == ""
    assert (error["code"], error["exit_code"], error["field_violations"]) == (
        "INVALID_ARGUMENT",
        2,
        [],
    )
    assert said in error["message"] and "--help` lists its arguments" in error["message"]
    with pytest.raises(SystemExit) as exited:
        main(argv)  # without --json, argparse's usage and message
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("usage: trainwire")


def test_predict_help_names_every_checkpoint_selector(capsys: pytest.CaptureFixture[str]) -> None:
    """--checkpoint listed "latest (default), best, epoch/N" alone, though a full checkpoint name
    is taken too."""
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "latest (default), best, epoch/N, or a checkpoint's full name" in shown
    assert "jobs/ID/checkpoints/N" in shown


def test_an_unreachable_server_gets_the_hint_that_fits_the_client_s_tls() -> None:
    # A plaintext client against a TLS server sees only "Socket closed": the hint names the flag.
    code, _, err = main_unreachable()
    assert code == 5 and "if the server uses TLS, pass --tls" in err
    # A TLS client is told what else may be wrong, never to pass the --tls it passed.
    code, _, err = main_unreachable("--tls", "system")
    assert code == 5 and "unavailable" in err and "if the server uses TLS" not in err
    assert "pass --client-cert CERT and --client-key KEY" in err


def test_a_watch_of_a_server_never_reached_fails_as_other_commands_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`jobs watch` of a server that is down printed nothing for five minutes, then told the
    user to pass `Client(watch_reconnect_s=)`: it fails within seconds, with the usual hint."""
    started = time.monotonic()
    code = main(["jobs", "watch", "abc", "--target", "127.0.0.1:9", "--json"])
    took = time.monotonic() - started
    out, err = capsys.readouterr()
    error = json.loads(err)["error"]
    assert (code, out, error["code"]) == (5, "", "UNAVAILABLE")
    assert "if the server uses TLS, pass --tls" in error["message"]
    assert took < 150, f"{took:.1f}s, where waiting out watch_reconnect_s takes 300 s"


def test_a_tls_failure_with_json_leaves_stderr_the_json_error() -> None:
    """gRPC's own log lines (`I1128 ... ssl_transport_security.cc ... Handshake failed`) came
    before the JSON error of a TLS client against a plaintext server: stderr was not JSON."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    environment = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "trainwire.server.cli", "datasets", "list", "--tls", "system",
             "--target", f"127.0.0.1:{port}", "--timeout", "1", "--json"],
            capture_output=True, text=True, timeout=60, env=environment,
        )  # fmt: skip
    finally:
        server.stop(None)
    error = json.loads(result.stderr)["error"]
    assert result.returncode == 5 and "handshake failed" in error["message"].lower()
    assert "check too that the server serves TLS" in error["message"]


def test_an_unavailable_answer_from_the_server_gets_no_tls_hint() -> None:
    # The server was reached over plaintext and answered UNAVAILABLE itself (its database is
    # down): nothing about TLS would help.
    class DatabaseDown(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            def down(request: bytes, context: grpc.ServicerContext) -> bytes:
                context.abort(grpc.StatusCode.UNAVAILABLE, "The database is unreachable")

            return grpc.unary_unary_rpc_method_handler(down)

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((DatabaseDown(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        code, _, err = main_unreachable(target=f"127.0.0.1:{port}")
    finally:
        server.stop(None)
    assert code == 5 and "The database is unreachable" in err and "--tls" not in err


def test_a_certificate_file_that_cannot_be_read_is_named_by_its_option_or_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --client-cert, --client-key or --tls file (or TRAINWIRE_CLIENT_CERT, TRAINWIRE_CLIENT_KEY,
    TRAINWIRE_TLS) that does not exist was `[Errno 2] No such file or directory: '...'`, naming
    none of them. Nothing is connected to: the files are read first."""
    for name in ("TRAINWIRE_TLS", "TRAINWIRE_CLIENT_CERT", "TRAINWIRE_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_bytes(CERTIFICATE_PEM)
    key.write_bytes(KEY_PEM)
    missing = tmp_path / "missing.pem"

    def datasets_list(*options: str) -> tuple[int, str]:
        code = main(["datasets", "list", "--target", "127.0.0.1:9", "--timeout", "1", *options])
        out, err = capsys.readouterr()
        assert out == ""
        return code, err

    def refused(
        name: str, path: Path, reason: str = "no such file or directory"
    ) -> tuple[int, str]:
        return 2, f"trainwire: invalid argument: cannot read {name} {path}: {reason}\n"

    assert datasets_list("--client-cert", str(missing), "--client-key", str(key)) == refused(
        "--client-cert", missing
    )
    assert datasets_list("--client-cert", str(cert), "--client-key", str(tmp_path)) == refused(
        "--client-key", tmp_path, "is a directory"
    )
    assert datasets_list("--tls", str(missing)) == refused("--tls", missing)
    monkeypatch.setenv("TRAINWIRE_TLS", str(missing))
    assert datasets_list() == refused("TRAINWIRE_TLS", missing)
    assert datasets_list("--tls", "system")[0] == 5, "--tls replaces TRAINWIRE_TLS, unread"
    monkeypatch.delenv("TRAINWIRE_TLS")
    monkeypatch.setenv("TRAINWIRE_CLIENT_CERT", str(cert))
    monkeypatch.setenv("TRAINWIRE_CLIENT_KEY", str(missing))
    code, err = datasets_list("--json")
    assert code == 2 and json.loads(err)["error"]["message"] == (
        f"cannot read TRAINWIRE_CLIENT_KEY {missing}: no such file or directory"
    )
    with pytest.raises(ValueError, match="cannot read TRAINWIRE_CLIENT_KEY"):
        Client.from_env()
    # The SDK's own arguments are named too (they were a bare FileNotFoundError).
    with pytest.raises(ValueError, match=f"cannot read tls {missing}: no such file"):
        Client("127.0.0.1:9", tls=str(missing))
    with pytest.raises(ValueError, match=f"cannot read client_cert key {missing}"):
        Client("127.0.0.1:9", tls=True, client_cert=(str(cert), str(missing)))


def test_the_sdk_reads_each_certificate_file_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The credentials code opened each file to check that it could be read, then again to
    read it (which a file changed or removed in between would not have passed); so did the
    user commands' options and the environment's variables, checked first to be named."""
    for name in ("TRAINWIRE_TLS", "TRAINWIRE_CLIENT_CERT", "TRAINWIRE_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "client.pem", "client.key"))
    for path, pem in ((ca, CERTIFICATE_PEM), (cert, CERTIFICATE_PEM), (key, KEY_PEM)):
        path.write_bytes(pem)  # gRPC reads them only at the handshake
    opened: Counter[str] = Counter()
    real_open = io.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened[str(file)] += 1
        return real_open(file, *args, **kwargs)

    def opens() -> dict[str, int]:
        counted = {path.name: opened[str(path)] for path in (ca, cert, key)}
        opened.clear()
        return counted

    once = {"ca.pem": 1, "client.pem": 1, "client.key": 1}
    # The built-in open is io.open; pathlib calls it by that name.
    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    with Client("127.0.0.1:9", tls=str(ca), client_cert=(str(cert), str(key))):
        pass
    assert opens() == once, "Client's arguments"
    files = ["--tls", str(ca), "--client-cert", str(cert), "--client-key", str(key)]
    code = main(["datasets", "list", "--target", "127.0.0.1:9", "--timeout", "1", *files])
    assert code == 5 and CLIENT_CERT_HINT in capsys.readouterr().err
    assert opens() == once, "the user commands' options"
    monkeypatch.setenv("TRAINWIRE_TLS", str(ca))
    monkeypatch.setenv("TRAINWIRE_CLIENT_CERT", str(cert))
    monkeypatch.setenv("TRAINWIRE_CLIENT_KEY", str(key))
    with Client.from_env(target="127.0.0.1:9"):
        pass
    assert opens() == once, "the environment's variables"
    code = main(["datasets", "list", "--target", "127.0.0.1:9", "--timeout", "1"])
    assert code == 5 and CLIENT_CERT_HINT in capsys.readouterr().err
    assert opens() == once, "the environment's variables, read by the user commands"


def test_the_sdk_takes_certificates_as_bytes_as_well_as_paths() -> None:
    """The bytes the user commands and `env_settings` read are what `Client` is given; an
    empty CA (an empty file's bytes) is refused, never plaintext."""
    with Client("127.0.0.1:9", tls=CERTIFICATE_PEM, client_cert=(CERTIFICATE_PEM, KEY_PEM)):
        pass
    with pytest.raises(ValueError, match="tls is not a PEM certificate: it is empty"):
        channel_credentials(b"", None)
    assert channel_credentials(CERTIFICATE_PEM, (CERTIFICATE_PEM, KEY_PEM)) is not None
    assert channel_credentials("", None) is None and channel_credentials(False, None) is None


def test_a_certificate_or_key_that_is_not_pem_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed --tls, --client-cert or --client-key file (or `tls=b"garbage"`) was never
    named: gRPC logged lines of its own past GRPC_VERBOSITY=ERROR, then the call failed
    "Connection refused" or "Failed to create security handshaker". Each is checked as PEM
    first, and named with what it holds (a key's body never shown)."""
    for name in ("TRAINWIRE_TLS", "TRAINWIRE_CLIENT_CERT", "TRAINWIRE_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)
    garbage, cert, key = tmp_path / "garbage.pem", tmp_path / "client.pem", tmp_path / "client.key"
    garbage.write_text("garbage\n")
    cert.write_bytes(CERTIFICATE_PEM)
    key.write_bytes(KEY_PEM)

    def refusal(*options: str) -> str:
        code = main(["datasets", "list", "--target", "127.0.0.1:9", "--timeout", "1", *options])
        err = capsys.readouterr().err
        assert code == 2, err
        return err

    assert f"--tls {garbage} is not a PEM certificate: it holds no PEM block" in refusal(
        "--tls", str(garbage)
    )
    swapped = refusal("--tls", str(cert), "--client-cert", str(cert), "--client-key", str(cert))
    assert f"--client-key {cert} is not a PEM private key: it holds CERTIFICATE blocks" in swapped
    monkeypatch.setenv("TRAINWIRE_TLS", str(key))
    assert f"TRAINWIRE_TLS {key} is not a PEM certificate: it holds PRIVATE KEY blocks" in (
        refusal()
    )
    monkeypatch.delenv("TRAINWIRE_TLS")
    with pytest.raises(ValueError, match=r"^tls is not a PEM certificate: it holds no PEM block"):
        Client("127.0.0.1:9", tls=b"garbage")
    cut = CERTIFICATE_PEM + b"-----BEGIN CERTIFICATE-----\nMIIB!x\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError, match="its certificate block 2 is not base64 of a DER"):
        Client("127.0.0.1:9", tls=cut)
    secret = b"-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ValueError, match=r"^client_cert key is not a PEM private key") as raised:
        Client("127.0.0.1:9", tls=True, client_cert=(CERTIFICATE_PEM, secret))
    assert "secret" not in str(raised.value)
    encrypted = (
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    with pytest.raises(ValueError, match="is an encrypted private key, which gRPC cannot use"):
        Client("127.0.0.1:9", client_cert=(str(cert), encrypted))


def main_unreachable(*options: str, target: str = "127.0.0.1:9") -> tuple[int, str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "trainwire.server.cli", "datasets", "list",
         "--target", target, "--timeout", "1", *options],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr


def test_metrics_shows_every_point_of_a_per_step_metric(cli: Cli, tmp_path: Path) -> None:
    """`--metric batch_loss` of a job logging every step showed one row per epoch, each step
    overwriting the last; an unknown metric printed a lone EPOCH header, exit 0."""
    spec = write_spec(tmp_path, epochs=2)
    spec.write_text(
        spec.read_text().replace("  batch_size: 8\n", "  batch_size: 8\n  log_every_steps: 1\n")
    )
    job = cli.json("jobs", "submit", str(spec), "--wait")["name"]
    points = cli.json("jobs", "metrics", job, "--metric", "batch_loss", "--metric", "loss")
    steps = points["batch_loss"]["step"]
    assert len(steps) > 2 and points["loss"]["epoch"] == [1, 2]
    code, out, _ = cli("jobs", "metrics", job, "--metric", "batch_loss", "--metric", "loss")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["EPOCH", "STEP", "BATCH_LOSS", "LOSS"]
    rows = [line.split() for line in lines[1:]]
    assert [int(row[1]) for row in rows] == steps
    # Each epoch's loss shares the row of its step, the epoch's last.
    assert [len(row) for row in rows].count(4) == 2 and rows[-1][1] == str(steps[-1])
    # Without per-step metrics, a row per epoch as before.
    code, out, _ = cli("jobs", "metrics", job)
    assert code == 0 and out.splitlines()[0].split() == ["EPOCH", "ACCURACY", "LOSS"]
    assert len(out.splitlines()) == 3


def test_metrics_refuses_a_metric_the_job_never_logs_and_shows_one_it_has_not_yet(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown metric was found missing only once its points were read, and then every
    point of the job was read again to list its names; a metric the job logs but had no point
    of yet (no epoch done) was refused as unknown, "its metrics: none yet"."""
    reads: list[tuple[str, ...]] = []
    job_metrics = Client.job_metrics

    def counted(self: Client, name: str, names: Sequence[str] = ()) -> Any:
        reads.append(tuple(names))
        return job_metrics(self, name, names)

    monkeypatch.setattr(Client, "job_metrics", counted)
    # The live server's workers take the default queue only: this job stays QUEUED.
    spec = write_spec(tmp_path, queue="parked")
    job = cli.json("jobs", "submit", str(spec))["name"]
    code, out, err = cli("jobs", "metrics", job, "--metric", "nosuch", "--metric", "loss")
    assert code == 2 and out == ""
    assert f"metric_names[0]: {job} has no metric 'nosuch'; its metrics: accuracy, loss" in err
    assert reads == [("nosuch", "loss")], "one listing, of the names asked for"
    code, out, err = cli("jobs", "metrics", job, "--metric", "accuracy")
    assert (code, out.split(), err) == (0, ["EPOCH", "ACCURACY"], "")
    cli("jobs", "cancel", job)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--timeout", "0"], "--timeout must be a positive, finite number of seconds"),
        (["--api-key", ""], "--api-key is empty"),
        (["--api-key", " \n"], "--api-key is empty"),
    ],
)
def test_an_option_given_empty_or_zero_is_refused_not_ignored(
    option: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--timeout 0` and `--api-key ""` were taken for options left out: the variable or the
    default was used instead, though TRAINWIRE_TIMEOUT=0 and `--timeout -1` are refused."""
    monkeypatch.setenv("TRAINWIRE_TIMEOUT", "1")
    monkeypatch.setenv("TRAINWIRE_API_KEY", "tw_from_the_environment")
    code = main(["datasets", "list", "--target", "127.0.0.1:9", *option])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    monkeypatch.setenv("TRAINWIRE_TIMEOUT", "0")
    code = main(["datasets", "list", "--target", "127.0.0.1:9"])
    message = "TRAINWIRE_TIMEOUT must be a positive, finite number of seconds"
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
def test_a_timeout_that_is_no_deadline_is_refused_naming_where_it_came_from(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """TRAINWIRE_TIMEOUT=nan or inf was taken, and every call then failed at once "deadline
    exceeded" (exit 5); -1 was refused as "timeout must be positive", naming neither the option
    nor the variable."""
    code = main(["datasets", "list", "--target", "127.0.0.1:9", f"--timeout={value}"])
    err = capsys.readouterr().err
    assert code == 2 and "--timeout must be a positive, finite number of seconds" in err, err
    assert value in err
    monkeypatch.setenv("TRAINWIRE_TIMEOUT", value)
    code = main(["datasets", "list", "--target", "127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "TRAINWIRE_TIMEOUT must be a positive, finite number" in err, err
    with pytest.raises(ValueError, match=r"^timeout must be a positive, finite number"):
        Client("127.0.0.1:9", timeout=float(value))


def test_plot_writes_the_format_its_extension_names(cli: Cli, tmp_path: Path) -> None:
    """`-o x.pdf` wrote PNG bytes to x.pdf without a word; a job without metrics was refused as
    an invalid argument (exit 2), though it is its state (exit 4)."""
    job = cli.json("jobs", "submit", str(write_spec(tmp_path, epochs=1)), "--wait")["name"]
    for name, magic in (("curves.pdf", b"%PDF"), ("curves.SVG", b"<?xml"), ("curves", b"\x89PNG")):
        assert cli("jobs", "plot", job, "-o", str(tmp_path / name))[0] == 0
        assert (tmp_path / name).read_bytes().startswith(magic), name
    code, _, err = cli("jobs", "plot", job, "-o", str(tmp_path / "curves.xyz"))
    assert code == 2 and "cannot save a plot as .xyz" in err and ".pdf" in err
    assert not (tmp_path / "curves.xyz").exists()

    queued = cli.json("jobs", "submit", str(write_spec(tmp_path, queue="nobody-listens")))
    code, _, err = cli("jobs", "plot", queued["name"], "-o", str(tmp_path / "none.png"))
    assert code == 4 and "no metrics to plot yet" in err
    cli("jobs", "cancel", queued["name"])


# A window title, the clipboard (OSC 52), a cleared screen, a line overwritten and a fake one,
# a bidirectional override: what a hostile server, or a name stored before the server refused
# them, can send.
HOSTILE = "x\x1b]0;pwned\x07\x1b]52;c;cHduZWQ=\x07\x1b[2J\r\nFAKE: SUCCEEDED\x9b31m\u202e"
SHOWN = "x\\x1b]0;pwned\\x07\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J\\r\\nFAKE: SUCCEEDED\\x9b31m\\u202e"


def hostile_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK calls the CLI makes answer as a hostile server would: every text it shows
    holds terminal control sequences."""
    dataset = DatasetInfo.from_proto(
        datasets_pb2.Dataset(
            name=f"datasets/{HOSTILE}", display_name=HOSTILE, num_classes=2,
            task=datasets_pb2.TASK_KIND_BINARY_CLASSIFICATION, labels={HOSTILE: HOSTILE},
            feature_names=[HOSTILE, "b"], class_names=[HOSTILE, "yes"],
        )
    )  # fmt: skip
    status = JobStatus.from_proto(
        jobs_pb2.Job(
            name=f"jobs/{HOSTILE}", display_name=HOSTILE, dataset=HOSTILE, error=HOSTILE,
            state=jobs_pb2.JOB_STATE_FAILED,
            metrics={HOSTILE: 0.5},
        )
    )  # fmt: skip
    event = JobEvent.from_proto(
        jobs_pb2.JobEvent(sequence=1, state=jobs_pb2.JOB_STATE_FAILED, message=HOSTILE)
    )
    checkpoint = Checkpoint.from_proto(jobs_pb2.Checkpoint(name=f"jobs/x/checkpoints/{HOSTILE}"))
    prediction = Prediction(
        outputs=np.zeros((1, 1), np.float32), probabilities=np.array([[0.9, 0.1]], np.float32),
        labels=np.array([0]), checkpoint=HOSTILE,
    )  # fmt: skip
    answers: dict[str, Any] = {
        "list_datasets": lambda self, *a, **k: iter([dataset]),
        "get_dataset": lambda self, *a, **k: dataset,
        "list_jobs": lambda self, *a, **k: iter([Job(self, status)]),
        "get_job": lambda self, *a, **k: Job(self, status),
        "job_status": lambda self, *a, **k: status,
        "job_checkpoints": lambda self, *a, **k: [checkpoint],
        "watch_job": lambda self, *a, **k: iter([event]),
        "cancel_job": lambda self, *a, **k: status,
        "predict": lambda self, *a, **k: prediction,
        "model_metadata": lambda self, *a, **k: types.SimpleNamespace(class_names=[HOSTILE, "y"]),
    }
    for method, answer in answers.items():
        monkeypatch.setattr(Client, method, answer)


@pytest.mark.parametrize(
    "command",
    [
        ["datasets", "list"],
        ["datasets", "show", "x"],
        ["jobs", "list"],
        ["jobs", "show", "x"],
        ["jobs", "watch", "x"],
        ["jobs", "cancel", "x"],
        ["predict", "x", "--input", "{rows}"],
    ],
)
def test_text_from_the_server_is_printed_escaped_for_people_and_kept_in_json(
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Names, labels, class names, errors and event messages were printed raw: a terminal ran
    the escape sequences they held (its title, the clipboard, the screen rewritten)."""
    hostile_server(monkeypatch)
    np.save(tmp_path / "rows.npy", np.zeros((1, 2), np.float32))
    argv = [part.format(rows=tmp_path / "rows.npy") for part in command]
    main([*argv, "--target", "127.0.0.1:9"])
    out, err = capsys.readouterr()
    assert SHOWN in out
    for line in (out + err).split("\n"):
        assert line.isprintable(), f"an unprintable character reached the terminal: {line!r}"
    main([*argv, "--target", "127.0.0.1:9", "--json"])
    out, _ = capsys.readouterr()
    assert out.isascii(), "json.dumps escapes them"
    documents = [json.loads(line) for line in out.splitlines()]
    assert any(HOSTILE in text for text in strings_in(documents)), "and keeps them"


def strings_in(document: object) -> Iterator[str]:
    """Every string of a JSON document, keys included."""
    if isinstance(document, str):
        yield document
    elif isinstance(document, dict):
        for key, value in document.items():
            yield key
            yield from strings_in(value)
    elif isinstance(document, list):
        for value in document:
            yield from strings_in(value)


def test_an_error_from_the_server_is_printed_escaped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(self: Client, *args: object, **kwargs: object) -> Any:
        raise InvalidArgument(
            f"{HOSTILE}: no", grpc.StatusCode.INVALID_ARGUMENT, [(f"f{HOSTILE}", HOSTILE)]
        )

    monkeypatch.setattr(Client, "get_dataset", refuse)
    assert main(["datasets", "show", "x", "--target", "127.0.0.1:9"]) == 2
    _, err = capsys.readouterr()
    assert f"invalid argument: {SHOWN}: no" in err and f"  f{SHOWN}: {SHOWN}" in err
    assert all(line.isprintable() for line in err.split("\n"))


def test_spaces_of_other_scripts_are_printed_as_they_are() -> None:
    """No-break and ideographic spaces, which names hold, were shown as `\\xa0` and `\\u3000`;
    controls and format characters still are escaped."""
    assert terminal_text("tokyo\u3000model\xa0v2") == "tokyo\u3000model\xa0v2"
    assert terminal_text("a\x1b[2Jb\u202ec") == "a\\x1b[2Jb\\u202ec"
