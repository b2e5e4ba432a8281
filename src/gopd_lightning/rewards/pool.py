"""Worker processes for checks that need a main thread or may hang (math-verify).

A pebble process pool, spawned lazily and shared by the process: every task has a deadline, and
a worker that overruns it is killed and replaced, so a pathological answer costs one worker, not
the training run.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from pebble import ProcessPool

_pool: ProcessPool | None = None


def default_workers() -> int:
    """At most 4 workers, never more than the CPUs this process may use."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _shared_pool() -> ProcessPool:
    global _pool
    if _pool is None or not _pool.active:
        _pool = ProcessPool(max_workers=default_workers(), context=multiprocessing.get_context("spawn"))
        atexit.register(_pool.stop)
    return _pool


def run_all(function: Callable[..., float], arguments: Sequence[tuple[Any, ...]], timeout_s: float) -> list[float]:
    """``function(*args)`` for every args tuple in worker processes; 0.0 for any failure or overrun."""
    pool = _shared_pool()
    futures = [pool.schedule(function, args=args, timeout=timeout_s) for args in arguments]
    results = []
    for future in futures:
        try:
            results.append(float(future.result()))
        except (FutureTimeout, Exception):  # a hung or crashed check is a wrong answer
            results.append(0.0)
    return results
