"""How services are added to the server: every method wrapped, only predictions registered."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from trainwire.client.errors import retry_delay_of
from trainwire.server.app import DRAIN_QUIET_S, PREDICTION_SERVICE, SERVICE_NAMES, RunningServer
from trainwire.server.auth import KeyChecker
from trainwire.server.config import Settings
from trainwire.server.db import Database
from trainwire.server.local import local_server
from trainwire.server.metrics import SERVER_METRICS
from trainwire.server.migrate import ensure_migrated
from trainwire.server.store import Store
from trainwire.server.wrappers import (
    DRAIN_RETRY_DELAY_S,
    UNKNOWN_METHOD,
    Draining,
    WrappingRegistrar,
)
from trainwire.v1 import datasets_pb2, jobs_pb2_grpc, predictions_pb2_grpc, tensor_pb2


class _RecordingServer:
    """Stands in for grpc.aio.Server: keeps what is added to it."""

    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: tuple[Any, ...]) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.registered[service] = handlers


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class _Aborted(Exception):
    pass


class _Context:
    """A sync servicer context that records how the call ended."""

    def __init__(self) -> None:
        self.aborts: list[tuple[grpc.StatusCode, str]] = []

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def set_code(self, code: grpc.StatusCode) -> None:
        pass

    def set_details(self, details: str) -> None:
        pass

    def set_trailing_metadata(self, metadata: tuple[tuple[str, bytes], ...]) -> None:
        self.trailing = metadata

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self.trailing

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborts.append((code, details))
        raise _Aborted(details)


def _ended_by(handler: grpc.RpcMethodHandler) -> list[tuple[grpc.StatusCode, str]]:
    """How a call of the (unimplemented, base servicer's) handler ends."""
    context = _Context()
    with pytest.raises(_Aborted):
        handler.unary_unary(object(), context)
    return context.aborts


def _registrar(server: _RecordingServer, draining: Draining | None = None) -> WrappingRegistrar:
    return WrappingRegistrar(
        server,  # type: ignore[arg-type]
        KeyChecker(lambda: []),
        registered=(PREDICTION_SERVICE,),
        draining=draining,
    )


def test_a_stopping_server_refuses_the_calls_it_starts_unavailable() -> None:
    """Once draining, a call is refused UNAVAILABLE (which clients retry) before its handler
    runs, where gRPC's shutdown would cancel it; the refusals are counted for the stop."""
    server, draining = _RecordingServer(), Draining()
    registrar = _registrar(server, draining)
    predictions_pb2_grpc.add_PredictionServiceServicer_to_server(
        predictions_pb2_grpc.PredictionServiceServicer(), registrar
    )
    draining.close()
    context = _Context()
    with pytest.raises(_Aborted):
        server.registered[PREDICTION_SERVICE]["Predict"].unary_unary(object(), context)
    (ended,) = context.aborts
    assert ended[0] is grpc.StatusCode.UNAVAILABLE and "shutting down" in ended[1]
    assert draining.started == 1
    # The SDK is asked to retry only once the stop's quiet is over (its RetryInfo).
    assert retry_delay_of(context) == DRAIN_RETRY_DELAY_S > DRAIN_QUIET_S  # type: ignore[arg-type]


def test_only_the_named_services_become_registered_methods_and_every_method_is_wrapped() -> None:
    server = _RecordingServer()
    registrar = _registrar(server)
    jobs_pb2_grpc.add_JobServiceServicer_to_server(jobs_pb2_grpc.JobServiceServicer(), registrar)
    predictions_pb2_grpc.add_PredictionServiceServicer_to_server(
        predictions_pb2_grpc.PredictionServiceServicer(), registrar
    )
    assert list(server.registered) == [PREDICTION_SERVICE]

    # Unwrapped, the base servicers raise NotImplementedError; wrapped, the call ends in the
    # wrapper's UNIMPLEMENTED status.
    (ended,) = _ended_by(server.registered[PREDICTION_SERVICE]["Predict"])
    assert ended[0] == grpc.StatusCode.UNIMPLEMENTED
    assert ended[1] == (
        "Predict is part of the trainwire.v1.PredictionService API "
        "but not implemented by this server"
    )

    # The job service is served by its generic handler, wrapped, each wrapper built once.
    get_job = "/trainwire.v1.JobService/GetJob"
    found = [h.service(_Details(get_job)) for h in server.generic]
    (handler,) = [h for h in found if h is not None]
    (ended,) = _ended_by(handler)
    assert ended[0] == grpc.StatusCode.UNIMPLEMENTED
    assert any(h.service(_Details(get_job)) is handler for h in server.generic)
    assert "trainwire.v1.JobService" in {h.service_name() for h in server.generic}
    assert all(h.service(_Details("/trainwire.v1.JobService/Nope")) is None for h in server.generic)


def test_a_handler_that_aborts_itself_keeps_its_status_and_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """grpc_health's Check aborts NOT_FOUND for an unknown service: the wrapper must neither
    call it an unexpected error nor abort a second time (grpc refuses that)."""

    class AsyncContext(_Context):
        code_set: grpc.StatusCode | None = None

        def code(self) -> grpc.StatusCode | None:
            return self.code_set

        async def abort(self, code: grpc.StatusCode, details: str) -> None:  # type: ignore[override]
            self.aborts.append((code, details))
            self.code_set = code
            raise grpc.aio.AbortError(details)

    async def check(request: object, context: AsyncContext) -> None:
        await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")

    method = "/grpc.health.v1.Health/Check"
    wrapped = _registrar(_RecordingServer())._wrap(check, method)
    sample = ("trainwire_rpc_seconds_count", {"method": "Check", "code": "NOT_FOUND"})
    before = SERVER_METRICS.get_sample_value(*sample) or 0.0
    context = AsyncContext()
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AbortError):
        asyncio.run(wrapped(object(), context))
    assert context.aborts == [(grpc.StatusCode.NOT_FOUND, "unknown service")]
    assert SERVER_METRICS.get_sample_value(*sample) == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _count(method: str, code: str) -> float:
    sample = ("trainwire_rpc_seconds_count", {"method": method, "code": code})
    return SERVER_METRICS.get_sample_value(*sample) or 0.0


