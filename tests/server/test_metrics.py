"""The buffered histogram of the prediction path exposes what prometheus_client's would; each
process exports the metrics of its role alone."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from trainwire.server import metrics
from trainwire.server.errors import Unavailable
from trainwire.server.local import local_server
from trainwire.server.metrics import (
    MAX_QUEUE_LABELS,
    OTHER_QUEUES,
    BufferedHistogram,
    BufferedSeries,
    DeploymentCollector,
)

from ..support.ports import free_ports


def _exposition(registry: CollectorRegistry) -> list[str]:
    """The text format without the sums (compared apart: NumPy adds in another order) and the
    `_created` timestamps only prometheus_client writes."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line and "_sum" not in line]


def _sum(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float | None:
    return registry.get_sample_value(f"{name}_sum", labels)


@pytest.mark.parametrize(
    ("labelnames", "buckets", "values"),
    [
        # Latencies: on the bounds, between them, beyond the last, below zero.
        (["method", "code"], (0.001, 0.01, 0.1, 1.0), [0.0, 0.001, 0.01, 0.1, 1.0, 0.5, 2.0, -1]),
        # Rows and batch sizes: integer buckets, no labels, infinities.
        ([], (1, 2, 4, 16384), [1, 1, 2, 3, 4, 5, 16384, 16385, math.inf, 0]),
    ],
)
def test_buckets_counts_and_sums_match_prometheus_client(
    labelnames: list[str], buckets: Sequence[float], values: list[float]
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buffered = BufferedHistogram("x", "doc", labelnames, buckets=buckets, registry=ours)
    reference = Histogram("x", "doc", labelnames, buckets=buckets, registry=theirs)
    label_sets = [{"method": "Predict", "code": c} for c in ("OK", "NOT_FOUND")]
    for labels in label_sets if labelnames else [{}]:
        for value in values * 3:
            (buffered.labels(**labels) if labels else buffered).observe(value)
            (reference.labels(**labels) if labels else reference).observe(value)
        assert _sum(ours, "x", labels) == pytest.approx(_sum(theirs, "x", labels))
    assert _exposition(ours) == _exposition(theirs)
    series = 2 if labelnames else 1
    assert len(_exposition(ours)) == 2 + series * (len(buckets) + 2)  # help, type; +Inf, count


def test_a_nan_is_in_no_bucket_and_makes_the_sum_nan_as_with_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buffered = BufferedHistogram("n", "doc", buckets=(1.0,), registry=ours)
    reference = Histogram("n", "doc", buckets=(1.0,), registry=theirs)
    for histogram in (buffered, reference):
        histogram.observe(0.5)
        histogram.observe(math.nan)
    assert _exposition(ours) == _exposition(theirs)
    assert math.isnan(_sum(ours, "n", {}) or 0.0)


def test_a_full_buffer_is_counted_at_once_and_nothing_is_lost() -> None:
    registry = CollectorRegistry()
    rows = BufferedHistogram("rows", "doc", buckets=(1, 4), registry=registry)
    for _ in range(metrics.BUFFER_LIMIT + 10):
        rows.observe(2)
    # Memory stays bounded without a scrape: the first BUFFER_LIMIT were counted already.
    series = rows.labels()
    assert len(series._pending) == 10
    assert series._counts.sum() == metrics.BUFFER_LIMIT
    assert registry.get_sample_value("rows_bucket", {"le": "1.0"}) == 0
    assert registry.get_sample_value("rows_bucket", {"le": "4.0"}) == metrics.BUFFER_LIMIT + 10
    assert registry.get_sample_value("rows_count") == metrics.BUFFER_LIMIT + 10
    assert registry.get_sample_value("rows_sum") == 2 * (metrics.BUFFER_LIMIT + 10)


class _ObservedWhileCounted(deque[float]):
    """A buffer into which another thread's observation lands while the values are counted."""

    series: BufferedSeries
    landed = False

    def popleft(self) -> float:
        value = super().popleft()
        if not self.landed:
            self.landed = True
            self.series.observe(7.0)
        return value


def test_an_observation_made_while_the_buffer_is_counted_is_kept_for_the_next_count() -> None:
    registry = CollectorRegistry()
    histogram = BufferedHistogram("t", "doc", buckets=(5.0,), registry=registry)
    series = histogram.labels()
    racing = _ObservedWhileCounted([1.0, 2.0])
    racing.series = series
    series._pending = racing
    assert registry.get_sample_value("t_count") == 2  # the two that waited when it started
    assert registry.get_sample_value("t_count") == 3  # the one that landed meanwhile
    assert registry.get_sample_value("t_bucket", {"le": "5.0"}) == 2
    assert registry.get_sample_value("t_sum") == 10.0


def test_threads_observing_while_scrapes_count_lose_no_observation() -> None:
    """A smoke test of the real thing: observers and a scraper in threads of their own."""
    registry = CollectorRegistry()
    latency = BufferedHistogram("t_seconds", "doc", buckets=(0.5,), registry=registry)
    per_thread = 3 * metrics.BUFFER_LIMIT
    values = np.random.default_rng(0).random(per_thread).tolist()
    stop = threading.Event()

    def scrape_until_stopped() -> None:
        while not stop.is_set():
            registry.get_sample_value("t_seconds_count")

    def observe() -> None:
        for value in values:
            latency.observe(value)

    scraper = threading.Thread(target=scrape_until_stopped)
    scraper.start()
    observers = [threading.Thread(target=observe) for _ in range(4)]
    for thread in observers:
        thread.start()
    for thread in observers:
        thread.join()
    stop.set()
    scraper.join()
    below = sum(value <= 0.5 for value in values)
    assert registry.get_sample_value("t_seconds_count") == 4 * per_thread
    assert registry.get_sample_value("t_seconds_bucket", {"le": "0.5"}) == 4 * below
    assert registry.get_sample_value("t_seconds_sum") == pytest.approx(4 * sum(values))


def test_labels_buckets_and_values_are_checked_where_they_are_given() -> None:
    histogram = BufferedHistogram(
        "y_seconds", "doc", ["method"], buckets=(1.0, math.inf), registry=CollectorRegistry()
    )
    assert histogram._bounds.tolist() == [1.0, math.inf]  # +Inf given is not added twice
    with pytest.raises(ValueError, match="takes the labels"):
        histogram.labels(code="OK")
    with pytest.raises(ValueError, match="has labels"):
        histogram.observe(1.0)
    with pytest.raises(ValueError, match="could not convert"):
        histogram.labels(method="Predict").observe("slow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="increasing order"):
        BufferedHistogram("z", "doc", buckets=(2.0, 1.0), registry=None)
    with pytest.raises(ValueError, match="reserved"):
        BufferedHistogram("z", "doc", ["le"], buckets=(1.0,), registry=None)


def test_client_chosen_queue_names_cannot_grow_the_jobs_metric_without_bound() -> None:
    depth = [("QUEUED", f"q{i:03d}", 1000 - i) for i in range(200)] + [("RUNNING", "q000", 5)]
    # An old queue of many finished jobs, and a new one with a small backlog.
    depth += [("SUCCEEDED", "old", 10**6), ("QUEUED", "new", 1)]
    collector = DeploymentCollector(lambda: depth, lambda: [], 60.0)
    collector.refresh()
    (jobs,) = [family for family in collector.collect() if family.name == "trainwire_jobs"]
    queues = {sample.labels["queue"] for sample in jobs.samples}
    assert len(queues) == MAX_QUEUE_LABELS + 1 and OTHER_QUEUES in queues
    assert "q000" in queues and "q199" not in queues, "the largest backlogs keep their names"
    assert "old" not in queues, "finished jobs do not keep a queue's name"
    assert sum(sample.value for sample in jobs.samples) == sum(count for *_, count in depth)


def test_the_deployment_gauges_keep_their_last_values_and_say_how_old_they_are() -> None:
    """A failed read dropped `trainwire_jobs` and `trainwire_workers_alive` from the scrape: in
    an outage they vanished, and an alert on no live workers never fired. The last values stay,
    with the time since they were read."""
    now = [100.0]
    reachable = [True]

    def depth() -> list[tuple[str, str, int]]:
        if not reachable[0]:
            raise Unavailable("The database is unreachable; try again shortly")
        return [("QUEUED", "default", 3)]

    collector = DeploymentCollector(depth, lambda: [], 60.0, clock=lambda: now[0])
    assert list(collector.collect()) == []  # nothing read yet
    collector.refresh()
    reachable[0] = False
    now[0] = 130.0
    with pytest.raises(Unavailable):
        collector.refresh()
    samples = {s.name: s.value for family in collector.collect() for s in family.samples}
    assert samples == {
        "trainwire_jobs": 3,
        "trainwire_workers_alive": 0,
        "trainwire_deployment_read_age_seconds": 30.0,
    }


SERVER_SERIES = {
    "trainwire_rpc_seconds",
    "trainwire_model_cache_total",
    "trainwire_model_cache_pins",
    "trainwire_model_cache_bytes",
    "trainwire_model_cache_evictions_total",
    "trainwire_prediction_rows",
    "trainwire_prediction_batch_requests",
    "trainwire_jobs",
    "trainwire_workers_alive",
    "trainwire_deployment_read_age_seconds",
    "trainwire_database_up",
}
WORKER_SERIES = {
    "trainwire_job_seconds",
    "trainwire_worker_examples_per_second",
    "trainwire_worker_heartbeat_timestamp_seconds",
}


def _trainwire_families(port: int, timeout_s: float = 30.0) -> set[str]:
    """The trainwire metric families a /metrics endpoint declares, once it answers (a worker
    process starts its endpoint a moment after the server prints that it listens)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    declared = (line.split()[2] for line in text.splitlines() if line.startswith("# TYPE "))
    return {name for name in declared if name.startswith("trainwire_")}


def test_a_server_and_a_worker_each_export_only_the_series_that_describe_it(
    tmp_path: Path,
) -> None:
    """A worker's heartbeat on a server's endpoint reads 0: a staleness alert on it would fire
    for every server."""
    metrics_port = free_ports(2)  # the server's, then its worker's
    env = {"TRAINWIRE_METRICS_PORT": str(metrics_port)}
    with local_server(f"sqlite:///{tmp_path / 'trainwire.db'}", workers=1, extra_env=env):
        server, worker = _trainwire_families(metrics_port), _trainwire_families(metrics_port + 1)
    assert server >= SERVER_SERIES and not server & WORKER_SERIES
    assert worker >= WORKER_SERIES and not worker & SERVER_SERIES


def test_serving_a_role_twice_in_one_process_registers_its_series_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The role was added to the default registry on every call: the second refused it
    (DuplicateTimeseries, a ValueError the CLI would report as a configuration error)."""
    default = CollectorRegistry(auto_describe=True)  # as prometheus_client's REGISTRY
    role = CollectorRegistry()
    Gauge("trainwire_test_role_gauge", "A series of the role", registry=role).set(3)
    served: list[tuple[int, str]] = []
    monkeypatch.setattr(metrics, "REGISTRY", default)
    monkeypatch.setattr(
        metrics, "start_http_server", lambda port, addr: served.append((port, addr))
    )
    metrics.serve_metrics(9101, "127.0.0.1", role)
    metrics.serve_metrics(9102, "127.0.0.1", role)
    assert served == [(9101, "127.0.0.1"), (9102, "127.0.0.1")]
    exported = generate_latest(default).decode().splitlines()
    assert exported.count("trainwire_test_role_gauge 3.0") == 1


def test_serving_again_with_a_collector_exports_one_deployment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second call added its collector to the default registry again, the same or a new one:
    it refused the series (DuplicateTimeseries). The same collector is added once; a new one
    replaces the last, as a server started again in the process reads its own store."""
    default = CollectorRegistry(auto_describe=True)  # as prometheus_client's REGISTRY
    monkeypatch.setattr(metrics, "REGISTRY", default)
    monkeypatch.setattr(metrics, "_registered_collector", None)
    monkeypatch.setattr(metrics, "start_http_server", lambda port, addr: None)
    role = CollectorRegistry()
    first = DeploymentCollector(lambda: [("QUEUED", "default", 1)], lambda: [], 60.0)
    second = DeploymentCollector(lambda: [("QUEUED", "default", 2)], lambda: [], 60.0)
    first.refresh()
    second.refresh()

    def exported_jobs() -> list[str]:
        lines = generate_latest(default).decode().splitlines()
        return [line for line in lines if line.startswith("trainwire_jobs{")]

    metrics.serve_metrics(9101, "127.0.0.1", role, first)
    metrics.serve_metrics(9102, "127.0.0.1", role, first)
    assert exported_jobs() == ['trainwire_jobs{queue="default",state="QUEUED"} 1.0']
    metrics.serve_metrics(9103, "127.0.0.1", role, second)
    assert exported_jobs() == ['trainwire_jobs{queue="default",state="QUEUED"} 2.0']


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "the port is in use (another process may hold it): choose another with "
         "TRAINWIRE_METRICS_PORT"),
        ("no.such.host.invalid", "no.such.host.invalid is not an address of this machine"),
        ("192.0.2.1", "192.0.2.1 is not an address of this machine (Cannot assign requested"),
    ],
)  # fmt: skip
def test_serve_refuses_a_metrics_address_it_cannot_listen_on_naming_the_setting(
    host: str, reason: str, tmp_path: Path
) -> None:
    """A metrics port in use (OSError 98), a host that does not resolve (socket.gaierror) or one
    this machine does not have (OSError 99) ended `serve` in a traceback. Now one message, exit
    1, as for the gRPC port (192.0.2.1 is TEST-NET-1, no host's)."""
    port = free_ports(1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = subprocess.run(
            [sys.executable, "-m", "trainwire.server.cli", "serve", "--port", "0",
             "--workers", "0"],
            env={
                **os.environ,
                "TRAINWIRE_DATABASE_URL": f"sqlite:///{tmp_path / 't.db'}",
                "TRAINWIRE_METRICS_PORT": str(port),
                "TRAINWIRE_METRICS_HOST": host,
            },
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "listening" not in result.stdout
    assert f"trainwire: cannot serve metrics on http://{host}:{port}/metrics: " in result.stderr
    assert reason in result.stderr, result.stderr
    if host != "127.0.0.1":
        assert "set TRAINWIRE_METRICS_HOST to one of its addresses" in result.stderr
