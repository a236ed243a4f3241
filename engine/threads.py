"""Thread settings: the BLAS thread count, and a small pool for element-wise work.

On a shared machine multi-threaded OpenBLAS collapses when another process is busy (measured
here: 784-512-512-10 at batch 128 fell from ~27,000 to ~4,000 samples/s with 2 BLAS threads
while one BLAS thread held ~23,000), so a worker process should set its BLAS threads from its
concurrency: ``set_num_threads(n)`` (process-wide, via threadpoolctl) or
``Trainer(..., num_threads=n)`` (during ``fit`` only). ``get_num_threads()`` reports the
setting, or the BLAS library's current count when none was made.

NumPy ufuncs release the GIL, so ``parallel_for`` can split element-wise work (the optimizer's
flat update, when ``optimizer.num_threads > 1``) over a thread pool.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._registry import check_int

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_num_threads: int | None = None
_blas_limiter: Any = None


def blas_num_threads() -> int:
    """The largest thread count of the loaded BLAS libraries (os.cpu_count() if none)."""
    from threadpoolctl import threadpool_info

    counts = [
        int(info.get("num_threads") or 1)
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    return max(counts) if counts else (os.cpu_count() or 1)


def set_num_threads(n: int | None) -> None:
    """Limit BLAS to ``n`` threads process-wide and use ``n`` engine threads (None: reset)."""
    global _num_threads, _blas_limiter
    from threadpoolctl import threadpool_limits

    if n is not None:
        n = check_int("num_threads", n, 1)
    with _lock:
        if _blas_limiter is not None:
            _blas_limiter.restore_original_limits()
            _blas_limiter = None
        if n is not None:
            _blas_limiter = threadpool_limits(limits=n, user_api="blas")
        _num_threads = n


def get_num_threads() -> int:
    """The engine's thread count: ``set_num_threads``'s value, else the BLAS thread count."""
    return _num_threads if _num_threads is not None else blas_num_threads()


def parallel_for(fn: Callable[[int], None], n: int) -> None:
    """Run ``fn(0) ... fn(n - 1)``, ``fn(0)`` on the calling thread, the rest on a pool."""
    global _pool, _pool_size
    if n <= 1:
        fn(0)
        return
    if _pool is None or _pool_size < n - 1:
        with _lock:
            if _pool is None or _pool_size < n - 1:
                old = _pool
                _pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="trainwire")
                _pool_size = n - 1
                if old is not None:
                    old.shutdown(wait=False)
    futures = [_pool.submit(fn, i) for i in range(1, n)]
    try:
        fn(0)
    finally:
        for future in futures:
            future.result()
