"""The one place where domain errors become gRPC statuses.

A `TrainwireError` becomes its status code with a message and, for bad fields, a
`google.rpc.BadRequest` detail. Anything else is logged with its stack trace and answered INTERNAL
with a reference, never the trace itself. An RPC without an implementation answers UNIMPLEMENTED.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from .auth import CURRENT_CLIENT, CURRENT_PROJECT, EXEMPT_PREFIXES, KeyChecker
from .errors import TrainwireError
from .logs import REQUEST_ID
from .metrics import RPC_REQUESTS, RPC_SECONDS

log = logging.getLogger("trainwire.server")


def abort_with(context: grpc.ServicerContext, error: TrainwireError) -> None:
    details = []
    if error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    context.abort_with_status(rpc_status.to_status(status))


def _unexpected(context: grpc.ServicerContext, method: str) -> None:
    reference = REQUEST_ID.get() or uuid.uuid4().hex[:12]
    log.exception("unexpected error in %s (reference %s)", method, reference)
    context.abort(
        grpc.StatusCode.INTERNAL,
        f"Trainwire hit an unexpected error (reference {reference}); "
        "the server log has the details",
    )


def _unimplemented(context: grpc.ServicerContext, method: str) -> None:
    name = method.rsplit("/", 1)[-1]
    status = status_pb2.Status(
        code=code_pb2.UNIMPLEMENTED,
        message=f"{name} is part of the trainwire.v1 API but not implemented by this server yet",
    )
    context.abort_with_status(rpc_status.to_status(status))


def _request_id(context: grpc.ServicerContext) -> str:
    """The caller's `x-request-id` metadata, or a new id; logs of the call carry it."""
    given = next((v for k, v in context.invocation_metadata() if k == "x-request-id"), "")
    return str(given)[:64] or uuid.uuid4().hex[:16]


@contextlib.contextmanager
def _answering(context: grpc.ServicerContext, method: str) -> Iterator[None]:
    """Runs a handler under its request id; whatever it raises becomes a status."""
    token = REQUEST_ID.set(_request_id(context))
    try:
        yield
    except TrainwireError as error:
        abort_with(context, error)
    except NotImplementedError:
        _unimplemented(context, method)
    except Exception:
        _unexpected(context, method)
    finally:
        with contextlib.suppress(ValueError):  # a generator closed from another context
            REQUEST_ID.reset(token)


def _guard_unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        with _answering(context, method):
            return behavior(request, context)

    return guarded


def _guard_stream(behavior: Callable[..., Iterator[Any]], method: str) -> Callable[..., Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with _answering(context, method):
            yield from behavior(request, context)

    return guarded


Wrapper = Callable[[Callable[..., Any], str], Callable[..., Any]]


def wrap_handler(
    handler: grpc.RpcMethodHandler, method: str, unary: Wrapper, stream: Wrapper
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped (`unary` for single responses, `stream`
    for streamed ones)."""
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary, method), **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary, method), **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream, method), **codecs)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            stream(handler.stream_stream, method), **codecs
        )
    return handler


class ErrorInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return wrap_handler(handler, handler_call_details.method, _guard_unary, _guard_stream)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every RPC by method and status code and times it (outermost interceptor)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return wrap_handler(handler, handler_call_details.method, _timed_unary, _timed_stream)


def _record(method: str, context: grpc.ServicerContext, started: float, failed: bool) -> None:
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
    name = method.rsplit("/", 1)[-1]
    RPC_REQUESTS.labels(method=name, code=code.name).inc()
    RPC_SECONDS.labels(method=name, code=code.name).observe(time.perf_counter() - started)


@contextlib.contextmanager
def _timing(context: grpc.ServicerContext, method: str) -> Iterator[None]:
    started = time.perf_counter()
    failed = True
    try:
        yield
        failed = False
    finally:
        _record(method, context, started, failed)


def _timed_unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    def timed(request: Any, context: grpc.ServicerContext) -> Any:
        with _timing(context, method):
            return behavior(request, context)

    return timed


def _timed_stream(behavior: Callable[..., Iterator[Any]], method: str) -> Callable[..., Any]:
    def timed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with _timing(context, method):
            yield from behavior(request, context)

    return timed


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the bearer key and runs the handler with its project (see `server.auth`).

    It sits inside ErrorInterceptor, so a refused key becomes UNAUTHENTICATED like any other
    domain error.
    """

    def __init__(self, checker: KeyChecker) -> None:
        self.checker = checker

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata
        checker = self.checker

        @contextlib.contextmanager
        def as_caller(context: grpc.ServicerContext) -> Iterator[None]:
            project, client = checker.project_of(metadata)
            project_token = CURRENT_PROJECT.set(project)
            client_token = CURRENT_CLIENT.set(client or context.peer())
            try:
                yield
            finally:
                with contextlib.suppress(ValueError):  # closed from another context
                    CURRENT_PROJECT.reset(project_token)
                    CURRENT_CLIENT.reset(client_token)

        def unary(behavior: Callable[..., Any], _method: str) -> Callable[..., Any]:
            def authorised(request: Any, context: grpc.ServicerContext) -> Any:
                with as_caller(context):
                    return behavior(request, context)

            return authorised

        def stream(behavior: Callable[..., Any], _method: str) -> Callable[..., Any]:
            def authorised(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with as_caller(context):
                    yield from behavior(request, context)

            return authorised

        return wrap_handler(handler, method, unary, stream)
