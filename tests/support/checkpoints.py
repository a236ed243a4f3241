"""What `checkpoints()` returns, checked against the server's own ListCheckpoints answers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import grpc

from trainwire.client import Checkpoint
from trainwire.v1 import jobs_pb2, jobs_pb2_grpc


def server_checkpoints(target: str, job: str) -> list[jobs_pb2.Checkpoint]:
    """The job's checkpoints as the server sends them (every page), read without the SDK."""
    checkpoints: list[jobs_pb2.Checkpoint] = []
    token = ""
    with grpc.insecure_channel(target) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        while True:
            request = jobs_pb2.ListCheckpointsRequest(name=job, page_token=token)
            answer = stub.ListCheckpoints(request, timeout=30)
            checkpoints.extend(answer.checkpoints)
            token = answer.next_page_token
            if not token:
                return checkpoints


def assert_same_checkpoints(got: list[Checkpoint], sent: list[jobs_pb2.Checkpoint]) -> None:
    """Each SDK `Checkpoint` carries every field of its message, in plain Python types."""
    proto_fields = {field.name for field in jobs_pb2.Checkpoint.DESCRIPTOR.fields}
    assert {field.name for field in dataclasses.fields(Checkpoint)} == proto_fields
    assert len(got) == len(sent), (got, sent)
    for checkpoint, message in zip(got, sent, strict=True):
        assert type(checkpoint) is Checkpoint
        job, _, number = message.name.partition("/checkpoints/")
        assert checkpoint.name == message.name and job.startswith("jobs/")
        assert checkpoint.number == int(number) and type(checkpoint.number) is int
        assert checkpoint.epoch == message.epoch and type(checkpoint.epoch) is int
        assert checkpoint.step == message.step and type(checkpoint.step) is int
        assert checkpoint.metrics == dict(message.metrics) and type(checkpoint.metrics) is dict
        assert checkpoint.metrics, "every checkpoint the server writes has metrics"
        assert checkpoint.size_bytes == message.size_bytes > 0
        # A Timestamp's seconds and nanos, read by hand: the same instant, aware and in UTC.
        stamp = message.create_time
        created = datetime.fromtimestamp(stamp.seconds, UTC)
        assert checkpoint.create_time is not None
        assert checkpoint.create_time == created + timedelta(microseconds=stamp.nanos // 1000)
        assert checkpoint.create_time.utcoffset() == timedelta(0)
        assert checkpoint.is_best is message.is_best
        assert checkpoint.is_final is message.is_final
        assert checkpoint.is_partial is message.is_partial
