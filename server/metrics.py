"""Prometheus metrics of the server and the workers (served over HTTP when a port is set).

Server: RPC counts and latency by method and code, queue depth by state and queue, live workers,
model-cache hits, misses and pins, prediction batch sizes. Worker: job durations by final state,
examples per second, the last heartbeat. Each role's metrics live in a registry of their own
(SERVER_METRICS, WORKER_METRICS), and a process exports only the registry of its role: a worker's
heartbeat gauge on a server's endpoint would read 0, and a staleness alert on it would fire for
every server.
"""

from __future__ import annotations

import errno
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from .config import host_port
from .logs import Throttle

log = logging.getLogger("trainwire.metrics")

# A buffered series counts its buckets once this many observations wait (and when scraped).
BUFFER_LIMIT = 4096


class BufferedSeries:
    """One series of a `BufferedHistogram`: `observe` appends to a buffer, and the buffer is
    counted into the buckets in bulk, with NumPy, when it fills or Prometheus scrapes."""

    def __init__(self, bounds: np.ndarray) -> None:
        self._bounds = bounds  # upper bounds, +Inf last
        # Appending to a deque is atomic under the GIL: observers take no lock. Only `_count`
        # pops, under the lock, as many values as it saw when it started.
        self._pending: deque[float] = deque()
        self._lock = threading.Lock()
        self._counts = np.zeros(len(bounds), dtype=np.int64)  # per bucket, not cumulative
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Records `value` (a number: anything else raises here, not at the next count)."""
        pending = self._pending
        pending.append(float(value))
        if len(pending) >= BUFFER_LIMIT:
            with self._lock:
                self._count()

    def snapshot(self) -> tuple[np.ndarray, float]:
        """Cumulative bucket counts (the last is the count of observations) and their sum."""
        with self._lock:
            self._count()
            return np.cumsum(self._counts), self._sum

    def _count(self) -> None:
        """Moves the waiting values into the buckets; the caller holds the lock."""
        pending = self._pending
        values = np.array([pending.popleft() for _ in range(len(pending))], dtype=np.float64)
        # Bucket i holds bounds[i - 1] < value <= bounds[i], as Prometheus's `le` says (a NaN
        # lands in none, and makes the sum NaN, as with prometheus_client).
        buckets = np.searchsorted(self._bounds, values, side="left")
        self._counts += np.bincount(buckets, minlength=len(self._bounds))[: len(self._bounds)]
        self._sum += float(values.sum())


class BufferedHistogram(Collector):
    """A Prometheus histogram for the prediction path, which observes thousands of times a
    second: the same exposition as prometheus_client's `Histogram`, a fraction of its cost.

    prometheus_client's `observe` takes two locks and walks the buckets in Python on every call
    (580 ns in a loop here); here it is a deque append (90 ns), and NumPy counts the buckets in
    bulk (`BufferedSeries`). Values waiting in a buffer (up to BUFFER_LIMIT) are counted before
    any scrape reads them. The three histograms a one-row Predict observes cost the server about
    5% of its requests/s at concurrency 16 before (interleaved A/B runs, 8 rounds: 0.893 of the
    bare server's rate against 0.848).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        bounds = [float(bound) for bound in buckets]
        if any(low >= high for low, high in pairwise(bounds)):
            raise ValueError(f"{name}: buckets must be in increasing order. Received: {buckets}")
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for the buckets of a histogram")
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = np.array(bounds, dtype=np.float64)
        self._series: dict[tuple[str, ...], BufferedSeries] = {}
        self._lock = threading.Lock()
        self._unlabelled = None if self.labelnames else self.labels()
        if registry is not None:
            registry.register(self)

    def observe(self, value: float) -> None:
        """Observes `value` in a histogram without labels."""
        if self._unlabelled is None:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        self._unlabelled.observe(value)

    def labels(self, **labels: str) -> BufferedSeries:
        """The series of these label values (look it up once and keep it on a hot path)."""
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes the labels {self.labelnames}: {sorted(labels)}")
        key = tuple(str(labels[name]) for name in self.labelnames)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = BufferedSeries(self._bounds)
            return series

    def describe(self) -> list[HistogramMetricFamily]:
        """What the registry checks names against when the histogram is registered."""
        return [self._family()]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """Every series, its waiting values counted first (Prometheus scrapes call it)."""
        family = self._family()
        bounds = [floatToGoString(bound) for bound in self._bounds]
        with self._lock:
            series = list(self._series.items())
        for key, one in series:
            cumulative, total = one.snapshot()
            family.add_metric(list(key), list(zip(bounds, cumulative.tolist(), strict=True)), total)
        yield family

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)


# Not prometheus_client's default REGISTRY, which every process shares at import: `serve_metrics`
# adds the registry of the process's role to it (beside its CPU, memory and GC series).
SERVER_METRICS = CollectorRegistry()
WORKER_METRICS = CollectorRegistry()

