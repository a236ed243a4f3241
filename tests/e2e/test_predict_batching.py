"""Micro-batched predictions over real gRPC: concurrent answers equal lone answers bit for bit,
malformed tensors are refused without touching their batch, and deadlines hold."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator

import grpc
import grpc.aio
import numpy as np
import pytest

from trainwire.client import Client
from trainwire.client.tensors import to_tensor
from trainwire.server.local import LocalServer, local_server
from trainwire.v1 import predictions_pb2, predictions_pb2_grpc, tensor_pb2

from ..support.ports import free_ports
from .test_topology import scrape

WIDTH = 64
MODEL = {
    "layers": [
        {"type": "dense", "units": 256, "activation": "relu"},
        {"type": "dense", "units": 256, "activation": "relu"},
        {"type": "dense", "units": 10},
    ]
}


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, int]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'trainwire.db'}"
    metrics_port = free_ports(2)  # the server's, then its worker's
    env = {
        "TRAINWIRE_QUEUES": "default",
        "TRAINWIRE_METRICS_PORT": str(metrics_port),
        # Leaders formed under load wait for company: deadlines must still hold.
        "TRAINWIRE_PREDICT_BATCH_WAIT_MS": "4000",
    }
    with local_server(url, workers=1, extra_env=env) as server:
        yield server, metrics_port
    assert server.process.returncode == 0, "".join(server.output[-40:])


@pytest.fixture(scope="module")
def job_name(batching_server: tuple[LocalServer, int]) -> str:
    server, _ = batching_server
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, WIDTH)).astype(np.float32)
    with Client(server.target, timeout=60) as client:
        data = client.upload_dataset(x, rng.integers(0, 10, size=300), task="multiclass")
        job = client.create_job(data, MODEL, epochs=2, batch_size=64)
        job.wait(timeout=120)
        return job.name


def _requests(job: str, count: int, seed: int) -> list[predictions_pb2.PredictRequest]:
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 1, 1, 2, 5, 13, 40, 100], size=count)
    return [
        predictions_pb2.PredictRequest(
            job=job, inputs=to_tensor(rng.normal(size=(n, WIDTH)).astype(np.float32))
        )
        for n in sizes
    ]


async def _concurrently(
    target: str, requests: list[predictions_pb2.PredictRequest], timeout: float = 30
) -> list[predictions_pb2.PredictResponse | grpc.aio.AioRpcError]:
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)  # deadlines count from here
        stub = predictions_pb2_grpc.PredictionServiceStub(channel)

        async def one(request: predictions_pb2.PredictRequest) -> object:
            try:
                return await stub.Predict(request, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                return error

        return await asyncio.gather(*(one(r) for r in requests))  # type: ignore[return-value]


def _batch_histogram(metrics_port: int) -> tuple[float, float]:
    """(passes, passes that answered exactly one request) so far."""
    samples = scrape(metrics_port)
    return (
        samples["trainwire_prediction_batch_requests_count"],
        samples['trainwire_prediction_batch_requests_bucket{le="1.0"}'],
    )


def test_batched_answers_equal_lone_answers_exactly(
    batching_server: tuple[LocalServer, int], job_name: str
) -> None:
    server, metrics_port = batching_server
    requests = _requests(job_name, 96, seed=1)
    with grpc.insecure_channel(server.target) as channel:
        stub = predictions_pb2_grpc.PredictionServiceStub(channel)
        alone = [stub.Predict(r, timeout=30) for r in requests]  # one at a time
    passes_before, single_before = _batch_histogram(metrics_port)
    together = asyncio.run(_concurrently(server.target, requests))
    passes_after, single_after = _batch_histogram(metrics_port)
    for lone, batched in zip(alone, together, strict=True):
        assert isinstance(batched, predictions_pb2.PredictResponse), batched
        assert batched.outputs.data == lone.outputs.data  # the same bytes
        assert batched.probabilities.data == lone.probabilities.data
        assert batched.labels.data == lone.labels.data
    # The concurrent round really was batched: fewer passes than requests.
    assert passes_after - passes_before < len(requests)
    assert (passes_after - passes_before) > (single_after - single_before)


def test_outputs_only_requests_get_the_same_outputs_alone_and_batched_with_full_ones(
    batching_server: tuple[LocalServer, int], job_name: str
) -> None:
    server, metrics_port = batching_server
    requests = _requests(job_name, 64, seed=2)
    raw_only = np.random.default_rng(2).random(len(requests)) < 0.5
    mixed = [
        predictions_pb2.PredictRequest(job=r.job, inputs=r.inputs, outputs_only=bool(raw))
        for r, raw in zip(requests, raw_only, strict=True)
    ]
    with grpc.insecure_channel(server.target) as channel:
        stub = predictions_pb2_grpc.PredictionServiceStub(channel)
        full = [stub.Predict(r, timeout=30) for r in requests]
        alone = [stub.Predict(r, timeout=30) for r in mixed]
    passes_before, single_before = _batch_histogram(metrics_port)
    together = asyncio.run(_concurrently(server.target, mixed))
    passes_after, single_after = _batch_histogram(metrics_port)
    # Batched: fewer passes than requests, and some carried several requests.
    assert passes_after - passes_before < len(mixed)
    assert (passes_after - passes_before) > (single_after - single_before)
    for raw, complete, lone, batched in zip(raw_only, full, alone, together, strict=True):
        assert isinstance(batched, predictions_pb2.PredictResponse), batched
        for answer in (lone, batched):
            assert answer.outputs.data == complete.outputs.data
            assert answer.checkpoint == complete.checkpoint
            if raw:
                assert not answer.HasField("probabilities") and not answer.HasField("labels")
            else:
                assert answer.probabilities.data == complete.probabilities.data
                assert answer.labels.data == complete.labels.data


def _malformed(job: str) -> dict[str, predictions_pb2.PredictRequest]:
    good = np.ones((2, WIDTH), np.float32)
    nan = good.copy()
    nan[1, 3] = np.nan
    short = to_tensor(good)
    short.data = short.data[:-4]
    return {
        "data has": predictions_pb2.PredictRequest(job=job, inputs=short),
        "inputs.shape": predictions_pb2.PredictRequest(
            job=job, inputs=to_tensor(np.ones((2, WIDTH + 1), np.float32))
        ),
        "row 1 has NaN": predictions_pb2.PredictRequest(job=job, inputs=to_tensor(nan)),
        "inputs.dtype": predictions_pb2.PredictRequest(
            job=job,
            inputs=tensor_pb2.Tensor(
                dtype=tensor_pb2.DATA_TYPE_INT32,
                shape=[1, WIDTH],
                data=np.zeros(WIDTH, np.int32).tobytes(),
            ),
        ),
    }


def test_malformed_tensors_are_refused_without_harming_their_batch(
    batching_server: tuple[LocalServer, int], job_name: str
) -> None:
    server, _ = batching_server
    good = _requests(job_name, 24, seed=2)
    bad = _malformed(job_name)
    with grpc.insecure_channel(server.target) as channel:
        stub = predictions_pb2_grpc.PredictionServiceStub(channel)
        expected = [stub.Predict(r, timeout=30).outputs.data for r in good]
    # Bad requests interleaved with good ones, all in flight at once.
    mixed: list[predictions_pb2.PredictRequest] = []
    for index, request in enumerate(good):
        mixed.append(request)
        if index % 6 == 0:
            mixed.extend(bad.values())
    answers = asyncio.run(_concurrently(server.target, mixed))
    good_answers = iter(expected)
    for request, answer in zip(mixed, answers, strict=True):
        problem = next((p for p, r in bad.items() if r is request), None)
        if problem is None:
            assert isinstance(answer, predictions_pb2.PredictResponse), answer
            assert answer.outputs.data == next(good_answers)
        else:
            assert isinstance(answer, grpc.aio.AioRpcError)
            assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert problem in (answer.details() or ""), answer.details()


def _overflowing(job: str, rows: int = 2) -> predictions_pb2.PredictRequest:
    """Finite features far beyond the training data's (3e38, near float32's largest) in its last
    row: the forward pass overflows to infinities and NaN."""
    x = np.ones((rows, WIDTH), np.float32)
    x[-1] = 3e38
    return predictions_pb2.PredictRequest(job=job, inputs=to_tensor(x))


def test_inputs_that_overflow_the_model_are_refused_without_harming_their_batch(
    batching_server: tuple[LocalServer, int], job_name: str
) -> None:
    # They were answered OK with outputs of inf and -inf, probabilities of NaN and label 0.
    server, metrics_port = batching_server
    good = _requests(job_name, 24, seed=4)
    with grpc.insecure_channel(server.target) as channel:
        stub = predictions_pb2_grpc.PredictionServiceStub(channel)
        expected = [stub.Predict(r, timeout=30) for r in good]
    # Unlike malformed tensors, these join their pass: one after every other good request.
    mixed: list[predictions_pb2.PredictRequest | None] = []
    for index, request in enumerate(good):
        mixed += [request, None] if index % 2 == 0 else [request]
    requests = [r or _overflowing(job_name) for r in mixed]
    passes_before, _ = _batch_histogram(metrics_port)
    answers = asyncio.run(_concurrently(server.target, requests))
    passes_after, _ = _batch_histogram(metrics_port)
    assert passes_after - passes_before < len(requests), "no pass carried several requests"
    lone = iter(expected)
    for request, answer in zip(mixed, answers, strict=True):
        if request is None:
            assert isinstance(answer, grpc.aio.AioRpcError), answer
            assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (answer.details() or "").startswith("inputs: row 1 overflows this float32 model")
            assert "far outside what the model was trained on" in (answer.details() or "")
        else:
            assert isinstance(answer, predictions_pb2.PredictResponse), answer
            expected_answer = next(lone)
            assert answer.outputs.data == expected_answer.outputs.data
            assert answer.probabilities.data == expected_answer.probabilities.data


def test_a_stream_slice_that_overflows_the_model_is_refused_naming_its_row(
    batching_server: tuple[LocalServer, int], job_name: str
) -> None:
    server, _ = batching_server
    slices = [_requests(job_name, 1, seed=5)[0], _overflowing(job_name, rows=3)]
    with grpc.insecure_channel(server.target) as channel:
        stub = predictions_pb2_grpc.PredictionServiceStub(channel)
        answers = stub.PredictStream(iter(slices), timeout=30)
        assert next(answers).outputs.data == stub.Predict(slices[0], timeout=30).outputs.data
        with pytest.raises(grpc.RpcError) as refused:
            next(answers)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs: row 2 overflows this float32 model" in (refused.value.details() or "")


def test_deadlines_shorter_than_the_batching_wait_are_honoured(
    batching_server: tuple[LocalServer, int], job_name: str
) -> None:
    """The server waits up to 4 s to fill a batch under load, but no request spends more than
    half its time waiting for company: 3 s deadlines get answers (with 1.5 s to spare for the
    passes themselves on a loaded machine)."""
    server, _ = batching_server
    requests = _requests(job_name, 64, seed=3)
    answers = asyncio.run(_concurrently(server.target, requests, timeout=3.0))
    failures = [a for a in answers if not isinstance(a, predictions_pb2.PredictResponse)]
    assert not failures, failures[:3]


def test_the_server_log_shows_no_unexpected_error(
    batching_server: tuple[LocalServer, int],
) -> None:
    server, _ = batching_server
    assert not [line for line in server.output if "unexpected error" in line]


def _socket_pids(port: int, state: str) -> set[int]:
    """The processes holding a TCP socket whose local port is `port` in `state` (from /proc,
    Linux): "0A" listening, "01" established."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as listing:
            for line in listing.readlines()[1:]:
                fields = line.split()
                local, socket_state, inode = fields[1], fields[3], fields[9]
                if socket_state == state and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        pids.add(int(pid))
    return pids


