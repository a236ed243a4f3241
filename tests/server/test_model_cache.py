"""The prediction model cache: one load under concurrent first requests, LRU by bytes."""

from __future__ import annotations

import random
import threading
import tracemalloc
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from trainwire.engine import Model
from trainwire.server.metrics import MODEL_CACHE_EVICTIONS
from trainwire.server.model_cache import ModelCache, model_bytes

if TYPE_CHECKING:
    from trainwire.server.model_cache import Pin

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
    evictions = MODEL_CACHE_EVICTIONS._value.get()
    cache.get(("job", 2), lambda: Model.from_spec(SPEC))
    assert cache.loads == 4, "2 had been evicted"
    assert MODEL_CACHE_EVICTIONS._value.get() == evictions + 1, "and 3 is now"
    assert cache.bytes == 2 * MODEL_BYTES
    cache.invalidate("job")
    assert cache.bytes == 0
    cache.get(("job", 1), lambda: Model.from_spec(SPEC))
    assert cache.loads == 5, "a deleted job's models are forgotten"


class JoinedLoads(dict):
    """A cache's `_loading` that tells when `callers` threads have joined a key's load: from
    then on each waits for that load however late it looks, so a load that waits for them all
    serves them all."""

    def __init__(self, callers: int) -> None:
        super().__init__()
        self.callers = callers
        self.joined: set[threading.Thread] = set()
        self.all_joined = threading.Event()

    def setdefault(self, key: object, default: object) -> object:
        found = super().setdefault(key, default)
        self.joined.add(threading.current_thread())
        if len(self.joined) >= self.callers:
            self.all_joined.set()
        return found


