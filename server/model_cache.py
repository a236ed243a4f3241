"""An in-memory LRU of models loaded from checkpoints, bounded by bytes.

Concurrent first requests for one checkpoint load it once: the first caller loads while the others
wait on that checkpoint's lock. The cached value is whatever the prediction path serves a model
with (a `ModelBatcher`); `size_of` says how many bytes it holds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from trainwire.engine import Model

from .metrics import MODEL_CACHE

MODEL_CACHE_HITS = MODEL_CACHE.labels(result="hit")

# (job id, checkpoint id)
CacheKey = tuple[str, int]
Served = TypeVar("Served")


def model_bytes(model: Model) -> int:
    """The bytes of a model's weights and buffers."""
    return sum(array.nbytes for array in model.state_dict().values())


class ModelCache(Generic[Served]):
    def __init__(self, max_bytes: int, size_of: Callable[[Served], int]) -> None:
        self.max_bytes = max_bytes
        self.size_of = size_of
        self._models: OrderedDict[CacheKey, tuple[Served, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[CacheKey, threading.Lock] = {}
        self.loads = 0
        self.hits = 0

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
            key_lock = self._loading.setdefault(key, threading.Lock())
        try:
            with key_lock:
                found = self.peek(key)  # loaded while this caller waited for the lock
                if found is not None:
                    return found
                MODEL_CACHE.labels(result="miss").inc()
                model = load()
                self._insert(key, model)
                return model
        finally:
            with self._lock:
                # Only this caller's lock: once it was dropped, a model evicted meanwhile may be
                # loading again under another caller's.
                if self._loading.get(key) is key_lock:
                    del self._loading[key]

    def _insert(self, key: CacheKey, model: Served) -> None:
        size = self.size_of(model)
        with self._lock:
            self.loads += 1
            # Two loads of one key can overlap when the first's model was evicted before a
            # caller that waited for it looked: the second replaces the first, counted once.
            replaced = self._models.pop(key, None)
            if replaced is not None:
                self._bytes -= replaced[1]
            self._models[key] = (model, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._models) > 1:
                _, (_, evicted) = self._models.popitem(last=False)
                self._bytes -= evicted

    def invalidate(self, job_id: str) -> None:
        """Forgets every model of a job."""
        with self._lock:
            for key in [k for k in self._models if k[0] == job_id]:
                _, size = self._models.pop(key)
                self._bytes -= size
