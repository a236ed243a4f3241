"""The prediction service's job cache: re-read about once per TTL, in the background, once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from trainwire.engine import Model
from trainwire.server.errors import NotFound
from trainwire.server.predictions import PredictionService

TTL_S = 0.2


class CountingStore:
    """The two reads the job cache makes, counted; a read can be held until released."""

    def __init__(self) -> None:
        self.reads = 0
        self.release = threading.Event()
        self.release.set()
        self.deleted = False

    def get_job(self, job_id: str) -> Any:
        self.reads += 1
        assert self.release.wait(10)
        if self.deleted:
            raise NotFound(f"jobs/{job_id} does not exist")
        return f"job {self.reads}"

    def list_checkpoints(self, job_id: str) -> list[Any]:
        return []


@pytest.fixture
def service() -> Any:
    with ThreadPoolExecutor(4) as pool:
        yield PredictionService(CountingStore(), pool, 1 << 20, job_ttl_s=TTL_S)  # type: ignore[arg-type]


def test_a_fresh_entry_is_answered_without_reading(service: PredictionService) -> None:
    store = service.store
    assert service._job("a" * 32)[0] == "job 1"
    for _ in range(100):
        assert service._job("a" * 32)[0] == "job 1"
    assert store.reads == 1  # type: ignore[attr-defined]


def test_an_expired_entry_is_answered_while_one_background_read_refreshes_it(
    service: PredictionService,
) -> None:
    store: Any = service.store
    service._job("a" * 32)
    time.sleep(TTL_S * 1.2)
    store.release.clear()  # the refresh hangs until released
    answers = [service._job("a" * 32)[0] for _ in range(50)]
    assert answers == ["job 1"] * 50, "nobody waited for the database"
    time.sleep(0.05)
    assert store.reads == 2, "one refresh for fifty requests"
    store.release.set()
    deadline = time.monotonic() + 5
    while service._job("a" * 32)[0] != "job 2":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert store.reads == 2


def test_past_twice_the_ttl_callers_read_it_themselves(service: PredictionService) -> None:
    store: Any = service.store
    service._job("a" * 32)
    time.sleep(TTL_S * 2.2)
    assert service._job("a" * 32)[0] == "job 2", "a read in the caller, not a stale answer"
    assert store.reads == 2


def test_a_job_deleted_meanwhile_leaves_the_cache_on_refresh(service: PredictionService) -> None:
    store: Any = service.store
    service._job("a" * 32)
    loaded: Any = SimpleNamespace(
        model=Model.from_spec({"input_dim": 2, "layers": [{"type": "dense", "units": 1}]})
    )
    service.cache.get(("a" * 32, 1), lambda: loaded)  # one of its models is being served
    store.deleted = True  # through another server
    time.sleep(TTL_S * 1.2)
    service._job("a" * 32)  # stale answer; the refresh finds the job gone
    deadline = time.monotonic() + 5
    while "a" * 32 in service._jobs:  # only a refresh that found it gone removes the entry
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(NotFound):
        service._job("a" * 32)
    assert service.cache.peek(("a" * 32, 1)) is None, "its models are dropped too"


def test_a_job_forgotten_during_its_refresh_stays_forgotten(service: PredictionService) -> None:
    store: Any = service.store
    service._job("a" * 32)
    time.sleep(TTL_S * 1.2)
    store.release.clear()
    service._job("a" * 32)  # starts the refresh, which hangs in the read
    time.sleep(0.05)
    service.forget("a" * 32)  # the job was deleted through this server meanwhile
    store.release.set()
    time.sleep(0.1)
    assert "a" * 32 not in service._jobs, "the refresh did not bring the deleted job back"
