"""The prediction model cache: one load under concurrent first requests, LRU by bytes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from trainwire.engine import Model
from trainwire.server.model_cache import ModelCache, model_bytes

SPEC = {"input_dim": 8, "layers": [{"type": "dense", "units": 4}]}
MODEL_BYTES = (8 * 4 + 4) * 4


def test_concurrent_first_requests_load_once() -> None:
    cache = ModelCache(10 * MODEL_BYTES, model_bytes)
    loads = []
    peek = cache.peek
    missed: set[threading.Thread] = set()
    all_missed = threading.Event()

    def watched_peek(key: tuple[str, int]) -> Model | None:
        found = peek(key)
        if found is None:
            missed.add(threading.current_thread())
            if len(missed) == 8:
                all_missed.set()
        return found

    def load() -> Model:
        loads.append(1)
        # Every request has looked and found nothing before the load ends: all eight are first
        # requests, not hits on a model already cached.
        assert all_missed.wait(10), f"only {len(missed)} of 8 requests came while it loaded"
        return Model.from_spec(SPEC)

    cache.peek = watched_peek
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cache.get, ("job", 1), load) for _ in range(8)]
        models = [f.result() for f in futures]
    assert len(loads) == 1 and cache.loads == 1 and cache.hits == 7
    assert all(model is models[0] for model in models)


def test_least_recently_used_models_are_evicted_by_bytes() -> None:
    cache = ModelCache(2 * MODEL_BYTES, model_bytes)
    for checkpoint in (1, 2):
        cache.get(("job", checkpoint), lambda: Model.from_spec(SPEC))
    cache.get(("job", 1), lambda: Model.from_spec(SPEC))  # 1 is now the most recent
    cache.get(("job", 3), lambda: Model.from_spec(SPEC))  # evicts 2
    assert cache.loads == 3
    cache.get(("job", 1), lambda: Model.from_spec(SPEC))
    assert cache.loads == 3, "1 stayed cached"
    cache.get(("job", 2), lambda: Model.from_spec(SPEC))
    assert cache.loads == 4, "2 had been evicted"
    cache.invalidate("job")
    cache.get(("job", 1), lambda: Model.from_spec(SPEC))
    assert cache.loads == 5, "a deleted job's models are forgotten"


def test_overlapping_loads_of_an_evicted_model_are_counted_once() -> None:
    """A caller that waited for a model's first load can find it evicted and load it again
    while a newer caller loads it too: the cache must count its bytes once and keep no lock."""
    cache = ModelCache(MODEL_BYTES + MODEL_BYTES // 2, model_bytes)  # room for one model
    key = ("job", 1)
    first_loading, first_go = threading.Event(), threading.Event()
    waiter_looking, waiter_go = threading.Event(), threading.Event()
    third_loading, third_go = threading.Event(), threading.Event()
    peek = cache.peek
    waiter_peeks = []

    def watched_peek(found_key: tuple[str, int]) -> Model | None:
        if threading.current_thread().name == "waiter":
            waiter_peeks.append(found_key)
            if len(waiter_peeks) == 2:  # its look under the key's lock, after the first load
                waiter_looking.set()
                assert waiter_go.wait(10)
        return peek(found_key)

    def gated_load(started: threading.Event, go: threading.Event) -> Model:
        started.set()
        assert go.wait(10)
        return Model.from_spec(SPEC)

    cache.peek = watched_peek
    first = threading.Thread(
        target=cache.get, args=(key, lambda: gated_load(first_loading, first_go))
    )
    waiter = threading.Thread(
        target=cache.get, args=(key, lambda: Model.from_spec(SPEC)), name="waiter"
    )
    third = threading.Thread(
        target=cache.get, args=(key, lambda: gated_load(third_loading, third_go))
    )
    first.start()
    assert first_loading.wait(10)
    waiter.start()  # waits for the first load's lock
    first_go.set()
    first.join(10)
    assert waiter_looking.wait(10)  # holds the old lock, about to look again
    cache.get(("job", 2), lambda: Model.from_spec(SPEC))  # evicts the first load's model
    third.start()  # takes a new lock: the old one was dropped after the first load
    assert third_loading.wait(10)
    waiter_go.set()  # finds nothing, loads again
    waiter.join(10)
    third_go.set()
    third.join(10)
    assert cache.loads == 4
    assert cache._bytes == sum(size for _, size in cache._models.values()) == MODEL_BYTES
    assert cache._loading == {}, "no lock is left behind"


def test_a_failed_load_leaves_no_lock_and_the_next_request_loads() -> None:
    cache = ModelCache(10 * MODEL_BYTES, model_bytes)

    def broken() -> Model:
        raise OSError("checkpoint unreadable")

    with pytest.raises(OSError):
        cache.get(("job", 1), broken)
    assert cache._loading == {}
    assert cache.get(("job", 1), lambda: Model.from_spec(SPEC)) is not None
    assert cache.loads == 1
