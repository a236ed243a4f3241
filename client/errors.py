"""SDK exceptions: one class per gRPC status a caller may want to handle, keeping the details.

Every exception is a `TrainwireError` with the gRPC `code` and the server's `field_violations`
(`[(field, description), ...]`). Mistakes the SDK finds itself, before any network call, raise
`SpecError`, which is both an `InvalidArgument` and a `ValueError`; a call on a closed client
raises `ClientClosed`, both a `FailedPrecondition` and a `ValueError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from .results import JobStatus


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

    @property
    def code_name(self) -> str:
        """The status code's name (`NOT_FOUND`, ...), or `UNKNOWN` when there is none."""
        return self.code.name if self.code is not None else "UNKNOWN"

    def __reduce__(self) -> tuple[object, ...]:
        # Rebuilt from its attributes, not by its constructor (subclasses take other arguments:
        # SpecError its violations, JobFailed a status): an error crosses a process boundary
        # whole, `job.wait()` in a ProcessPoolExecutor say, with its code and fields.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(
    kind: type[TrainwireError], args: tuple[object, ...], state: dict[str, object]
) -> TrainwireError:
    error = kind.__new__(kind)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidArgument(TrainwireError):
    """The request is malformed or names something impossible (INVALID_ARGUMENT)."""


class SpecError(InvalidArgument, ValueError):
    """The SDK found a mistake in a model or training spec before sending anything."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        message = "; ".join(f"{field}: {description}" for field, description in violations)
        super().__init__(message, grpc.StatusCode.INVALID_ARGUMENT, violations)


class NotFound(TrainwireError):
    """The dataset, job or checkpoint does not exist (or belongs to another project)."""


class AlreadyExists(TrainwireError):
    """The resource exists already (ALREADY_EXISTS)."""


class FailedPrecondition(TrainwireError):
    """The resource is not in a state that allows the call (FAILED_PRECONDITION)."""


class ClientClosed(FailedPrecondition, ValueError):
    """A call on a client after its `close()` (or the end of its `with` block); make a new
    client. A ValueError as well, as Python's own error on a closed file is."""

    def __init__(self, client: object) -> None:
        super().__init__(
            f"{client!r} is closed (by close() or the end of its with block): make a new client "
            "to call the server again",
            grpc.StatusCode.FAILED_PRECONDITION,
        )


class NoMetrics(FailedPrecondition, ValueError):
    """`Job.plot()` of a job without metrics yet: nothing to plot (FAILED_PRECONDITION; a
    ValueError too, as it was before it had this class)."""


class ResourceExhausted(TrainwireError):
    """A limit was reached: a configured maximum or a busy server (RESOURCE_EXHAUSTED)."""


class Unauthenticated(TrainwireError):
    """No API key, or one the server does not know (UNAUTHENTICATED)."""


class PermissionDenied(TrainwireError):
    """The API key may not do this (PERMISSION_DENIED)."""


class Unavailable(TrainwireError):
    """The server could not be reached, even after retries (UNAVAILABLE)."""


class DeadlineExceeded(TrainwireError):
    """The call did not finish within its deadline (DEADLINE_EXCEEDED)."""


class TimedOut(DeadlineExceeded, TimeoutError):
    """`Job.wait(timeout=)` or `Job.watch(timeout=)` passed its timeout before the job ended:
    a DeadlineExceeded, and a TimeoutError (which `wait` raised before it had this class)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.DEADLINE_EXCEEDED)


class Unimplemented(TrainwireError):
    """The server does not implement this call (UNIMPLEMENTED)."""


class Cancelled(TrainwireError):
    """The call was cancelled (CANCELLED)."""


class Internal(TrainwireError):
    """The server hit an unexpected error; its log has the details (INTERNAL)."""


class JobFailed(TrainwireError):
    """`Job.wait()` saw the job end FAILED; `message` is the server's reason and `status` the
    job's final `JobStatus`. No call failed, so `code` is None and `code_name` is `FAILED`, the
    job's state (not `UNKNOWN`)."""

    def __init__(self, message: str, status: JobStatus) -> None:
        super().__init__(message)
        self.status = status

    @property
    def code_name(self) -> str:
        return self.status.state


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
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: Internal,
}


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    """The status code and message of a failed call, sync or asyncio: the status details, or the
    code's name when there are none (never the debug string, which is for logs)."""
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else None
    details = details_of() if callable(details_of) else None
    return code, details or (code.name if code is not None else "UNKNOWN")


def error_for(
    code: grpc.StatusCode | None, message: str, violations: list[tuple[str, str]] | None = None
) -> TrainwireError:
    """The SDK exception for a status code."""
    kind = _BY_CODE.get(code, TrainwireError) if code is not None else TrainwireError
    return kind(message, code, violations)


def from_rpc_error(error: grpc.RpcError) -> TrainwireError:
    """The SDK exception for a failed call, sync or asyncio, with the server's field violations
    if it sent any."""
    code, message = status_of(error)
    return error_for(code, message, field_violations(error))


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The `BadRequest` field violations in a failed call's status details."""
    found: list[tuple[str, str]] = []
    for detail in _status_details(error):
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found += [(v.field, v.description) for v in bad_request.field_violations]
    return found


def retry_delay_of(error: grpc.RpcError) -> float:
    """The seconds a failed call's `RetryInfo` asks the client to wait before retrying (a
    stopping server sends one); 0 when there is none."""
    for detail in _status_details(error):
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
            return max(retry_info.retry_delay.ToNanoseconds() / 1e9, 0.0)
    return 0.0


def _status_details(error: grpc.RpcError) -> Iterator[any_pb2.Any]:
    """The details of the google.rpc.Status in a failed call's `grpc-status-details-bin`
    trailer; none when there is no such trailer or it cannot be read. The trailer's own code and
    message are not compared with the call's (`rpc_status.from_call` raises when they differ)."""
    trailing_of = getattr(error, "trailing_metadata", None)
    metadata = cast(
        "Iterable[tuple[str, str | bytes]] | None",
        trailing_of() if callable(trailing_of) else None,
    )
    for key, value in metadata or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                details = status_pb2.Status.FromString(value).details
            except DecodeError:
                continue
            yield from details