def test_a_caller_that_waited_is_served_the_load_it_waited_for_though_evicted() -> None:
    """A caller that waited for a model's first load can find it evicted when it looks: it is
    served the model that load produced, not left to load it again."""
    cache = ModelCache(MODEL_BYTES + MODEL_BYTES // 2, model_bytes)  # room for one model
    key = ("job", 1)
    cache._loading = joined = JoinedLoads(2)
    waiter_looking, waiter_go = threading.Event(), threading.Event()
    peek = cache.peek
    waiter_peeks = []
    served: dict[str, Model] = {}

    def watched_peek(found_key: tuple[str, int]) -> Model | None:
        if threading.current_thread().name == "waiter":
            waiter_peeks.append(found_key)
            if len(waiter_peeks) == 2:  # its look under the key's lock, after the first load
                waiter_looking.set()
                assert waiter_go.wait(10)
        return peek(found_key)

    def first_load() -> Model:
        assert joined.all_joined.wait(10), "the waiter never joined the load"
        return Model.from_spec(SPEC)

    def serve(name: str, load: Callable[[], Model]) -> None:
        served[name] = cache.get(key, load)

    cache.peek = watched_peek
    first = threading.Thread(target=serve, args=("first", first_load))
    waiter = threading.Thread(
        target=serve, args=("waiter", lambda: Model.from_spec(SPEC)), name="waiter"
    )
    first.start()
    waiter.start()
    assert waiter_looking.wait(10)  # holds the first load's lock, about to look
    first.join(10)
    cache.get(("job", 2), lambda: Model.from_spec(SPEC))  # evicts the first load's model
    waiter_go.set()  # finds nothing cached
    waiter.join(10)
    assert served["waiter"] is served["first"]
    assert cache.loads == 2, "one load of each checkpoint"
    assert list(cache._models) == [("job", 2)] and cache._bytes == MODEL_BYTES
    assert cache._loading == {}, "no load is left behind"


def test_overlapping_loads_after_a_failed_one_are_counted_once() -> None:
    """A caller that waited for a load that failed loads itself, while a newer caller, arriving
    once the failed load was dropped, loads too: the cache must count the model once, serve both
    the one it kept, and keep no load behind."""
    cache = ModelCache(10 * MODEL_BYTES, model_bytes)
    key = ("job", 1)
    cache._loading = joined = JoinedLoads(2)
    waiter_loading, waiter_go = threading.Event(), threading.Event()
    third_loading, third_go = threading.Event(), threading.Event()
    served: dict[str, Model | OSError] = {}

    def failing_load() -> Model:
        assert joined.all_joined.wait(10), "the waiter never joined the load"
        raise OSError("checkpoint unreadable")

    def gated_load(started: threading.Event, go: threading.Event) -> Model:
        started.set()
        assert go.wait(10)
        return Model.from_spec(SPEC)

    def serve(name: str, load: Callable[[], Model]) -> None:
        try:
            served[name] = cache.get(key, load)
        except OSError as error:
            served[name] = error

    first = threading.Thread(target=serve, args=("first", failing_load))
    waiter = threading.Thread(
        target=serve, args=("waiter", lambda: gated_load(waiter_loading, waiter_go))
    )
    third = threading.Thread(
        target=serve, args=("third", lambda: gated_load(third_loading, third_go))
    )
    first.start()
    waiter.start()
    first.join(10)
    assert waiter_loading.wait(10)  # the failed load left nothing to serve it
    third.start()  # takes a new load: the failed one was dropped
    assert third_loading.wait(10)
    waiter_go.set()
    waiter.join(10)
    third_go.set()
    third.join(10)
    assert isinstance(served["first"], OSError)
    assert served["third"] is served["waiter"], "served the model kept first"
    assert cache.loads == 2
    assert cache._bytes == sum(size for _, size in cache._models.values()) == MODEL_BYTES
    assert cache._loading == {}, "no load is left behind"


def test_a_failed_load_leaves_no_lock_and_the_next_request_loads() -> None:
    cache = ModelCache(10 * MODEL_BYTES, model_bytes)

    def broken() -> Model:
        raise OSError("checkpoint unreadable")

    with pytest.raises(OSError):
        cache.get(("job", 1), broken)
    assert cache._loading == {}
    assert cache.get(("job", 1), lambda: Model.from_spec(SPEC)) is not None
    assert cache.loads == 1


class Blob:
    """A stand-in model of a given size."""

    def __init__(self, size: int) -> None:
        self.size = size


def _blob_size(blob: Blob) -> int:
    return blob.size


def test_a_pinned_model_is_not_evicted_until_unpinned() -> None:
    cache = ModelCache(2 * MODEL_BYTES, model_bytes)
    first = cache.get(("job", 1), lambda: Model.from_spec(SPEC))
    pin = cache.pin(("job", 1), first)
    assert pin is not None and pin.value is first
    for checkpoint in (2, 3, 4):  # 1 is the least recently used each time, but held
        cache.get(("job", checkpoint), lambda: Model.from_spec(SPEC))
    assert list(cache._models) == [("job", 1), ("job", 4)]
    assert cache.get(("job", 1), lambda: Model.from_spec(SPEC)) is first
    cache.unpin(pin)
    cache.get(("job", 2), lambda: Model.from_spec(SPEC))
    cache.get(("job", 3), lambda: Model.from_spec(SPEC))  # 1, unpinned, is evicted now
    assert ("job", 1) not in cache._models
    assert cache._bytes == 2 * MODEL_BYTES


def test_a_model_that_cannot_fit_beside_pinned_ones_is_served_but_not_kept() -> None:
    cache = ModelCache(2 * MODEL_BYTES, model_bytes)
    pins = []
    for checkpoint in (1, 2):
        model = cache.get(("job", checkpoint), lambda: Model.from_spec(SPEC))
        pins.append(cache.pin(("job", checkpoint), model))
    third = cache.get(("job", 3), lambda: Model.from_spec(SPEC))
    assert isinstance(third, Model) and ("job", 3) not in cache._models
    assert cache.pin(("job", 3), third) is None, "a stream cannot hold it outside the bound"
    assert cache._bytes == 2 * MODEL_BYTES
    cache.get(("job", 3), lambda: Model.from_spec(SPEC))
    assert cache.loads == 4, "loaded again: it was not kept"
    # A second stream on a held model shares its pin.
    shared = cache.pin(("job", 1), cache.get(("job", 1), lambda: Model.from_spec(SPEC)))
    assert shared is pins[0] and shared.count == 2


def test_concurrent_requests_for_a_model_that_cannot_be_kept_load_it_once() -> None:
    """Every request that came while the model loaded is served that one load, though the
    cache has no room for it beside the pinned models; the cache keeps nothing of it, so a
    request arriving later loads it again."""
    cache = ModelCache(2 * MODEL_BYTES, model_bytes)
    for checkpoint in (1, 2):
        model = cache.get(("job", checkpoint), lambda: Model.from_spec(SPEC))
        assert cache.pin(("job", checkpoint), model) is not None
    kept, counted = dict(cache._models), cache._bytes
    cache._loading = joined = JoinedLoads(8)
    loads = []

    def load() -> Model:
        loads.append(1)
        assert joined.all_joined.wait(10), f"only {len(joined.joined)} of 8 requests came"
        return Model.from_spec(SPEC)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cache.get, ("job", 3), load) for _ in range(8)]
        models = [f.result() for f in futures]
    assert len(loads) == 1 and cache.loads == 3
    assert all(model is models[0] for model in models)
    assert dict(cache._models) == kept and cache._bytes == counted == 2 * MODEL_BYTES
    assert cache._loading == {}
    served = weakref.ref(models[0])
    del models, futures
    assert served() is None, "nothing holds it once its requests are done"
    later = cache.get(("job", 3), lambda: Model.from_spec(SPEC))
    assert isinstance(later, Model) and cache.loads == 4, "loaded again: it was not kept"
    assert dict(cache._models) == kept and cache._bytes == counted