def _serving_pids(port: int) -> set[int]:
    return _socket_pids(port, "0A")


def test_several_server_processes_share_one_port(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'trainwire.db'}"
    metrics_port = free_ports(3)  # the server's, its worker's, the second server process's
    env = {
        "TRAINWIRE_QUEUES": "default",
        "TRAINWIRE_SERVER_PROCESSES": "2",
        "TRAINWIRE_METRICS_PORT": str(metrics_port),
    }
    with local_server(url, workers=1, extra_env=env) as server:
        port = int(server.target.rsplit(":", 1)[1])
        # Two scans in a row must agree: a child the server is starting holds the listening
        # socket for an instant, between fork and exec (close_fds).
        deadline = time.monotonic() + 30
        pids, previous = _serving_pids(port), set()
        while (len(pids) < 2 or pids != previous) and time.monotonic() < deadline:
            time.sleep(0.2)
            pids, previous = _serving_pids(port), pids
        assert server.process.pid in pids and len(pids) == 2, pids
        # Separate connections reach both processes; every one is answered.
        rng = np.random.default_rng(0)
        with Client(server.target, timeout=60) as client:
            data = client.upload_dataset(
                rng.normal(size=(100, 4)).astype(np.float32), rng.integers(0, 2, size=100)
            )
            job = client.create_job(data, {"layers": [{"type": "dense", "units": 1}]}, epochs=2)
            job.wait(timeout=120)
        request = predictions_pb2.PredictRequest(
            job=job.name, inputs=to_tensor(np.ones((1, 4), np.float32))
        )
        # Separate connections, kept open: the kernel spreads them over both processes.
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.insecure_channel(server.target, options=options) for _ in range(16)]
        try:
            answers = {
                predictions_pb2_grpc.PredictionServiceStub(channel)
                .Predict(request, timeout=30)
                .outputs.data
                for channel in channels
            }
            connected = _socket_pids(port, "01") & pids
        finally:
            for channel in channels:
                channel.close()
        assert connected == pids, f"both processes served connections: {connected} of {pids}"
        assert len(answers) == 1, "every process gives the same answer"
        # Each process counts the calls it answered: the first on the metrics port, the second
        # on the port after the worker's.
        answered = [
            scrape(metrics).get('trainwire_rpc_seconds_count{code="OK",method="Predict"}', 0.0)
            for metrics in (metrics_port, metrics_port + 2)
        ]
        assert all(answered) and sum(answered) == len(channels), answered
    assert server.process.returncode == 0, "".join(server.output[-40:])
    assert not _serving_pids(port), "the second server process stopped with the first"