# Its `_count` is the number of RPCs answered by method and code (a counter beside it would cost
# every call another locked update: about 2% of a one-row Predict's instructions).
RPC_SECONDS = BufferedHistogram(
    "trainwire_rpc_seconds",
    "Time to answer an RPC, by method and status code",
    ["method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    registry=SERVER_METRICS,
)
MODEL_CACHE = Counter(
    "trainwire_model_cache",
    "Model cache lookups, by result",
    ["result"],
    registry=SERVER_METRICS,
)
MODEL_CACHE_BYTES = Gauge(
    "trainwire_model_cache_bytes",
    "Bytes of the models the prediction cache holds, pinned ones included (its bound is "
    "TRAINWIRE_MODEL_CACHE_BYTES)",
    registry=SERVER_METRICS,
)
MODEL_CACHE_EVICTIONS = Counter(
    "trainwire_model_cache_evictions",
    "Models the prediction cache dropped to stay within its bound (least recently used first)",
    registry=SERVER_METRICS,
)
MODEL_CACHE_PINS = Gauge(
    "trainwire_model_cache_pins",
    "Open prediction streams holding a cached model (a held model is never evicted)",
    registry=SERVER_METRICS,
)
PREDICTION_ROWS = BufferedHistogram(
    "trainwire_prediction_rows",
    "Rows per prediction request",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384),
    registry=SERVER_METRICS,
)
PREDICTION_BATCH_REQUESTS = BufferedHistogram(
    "trainwire_prediction_batch_requests",
    "Requests answered by one forward pass (micro-batching)",
    buckets=(1, 2, 4, 8, 16, 32, 64),
    registry=SERVER_METRICS,
)
DATABASE_UP = Gauge(
    "trainwire_database_up",
    "1 if the database answered this server's last health check (every 2 s), else 0",
    registry=SERVER_METRICS,
)
JOB_SECONDS = Histogram(
    "trainwire_job_seconds",
    "Time a worker spent on a job, by the state it left the job in",
    ["state"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400),
    registry=WORKER_METRICS,
)
EXAMPLES_PER_SECOND = Gauge(
    "trainwire_worker_examples_per_second",
    "Training speed of the running job's last epoch; 0 while the worker is idle",
    registry=WORKER_METRICS,
)
WORKER_HEARTBEAT = Gauge(
    "trainwire_worker_heartbeat_timestamp_seconds",
    "When the worker last reported itself",
    registry=WORKER_METRICS,
)


# Queue names are chosen by clients: past this many distinct ones, the queues with the most
# unfinished jobs keep their names and the rest are counted as OTHER_QUEUES (a name no client can
# give a queue), so no client can grow the metric's series without bound.
MAX_QUEUE_LABELS = 50
OTHER_QUEUES = "(other)"
UNFINISHED = ("QUEUED", "RUNNING", "CANCELLING")


def bounded_queues(depth: list[tuple[str, str, int]]) -> dict[tuple[str, str], int]:
    """(state, queue) -> jobs, with at most MAX_QUEUE_LABELS queues named: those with the most
    unfinished jobs (a backlog must keep its name), then the most jobs."""
    waiting: dict[str, int] = {}
    totals: dict[str, int] = {}
    for state, queue, count in depth:
        totals[queue] = totals.get(queue, 0) + count
        waiting[queue] = waiting.get(queue, 0) + (count if state in UNFINISHED else 0)
    ranked = sorted(totals, key=lambda q: (-waiting[q], -totals[q], q))
    named = set(ranked[:MAX_QUEUE_LABELS])
    bounded: dict[tuple[str, str], int] = {}
    for state, queue, count in depth:
        key = (state, queue if queue in named else OTHER_QUEUES)
        bounded[key] = bounded.get(key, 0) + count
    return bounded


# How often the deployment's gauges are read from the database (a scrape reads the last values).
DEPLOYMENT_REFRESH_S = 5.0


