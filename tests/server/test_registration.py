"""How services are added to the server: every method wrapped, only predictions registered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from trainwire.server.app import PREDICTION_SERVICE, SERVICE_NAMES
from trainwire.server.auth import KeyChecker
from trainwire.server.interceptors import WrappingRegistrar
from trainwire.server.local import local_server
from trainwire.v1 import jobs_pb2_grpc, predictions_pb2_grpc


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


def test_only_the_named_services_become_registered_methods_and_every_method_is_wrapped() -> None:
    server = _RecordingServer()
    registrar = WrappingRegistrar(
        server,  # type: ignore[arg-type]
        KeyChecker(lambda: []),
        registered=(PREDICTION_SERVICE,),
    )
    jobs = jobs_pb2_grpc.JobServiceServicer()
    predictions = predictions_pb2_grpc.PredictionServiceServicer()
    jobs_pb2_grpc.add_JobServiceServicer_to_server(jobs, registrar)
    predictions_pb2_grpc.add_PredictionServiceServicer_to_server(predictions, registrar)

    assert list(server.registered) == [PREDICTION_SERVICE]
    predict = server.registered[PREDICTION_SERVICE]["Predict"]
    assert predict.unary_unary is not predictions.Predict  # wrapped

    # The job service is served by its generic handler, wrapped, each wrapper built once.
    get_job = f"/{SERVICE_NAMES[1]}/GetJob"
    handlers = [h.service(_Details(get_job)) for h in server.generic]
    found = [h for h in handlers if h is not None]
    assert len(found) == 1
    assert found[0].unary_unary is not jobs.GetJob
    again = [h.service(_Details(get_job)) for h in server.generic]
    assert found[0] in again
    assert all(h.service(_Details("/trainwire.v1.JobService/Nope")) is None for h in server.generic)


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
        get_job = channel.unary_unary(f"/{SERVICE_NAMES[1]}/GetJob")
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
