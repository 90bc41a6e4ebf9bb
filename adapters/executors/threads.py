"""Runs frames' pipelines on a bounded pool of threads, off the event loop: the FrameExecutor adapter in this process.

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
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from adapters.executors.deadline import race_deadline
from application.ports import FrameJob, FrameReply
from application.frame_service import FramePipelineService

T = TypeVar("T")


log = logging.getLogger(__name__)


class ThreadFrameExecutor:
    """The FrameExecutor port on threads of this process, running `FramePipelineService.run_job`."""

    def __init__(self, frames: FramePipelineService, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._frames = frames
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="forgesyte-infer")
        self._busy = 0
        self._lock = threading.Lock()

    def runs_inline(self, pipeline_id: str) -> bool:
        return self._frames.runs_inline(pipeline_id)

    def run_inline(self, job: FrameJob) -> FrameReply:
        return self._frames.run_job(job)

    async def run(self, job: FrameJob, *, timeout_s: float, give_up: Awaitable[object] | None = None) -> FrameReply:
        return await self.run_blocking(lambda: self.run_inline(job), timeout_s=timeout_s, give_up=give_up)

    def open_stream(self, stream_id: str) -> None:
        self._frames.open_stream(stream_id)

    def release_stream(self, stream_id: str) -> None:
        self._frames.release_stream(stream_id)

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

    async def run_blocking(self, fn: Callable[[], T], *, timeout_s: float, give_up: Awaitable[object] | None = None) -> T:
        """Run `fn` in a worker thread, with the frame executor's deadline and give-up rules."""
        # The caller's context goes with the work, so records logged in the thread keep
        # the session's bound ids (session_id, pipeline_id).
        future = self._executor.submit(contextvars.copy_context().run, self._tracked(fn))
        waiter = asyncio.wrap_future(future)
        abandoned = False

        def settle(done: asyncio.Future[T]) -> None:
            # Retrieve the outcome even when nobody awaits it any more, so that a late
            # failure is logged here rather than reported as "exception never retrieved".
            if done.cancelled():
                return
            error = done.exception()
            if error is not None and abandoned:
                log.warning("work that outlived its frame's deadline failed later", exc_info=error)

        waiter.add_done_callback(settle)

        def abandon() -> bool:
            nonlocal abandoned
            abandoned = True
            return future.cancel()  # work still queued never starts; running work finishes unobserved

        return await race_deadline(waiter, timeout_s=timeout_s, give_up=give_up, abandon=abandon)

    def busy_workers(self) -> int:
        with self._lock:
            return self._busy

    def health(self) -> dict[str, Any]:
        return {"kind": "threads", "workers": self.workers, "busy": self.busy_workers()}

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