def test_a_model_evicted_before_its_stream_pins_it_is_kept_again() -> None:
    """Between a stream's resolution and its pin, another load may evict its model."""
    cache = ModelCache(MODEL_BYTES, model_bytes)
    model = cache.get(("job", 1), lambda: Model.from_spec(SPEC))
    cache.get(("job", 2), lambda: Model.from_spec(SPEC))  # evicts 1
    pin = cache.pin(("job", 1), model)
    assert pin is not None and pin.value is model
    assert list(cache._models) == [("job", 1)] and cache._bytes == MODEL_BYTES


def test_bytes_held_never_exceed_the_bound_with_pinned_models_counted() -> None:
    """Random loads, pins, unpins and invalidations: every model the cache keeps or a stream
    holds is counted, and the count stays within the bound."""
    rng = random.Random(0)
    cache: ModelCache[Blob] = ModelCache(1000, _blob_size)
    sizes = {(job, checkpoint): rng.randint(50, 400) for job in "abc" for checkpoint in range(6)}
    held: list[Pin[Blob]] = []
    for _ in range(3000):
        action = rng.random()
        key = rng.choice(list(sizes))
        if action < 0.5:
            cache.get(key, lambda key=key: Blob(sizes[key]))
        elif action < 0.75:
            pin = cache.pin(key, cache.get(key, lambda key=key: Blob(sizes[key])))
            if pin is not None:
                held.append(pin)
        elif action < 0.97 and held:
            cache.unpin(held.pop(rng.randrange(len(held))))
        else:
            cache.invalidate(key[0])
        alive = {id(value): value for value, _ in cache._models.values()}
        alive.update((id(pin.value), pin.value) for pin in held)
        counted = sum(blob.size for blob in alive.values())
        assert cache._bytes == counted <= cache.max_bytes
    for pin in held:
        cache.unpin(pin)
    assert cache._pinned_bytes == 0 and cache._pins == {}
    assert cache._bytes == sum(size for _, size in cache._models.values())


def test_a_job_deleted_while_a_stream_holds_its_model_is_forgotten_but_counted() -> None:
    cache = ModelCache(2 * MODEL_BYTES, model_bytes)
    model = cache.get(("gone", 1), lambda: Model.from_spec(SPEC))
    pin = cache.pin(("gone", 1), model)
    assert pin is not None
    cache.invalidate("gone")
    assert ("gone", 1) not in cache._models, "no new request finds it"
    assert cache._bytes == MODEL_BYTES, "the stream still holds it"
    cache.get(("job", 1), lambda: Model.from_spec(SPEC))
    cache.get(("job", 2), lambda: Model.from_spec(SPEC))
    assert list(cache._models) == [("job", 2)], "room for one beside the deleted job's model"
    assert cache._bytes == 2 * MODEL_BYTES
    cache.unpin(pin)
    assert cache._bytes == MODEL_BYTES
    cache.get(("job", 1), lambda: Model.from_spec(SPEC))
    assert list(cache._models) == [("job", 2), ("job", 1)]