def test_a_stream_closed_before_its_end_is_counted_cancelled_sync_or_async() -> None:
    """A client that stops watching leaves its stream's generator suspended at a `yield`, and
    grpc closes it there (GeneratorExit, not an Exception): that is a cancelled call, not an
    UNKNOWN one."""

    def watch(request: object, context: _Context) -> Iterator[int]:
        yield from itertools.count()

    async def watch_async(request: object, context: _Context) -> AsyncIterator[int]:
        for update in itertools.count():
            yield update

    registrar = _registrar(_RecordingServer())
    sync_stream = registrar._wrap(watch, "/trainwire.v1.JobService/WatchSync")(object(), _Context())
    assert next(sync_stream) == 0
    sync_stream.close()

    async def read_one_then_close() -> None:
        method = "/trainwire.v1.JobService/WatchAsync"
        stream = registrar._wrap(watch_async, method)(object(), _Context())
        assert await anext(stream) == 0
        await stream.aclose()

    asyncio.run(read_one_then_close())
    for method in ("WatchSync", "WatchAsync"):
        assert _count(method, "CANCELLED") == 1, method
        assert _count(method, "UNKNOWN") == 0, method


def test_every_service_answers_through_the_real_server(tmp_path: Path) -> None:
    with (
        local_server(f"sqlite:///{tmp_path / 'trainwire.db'}", workers=0) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        # Reflection (a generic, streaming method) lists every service.
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=30))
        listed = {s.name for s in response.list_services_response.service}
        assert listed >= {*SERVICE_NAMES, "grpc.health.v1.Health"}

        # A generic method's error still becomes its status, with the field named.
        get_job = channel.unary_unary("/trainwire.v1.JobService/GetJob")
        with pytest.raises(grpc.RpcError) as bad_name:
            get_job(b"\n\x03bad", timeout=30)  # GetJobRequest(name="bad")
        assert bad_name.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "name" in bad_name.value.details()

        # A method no service has is UNIMPLEMENTED, and the server goes on serving.
        nope = channel.unary_unary("/trainwire.v1.JobService/Nope")
        with pytest.raises(grpc.RpcError) as unknown:
            nope(b"", timeout=30)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=30))
        assert response.list_services_response.service


