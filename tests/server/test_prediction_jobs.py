"""The prediction service's job cache: re-read about once per TTL, in the background, once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from trainwire.engine import Model
from trainwire.server.errors import FailedPrecondition, NotFound
from trainwire.server.predictions import PredictionService
from trainwire.server.records import JobState

TTL_S = 1.0
JOB = "a" * 32


class CountingStore:
    """The two reads the job cache makes, counted. A read in the thread pool (a refresh) can be
    held until released; a caller's own read never is, so a caller that reads while a refresh is
    held gets a new answer at once."""

    def __init__(self) -> None:
        self.reads = 0
        self.read_started = threading.Event()  # set when a refresh starts reading
        self.release = threading.Event()
        self.release.set()
        self.deleted = False

    def get_job(self, job_id: str) -> Any:
        self.reads += 1
        if threading.current_thread() is not threading.main_thread():
            self.read_started.set()
            assert self.release.wait(10), "the test never released the refresh"
        if self.deleted:
            raise NotFound(f"jobs/{job_id} does not exist")
        return f"job {self.reads}"

    def list_checkpoints(self, job_id: str) -> list[Any]:
        return []


@pytest.fixture
def now() -> list[float]:
    """The job cache's clock, which moves only when a test moves it."""
    return [0.0]


@pytest.fixture
def service(now: list[float]) -> Any:
    with ThreadPoolExecutor(4) as pool:
        yield PredictionService(
            CountingStore(),  # type: ignore[arg-type]
            pool,
            1 << 20,
            job_ttl_s=TTL_S,
            clock=lambda: now[0],
        )


def _refresh_started(store: Any) -> None:
    assert store.read_started.wait(10), "no refresh started reading the job"


def _refreshes_finished(service: PredictionService) -> None:
    """Waits until every refresh submitted to the thread pool has run to its end (a held read
    gives up after 10 s); a stale entry found afterwards submits none."""
    service.executor.shutdown(wait=True)


def test_a_fresh_entry_is_answered_without_reading(
    service: PredictionService, now: list[float]
) -> None:
    store: Any = service.store
    assert service._job(JOB)[0] == "job 1"
    for _ in range(100):
        now[0] += TTL_S / 200
        assert service._job(JOB)[0] == "job 1"
    assert store.reads == 1


def test_an_expired_entry_is_answered_while_one_background_read_refreshes_it(
    service: PredictionService, now: list[float]
) -> None:
    store: Any = service.store
    service._job(JOB)
    now[0] += TTL_S * 1.5
    store.release.clear()  # the refresh hangs until released
    answers = [service._job(JOB)[0] for _ in range(50)]
    assert answers == ["job 1"] * 50, "nobody waited for the database"
    _refresh_started(store)
    store.release.set()
    _refreshes_finished(service)
    assert store.reads == 2, "one refresh for fifty requests"
    assert service._job(JOB)[0] == "job 2", "the refresh replaced the entry"
    assert store.reads == 2


def test_past_twice_the_ttl_callers_read_it_themselves(
    service: PredictionService, now: list[float]
) -> None:
    store: Any = service.store
    service._job(JOB)
    now[0] += TTL_S * 2.5
    assert service._job(JOB)[0] == "job 2", "a read in the caller, not a stale answer"
    assert store.reads == 2


def test_a_job_deleted_meanwhile_leaves_the_cache_on_refresh(
    service: PredictionService, now: list[float]
) -> None:
    store: Any = service.store
    service._job(JOB)
    loaded: Any = SimpleNamespace(
        model=Model.from_spec({"input_dim": 2, "layers": [{"type": "dense", "units": 1}]})
    )
    service.cache.get((JOB, 1), lambda: loaded)  # one of its models is being served
    store.deleted = True  # through another server
    now[0] += TTL_S * 1.5
    assert service._job(JOB)[0] == "job 1"  # stale answer; the refresh finds the job gone
    _refreshes_finished(service)
    assert store.reads == 2
    # Still within twice the TTL: only a refresh that found it gone removes the entry.
    assert JOB not in service._jobs, "the refresh dropped the deleted job"
    assert service.cache.peek((JOB, 1)) is None, "its models are dropped too"
    with pytest.raises(NotFound):
        service._job(JOB)


