"""Domain errors that carry their gRPC status code.

Services raise these; the method wrappers of `server.wrappers` turn them into gRPC statuses, so the
servicers hold no try/except. Messages are written for the person who sent the request.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. `model.layers[0].units`) and what is wrong."""

    field: str
    description: str


class TrainwireError(Exception):
    """Base of every error the server reports to a client on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        violations: tuple[FieldViolation, ...] = (),
        *,
        retry_delay_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.violations = violations
        # Sent as google.rpc.RetryInfo: the SDK waits at least this long before its retry.
        self.retry_delay_s = retry_delay_s


class InvalidArgument(TrainwireError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """An error about one field, reported both in the message and as a field violation."""
        return cls(f"{field}: {description}", (FieldViolation(field, description),))

    @classmethod
    def joined(cls, errors: list[InvalidArgument]) -> InvalidArgument:
        """One error reporting every one of `errors`: their messages, then their violations."""
        if len(errors) == 1:
            return errors[0]
        violations = tuple(v for error in errors for v in error.violations)
        return cls("; ".join(error.message for error in errors), violations)


class NotFound(TrainwireError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(TrainwireError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(TrainwireError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(TrainwireError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    @classmethod
    def limit(cls, name: str, value: int, received: int, detail: str = "") -> ResourceExhausted:
        """`{name} is limited to {value}. Received: {received}`: the SDK reads "is limited to" as
        a configured limit and does not retry, except a bound of the whole server's load (the
        uploads waiting for a slot) and a per-client count an earlier attempt may hold (see
        client/retry.py); `detail` says how `received` was counted."""
        message = f"{name} is limited to {value}. Received: {received}"
        return cls(f"{message} ({detail})" if detail else message)


class Unavailable(TrainwireError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(TrainwireError):
    code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(TrainwireError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED

    @classmethod
    def idle(cls, silence: str, setting: str, holding: str, remedy: str) -> DeadlineExceeded:
        """The end of a client stream that sent nothing for the stream idle timeout, `setting`
        naming it: `silence` says what it sent before ("the upload sent no header in 60 s"),
        `holding` what the server lets go of, `remedy` what to do."""
        return cls(f"{silence}: the server ends a stream idle that long ({setting}), letting go "
                   f"of {holding}; {remedy}")  # fmt: skip


class Cancelled(TrainwireError):
    code = grpc.StatusCode.CANCELLED