def test_reflection_answers_as_v1_and_v1alpha_without_a_key(tmp_path: Path) -> None:
    """Reflection clients (grpcurl, Postman, Node's) ask `grpc.reflection.v1` first and fall back
    to v1alpha only on UNIMPLEMENTED: the server served v1alpha alone, so on a server with keys
    v1 was refused UNAUTHENTICATED and those clients could not list or describe anything, though
    reflection is meant to answer without a key."""
    url = f"sqlite:///{tmp_path / 'trainwire.db'}"
    database = Database(url)
    ensure_migrated(database, auto_migrate_sqlite=True)
    store = Store(database)
    store.create_api_key("alpha")  # the server now requires a key of every other call
    server = RunningServer(Settings(database_url=url, port=0, workers=0), store)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            for version in ("v1", "v1alpha"):
                info = channel.stream_stream(
                    f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                    request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                    response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
                )
                requests = [
                    reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="trainwire.v1.JobService"
                    ),
                ]
                listing, described = list(info(iter(requests), timeout=30))
                listed = {s.name for s in listing.list_services_response.service}
                assert listed >= {*SERVICE_NAMES, "grpc.health.v1.Health"}, version
                files = described.file_descriptor_response.file_descriptor_proto
                assert files, (version, described.error_response.error_message)
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary("/trainwire.v1.JobService/GetJob")(b"", timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(5)
        database.dispose()


def test_a_method_the_server_lacks_is_named_with_the_services_it_has_and_counted(
    tmp_path: Path,
) -> None:
    """gRPC answered such a call "Method not found!" and no series counted it: a client built
    from other protos left no trace in the metrics. Every kind of call is answered, and all of
    them are counted under one method label, whatever names a client sends."""
    url = f"sqlite:///{tmp_path / 'trainwire.db'}"
    database = Database(url)
    ensure_migrated(database, auto_migrate_sqlite=True)
    server = RunningServer(Settings(database_url=url, port=0, workers=0), Store(database))
    server.start()
    before = _count(UNKNOWN_METHOD, "UNIMPLEMENTED")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            nope = channel.unary_unary("/trainwire.v1.JobService/Nope")
            with pytest.raises(grpc.RpcError) as unknown:
                nope(b"", timeout=30)
            streams = channel.stream_stream("/other.v2.Thing/" + "Long" * 100)
            with pytest.raises(grpc.RpcError) as unknown_stream:
                list(streams(iter([b"", b""]), timeout=30))
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30
            )
    finally:
        server.stop(0)
        database.dispose()
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert unknown.value.details() == (
        "/trainwire.v1.JobService/Nope is not a method of this server; it serves "
        f"{', '.join(SERVICE_NAMES)}, grpc.health.v1.Health (a client built from other protos, "
        "or a newer version of them, calls methods this server does not have)"
    )
    assert unknown_stream.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert unknown_stream.value.details().startswith("/other.v2.Thing/LongLong")
    assert "…" in unknown_stream.value.details(), "a long name is cut"
    assert _count(UNKNOWN_METHOD, "UNIMPLEMENTED") == before + 2
    assert health.status == health_pb2.HealthCheckResponse.SERVING, "the server goes on"


JOBS = "/trainwire.v1.JobService"
DATASETS = "/trainwire.v1.DatasetService"
PREDICTIONS = "/trainwire.v1.PredictionService"
REQUEST_TYPES = {"UploadDataset": "UploadDatasetRequest", "PredictStream": "PredictRequest"}


def test_a_request_that_does_not_decode_is_invalid_argument_for_every_kind_of_rpc(
    tmp_path: Path,
) -> None:
    """Bytes that are not the method's message (a string field with invalid UTF-8, a cut
    varint) were UNKNOWN for a single request and INTERNAL, with a logged trace, in a stream."""
    bad_utf8 = b"\x0a\x02\xff\xfe"  # field 1 (a string in every message sent here): 2 bytes
    regression = datasets_pb2.DatasetHeader(
        task=datasets_pb2.TASK_KIND_REGRESSION,
        features=tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[2, 1]),
        targets=tensor_pb2.TensorInfo(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[2]),
    )
    header = datasets_pb2.UploadDatasetRequest(header=regression).SerializeToString()
    cut_varint = b"\x08\xff\xff"  # field 1, a varint whose last byte says more follow
    with (
        local_server(f"sqlite:///{tmp_path / 'trainwire.db'}", workers=0) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        raw = {"request_serializer": None, "response_deserializer": None}  # bytes as they are
        calls: list[tuple[str, Any, Any, str]] = [
            ("GetJob", channel.unary_unary(f"{JOBS}/GetJob", **raw), bad_utf8, "The request"),
            ("ListJobs", channel.unary_unary(f"{JOBS}/ListJobs", **raw), cut_varint, "The request"),
            (
                "Predict",
                channel.unary_unary(f"{PREDICTIONS}/Predict", **raw),
                bad_utf8,
                "The request",
            ),
            ("WatchJob", channel.unary_stream(f"{JOBS}/WatchJob", **raw), bad_utf8, "The request"),
            (
                "UploadDataset",
                channel.stream_unary(f"{DATASETS}/UploadDataset", **raw),
                iter([header, b"\x12\x01"]),  # then a chunk (field 2) cut short
                "Message 2 of the request stream",
            ),
            (
                "PredictStream",
                channel.stream_stream(f"{PREDICTIONS}/PredictStream", **raw),
                iter([bad_utf8]),
                "Message 1 of the request stream",
            ),
        ]
        for name, call, payload, what in calls:
            with pytest.raises(grpc.RpcError) as refused:
                answer = call(payload, timeout=30)
                if name in ("WatchJob", "PredictStream"):
                    list(answer)  # a stream of answers ends in the error
            expected_type = REQUEST_TYPES.get(name, f"{name}Request")
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert refused.value.details().startswith(
                f"{what} could not be decoded as a trainwire.v1.{expected_type}, the message "
                f"{name} takes ("
            ), refused.value.details()
        log = "".join(server.output)
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