def test_peek_hits_and_recency_are_unchanged_by_pins() -> None:
    """The one-row Predict path: a hit counts and makes the model the most recent, pinned or
    not; a miss counts nothing."""
    cache = ModelCache(3 * MODEL_BYTES, model_bytes)
    models = {c: cache.get(("job", c), lambda: Model.from_spec(SPEC)) for c in (1, 2, 3)}
    assert cache.pin(("job", 2), models[2]) is not None
    assert cache.peek(("job", 1)) is models[1]
    assert cache.peek(("job", 2)) is models[2]
    assert cache.peek(("job", 9)) is None
    assert list(cache._models) == [("job", 3), ("job", 1), ("job", 2)]
    assert cache.hits == 2 and cache.loads == 3
    cache.get(("job", 4), lambda: Model.from_spec(SPEC))  # evicts 3, the least recent
    assert list(cache._models) == [("job", 1), ("job", 2), ("job", 4)]


def test_a_model_is_sized_without_copying_its_weights() -> None:
    # A stream pins its model on the event loop, sizing it: 4 MiB of weights are counted, not
    # copied (a state_dict() would allocate all of them again).
    model = Model.from_spec({"input_dim": 1024, "layers": [{"type": "dense", "units": 1024}]})
    weights = sum(array.nbytes for array in model.state_dict().values())
    tracemalloc.start()
    try:
        assert model_bytes(model) == weights == (1024 * 1024 + 1024) * 4
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < weights // 100


def test_a_model_larger_than_the_bound_is_served_but_never_kept() -> None:
    """With nothing pinned, a model larger than the whole bound was kept (and could then be
    pinned), so the cache held more bytes than TRAINWIRE_MODEL_CACHE_BYTES allows."""
    cache = ModelCache(MODEL_BYTES - 1, model_bytes)
    model = cache.get(("job", 1), lambda: Model.from_spec(SPEC))
    assert isinstance(model, Model) and cache._models == {} and cache._bytes == 0
    assert cache.pin(("job", 1), model) is None, "a stream cannot hold it either"
    cache.get(("job", 1), lambda: Model.from_spec(SPEC))
    assert cache.loads == 2 and cache._bytes == 0


def test_models_of_checkpoints_a_read_no_longer_lists_are_forgotten() -> None:
    cache = ModelCache(5 * MODEL_BYTES, model_bytes)
    for key in (("job", 1), ("job", 2), ("job", 4), ("other", 1)):
        cache.get(key, lambda: Model.from_spec(SPEC))
    # The read listed 2 and 3: 1 was deleted since; 4 was written after the read began.
    cache.forget_deleted("job", {2, 3})
    assert list(cache._models) == [("job", 2), ("job", 4), ("other", 1)]
    assert cache._bytes == 3 * MODEL_BYTES
    cache.forget_deleted("job", set())  # a job with no checkpoint listed: nothing to judge by
    assert len(cache._models) == 3


def test_a_cached_model_is_counted_near_what_it_holds_in_memory() -> None:
    """A model was counted as its weights alone: a 4-16-3 network as 524 bytes where it held
    about 12 KiB, so the 1 GiB bound let two million of them stay."""
    import gc
    import tracemalloc

    from trainwire.server.batching import ModelBatcher
    from trainwire.server.predictions import _batcher_bytes

    spec = {
        "input_dim": 4,
        "layers": [
            {"type": "dense", "units": 16, "activation": "relu"},
            {"type": "dense", "units": 3},
        ],
    }
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        batchers = [ModelBatcher(Model.from_spec(spec, seed=i), 1024, 0.002) for i in range(100)]
        gc.collect()
        held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    counted = sum(_batcher_bytes(batcher) for batcher in batchers)
    assert held / 2 < counted < held * 2, (counted, held)
