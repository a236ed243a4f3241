"""The prediction model cache: one load under concurrent first requests, LRU by bytes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from trainwire.engine import Model
from trainwire.server.model_cache import ModelCache, model_bytes

SPEC = {"input_dim": 8, "layers": [{"type": "dense", "units": 4}]}
MODEL_BYTES = (8 * 4 + 4) * 4


def test_concurrent_first_requests_load_once() -> None:
    cache = ModelCache(10 * MODEL_BYTES, model_bytes)
    loads = []
    gate = threading.Event()

    def load() -> Model:
        loads.append(1)
        gate.wait(5)  # every other request arrives while the first is loading
        return Model.from_spec(SPEC)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cache.get, ("job", 1), load) for _ in range(8)]
        time.sleep(0.2)
        gate.set()
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
