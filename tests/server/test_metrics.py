"""The buffered histogram of the prediction path exposes what prometheus_client's would."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from trainwire.server import metrics
from trainwire.server.metrics import BufferedHistogram


def _exposition(registry: CollectorRegistry) -> list[str]:
    """The text format without the sums (compared apart: NumPy adds in another order) and the
    `_created` timestamps only prometheus_client writes."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line and "_sum" not in line]


def test_buckets_counts_and_sums_match_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buckets = (0.001, 0.01, 0.1, 1.0)
    labels = ["method", "code"]
    buffered = BufferedHistogram("x_seconds", "doc", labels, buckets=buckets, registry=ours)
    reference = Histogram("x_seconds", "doc", labels, buckets=buckets, registry=theirs)
    # On the bounds, between them and beyond the last.
    values = [0.0, 0.001, 0.01, 0.1, 1.0, 0.125, 0.5, 2.0, 1000.0, -0.25]
    for code in ("OK", "NOT_FOUND"):
        for value in values * 3:
            buffered.labels(method="Predict", code=code).observe(value)
            reference.labels(method="Predict", code=code).observe(value)
    assert _exposition(ours) == _exposition(theirs)
    assert len(_exposition(ours)) == 2 + 2 * 6  # help, type; 5 buckets and a count per code
    for code in ("OK", "NOT_FOUND"):
        series = ("x_seconds_sum", {"method": "Predict", "code": code})
        assert ours.get_sample_value(*series) == pytest.approx(theirs.get_sample_value(*series))


def test_a_full_buffer_is_counted_and_nothing_is_lost() -> None:
    registry = CollectorRegistry()
    rows = BufferedHistogram("rows", "doc", buckets=(1, 4), registry=registry)
    for _ in range(metrics.BUFFER_LIMIT + 10):
        rows.observe(2)
    assert registry.get_sample_value("rows_bucket", {"le": "1.0"}) == 0
    assert registry.get_sample_value("rows_bucket", {"le": "4.0"}) == metrics.BUFFER_LIMIT + 10
    assert registry.get_sample_value("rows_count") == metrics.BUFFER_LIMIT + 10
    assert registry.get_sample_value("rows_sum") == 2 * (metrics.BUFFER_LIMIT + 10)


def test_threads_observing_while_scrapes_drain_lose_no_observation() -> None:
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


def test_labels_must_be_the_declared_ones() -> None:
    histogram = BufferedHistogram(
        "y_seconds", "doc", ["method"], buckets=(1.0,), registry=CollectorRegistry()
    )
    with pytest.raises(ValueError, match="takes the labels"):
        histogram.labels(code="OK")
    with pytest.raises(ValueError, match="has labels"):
        histogram.observe(1.0)
