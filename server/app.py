"""Assembling and running the gRPC server (`RunningServer`) and `serve` for the CLI."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from trainwire.engine import set_num_threads
from trainwire.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    predictions_pb2,
    predictions_pb2_grpc,
)

from .api import ClientLimiter, DatasetServicer, JobServicer, PredictionServicer
from .auth import KeyChecker
from .config import Settings, host_port
from .datasets import DatasetService
from .db import Database, masked_url, suggested_command
from .errors import Unavailable
from .jobs import JobService
from .logs import Throttle, job_logged
from .metrics import DATABASE_UP, SERVER_METRICS, DeploymentCollector, serve_metrics
from .migrate import ensure_migrated, refuse_missing_sqlite
from .predictions import PredictionService
from .store import Store
from .supervisor import WorkerPool
from .wrappers import Draining, WrappingRegistrar

log = logging.getLogger("trainwire.server")

PREDICTION_SERVICE = predictions_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
SERVICE_NAMES = (
    datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    PREDICTION_SERVICE,
)
# The reflection service's current name. grpcio-reflection serves only v1alpha, but clients
# (grpcurl, Postman, Node's reflection clients) ask v1 first and fall back to v1alpha only on
# UNIMPLEMENTED: on a server with keys the unknown v1 answered UNAUTHENTICATED, so reflection
# failed there for them. Its messages are v1alpha's under another package, the same on the wire.
REFLECTION_V1_SERVICE = "grpc.reflection.v1.ServerReflection"


# How long a stopping server lets calls in progress finish.
STOP_GRACE_S = 5.0
# Keepalive. The server takes a client's pings as often as every MIN_PING_INTERVAL_S while it
# has nothing to send (gRPC's default, 5 minutes, ends a connection pinged more often with
# GOAWAY "too_many_pings"; the SDK pings every 30 s, `client.rpc.KEEPALIVE_S`). It pings a client
# itself after KEEPALIVE_S without a frame, and closes the connection when the ping is not
# answered within KEEPALIVE_TIMEOUT_S: a client gone silently no longer holds its watches,
# streams and uploads (and its project's counts of them) until TCP gives up, after many minutes.
MIN_PING_INTERVAL_S = 10.0
KEEPALIVE_S = 60.0
KEEPALIVE_TIMEOUT_S = 20.0
# A stopping server refuses the calls it starts (`Draining`) until none has started for
# DRAIN_QUIET_S, or for DRAIN_MAX_S at most, before gRPC's shutdown. Refusing a call takes a turn of
# the event loop (well under a millisecond), so a backlog of hundreds of calls waiting in gRPC core
# empties in tens of milliseconds; a quiet 50 ms (a prediction pass runs in the thread pool, not on
# the loop) means none was waiting, even on a loaded machine, where 10 ms did not: the loop's
# first turns after a busy spell came later than that. The SDK's retries of refused calls wait
# longer than the quiet (`wrappers.DRAIN_RETRY_DELAY_S`); clients that retry at once keep it from
# being quiet, and the bound keeps the port from being held long, since a restart is an outage
# for new calls either way.
DRAIN_QUIET_S = 0.05
DRAIN_MAX_S = 1.0


class RunningServer:
    """The gRPC server on its own event loop thread.

    It is a `grpc.aio` server, chosen by measurement (benchmarks/predict.py measures a bare
    asyncio server against a bare thread-pool one in every run; the README has the figures): the
    thread-pool server's 16 threads fight over the GIL, and the loop is what lets concurrent
    predictions share a pass (server.batching). Predictions run on the loop, and so do WatchJob
    and UploadDataset, which wait for their clients there and do their work in the thread pool of
    `grpc_threads`; every other RPC is a plain function that the server runs in that pool, since
    they wait on the database.
    """

    def __init__(self, settings: Settings, store: Store, address: str | None = None) -> None:
        self.settings = settings
        self.store = store
        self.address = address or host_port(settings.host, settings.port)
        self.keys = key_checker(settings, store)
        self.health = health_aio.HealthServicer()
        self.monitor = HealthMonitor(store, self._report_health)
        self.executor = ThreadPoolExecutor(settings.grpc_threads, thread_name_prefix="rpc")
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc", daemon=True)
        self._server: grpc.aio.Server | None = None
        self.draining = Draining()

    def start(self) -> None:
        """Binds and starts serving; raises if the address cannot be used."""
        set_num_threads(self.settings.blas_threads_per_server())
        self._thread.start()
        self.monitor.check()
        self.keys.refresh()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        self.monitor.start()
        # API keys are re-read off the event loop, so predictions never wait on the database.
        self.keys.refresh_in_background(self.monitor.stopped)

    def _report_health(self, service: str, status: int) -> None:
        asyncio.run_coroutine_threadsafe(self.health.set(service, status), self._loop).result(10)

    async def _start(self) -> None:
        settings = self.settings
        server = grpc.aio.server(
            migration_thread_pool=self.executor,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # One process per port unless several are meant to share it (grpcio's default
                # is on, which would let a second server start silently on a used port).
                ("grpc.so_reuseport", int(settings.reuse_port or settings.server_processes > 1)),
                ("grpc.http2.min_ping_interval_without_data_ms", round(MIN_PING_INTERVAL_S * 1000)),
                ("grpc.keepalive_time_ms", round(KEEPALIVE_S * 1000)),
                ("grpc.keepalive_timeout_ms", round(KEEPALIVE_TIMEOUT_S * 1000)),
                ("grpc.http2.ping_timeout_ms", round(KEEPALIVE_TIMEOUT_S * 1000)),  # see rpc.py
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        predictions = PredictionService(
            self.store,
            self.executor,
            settings.model_cache_bytes,
            batch_rows=settings.predict_batch_rows,
            batch_wait_s=settings.predict_batch_wait_ms / 1000,
            max_answer_bytes=settings.max_answer_bytes(),
        )
        jobs = JobServicer(
            JobService(self.store, settings),
            predictions,
            ClientLimiter(
                "max_watches_per_client",
                settings.max_watches_per_client,
                "watches (WatchJob, WatchJobBatches) open at once per project (its API keys "
                "together), or per peer of an open server",
            ),
            self.executor,
            self.draining,
        )
        datasets = DatasetServicer(
            DatasetService(self.store, settings),
            ClientLimiter(
                "max_uploads_per_client",
                settings.max_uploads_per_client,
                "UploadDataset calls open at once per project (its API keys together), or per "
                "peer of an open server",
            ),
            self.executor,
        )
        # Every method wrapped in the request bookkeeping; only predictions are registered methods.
        registrar = WrappingRegistrar(
            server, self.keys, registered=(PREDICTION_SERVICE,), draining=self.draining
        )
        datasets_pb2_grpc.add_DatasetServiceServicer_to_server(datasets, registrar)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(jobs, registrar)
        predictions_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(
                predictions,
                ClientLimiter(
                    "max_predict_streams_per_client",
                    settings.max_predict_streams_per_client,
                    "PredictStream calls open at once per project (its API keys together), or per "
                    "peer of an open server",
                ),
                settings,
            ),
            registrar,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        # What reflection.enable_server_reflection does for a grpc.aio server (it would not
        # recognise the registrar as one).
        reflector = reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
        )
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflector, registrar)
        registrar.add_generic_rpc_handlers((reflection_v1_handler(reflector),))
        registrar.add_unknown_method_handler((*SERVICE_NAMES, health.SERVICE_NAME))
        try:
            if settings.tls_cert:
                port = server.add_secure_port(self.address, server_credentials(settings))
            else:
                port = server.add_insecure_port(self.address)
        except RuntimeError:  # gRPC's "Failed to bind to address …; set GRPC_VERBOSITY=debug"
            port = 0
        if port == 0:
            raise RuntimeError(cannot_listen(self.address))
        await server.start()
        self.port = port
        self._server = server

    def stop(self, grace_s: float) -> None:
        """Refuses new calls, lets running ones finish within `grace_s`, then stops the loop.

        Health turns NOT_SERVING first. Then every call the server starts is refused UNAVAILABLE
        (`Draining`), which clients retry, until gRPC core holds none received and not yet
        started: its shutdown would cancel those (CANCELLED, grpc/grpc#41785). gRPC's own stop
        then lets the calls already started finish within what is left of `grace_s`. A call
        reaching core in the instant between the two still ends CANCELLED (core cancels calls
        that arrive on a connection once its shutdown has begun, too): the SDK retries an
        idempotent call that ends so (`trainwire.client.retry`)."""
        self.monitor.stopped.set()
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(
                self.health.enter_graceful_shutdown(), self._loop
            ).result(10)
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(
                self._drain_and_stop(self._server, grace_s), self._loop
            ).result(timeout=grace_s + 10)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _drain_and_stop(self, server: grpc.aio.Server, grace_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        drained_by = loop.time() + min(DRAIN_MAX_S, grace_s)
        self.draining.close()
        seen = -1
        while self.draining.started != seen and loop.time() < drained_by:
            seen = self.draining.started
            await asyncio.sleep(DRAIN_QUIET_S)
        await server.stop(max(deadline - loop.time(), 0.0))


def cannot_listen(address: str) -> str:
    """Why a server may fail to listen on `address`, for the operator: gRPC says only "Failed to
    bind to address" (its TLS files were checked at start, `Settings.tls_file_problems`)."""
    return (
        f"cannot listen on {address}: the port is in use (another process may hold it: stop it, "
        "or choose another port with --port or TRAINWIRE_PORT), or the host is not an address "
        "of this machine (--host, TRAINWIRE_HOST)"
    )


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    if not settings.tls_key:
        raise ValueError("TRAINWIRE_TLS_CERT is set but TRAINWIRE_TLS_KEY is not")
    key = Path(settings.tls_key).read_bytes()
    cert = Path(settings.tls_cert).read_bytes()
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


# How long a health check waits for the database to answer its ping. A healthy database answers
# in milliseconds; a loaded one, or a new connection (`db.POSTGRES_CONNECT_TIMEOUT_S`, as long),
# may take seconds. A hung one (connections open, nothing answered) never does: the ping waited
# for as long as the hang lasted, and health stayed SERVING.
PING_TIMEOUT_S = 5.0


def reflection_v1_handler(reflector: Any) -> grpc.GenericRpcHandler:
    """`grpc.reflection.v1.ServerReflection`, answered by the v1alpha `reflector` with v1alpha's
    codecs (`REFLECTION_V1_SERVICE`). Its listing names v1alpha alone: the protobuf pool holds no
    v1 descriptor, and a client describing every listed service would fail on that one."""
    info = grpc.stream_stream_rpc_method_handler(
        reflector.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(
        REFLECTION_V1_SERVICE, {"ServerReflectionInfo": info}
    )


class HealthMonitor(threading.Thread):
    """Reports every service NOT_SERVING while the database is unreachable: while a ping fails,
    or goes unanswered for `ping_timeout_s`. `trainwire_database_up` follows each check.

    The ping runs in a thread of its own, and no other starts while one waits: a ping stuck on
    a hung connection cannot be interrupted (nor its thread ended), so each check after it waits
    on the same ping again, and reports SERVING once it is answered."""

    def __init__(
        self,
        store: Store,
        report: Callable[[str, int], None],
        every_s: float = 2.0,
        ping_timeout_s: float = PING_TIMEOUT_S,
    ) -> None:
        super().__init__(name="health", daemon=True)
        self.store = store
        self.report = report  # sets a service's status in the health servicer
        self.every_s = every_s
        self.ping_timeout_s = ping_timeout_s
        self.stopped = threading.Event()
        self.serving: bool | None = None
        self._ping: Future[None] | None = None  # the last ping, answered or still waiting

    def _ping_database(self) -> str | None:
        """None if the database answered a ping within `ping_timeout_s`, else why not."""
        ping = self._ping
        if ping is None or ping.done():
            ping = self._ping = Future()
            threading.Thread(
                target=self._run_ping, args=(ping,), name="health-ping", daemon=True
            ).start()
        try:
            ping.result(timeout=self.ping_timeout_s)
        except TimeoutError:
            return f"no answer to a ping within {self.ping_timeout_s:g} s"
        except Exception as error:  # any failure to reach the database means not serving
            return str(error) or type(error).__name__
        return None

    def _run_ping(self, ping: Future[None]) -> None:
        try:
            self.store.ping()
        except BaseException as error:
            ping.set_exception(error)
        else:
            ping.set_result(None)

    def check(self) -> None:
        problem = self._ping_database()
        serving = problem is None
        DATABASE_UP.set(int(serving))
        if problem is not None:
            log.debug("health check of the database failed: %s", problem)
        if serving != self.serving:
            status = health_pb2.HealthCheckResponse.SERVING
            if not serving:
                status = health_pb2.HealthCheckResponse.NOT_SERVING
                log.warning("database unreachable (%s): reporting NOT_SERVING", problem)
            elif self.serving is False:  # not at start: the end of an outage
                log.warning("database reachable again: reporting SERVING")
            for name in (*SERVICE_NAMES, ""):
                self.report(name, status)
            self.serving = serving

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.check()


def key_checker(settings: Settings, store: Store) -> KeyChecker:
    """The server's API key checker. A server others can reach never falls open when its last
    key is revoked: one allowed to run open on a public address is open only until its first
    key is created; a loopback one is open whenever no key is active."""
    loopback = is_loopback(settings.host)
    return KeyChecker(
        store.active_api_keys,
        open_without_keys=loopback or settings.allow_open_public,
        any_key_created=None if loopback else store.any_api_key_created,
    )


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def rescue_lost_jobs(store: Store) -> None:
    """The server rescues jobs of lost workers too, so a deployment needs no extra process."""
    try:
        for job_id, state in store.rescue_expired():
            with job_logged(job_id):
                log.warning("rescued jobs/%s from a lost worker: now %s", job_id, state.value)
    except Unavailable as error:
        # Every housekeeping round (each second) while the database is away: once a minute.
        log.log(_RESCUE_WARNINGS.level(), "cannot rescue jobs: %s", error)


_RESCUE_WARNINGS = Throttle()


HOUSEKEEPING_EVERY_S = 1.0
HOUSEKEEPING_MAX_BACKOFF_S = 30.0


def housekeep(
    store: Store,
    pools: Sequence[WorkerPool],
    stopping: threading.Event,
    parent_pid: int | None = None,
    every_s: float = HOUSEKEEPING_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Until `stopping` is set (or `parent_pid` is gone): restarts children that exited and
    rescues jobs of lost workers, every `every_s`.

    Any error of a round is logged and the next round waits longer (up to
    HOUSEKEEPING_MAX_BACKOFF_S): a database error that is not Unavailable (SQLite's "database is
    locked", a PostgreSQL lock or statement timeout, a read-only replica after a failover) must
    not end `serve` and cut the calls in flight. The parent is looked for every `every_s` all
    the same.
    """
    backoff_s = every_s
    next_round = clock()
    while not stopping.wait(every_s):
        if parent_pid is not None and os.getppid() != parent_pid:
            log.warning(
                "the process that started this one (pid %d) is gone; shutting down", parent_pid
            )
            return
        if clock() < next_round:
            continue
        try:
            for pool in pools:
                pool.supervise()
            rescue_lost_jobs(store)
            backoff_s = every_s
        except Exception as error:
            backoff_s = min(backoff_s * 2, HOUSEKEEPING_MAX_BACKOFF_S)
            log.warning(
                "housekeeping failed (%s: %s); trying again in %.0fs",
                type(error).__name__,
                error,
                backoff_s,
            )
        next_round = clock() + backoff_s - every_s


def freeze_startup_objects() -> None:
    """Moves every object alive now (modules, the server, the database engine: several hundred
    thousand) out of the garbage collector's sight, so its full collections scan only what was
    made since. Measured here: a full collection during one-row predictions at concurrency 1
    paused the event loop for 36 ms; after this, about 1 ms (see the README's prediction path)."""
    gc.collect()
    gc.freeze()


def serve(
    settings: Settings,
    parent_pid: int | None = None,
    index: int = 0,
    exit_with: int | None = None,
) -> int:
    """Runs the server and its worker processes until SIGTERM or SIGINT (or, for an extra server
    process another one started, number `index` counted from 0, until `parent_pid` is gone; or,
    for one a program started for itself, `server.local`, until `exit_with` is gone); returns an
    exit code."""
    database = Database(settings.database_url, idle_in_transaction_s=settings.lease_s)
    if not settings.auto_migrate_sqlite:
        # Nothing is to create it: connecting would leave an empty file behind, which the other
        # commands would then take for a database at revision none.
        refuse_missing_sqlite(database, settings.database_url_option, serving=True)
    ensure_migrated(database, settings.auto_migrate_sqlite, settings.database_url_option)
    store = Store(database)
    running = RunningServer(settings, store)
    if not running.keys.required:
        create = suggested_command("keys create --project NAME", settings.database_url_option)
        if not running.keys.open_without_keys:
            # A configuration the operator must change: ValueError, the CLI's exit code 2. Once
            # a key was created, --allow-open-public would not open the server: not offered.
            open_it = (
                ""
                if store.any_api_key_created()
                else ", or pass --allow-open-public (or set TRAINWIRE_ALLOW_OPEN_PUBLIC=true) to "
                "run open on a public address"
            )
            raise ValueError(
                f"refusing to serve {settings.host} without API keys: create one with "
                f"{create}{open_it}"
            )
        if running.keys.is_open:
            log.warning("no API key is active: the server is open to anyone who can reach it")
        else:
            # Allowed to run open on a public address, but keys were created and all revoked.
            log.warning(
                "every API key was revoked: the server refuses every call (UNAUTHENTICATED) "
                "until one is created with %s",
                create,
            )
    # Metrics first: a port that cannot be bound stops the process before it takes calls. The
    # deployment's gauges (read from the database in a thread of their own, so a scrape never
    # waits on it) come from the first server process alone.
    collector = DeploymentCollector(store.queue_depth, store.workers, 2 * settings.lease_s)
    serve_metrics(
        settings.metrics_port and settings.metrics_port + index,
        settings.metrics_host,
        SERVER_METRICS,
        collector if parent_pid is None else None,
    )
    if settings.metrics_port and parent_pid is None:
        collector.refresh_in_background(running.monitor.stopped)
    # Before the "listening" line: a SIGTERM right after it (a script or test that started the
    # server and stops it at once) killed the process before it could stop its workers.
    stopping = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    running.start()
    shown = masked_url(database.url)
    scheme = "TLS" if settings.tls_cert else "plaintext"
    # Tests and scripts read this line to learn the port when it was 0.
    print(
        f"Trainwire listening on {host_port(settings.host, running.port)} ({scheme}; "
        f"database {shown})",
        flush=True,
    )
    # Embedded workers serve their metrics on the ports after the server's.
    worker_metrics, sibling_metrics = settings.metrics_ports()
    pool = WorkerPool(replace(settings, metrics_port=worker_metrics), settings.workers)
    pool.start()
    # More server processes on the same port, without workers of their own; only the first
    # starts them (the others keep the count, which sets their share of the cores). Each serves
    # its metrics on a port of its own, after the workers'.
    siblings = WorkerPool(
        replace(
            settings, port=running.port, workers=0, reuse_port=True, metrics_port=sibling_metrics
        ),
        settings.server_processes - 1 if parent_pid is None else 0,
        servers=True,
    )
    siblings.start()

    freeze_startup_objects()
    housekeep(store, (pool, siblings), stopping, parent_pid or exit_with)
    siblings.stop()
    running.stop(grace_s=STOP_GRACE_S)
    pool.stop()
    database.dispose()
    # A log line like every other on stderr (JSON when the log is). The "listening" line goes to
    # stdout as plain text because scripts read the port from it; nothing reads this one.
    log.info("Trainwire stopped")
    return 0
