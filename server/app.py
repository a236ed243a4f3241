"""Assembling and running the gRPC server: `create_server` for tests, `serve` for the CLI."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from trainwire.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    predictions_pb2,
    predictions_pb2_grpc,
)

from .api import DatasetServicer, JobServicer, PredictionServicer
from .config import Settings
from .datasets import DatasetService
from .db import Database
from .errors import Unavailable
from .interceptors import ErrorInterceptor
from .jobs import JobService
from .migrate import ensure_migrated
from .model_cache import ModelCache
from .predictions import PredictionService
from .store import Store
from .supervisor import WorkerPool

log = logging.getLogger("trainwire.server")

SERVICE_NAMES = (
    datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    predictions_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer


def create_server(settings: Settings, store: Store, address: str | None = None) -> RunningServer:
    """A started-later server bound to `address` (port 0 picks a free port)."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # One process per port unless several are meant to share it (grpcio enables it by default).
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.grpc_threads, thread_name_prefix="rpc"),
        interceptors=[ErrorInterceptor()],
        options=options,
    )
    datasets = DatasetService(store, settings)
    datasets_pb2_grpc.add_DatasetServiceServicer_to_server(DatasetServicer(datasets), server)
    jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(JobService(store, settings)), server)
    predictions = PredictionService(store, ModelCache(settings.model_cache_bytes))
    predictions_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(predictions), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*SERVICE_NAMES, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bind = address or f"{settings.host}:{settings.port}"
    port = server.add_insecure_port(bind)
    if port == 0:
        raise RuntimeError(f"cannot listen on {bind}: the address is in use or not available")
    return RunningServer(server, port, health_servicer)


def rescue_lost_jobs(store: Store) -> None:
    """The server rescues jobs of lost workers too, so a deployment needs no extra process."""
    try:
        for job_id, state in store.rescue_expired():
            log.warning("rescued jobs/%s from a lost worker: now %s", job_id, state.value)
    except Unavailable as error:
        log.warning("cannot rescue jobs: %s", error)


def serve(settings: Settings) -> int:
    """Runs the server and its worker processes until SIGTERM or SIGINT; returns an exit code."""
    database = Database(settings.database_url)
    ensure_migrated(database, settings.auto_migrate_sqlite)
    running = create_server(settings, Store(database))
    running.server.start()
    shown = database.engine.url.render_as_string(hide_password=True)
    # Tests and scripts read this line to learn the port when it was 0.
    print(f"Trainwire listening on {settings.host}:{running.port} (database {shown})", flush=True)
    pool = WorkerPool(settings, settings.workers)
    pool.start()

    stopping = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    store = Store(database)
    while not stopping.wait(1.0):
        pool.supervise()
        rescue_lost_jobs(store)
    running.health.enter_graceful_shutdown()
    running.server.stop(grace=5.0).wait()
    pool.stop()
    database.dispose()
    print("Trainwire stopped", file=sys.stderr, flush=True)
    return 0
