"""The frame deadline race, written once for every executor.

The FrameExecutor port promises JobTimedOut (work never started), JobStillRunning
(work started and outlived timeout_s) and JobGivenUp (the caller's give_up fired
first); each executor supplies only how to abandon its own kind of work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from application.errors import JobGivenUp, JobStillRunning, JobTimedOut

T = TypeVar("T")


async def race_deadline(
    waiter: asyncio.Future[T],
    *,
    timeout_s: float,
    give_up: Awaitable[object] | None,
    abandon: Callable[[], bool],
    on_still_running: Callable[[], None] | None = None,
) -> T:
    """Await `waiter` against `timeout_s` and `give_up`.

    `abandon` stops work that has not started yet and returns True when it never
    will (so a timeout is JobTimedOut, not JobStillRunning); it is called once on
    every path where the caller stops waiting. `on_still_running` runs just before
    JobStillRunning is raised, for executors that watch stragglers.
    """
    stop = None if give_up is None else asyncio.ensure_future(give_up)  # a future stays itself
    awaited: set[asyncio.Future[object]] = {waiter} if stop is None else {waiter, stop}  # type: ignore[arg-type]
    # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation
    # that arrives as the work completes, leaving the caller's task uncancellable.
    try:
        done, _ = await asyncio.wait(awaited, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        abandon()
        raise
    if waiter in done:
        return waiter.result()
    never_started = abandon()
    if stop is not None and stop in done:
        raise JobGivenUp()
    if never_started:
        raise JobTimedOut(f"the work did not start within {timeout_s} s")
    if on_still_running is not None:
        on_still_running()
    # The work ends when its worker is done with it: the stream's next frame waits on
    # this waiter, so one stream's state never serves two frames at once.
    raise JobStillRunning(f"the work did not finish within {timeout_s} s", waiter)
