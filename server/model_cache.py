"""An in-memory LRU of models loaded from checkpoints, bounded by bytes.

Concurrent first requests for one checkpoint load it once: the first caller loads while the others
wait on that checkpoint's lock, and every caller that waited is served what that load produced,
even a model not kept (no room beside the pinned ones) or evicted since. A request arriving after
the load finished finds only what the cache kept, so a model that is not kept (that, or one
larger than the bound) is loaded again by the next request: the price of never holding more than
the bound. A caller that waited is served
its load's model even if `invalidate` (its job deleted) ran meanwhile, as a request that found
the model cached just before would have been.

The cached value is whatever the prediction path serves a model with (a `ModelBatcher`);
`size_of` says how many bytes it holds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from trainwire.engine import Model

from .metrics import MODEL_CACHE, MODEL_CACHE_EVICTIONS, MODEL_CACHE_PINS

MODEL_CACHE_HITS = MODEL_CACHE.labels(result="hit")

# (job id, checkpoint id)
CacheKey = tuple[str, int]
Served = TypeVar("Served")


def model_bytes(model: Model) -> int:
    """The bytes of a model's weights and buffers (counted, not copied)."""
    return model.nbytes


@dataclass(eq=False)
class Pin(Generic[Served]):
    """The holds of open streams on one cached model: `value` is the model they answer with."""

    key: CacheKey
    value: Served
    size: int
    count: int = 0


@dataclass(eq=False)
class _Load(Generic[Served]):
    """One checkpoint's load in flight: its callers take turns on `lock`, and `model` is what
    the load produced, for those that waited (it may not be in the cache)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    model: Served | None = None


class ModelCache(Generic[Served]):
    def __init__(self, max_bytes: int, size_of: Callable[[Served], int]) -> None:
        self.max_bytes = max_bytes
        self.size_of = size_of
        self._models: OrderedDict[CacheKey, tuple[Served, int]] = OrderedDict()
        # Every model counted: those in `_models`, and pinned ones `invalidate` dropped.
        self._bytes = 0
        # The pins of entries still in `_models` (the hot path's `peek` never looks here).
        self._pins: dict[CacheKey, Pin[Served]] = {}
        self._pinned_bytes = 0  # of every pinned model, dropped ones included
        self._lock = threading.Lock()
        self._loading: dict[CacheKey, _Load[Served]] = {}
        self.loads = 0
        self.hits = 0

    @property
    def bytes(self) -> int:
        """Bytes of the models held, pinned ones included (what `max_bytes` bounds)."""
        return self._bytes

    def peek(self, key: CacheKey) -> Served | None:
        """The cached value, or None (counts as a hit when found)."""
        with self._lock:
            found = self._models.get(key)
            if found is None:
                return None
            self._models.move_to_end(key)
            self.hits += 1
        MODEL_CACHE_HITS.inc()
        return found[0]

    def get(self, key: CacheKey, load: Callable[[], Served]) -> Served:
        found = self.peek(key)
        if found is not None:
            return found
        with self._lock:
            loading = self._loading.setdefault(key, _Load())
        try:
            with loading.lock:
                found = self.peek(key)  # loaded while this caller waited for the lock
                if found is None:
                    # Loaded but not kept, or evicted since: served all the same, so the
                    # callers that waited make one load between them, not one each in turn.
                    found = loading.model
                if found is not None:
                    return found
                MODEL_CACHE.labels(result="miss").inc()
                loading.model = self._insert(key, load())
                return loading.model
        finally:
            with self._lock:
                # Only this caller's load: once it was dropped (with the model it holds), the
                # key may be loading again under another caller's.
                if self._loading.get(key) is loading:
                    del self._loading[key]

    def _insert(self, key: CacheKey, model: Served) -> Served:
        """Keeps a loaded model if it fits beside the pinned ones; returns the model to serve."""
        size = self.size_of(model)
        with self._lock:
            self.loads += 1
            # Two loads of one key can overlap when the first failed and a caller that waited
            # for it loads while a newer caller, arriving once the failed load was dropped,
            # loads too: the first kept stays (a stream may have pinned it), and the second's
            # caller is served it.
            found = self._models.get(key)
            if found is not None:
                self._models.move_to_end(key)
                return found[0]
            self._keep(key, model, size)
            return model

    def _keep(self, key: CacheKey, model: Served, size: int) -> bool:
        """Adds a model not cached, evicting the least recently used unpinned ones, unless it
        cannot fit beside the pinned ones; the caller holds the lock."""
        # A model larger than the whole bound is never kept either: each request then loads it
        # (the service logs the setting to raise).
        if self._pinned_bytes + size > self.max_bytes:
            return False
        self._models[key] = (model, size)
        self._bytes += size
        if self._bytes > self.max_bytes:
            for old in list(self._models):  # least recently used first
                if self._bytes <= self.max_bytes:
                    break
                if old != key and old not in self._pins:
                    self._bytes -= self._models.pop(old)[1]
                    MODEL_CACHE_EVICTIONS.inc()
        return True

    def pin(self, key: CacheKey, model: Served) -> Pin[Served] | None:
        """Keeps `key`'s model from eviction until `unpin`. The pin's `value` is the model to
        serve with: the cached one, or `model` (cached now if it had been evicted or not kept).
        None when `model` is not cached and cannot fit beside the models already pinned."""
        size = self.size_of(model)
        with self._lock:
            found = self._models.get(key)
            if found is None:
                if not self._keep(key, model, size):
                    return None
                found = (model, size)
            pin = self._pins.get(key)
            if pin is None:
                pin = self._pins[key] = Pin(key, found[0], found[1])
                self._pinned_bytes += pin.size
            pin.count += 1
        MODEL_CACHE_PINS.inc()
        return pin

    def unpin(self, pin: Pin[Served]) -> None:
        """Lets go of one hold taken by `pin`; the last makes the model evictable again, or
        uncounted if its job's models were invalidated meanwhile."""
        with self._lock:
            pin.count -= 1
            if pin.count == 0:
                self._pinned_bytes -= pin.size
                if self._pins.get(pin.key) is pin:
                    del self._pins[pin.key]
                else:  # dropped by `invalidate` while pinned
                    self._bytes -= pin.size
        MODEL_CACHE_PINS.dec()

    def invalidate(self, job_id: str) -> None:
        """Forgets every model of a job (deleted). A pinned one is dropped too (no new request
        finds it), but its streams finish with it, so its bytes stay counted until they end."""
        self._drop(lambda key: key[0] == job_id)

    def forget_deleted(self, job_id: str, listed: Collection[int]) -> None:
        """Forgets the models of a job's checkpoints that a read of its checkpoints (`listed`,
        their ids) no longer found: retention deletes them, in a worker, and their models stayed
        cached for good, never answered again. Ids grow, so one above the newest listed was
        written after that read began (a newer read cached it): it stays. Pinned ones as in
        `invalidate`."""
        if not listed:
            return
        newest = max(listed)
        self._drop(lambda key: key[0] == job_id and key[1] < newest and key[1] not in listed)

    def _drop(self, doomed: Callable[[CacheKey], bool]) -> None:
        with self._lock:
            for key in [k for k in self._models if doomed(k)]:
                _, size = self._models.pop(key)
                if self._pins.pop(key, None) is None:
                    self._bytes -= size
