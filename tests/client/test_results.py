"""The SDK's result types made from messages, without a server: Python types where the messages
have protobuf's."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from trainwire.client import Checkpoint, DatasetInfo, JobStatus
from trainwire.v1 import datasets_pb2, jobs_pb2

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