class DeploymentCollector(Collector):
    """Queue depth and live workers, as last read from the database by `refresh`, which
    `refresh_in_background` calls every DEPLOYMENT_REFRESH_S in a thread of its own: a scrape
    never waits on the database (read in the scrape, a hung database made every scrape hang, and
    every series of the endpoint was lost). Until a first read succeeds, it exports nothing.

    While the database is away the last values stay (a dashboard keeps its lines), beside
    `trainwire_deployment_read_age_seconds`, the time since they were read: alert on it, or on
    `trainwire_database_up == 0`, rather than on a gauge going stale. Dropping them instead made
    `trainwire_workers_alive` vanish in an outage, and an alert on it being 0 never fired."""

    def __init__(
        self,
        queue_depth: Callable[[], list[tuple[str, str, int]]],
        workers: Callable[[], list[dict[str, Any]]],
        alive_within_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue_depth = queue_depth
        self.workers = workers
        self.alive_within_s = alive_within_s
        self.clock = clock
        self._warnings = Throttle()
        # (jobs by (state, queue), workers alive, when read), replaced whole by each read.
        self._last: tuple[dict[tuple[str, str], int], int, float] | None = None

    def refresh(self) -> None:
        """Reads the deployment's state now (raises what the store raises)."""
        depth = bounded_queues(self.queue_depth())
        alive = count_alive(self.workers(), self.alive_within_s)
        self._last = (depth, alive, self.clock())

    def refresh_in_background(
        self, stopped: threading.Event, every_s: float = DEPLOYMENT_REFRESH_S
    ) -> None:
        """Calls `refresh` now and every `every_s` until `stopped`. One thread: a read stuck on
        a hung database holds back the next ones, and scrapes go on with the last values."""

        def run() -> None:
            while True:
                try:
                    self.refresh()
                except Exception as error:  # the database is away: keep the last values
                    log.log(
                        self._warnings.level(),
                        "cannot read the deployment's state for metrics: %s",
                        error,
                    )
                if stopped.wait(every_s):
                    return

        threading.Thread(target=run, name="deployment-metrics", daemon=True).start()

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        last = self._last
        if last is None:
            return
        depth, alive, age = self._families()
        jobs, workers_alive, read_at = last
        for (state, queue), count in jobs.items():
            depth.add_metric([state, queue], count)
        alive.add_metric([], workers_alive)
        age.add_metric([], max(self.clock() - read_at, 0.0))
        yield depth
        yield alive
        yield age

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "trainwire_jobs", "Jobs by state and queue", labels=["state", "queue"]
            ),
            GaugeMetricFamily("trainwire_workers_alive", "Workers seen recently"),
            GaugeMetricFamily(
                "trainwire_deployment_read_age_seconds",
                "Seconds since trainwire_jobs and trainwire_workers_alive were read from the "
                "database",
            ),
        )


def count_alive(workers: Iterable[dict[str, Any]], within_s: float) -> int:
    """The workers (`Store.workers`) not stopped and seen within `within_s`."""
    return sum(1 for w in workers if w["stopped_at"] is None and w["seen_s_ago"] <= within_s)


# The roles and the collector `serve_metrics` added to REGISTRY: added twice, their series
# would be duplicates, which REGISTRY refuses (DuplicateTimeseries, a ValueError the CLI reports
# as bad settings).
_registered_roles: set[CollectorRegistry] = set()
_registered_collector: Collector | None = None
_registered_lock = threading.Lock()


def serve_metrics(
    port: int, host: str, role: CollectorRegistry, collector: Collector | None = None
) -> None:
    """Starts the /metrics HTTP endpoint (a daemon thread) when `port` is set: the process's own
    series, those of its `role` (SERVER_METRICS or WORKER_METRICS) and `collector`'s. The role
    is added to the default REGISTRY once however often it is served. So is a `collector`, and
    one other than the last given replaces it: the process exports one deployment (the series
    of two would be duplicates), and the earlier collector may read a store whose server has
    stopped."""
    global _registered_collector
    if not port:
        return
    with _registered_lock:
        if role not in _registered_roles:
            REGISTRY.register(role)
            _registered_roles.add(role)
        if collector is not None and collector is not _registered_collector:
            if _registered_collector is not None:
                REGISTRY.unregister(_registered_collector)
            REGISTRY.register(collector)
            _registered_collector = collector
    try:
        start_http_server(port, addr=host.strip("[]"))  # an IPv6 host is taken bare
    except OSError as error:  # socket.gaierror too: a traceback ended `serve`
        raise RuntimeError(cannot_serve_metrics(host, port, error)) from None
    log.info("metrics on http://%s/metrics", host_port(host.strip("[]"), port))


def cannot_serve_metrics(host: str, port: int, error: OSError) -> str:
    """Why the /metrics endpoint cannot listen on `host`:`port`, and the setting to change: the
    port in use (EADDRINUSE), or a host that does not resolve (socket.gaierror) or is not an
    address of this machine (EADDRNOTAVAIL)."""
    where = f"cannot serve metrics on http://{host_port(host.strip('[]'), port)}/metrics"
    if error.errno == errno.EADDRINUSE:
        return (
            f"{where}: the port is in use (another process may hold it): choose another with "
            "TRAINWIRE_METRICS_PORT (a `serve`'s workers and extra server processes take the "
            "ports after it)"
        )
    return (
        f"{where}: {host} is not an address of this machine ({error.strerror or error}): set "
        "TRAINWIRE_METRICS_HOST to one of its addresses"
    )
