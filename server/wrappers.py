"""What every call goes through: metrics, request ids, API keys, and errors become statuses.

A `TrainwireError` becomes its status code with a message and, for bad fields, a
`google.rpc.BadRequest` detail. Anything else is logged with its stack trace and answered INTERNAL
with a reference, never the trace itself. An RPC without an implementation answers UNIMPLEMENTED.
Bytes that do not decode as the method's request message are INVALID_ARGUMENT (`_Undecodable`).

The server is `grpc.aio` (see `server.app`): coroutine handlers run on the event loop, plain ones
in its thread pool, and each keeps its kind once wrapped here.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from contextvars import ContextVar, Token
from typing import Any, ParamSpec, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from .auth import (
    CURRENT_CHECKER,
    CURRENT_CLIENT,
    CURRENT_PROJECT,
    DEFAULT_PROJECT,
    EXEMPT_PREFIXES,
    KeyChecker,
)
from .errors import InvalidArgument, TrainwireError, Unavailable, Unimplemented
from .logs import REQUEST_ID
from .metrics import RPC_SECONDS, BufferedSeries

log = logging.getLogger("trainwire.server")

_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")


async def in_pool(
    executor: Executor,
    function: Callable[_Params, _Result],
    *args: _Params.args,
    **kwargs: _Params.kwargs,
) -> _Result:
    """`function(*args, **kwargs)` run in the server's thread pool, in the calling coroutine's
    context: its request id, project and key, which log lines and `current_project()` read
    (`run_in_executor` alone runs it in none, and its log lines carried no request id)."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


# The trailing metadata key that carries a google.rpc.Status (the SDK reads its field violations).
STATUS_DETAILS_KEY = "grpc-status-details-bin"


# A status travels in the call's trailing metadata, its message percent-encoded (up to 3 bytes a
# byte) and itself in base64 (4 bytes per 3), and a client refuses metadata past 8 KiB (soft) or
# 16 KiB (hard): one past them reached the caller as a generic metadata error, not the status.
# Messages quote what they were given bounded (`quoted`); these bounds, in UTF-8 bytes, keep the
# whole status under 6.5 KiB whatever a message holds (3 x 1,024 + 4/3 x about 2,400).
STATUS_MESSAGE_BYTES = 1024
VIOLATION_FIELD_BYTES = 128
VIOLATION_DESCRIPTION_BYTES = 512
STATUS_VIOLATIONS = 2  # the server reports one bad field at a time


def _within(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, ending in "…" when cut."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - len("…".encode())].decode(errors="ignore") + "…"


def _status_of(error: BaseException, method: str) -> status_pb2.Status:
    """The google.rpc.Status a handler's exception is answered with."""
    if isinstance(error, TrainwireError):
        details: list[Message] = []
        if error.violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=_within(v.field, VIOLATION_FIELD_BYTES),
                            description=_within(v.description, VIOLATION_DESCRIPTION_BYTES),
                        )
                        for v in error.violations[:STATUS_VIOLATIONS]
                    ]
                )
            )
        if error.retry_delay_s is not None:
            retry_info = error_details_pb2.RetryInfo()
            retry_info.retry_delay.FromNanoseconds(round(error.retry_delay_s * 1e9))
            details.append(retry_info)
        status = status_pb2.Status(
            code=error.code.value[0], message=_within(error.message, STATUS_MESSAGE_BYTES)
        )
        for detail in details:
            status.details.add().Pack(detail)
        return status
    if isinstance(error, NotImplementedError):
        # "/grpc.health.v1.Health/List" names its own service, not always one of trainwire.v1.
        service, _, name = method.lstrip("/").rpartition("/")
        return status_pb2.Status(
            code=code_pb2.UNIMPLEMENTED,
            message=f"{name} is part of the {service} API but not implemented by this server",
        )
    reference = REQUEST_ID.get() or uuid.uuid4().hex[:12]
    log.error("unexpected error in %s (reference %s)", method, reference, exc_info=error)
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"Trainwire hit an unexpected error (reference {reference}); "
        "the server log has the details",
    )


