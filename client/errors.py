"""SDK exceptions: one class per gRPC status a caller may want to handle, keeping the details."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class TrainwireError(Exception):
    """A call to Trainwire failed. `code` is the gRPC status; `field_violations` name bad fields."""

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field_violations = field_violations or []


class InvalidArgument(TrainwireError):
    pass


class NotFound(TrainwireError):
    pass


class AlreadyExists(TrainwireError):
    pass


class FailedPrecondition(TrainwireError):
    pass


class ResourceExhausted(TrainwireError):
    pass


class Unauthenticated(TrainwireError):
    pass


class PermissionDenied(TrainwireError):
    pass


class Unavailable(TrainwireError):
    pass


class DeadlineExceeded(TrainwireError):
    pass


class Unimplemented(TrainwireError):
    pass


class JobFailed(TrainwireError):
    """`Job.wait()` saw the job end FAILED; `message` is the server's reason."""


_BY_CODE: dict[grpc.StatusCode, type[TrainwireError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


def from_rpc_error(error: grpc.RpcError) -> TrainwireError:
    """The SDK exception for a failed call, with the server's field violations if it sent any."""
    code = error.code() if isinstance(error, grpc.Call) else None
    message = error.details() if isinstance(error, grpc.Call) else str(error)
    violations: list[tuple[str, str]] = []
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations += [(v.field, v.description) for v in bad_request.field_violations]
    kind = _BY_CODE.get(code, TrainwireError) if code is not None else TrainwireError
    return kind(message or "", code, violations)
