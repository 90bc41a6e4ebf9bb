"""Runs pipelines on a bounded pool of threads, off the event loop.

OpenCV and ONNX Runtime release the GIL while they compute, so threads give
real parallelism here without the copying cost of processes. A thread cannot
be killed: a tool that hangs keeps its worker until it returns. The pool bounds
what hung tools can hold (at most `workers` threads). When every worker is
busy, frames wait for one; a frame still waiting or running when its deadline
passes is answered with pipeline_failure, and if it had not started yet it is
cancelled and never runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from application.ports import WorkStillRunning

T = TypeVar("T")


def _consume(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


class ThreadWorkerPool:
    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="forgesyte-infer")
        self._busy = 0
        self._lock = threading.Lock()

    def _tracked(self, fn: Callable[[], T]) -> Callable[[], T]:
        def run() -> T:
            with self._lock:
                self._busy += 1
            try:
                return fn()
            finally:
                with self._lock:
                    self._busy -= 1

        return run

    async def run(self, fn: Callable[[], T], *, timeout_s: float) -> T:
        future = self._executor.submit(self._tracked(fn))
        waiter = asyncio.wrap_future(future)
        # Retrieve the outcome even when nobody awaits it any more (timeout, cancellation),
        # so a late failure is not reported as "exception never retrieved".
        waiter.add_done_callback(_consume)
        # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the work completes, leaving the caller's task uncancellable.
        try:
            done, _ = await asyncio.wait({waiter}, timeout=timeout_s)
        except asyncio.CancelledError:
            future.cancel()  # work still queued never starts
            raise
        if not done:
            if future.cancel():
                raise TimeoutError(f"the work did not start within {timeout_s} s")
            raise WorkStillRunning(timeout_s, waiter)
        return waiter.result()

    def busy_workers(self) -> int:
        with self._lock:
            return self._busy

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