# New request ids: a random prefix per process and a counter (uuid4 per call cost more than a
# forward pass: it reads os.urandom).
_ID_PREFIX = uuid.uuid4().hex[:8]
_next_id = itertools.count()


def _request_id(metadata: tuple[tuple[str, Any], ...]) -> str:
    """The caller's `x-request-id` metadata, or a new id; logs of the call carry it."""
    for key, value in metadata:
        if key == "x-request-id" and value:
            return str(value)[:64]
    return f"{_ID_PREFIX}{next(_next_id):08x}"


_CODES = {code.value[0]: code for code in grpc.StatusCode}

# How long a client refused by a stopping server is asked to wait before its retry (RetryInfo,
# which the SDK honours). Longer than the quiet the stop waits for (`app.DRAIN_QUIET_S`): the
# retries of refused calls then reach the next server, or a closed port, rather than this one in
# the instant its shutdown begins.
DRAIN_RETRY_DELAY_S = 0.25


class Draining:
    """A stopping server's refusal of the calls it starts from then on (`RunningServer.stop`).

    gRPC core cancels, status CANCELLED, every call it has received but the server has not yet
    started when its shutdown begins (grpc/grpc#41785: `Server::ShutdownAndNotify` zombifies the
    calls no `RequestCall` matched). A grpc.aio server asks core for one call at a time, each
    taking a turn of the event loop, so while the loop is busy with predictions such calls wait
    in core by the dozen, and a client's idempotent call ended CANCELLED, which is no sign of a
    server going away. Once `close()` is called, a call that starts is refused at once
    UNAVAILABLE, asking the client to wait `DRAIN_RETRY_DELAY_S` before its retry, for the cost of
    one loop turn, so the backlog empties before core's shutdown and no retry comes back to
    refill it; health and reflection still answer (health says NOT_SERVING).
    `started` counts the refused calls, for the stop to see when none comes any more.
    """

    __slots__ = ("closed", "started")

    def __init__(self) -> None:
        self.closed = False
        self.started = 0

    def close(self) -> None:
        self.closed = True

    def refuse(self, method: str) -> None:
        """Raises Unavailable for a call of `method` started while closed."""
        if not method.startswith(EXEMPT_PREFIXES):
            # Read only as "changed or not": a lost update of two threads still changes it.
            self.started += 1
            raise Unavailable(
                "the server is shutting down; try again (it may be restarting)",
                retry_delay_s=DRAIN_RETRY_DELAY_S,
            )


