"""Driving one session and checking what came back against the document's stream invariants."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from contracts.client import ClosedWithoutError, ServerError, StreamClient, StreamClosed
from contracts.generated import messages as models
from contracts.targets import Target

Outgoing = bytes | str


@dataclass
class Outcome:
    """Everything one session produced, by frame index where there is one."""

    frames_sent: int
    replies: dict[int, BaseModel]
    warnings: list[models.SlowDownWarningPayload]
    error: ServerError | None
    closed_without_error: ClosedWithoutError | None
    close_code: int | None
    arrival: list[int] = field(default_factory=list)

    def kind(self, index: int) -> str:
        reply = self.replies[index]
        if isinstance(reply, models.FrameResultPayload):
            return "result"
        if isinstance(reply, models.FrameDroppedPayload):
            return f"dropped:{reply.cause.value}"
        return f"error:{getattr(reply, 'error')}"

    def kinds(self) -> dict[int, str]:
        return {index: self.kind(index) for index in sorted(self.replies)}

    def indices(self, prefix: str) -> list[int]:
        return [index for index, kind in self.kinds().items() if kind.startswith(prefix)]

    def describe(self) -> str:
        error = f"{self.error.code}@{self.error.frame_index}" if self.error else None
        return (
            f"sent {self.frames_sent} frames; replies {self.kinds()}; warnings {len(self.warnings)}; "
            f"error {error}; closed without error {self.closed_without_error}; close {self.close_code}"
        )


async def _read(client: StreamClient, arrival: list[int]) -> tuple[ServerError | None, ClosedWithoutError | None]:
    try:
        async for reply in client:
            index = getattr(reply, "frame_index", None)
            if index is not None:
                arrival.append(int(index))
    except ServerError as error:
        return error, None
    except ClosedWithoutError as closed:
        return None, closed
    return None, None


async def run_session(
    target: Target,
    role: str,
    outgoing: Sequence[Outgoing],
    *,
    interval_s: float = 0.0,
    settle_timeout_s: float = 30.0,
    before_close: Any = None,
    until_closed: bool = False,
    lockstep: bool = False,
) -> Outcome:
    """Send `outgoing` (paced by `interval_s`), read concurrently, and end the session.

    The session ends when the server closes it, or, when every frame sent has
    its reply and the server is not expected to close (`until_closed`, a text
    message sent, or a send refused), with a normal close by this client. Not
    ending within `settle_timeout_s` is a hang: an AssertionError. With
    `lockstep`, each frame waits for the previous one's reply, so none is
    ever sent while another is in flight.
    """
    client = await target.open(role)
    arrival: list[int] = []
    reader = asyncio.create_task(_read(client, arrival))
    started = time.monotonic()
    server_ends = until_closed
    for position, message in enumerate(outgoing):
        if interval_s:
            delay = started + position * interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if reader.done():
            break  # the server ended the session; what is left is never read
        try:
            index = await client.send_raw(message)
        except StreamClosed:
            server_ends = True
            break  # the same, noticed while sending
        server_ends = server_ends or isinstance(message, str)
        if lockstep and index is not None:
            await _until(lambda index=index: index in client.replies or reader.done(), settle_timeout_s, f"no reply to frame {index}")
    if before_close is not None:
        await before_close()
    deadline = time.monotonic() + settle_timeout_s
    while not reader.done():
        if not server_ends and client.ending is None and len(client.replies) >= client.frames_sent:
            await client.close()
            break
        if time.monotonic() > deadline:
            reader.cancel()
            await client.close()
            raise AssertionError(
                f"the server neither answered all {client.frames_sent} frames nor closed within {settle_timeout_s} s; "
                f"answered {sorted(client.replies)}"
            )
        await asyncio.sleep(0.01)
    error, closed = await reader
    return Outcome(
        frames_sent=client.frames_sent,
        replies=dict(client.replies),
        warnings=list(client.warnings),
        error=error,
        closed_without_error=closed,
        close_code=client.close_code,
        arrival=arrival,
    )


async def _until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s")
        await asyncio.sleep(0.005)


def check_invariants(outcome: Outcome) -> None:
    """The stream guarantees of x-invariants that hold for every session, whatever its pipeline.

    The client already refuses a second reply for a frame, a reply to a frame
    never sent, anything after a closing error and a close code other than the
    declared one. Here: the frames answered are exactly the first N sent (the
    server reads in order and answers every frame it reads), all of them when
    the client closed normally, and a closing error that names a frame is that
    frame's reply and the last frame read.
    """
    answered = sorted(outcome.replies)
    assert answered == list(range(len(answered))), f"answered frames are not a prefix of those sent: {outcome.describe()}"
    if outcome.error is None and outcome.closed_without_error is None:
        assert len(answered) == outcome.frames_sent, f"frames left unanswered at a normal close: {outcome.describe()}"
        assert outcome.close_code == 1000, outcome.describe()
    if outcome.error is not None and outcome.error.frame_index is not None:
        assert answered[-1] == outcome.error.frame_index, f"frames answered after the closing error's frame: {outcome.describe()}"
        assert outcome.replies[outcome.error.frame_index] is outcome.error.message


async def assert_serving(target: Target) -> None:
    """The target still opens sessions and answers frames: nothing a case did took it down."""
    from contracts.frames import jpeg

    # Sessions a case has just closed free their slots once the server has seen the close, which
    # can be a moment after the client's close handshake: server_busy is accepted for that moment only.
    deadline = time.monotonic() + 5.0
    outcome = await run_session(target, "result", [jpeg()])
    while outcome.error is not None and outcome.error.code == "server_busy" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        outcome = await run_session(target, "result", [jpeg()])
    assert outcome.kinds() == {0: "result"}, outcome.describe()