def test_a_job_forgotten_during_its_refresh_stays_forgotten(
    service: PredictionService, now: list[float]
) -> None:
    store: Any = service.store
    service._job(JOB)
    now[0] += TTL_S * 1.5
    store.release.clear()
    service._job(JOB)  # starts the refresh
    _refresh_started(store)  # which hangs in the read
    service.forget(JOB)  # the job was deleted through this server meanwhile
    store.release.set()
    _refreshes_finished(service)
    assert store.reads == 2
    assert JOB not in service._jobs, "the refresh did not bring the deleted job back"


class EndingStore:
    """A job the test ends, with no checkpoint: what a worker does between two cache reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.state = JobState.RUNNING

    def get_job(self, job_id: str) -> Any:
        self.reads += 1
        return SimpleNamespace(id=job_id, project="default", state=self.state)

    def list_checkpoints(self, job_id: str) -> list[Any]:
        return []


def test_a_refusal_from_a_cached_job_is_checked_with_the_database(now: list[float]) -> None:
    """For up to 2 s after a job failed without a checkpoint, predictions were told to wait
    for it to checkpoint (the cached job was still RUNNING), though waiting could not help."""
    store: Any = EndingStore()
    with ThreadPoolExecutor(2) as pool:
        service = PredictionService(store, pool, 1 << 20, job_ttl_s=TTL_S, clock=lambda: now[0])
        with pytest.raises(FailedPrecondition, match="has no checkpoint yet"):
            service.served(f"jobs/{JOB}", "latest", "default")
        assert store.reads == 1, "a job just read is not read again"
        store.state = JobState.FAILED  # within the TTL: the cached entry is still RUNNING
        assert service._served_from_memory(f"jobs/{JOB}", "latest", "default") is None
        # Read a moment ago: a client polling a job without a checkpoint is answered from memory.
        with pytest.raises(FailedPrecondition, match="has no checkpoint yet"):
            service.served(f"jobs/{JOB}", "latest", "default")
        assert store.reads == 1
        now[0] += TTL_S / 2
        with pytest.raises(FailedPrecondition, match="ended FAILED without a checkpoint"):
            service.served(f"jobs/{JOB}", "latest", "default")
        assert store.reads == 2


class RetainingStore(CountingStore):
    """A job whose checkpoints retention prunes as it trains: the list holds `kept`."""

    def __init__(self) -> None:
        super().__init__()
        self.kept = [1, 2]

    def list_checkpoints(self, job_id: str) -> list[Any]:
        return [SimpleNamespace(id=checkpoint_id) for checkpoint_id in self.kept]


def test_models_of_checkpoints_retention_deleted_leave_the_cache_when_the_job_is_read(
    now: list[float],
) -> None:
    """A job answering "latest" while it trained left one cached model per checkpoint it ever
    had (551 predictions cached 67 models of a job keeping 3 checkpoints): only deleting the
    job dropped them."""
    store: Any = RetainingStore()
    with ThreadPoolExecutor(2) as pool:
        service = PredictionService(store, pool, 1 << 20, job_ttl_s=TTL_S, clock=lambda: now[0])
        service._job(JOB)
        for checkpoint_id in (1, 2):
            loaded: Any = SimpleNamespace(
                model=Model.from_spec({"input_dim": 2, "layers": [{"type": "dense", "units": 1}]})
            )
            service.cache.get((JOB, checkpoint_id), lambda: loaded)  # noqa: B023
        store.kept = [2, 3]  # retention deleted 1 as 3 was written
        now[0] += TTL_S * 2.5
        service._job(JOB)  # read again
        assert service.cache.peek((JOB, 1)) is None, "a deleted checkpoint's model is dropped"
        assert service.cache.peek((JOB, 2)) is not None, "a kept one's stays"