class _Call:
    """One call's bookkeeping: its request id and caller, its status, its metrics."""

    def __init__(self, context: Any, method: str) -> None:
        self.started = time.perf_counter()
        self.context = context
        self.method = method
        self.code = grpc.StatusCode.UNKNOWN
        self.metadata = context.invocation_metadata() or ()
        self.tokens: list[tuple[ContextVar[Any], Token[Any]]] = [
            (REQUEST_ID, REQUEST_ID.set(_request_id(self.metadata)))
        ]

    def admit(self, checker: KeyChecker, draining: Draining) -> None:
        """Refuses the call if the server is stopping (`Draining`), checks the caller's key
        (Unauthenticated if bad) and sets its project (an open server's calls keep the
        defaults, the default project and no client id)."""
        if draining.closed:
            draining.refuse(self.method)
        if not self.method.startswith(EXEMPT_PREFIXES):
            project, client = checker.project_of(self.metadata)
            if project != DEFAULT_PROJECT or client:
                self.tokens.append((CURRENT_PROJECT, CURRENT_PROJECT.set(project)))
                self.tokens.append((CURRENT_CLIENT, CURRENT_CLIENT.set(client)))
                if client:
                    self.tokens.append((CURRENT_CHECKER, CURRENT_CHECKER.set(checker)))

    def failed(self, error: BaseException) -> tuple[grpc.StatusCode, str]:
        """Puts the error's status in the trailing metadata; returns what to abort with."""
        status = _status_of(error, self.method)
        self.code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        self.context.set_trailing_metadata(((STATUS_DETAILS_KEY, status.SerializeToString()),))
        return self.code, status.message

    def aborted(self) -> None:
        """The handler answered with `context.abort` itself (grpc_health does, for an unknown
        service): its status stands, only counted; aborting again would fail."""
        code = self.context.code() if hasattr(self.context, "code") else None
        self.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN

    def end(self) -> None:
        for variable, token in reversed(self.tokens):
            # A generator closed from another context cannot reset. (`try` costs nothing when
            # nothing is raised; contextlib.suppress builds an object on every call.)
            try:  # noqa: SIM105
                variable.reset(token)
            except ValueError:
                pass
        _rpc_seconds(self.method, self.code).observe(time.perf_counter() - self.started)

    # The call's body runs inside `with`/`async with` (or, for a coroutine, `serve_async`'s
    # spelt-out equivalent): a normal end is OK, an error becomes its status (abort raises in
    # its place), and the bookkeeping ends either way. Anything else that is not an Exception
    # passes through untouched. A stream the client stopped reading (it left, or its deadline
    # passed) is a generator closed at a `yield`: GeneratorExit, counted CANCELLED as a
    # cancelled coroutine is.

    def __enter__(self) -> _Call:
        return self

    def __exit__(self, _kind: object, error: BaseException | None, _trace: object) -> None:
        try:
            if error is None:
                self.code = grpc.StatusCode.OK
            elif isinstance(error, GeneratorExit):
                self.code = grpc.StatusCode.CANCELLED
            elif isinstance(error, grpc.aio.AbortError):
                self.aborted()
            elif isinstance(error, Exception):
                self.context.abort(*self.failed(error))
        finally:
            self.end()

    async def __aenter__(self) -> _Call:
        return self

    async def __aexit__(self, _kind: object, error: BaseException | None, _trace: object) -> None:
        if error is None:
            self.succeeded()
        else:
            await self.raised(error)

    def succeeded(self) -> None:
        self.code = grpc.StatusCode.OK
        self.end()

    async def raised(self, error: BaseException) -> None:
        """`__aexit__` for a coroutine's or an async generator's error (`serve_async` calls it
        directly)."""
        try:
            # The client left or its deadline passed: a coroutine is cancelled, and an async
            # generator suspended at a `yield` meanwhile is closed later (GeneratorExit).
            if isinstance(error, asyncio.CancelledError | GeneratorExit):
                self.code = grpc.StatusCode.CANCELLED
            elif isinstance(error, grpc.aio.AbortError):
                self.aborted()
            elif isinstance(error, Exception):
                await self.context.abort(*self.failed(error))
        finally:
            self.end()


@functools.cache
def _rpc_seconds(method: str, code: grpc.StatusCode) -> BufferedSeries:
    """The latency histogram of a method and status, which counts its calls too (looked up
    once)."""
    return RPC_SECONDS.labels(method=method.rsplit("/", 1)[-1], code=code.name)


