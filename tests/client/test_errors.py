"""Failed calls become the same SDK exception in both clients: the status details as the message
(the code's name when there are none) and the field violations of the status trailer, read
leniently."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from trainwire.client import (
    Client,
    ClientClosed,
    JobFailed,
    JobStatus,
    SpecError,
    TrainwireError,
)
from trainwire.client.aio import AsyncClient
from trainwire.server.errors import InvalidArgument
from trainwire.server.wrappers import STATUS_DETAILS_KEY, _status_of
from trainwire.v1 import jobs_pb2

VIOLATION = ("training.epochs", "must be positive")


def status_trailer(message: str) -> bytes:
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=VIOLATION[0], description=VIOLATION[1]
            )
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(bad_request)
    code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    return status_pb2.Status(code=code, message=message, details=[packed]).SerializeToString()


# A refusal whose field and description quote 10,000 characters of 4 UTF-8 bytes each: the
# message, percent-encoded, and the status, in base64, travel in the trailing metadata.
HUGE = InvalidArgument.field("labels['" + "\U0001f642" * 10_000 + "']", "\U0001f642" * 10_000)


def get_job(request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
    """Fails as the job's name says."""
    if request.name == "no-details":
        context.abort(grpc.StatusCode.NOT_FOUND, "")
    if request.name == "other-message":  # the trailer's message is not the status details
        context.set_trailing_metadata((("grpc-status-details-bin", status_trailer("before")),))
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "after")
    if request.name == "huge":  # as the server's wrappers answer a refusal quoting it all
        status = _status_of(HUGE, "/trainwire.v1.JobService/GetJob")
        context.set_trailing_metadata(((STATUS_DETAILS_KEY, status.SerializeToString()),))
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, status.message)
    if request.name == "unreadable":
        context.set_trailing_metadata((("grpc-status-details-bin", b"\xff\xff\xff"),))
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad")
    return jobs_pb2.Job(name=request.name)


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(
        get_job,
        request_deserializer=jobs_pb2.GetJobRequest.FromString,
        response_serializer=jobs_pb2.Job.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("trainwire.v1.JobService", {"GetJob": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def failures(target: str, name: str) -> list[TrainwireError]:
    """The exception each client raises for GetJob(name)."""
    raised: list[TrainwireError] = []
    with Client(target, timeout=10) as client, pytest.raises(TrainwireError) as caught:
        client.get_job(name)
    raised.append(caught.value)

    async def scenario() -> None:
        async with AsyncClient(target, timeout=10) as client:
            with pytest.raises(TrainwireError) as caught:
                await client.get_job(name)
            raised.append(caught.value)

    asyncio.run(scenario())
    return raised


def test_a_status_without_details_is_named_by_its_code(target: str) -> None:
    for error in failures(target, "no-details"):
        assert (error.code_name, error.message) == ("NOT_FOUND", "NOT_FOUND")


def test_field_violations_are_read_whatever_message_the_trailer_has(target: str) -> None:
    for error in failures(target, "other-message"):
        assert (error.code_name, error.message) == ("INVALID_ARGUMENT", "after")
        assert error.field_violations == [VIOLATION]


def test_an_unreadable_status_trailer_is_no_field_violation(target: str) -> None:
    for error in failures(target, "unreadable"):
        assert (error.code_name, error.message, error.field_violations) == (
            "INVALID_ARGUMENT",
            "bad",
            [],
        )


def test_every_error_crosses_a_process_boundary_whole() -> None:
    """Pickled by their constructors' arguments, SDK errors came back wrong or not at all:
    JobFailed (which takes a status) raised TypeError, SpecError's message became its
    violations letter by letter, and every error lost its code."""
    status = JobStatus.from_proto(jobs_pb2.Job(name="jobs/x", state=jobs_pb2.JOB_STATE_FAILED))
    with Client("127.0.0.1:9") as closed:
        pass
    errors: list[TrainwireError] = [
        JobFailed("jobs/x failed: diverged", status),
        SpecError([("training.epochs", "must be a positive integer. Received: 0")]),
        ClientClosed(closed),
        TrainwireError("gone", grpc.StatusCode.UNAVAILABLE),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (copy.args, copy.message, copy.code) == (error.args, error.message, error.code)
        assert copy.field_violations == error.field_violations
    assert pickle.loads(pickle.dumps(errors[0])).status == status


def test_a_status_quoting_too_much_still_reaches_the_caller_whole(target: str) -> None:
    """A message quoting a 10,000-character value made the trailing metadata exceed the client's
    limit: the caller got a generic RESOURCE_EXHAUSTED about metadata, not the refusal."""
    for error in failures(target, "huge"):
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error.message
        assert error.message.startswith("labels['\U0001f642") and error.message.endswith("…")
        assert error.field_violations[0][0].startswith("labels['\U0001f642")
    status = _status_of(HUGE, "/trainwire.v1.JobService/GetJob")
    # grpc-message is percent-encoded: 3 bytes for each byte past printable ASCII.
    message = sum(1 if 0x20 <= b < 0x7F and b != ord("%") else 3 for b in status.message.encode())
    details = 4 * -(-len(status.SerializeToString()) // 3)  # base64
    assert message + details < 7 * 1024
