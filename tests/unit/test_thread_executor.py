"""The thread adapter of the frame executor: deadlines, cancellation, context, late failures (its blocking core, `run_blocking`)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading

import pytest

from adapters.executors.threads import ThreadFrameExecutor
from application.errors import JobGivenUp, JobStillRunning, JobTimedOut

REQUEST = contextvars.ContextVar("REQUEST", default="none")


def executor_without_pipelines(workers: int) -> ThreadFrameExecutor:
    """The executor without pipelines: these tests give it plain callables through run_blocking."""
    return ThreadFrameExecutor(frames=None, workers=workers)  # type: ignore[arg-type]


def test_work_runs_on_a_pool_thread_and_returns_its_result() -> None:
    pool = executor_without_pipelines(2)

    async def scenario() -> tuple[str, str]:
        return await pool.run_blocking(lambda: ("done", threading.current_thread().name), timeout_s=5)

    try:
        result, thread = asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert result == "done" and thread.startswith("forgesyte-infer")


def test_the_callers_context_goes_with_the_work() -> None:
    pool = executor_without_pipelines(1)

    async def scenario() -> str:
        REQUEST.set("session-42")
        return await pool.run_blocking(REQUEST.get, timeout_s=5)

    try:
        assert asyncio.run(scenario()) == "session-42"
    finally:
        pool.shutdown()


def test_running_work_past_its_deadline_raises_work_still_running_with_its_end() -> None:
    pool = executor_without_pipelines(1)
    release = threading.Event()

    async def scenario() -> bool:
        with pytest.raises(JobStillRunning) as caught:
            await pool.run_blocking(lambda: release.wait(5), timeout_s=0.05)
        assert pool.busy_workers() == 1
        release.set()
        await asyncio.wait({caught.value.finished}, timeout=5)
        return caught.value.finished.done()

    try:
        assert asyncio.run(scenario()) is True
        assert pool.busy_workers() == 0
    finally:
        pool.shutdown()


def test_queued_work_past_its_deadline_never_starts() -> None:
    pool = executor_without_pipelines(1)
    release = threading.Event()
    started: list[str] = []

    async def scenario() -> None:
        blocker = asyncio.ensure_future(pool.run_blocking(lambda: release.wait(5), timeout_s=5))
        await asyncio.sleep(0.05)
        with pytest.raises(JobTimedOut) as caught:
            await pool.run_blocking(lambda: started.append("queued"), timeout_s=0.05)
        assert not isinstance(caught.value, JobStillRunning)
        release.set()
        await blocker
        await asyncio.sleep(0.05)

    try:
        asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert started == []


def test_a_failure_after_the_deadline_is_logged_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    pool = executor_without_pipelines(1)
    release = threading.Event()

    def fail_late() -> None:
        release.wait(5)
        raise RuntimeError("late failure")

    async def scenario() -> None:
        with pytest.raises(JobStillRunning) as caught:
            await pool.run_blocking(fail_late, timeout_s=0.05)
        release.set()
        await asyncio.wait({caught.value.finished}, timeout=5)
        await asyncio.sleep(0)  # the done-callback runs on the loop

    try:
        with caplog.at_level(logging.WARNING, logger="adapters.executors.threads"):
            asyncio.run(scenario())
    finally:
        pool.shutdown()
    (record,) = caplog.records
    assert "outlived its frame's deadline" in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == "late failure"


def test_a_failure_the_caller_receives_is_not_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    pool = executor_without_pipelines(1)

    def fail() -> None:
        raise ValueError("reported to the caller")

    async def scenario() -> None:
        with pytest.raises(ValueError):
            await pool.run_blocking(fail, timeout_s=5)

    try:
        with caplog.at_level(logging.WARNING, logger="adapters.executors.threads"):
            asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert caplog.records == []


def test_giving_up_stops_the_wait_and_queued_work_never_starts() -> None:
    pool = executor_without_pipelines(1)
    release = threading.Event()
    started: list[str] = []

    async def scenario() -> None:
        give_up = asyncio.get_running_loop().create_future()
        running = asyncio.ensure_future(pool.run_blocking(lambda: release.wait(5), timeout_s=30, give_up=give_up))
        queued = asyncio.ensure_future(pool.run_blocking(lambda: started.append("queued"), timeout_s=30, give_up=give_up))
        await asyncio.sleep(0.05)
        give_up.set_result(None)
        for waiting in (running, queued):
            with pytest.raises(JobGivenUp):
                await waiting
        assert pool.busy_workers() == 1, "the running thread cannot be stopped; it finishes unobserved"
        release.set()
        await asyncio.sleep(0.1)

    try:
        asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert started == [] and pool.busy_workers() == 0


def test_work_that_finishes_first_is_returned_even_with_a_give_up_future() -> None:
    pool = executor_without_pipelines(1)

    async def scenario() -> int:
        give_up = asyncio.get_running_loop().create_future()
        return await pool.run_blocking(lambda: 7, timeout_s=5, give_up=give_up)

    try:
        assert asyncio.run(scenario()) == 7
    finally:
        pool.shutdown()