class WrappingRegistrar:
    """Adds services to a `grpc.aio` server with every method wrapped in the request bookkeeping.

    Pass it where a generated `add_*Servicer_to_server` function expects the server; a service
    added to the server directly would skip the wrappers. Each method's wrapper is built once: a
    registered method's when its service is added, a generic one's on its first call (a gRPC
    interceptor would run a coroutine and a handler lookup on every call). In order, a call goes
    through: timing and counting by method and status code (Prometheus); the request id for the
    logs; the caller's key checked and its project set (health and reflection answer everyone);
    and any error raised turned into a status.

    Only the services named in `registered` become registered methods; the others are served
    through generic handlers. grpc.aio keeps one pending request per registered method and waits
    on all of them for every call it accepts, so each registered method costs every call (measured
    here: the 16 methods the other services had then, 17 now, added about 8% to the
    instructions of a one-row Predict). The hot service is registered, the rest is looked up by
    name.
    """

    def __init__(
        self,
        server: grpc.aio.Server,
        checker: KeyChecker,
        registered: tuple[str, ...],
        draining: Draining | None = None,
    ) -> None:
        self.server = server
        self.checker = checker
        self.registered = registered
        self.draining = draining or Draining()

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self.server.add_generic_rpc_handlers(
            tuple(_WrappedGenericHandler(handler, self._wrap_handler) for handler in handlers)
        )

    def add_unknown_method_handler(self, services: tuple[str, ...]) -> None:
        """Answers a call of a method no handler added before has, UNIMPLEMENTED, naming the
        `services` this server has; add it last. It goes through the wrappers as every call
        does (a caller without a valid key is refused UNAUTHENTICATED first, as for any method),
        counted under the method name `UNKNOWN_METHOD`, so that a client built from other
        protos shows in the metrics without each name it tries becoming a series of its own."""
        self.server.add_generic_rpc_handlers((_UnknownMethods(services, self._wrap),))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        # Generated code adds each service both ways; a service not registered here is served by
        # the generic handler added just before.
        if service in self.registered:
            self.server.add_registered_method_handlers(  # type: ignore[attr-defined]
                service,
                {
                    name: self._wrap_handler(handler, f"/{service}/{name}")
                    for name, handler in handlers.items()
                },
            )

    def _wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return wrap_handler(
            handler, lambda behavior, streamed: self._wrap(behavior, method, streamed)
        )

    def _wrap(
        self, behavior: Callable[..., Any], method: str, streamed: bool = False
    ) -> Callable[..., Any]:
        """A wrapper of the behaviour's own kind (grpc.aio runs a handler by its kind):
        coroutine, async generator, generator or plain; `_Call` does the rest. After the key
        check it refuses a request that did not decode (`_Undecodable`): a single one at once,
        a stream's (`streamed`) as the behaviour reads it, by its number."""
        checker = self.checker
        draining = self.draining
        if inspect.isasyncgenfunction(behavior):

            async def serve_async_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                async with _Call(context, method) as call:
                    call.admit(checker, draining)
                    if streamed:
                        request = _decoded_async(request, method)
                    elif request.__class__ is _Undecodable:
                        raise request.refused(method)
                    async for response in behavior(request, context):
                        yield response

            return serve_async_stream
        if inspect.iscoroutinefunction(behavior):

            async def serve_async(request: Any, context: Any) -> Any:
                # `async with _Call(...)` spelt out: the hot path (every Predict) skips creating
                # and running the two coroutines of __aenter__ and __aexit__.
                call = _Call(context, method)
                try:
                    call.admit(checker, draining)
                    # Checked inline (one comparison), not by a helper call, on every Predict.
                    if streamed:
                        request = _decoded_async(request, method)
                    elif request.__class__ is _Undecodable:
                        raise request.refused(method)
                    response = await behavior(request, context)
                except BaseException as error:
                    await call.raised(error)
                    raise
                call.succeeded()
                return response

            return serve_async
        if inspect.isgeneratorfunction(behavior):

            def serve_stream(request: Any, context: Any) -> Iterator[Any]:
                with _Call(context, method) as call:
                    call.admit(checker, draining)
                    if streamed:
                        request = _decoded(request, method)
                    elif request.__class__ is _Undecodable:
                        raise request.refused(method)
                    yield from behavior(request, context)

            return serve_stream

        def serve(request: Any, context: Any) -> Any:
            with _Call(context, method) as call:
                call.admit(checker, draining)
                if streamed:
                    request = _decoded(request, method)
                elif request.__class__ is _Undecodable:
                    raise request.refused(method)
                return behavior(request, context)

        return serve


