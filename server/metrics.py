"""Prometheus metrics of the server and the workers (served over HTTP when a port is set).

Server: RPC counts and latency by method and code, queue depth by state and queue, live workers,
model-cache hits and misses, prediction batch sizes. Worker: job durations by final state,
examples per second, the last heartbeat.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("trainwire.metrics")

# Its `_count` is the number of RPCs answered by method and code (a counter beside it would cost
# every call another locked update: about 2% of a one-row Predict's instructions).
RPC_SECONDS = Histogram(
    "trainwire_rpc_seconds",
    "Time to answer an RPC, by method and status code",
    ["method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
MODEL_CACHE = Counter("trainwire_model_cache", "Model cache lookups, by result", ["result"])
PREDICTION_ROWS = Histogram(
    "trainwire_prediction_rows",
    "Rows per prediction request",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384),
)
PREDICTION_BATCH_REQUESTS = Histogram(
    "trainwire_prediction_batch_requests",
    "Requests answered by one forward pass (micro-batching)",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
JOB_SECONDS = Histogram(
    "trainwire_job_seconds",
    "Time a worker spent on a job, by the state it left the job in",
    ["state"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400),
)
EXAMPLES_PER_SECOND = Gauge(
    "trainwire_worker_examples_per_second", "Training speed of the worker's last epoch"
)
WORKER_HEARTBEAT = Gauge(
    "trainwire_worker_heartbeat_timestamp_seconds", "When the worker last reported itself"
)


class DeploymentCollector(Collector):
    """Queue depth and live workers, read from the database when Prometheus scrapes."""

    def __init__(
        self,
        queue_depth: Callable[[], list[tuple[str, str, int]]],
        workers: Callable[[], list[dict[str, Any]]],
        alive_within_s: float,
    ) -> None:
        self.queue_depth = queue_depth
        self.workers = workers
        self.alive_within_s = alive_within_s

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "trainwire_jobs", "Jobs by state and queue", labels=["state", "queue"]
        )
        alive = GaugeMetricFamily("trainwire_workers_alive", "Workers seen recently")
        try:
            for state, queue, count in self.queue_depth():
                depth.add_metric([state, queue], count)
            alive.add_metric([], count_alive(self.workers(), self.alive_within_s))
        except Exception as error:  # the database is down: report nothing rather than fail
            log.warning("cannot read the deployment's state for metrics: %s", error)
            return
        yield depth
        yield alive


def count_alive(workers: Iterable[dict[str, Any]], within_s: float) -> int:
    horizon = datetime.now(UTC) - timedelta(seconds=within_s)
    return sum(1 for w in workers if w["stopped_at"] is None and w["last_seen_at"] >= horizon)


def serve_metrics(port: int, host: str, collector: Collector | None = None) -> None:
    """Starts the /metrics HTTP endpoint (a daemon thread) when `port` is set."""
    if not port:
        return
    if collector is not None:
        REGISTRY.register(collector)
    start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)
