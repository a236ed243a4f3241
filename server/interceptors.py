"""The server's one interceptor: metrics, request ids, API keys, and errors become statuses.

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
from contextvars import ContextVar, Token
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


def _request_id(metadata: tuple[tuple[str, Any], ...]) -> str:
    """The caller's `x-request-id` metadata, or a new id; logs of the call carry it."""
    for key, value in metadata:
        if key == "x-request-id":
            return str(value)[:64] or uuid.uuid4().hex[:16]
    return uuid.uuid4().hex[:16]


def _record(method: str, context: grpc.ServicerContext, started: float, failed: bool) -> None:
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
    RPC_REQUESTS.labels(method=method, code=code.name).inc()
    RPC_SECONDS.labels(method=method, code=code.name).observe(time.perf_counter() - started)


class RequestInterceptor(grpc.ServerInterceptor):
    """Everything a call goes through before its servicer, in one wrapper per method.

    In order: timing and counting by method and status code (Prometheus); the request id for the
    logs; the caller's key checked and its project set (health and reflection answer everyone);
    and any error raised turned into a status. The wrapped handlers are built once per method,
    not per call — with three separate interceptors the wrapping cost more than the servicer.
    """

    def __init__(self, checker: KeyChecker) -> None:
        self.checker = checker
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            handler = continuation(handler_call_details)
            if handler is None:
                return None
            wrapped = wrap_handler(handler, method, self._unary, self._stream)
            self._handlers[method] = wrapped
        return wrapped

    @contextlib.contextmanager
    def _serving(self, context: grpc.ServicerContext, method: str) -> Iterator[None]:
        started = time.perf_counter()
        failed = True
        metadata = context.invocation_metadata() or ()
        tokens: list[tuple[ContextVar[str], Token[str]]] = [
            (REQUEST_ID, REQUEST_ID.set(_request_id(metadata)))
        ]
        try:
            if not method.startswith(EXEMPT_PREFIXES):
                project, client = self.checker.project_of(metadata)
                tokens.append((CURRENT_PROJECT, CURRENT_PROJECT.set(project)))
                tokens.append((CURRENT_CLIENT, CURRENT_CLIENT.set(client)))
            yield
            failed = False
        except TrainwireError as error:
            abort_with(context, error)
        except NotImplementedError:
            _unimplemented(context, method)
        except Exception:
            _unexpected(context, method)
        finally:
            for variable, token in reversed(tokens):
                with contextlib.suppress(ValueError):  # a generator closed from another context
                    variable.reset(token)
            _record(method.rsplit("/", 1)[-1], context, started, failed)

    def _unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        def serve(request: Any, context: grpc.ServicerContext) -> Any:
            with self._serving(context, method):
                return behavior(request, context)

        return serve

    def _stream(
        self, behavior: Callable[..., Iterator[Any]], method: str
    ) -> Callable[..., Iterator[Any]]:
        def serve(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with self._serving(context, method):
                yield from behavior(request, context)

        return serve


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