class _WrappedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose methods come wrapped (each wrapper built on its first call)."""

    def __init__(
        self,
        inner: grpc.GenericRpcHandler,
        wrap: Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler],
    ) -> None:
        self.inner = inner
        self.wrap = wrap
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service_name(self) -> str | None:
        """The inner handler's service name, when it is a `grpc.ServiceRpcHandler`."""
        name = getattr(self.inner, "service_name", None)
        return name() if callable(name) else None

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = self.inner.service(details)
            if handler is None:
                return None  # another handler's method, or none's (grpc answers UNIMPLEMENTED)
            wrapped = self._wrapped[method] = self.wrap(handler, method)
        return wrapped


# The method label of calls to methods this server does not have; the most of such a method's
# name the answer repeats.
UNKNOWN_METHOD = "(unknown)"
UNKNOWN_METHOD_NAME_BYTES = 200


class _UnknownMethods(grpc.GenericRpcHandler):
    """`WrappingRegistrar.add_unknown_method_handler`'s handler: matches every method. A stream
    handler answers every kind of call (it reads nothing), and one is built per call, so that
    names sent by a client are never kept."""

    def __init__(
        self, services: tuple[str, ...], wrap: Callable[[Callable[..., Any], str, bool], Any]
    ) -> None:
        self.services = ", ".join(services)
        self.wrap = wrap

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        message = (
            f"{_within(details.method, UNKNOWN_METHOD_NAME_BYTES)} is not a method of this server; "
            f"it serves {self.services} (a client built from other protos, or a newer version "
            "of them, calls methods this server does not have)"
        )

        async def refuse(_requests: Any, _context: Any) -> None:
            raise Unimplemented(message)

        return grpc.stream_stream_rpc_method_handler(self.wrap(refuse, UNKNOWN_METHOD, True))


class _Undecodable:
    """What a wrapped request deserializer returns for bytes that are not its message.

    grpc.aio runs deserializers outside the handler: one that raises is answered UNKNOWN
    ("Unexpected <class DecodeError>") for a single request, and for a stream fails the handler
    where it reads, logged with its trace and answered INTERNAL. The wrappers refuse this marker
    instead, INVALID_ARGUMENT, inside the call's bookkeeping.
    """

    __slots__ = ("message_type", "reason")

    def __init__(self, message_type: str, reason: str) -> None:
        self.message_type = message_type
        self.reason = reason

    def refused(self, method: str, number: int = 0) -> InvalidArgument:
        """The error for this request of `method`; `number` counts a stream's messages from 1."""
        what = f"Message {number} of the request stream" if number else "The request"
        return InvalidArgument(
            f"{what} could not be decoded as a {self.message_type}, the message "
            f"{method.rsplit('/', 1)[-1]} takes ({self.reason}); send that message serialized "
            "by a protobuf library from the service's protos"
        )


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A message class's `FromString` that returns an `_Undecodable` where it raised
    DecodeError; any other deserializer as it is."""
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    if deserializer is None or descriptor is None:
        return deserializer
    parse = deserializer
    message_type = descriptor.full_name

    # Its cost per message is this Python frame: `try` costs nothing while nothing is raised.

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as error:
            # "Error parsing message with type '...': String field had bad UTF-8": the reason.
            return _Undecodable(message_type, str(error).rpartition(": ")[2])

    return deserialize


def _decoded(requests: Iterator[Any], method: str) -> Iterator[Any]:
    """A request stream whose first message that did not decode is refused, by its number."""
    for number, request in enumerate(requests, 1):
        if request.__class__ is _Undecodable:
            raise request.refused(method, number)
        yield request


async def _decoded_async(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    """`_decoded` for a coroutine's or an async generator's request stream."""
    number = 0
    async for request in requests:
        number += 1
        if request.__class__ is _Undecodable:
            raise request.refused(method, number)
        yield request


def wrap_handler(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[..., Any], bool], Callable[..., Any]]
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour replaced by `wrap(behaviour, streamed)` (`streamed`:
    whether it reads a stream of requests) and its request deserializer by a `_tolerant` one."""
    codecs = {
        "request_deserializer": _tolerant(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, True), **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, False), **codecs)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), **codecs)
    return handler
