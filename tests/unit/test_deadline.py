"""The frame deadline race every executor shares (adapters/executors/deadline.py), with futures the test settles.

Timeouts of 0 make the deadline pass on the first look, so no test waits on
the clock: which of the work, the deadline and the give-up came first is set
up before the race is run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from adapters.executors.deadline import race_deadline
from application.errors import JobGivenUp, JobStillRunning, JobTimedOut


class Abandon:
    """Records each call; answers whether the work never started (so it never will)."""

    def __init__(self, never_started: bool) -> None:
        self.never_started = never_started
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.never_started


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_work_done_in_time_returns_its_result_and_is_not_abandoned() -> None:
    async def scenario() -> tuple[str, int]:
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        waiter.set_result("reply")
        abandon = Abandon(never_started=False)
        return await race_deadline(waiter, timeout_s=5.0, give_up=None, abandon=abandon), abandon.calls

    assert run(scenario()) == ("reply", 0)


def test_work_that_fails_in_time_raises_its_own_error() -> None:
    async def scenario() -> None:
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        waiter.set_exception(ValueError("tool broke"))
        await race_deadline(waiter, timeout_s=5.0, give_up=None, abandon=Abandon(False))

    with pytest.raises(ValueError, match="tool broke"):
        run(scenario())


def test_work_that_never_started_is_a_timeout_and_is_cancelled() -> None:
    async def scenario() -> int:
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        abandon = Abandon(never_started=True)
        with pytest.raises(JobTimedOut):
            await race_deadline(waiter, timeout_s=0.0, give_up=None, abandon=abandon)
        return abandon.calls

    assert run(scenario()) == 1


def test_work_still_running_at_the_deadline_hands_back_its_waiter_and_tells_the_watcher() -> None:
    async def scenario() -> None:
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        watched: list[bool] = []
        with pytest.raises(JobStillRunning) as raised:
            await race_deadline(waiter, timeout_s=0.0, give_up=None, abandon=Abandon(False), on_still_running=lambda: watched.append(True))
        assert watched == [True]
        assert raised.value.finished is waiter, "the stream's next frame waits on this work"

    run(scenario())


def test_give_up_first_is_given_up_whether_or_not_the_work_started() -> None:
    async def scenario(never_started: bool) -> int:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str] = loop.create_future()
        give_up: asyncio.Future[None] = loop.create_future()
        give_up.set_result(None)
        abandon = Abandon(never_started)
        with pytest.raises(JobGivenUp):
            await race_deadline(waiter, timeout_s=5.0, give_up=give_up, abandon=abandon)
        return abandon.calls

    assert run(scenario(True)) == 1
    assert run(scenario(False)) == 1


def test_the_caller_cancelled_abandons_the_work_once_and_stays_cancelled() -> None:
    async def scenario() -> int:
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        abandon = Abandon(never_started=True)
        task = asyncio.ensure_future(race_deadline(waiter, timeout_s=5.0, give_up=None, abandon=abandon))
        await asyncio.sleep(0)  # the race is now waiting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return abandon.calls

    assert run(scenario()) == 1
