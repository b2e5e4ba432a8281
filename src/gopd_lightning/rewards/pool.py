"""Worker processes for checks that need a main thread or may hang (math-verify).

Each worker is a fresh interpreter started as ``python -m gopd_lightning.rewards.worker``: it
never imports the user's ``__main__`` (multiprocessing's spawn and forkserver re-run an unguarded
script in every worker, and cannot start at all from ``python -``), so scoring works the same from
a script, ``python -``, a notebook or the REPL. A task names a module-level function and sends
JSON arguments; a worker that overruns the task's deadline is killed and replaced, so a
pathological answer costs one worker, not the training run.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

WORKER_MODULE = "gopd_lightning.rewards.worker"


def default_workers() -> int:
    """At most 4 workers, never more than the CPUs this process may use."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def task_target(function: Callable[..., Any]) -> str:
    """``"module:name"`` of a function a worker can import; functions of ``__main__`` cannot run in a worker."""
    module = getattr(function, "__module__", None) or "builtins"
    if module == "__main__" or "<" in function.__qualname__:
        raise ValueError(f"{function!r} must be a module-level function of an importable module to run in a worker")
    return f"{module}:{function.__qualname__}"


class Worker:
    """One worker interpreter: a JSON line in, a JSON line out, one task at a time."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    def call(self, target: str, args: Sequence[Any], timeout_s: float) -> Any:
        """The function's result; TimeoutError (the worker is killed) or RuntimeError when it fails."""
        try:
            self.process.stdin.write(json.dumps({"target": target, "args": list(args)}) + "\n")
            self.process.stdin.flush()
        except OSError as error:
            self.stop()
            raise RuntimeError("the worker is gone") from error
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        if not ready:
            self.stop()
            raise TimeoutError(f"{target} ran over {timeout_s} s")
        line = self.process.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("the worker died")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


class WorkerPool:
    """Up to ``size`` workers, started on demand and replaced when one is killed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        self.started = 0
        self.lock = threading.Lock()
        self.every: list[Worker] = []

    def _take(self) -> Worker:
        with self.lock:
            if self.idle.empty() and self.started < self.size:
                self.started += 1
                worker = Worker()
                self.every.append(worker)
                return worker
        return self.idle.get()

    def run(self, target: str, args: Sequence[Any], timeout_s: float) -> Any:
        worker = self._take()
        try:
            return worker.call(target, args, timeout_s)
        finally:
            if worker.alive:
                self.idle.put(worker)
            else:
                with self.lock:
                    self.started -= 1

    def close(self) -> None:
        for worker in self.every:
            if worker.alive:
                worker.stop()


_pool: WorkerPool | None = None


def _shared_pool() -> WorkerPool:
    global _pool
    if _pool is None:
        _pool = WorkerPool(default_workers())
        atexit.register(_pool.close)
    return _pool


def run_all(function: Callable[..., float], arguments: Sequence[tuple[Any, ...]], timeout_s: float) -> list[float]:
    """``function(*args)`` for every args tuple in worker processes; 0.0 for any failure or overrun."""
    pool, target = _shared_pool(), task_target(function)

    def one(args: tuple[Any, ...]) -> float:
        try:
            return float(pool.run(target, args, timeout_s))
        except Exception:  # a hung or crashed check is a wrong answer
            return 0.0

    with ThreadPoolExecutor(pool.size) as threads:
        return list(threads.map(one, arguments))
