"""Knows every live session, bounds how many there are, and drains them at shutdown."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from enum import StrEnum

from domain import Session

logger = logging.getLogger(__name__)

# After the shutdown deadline, how long sessions get to send their last messages before they are cancelled.
FINAL_MESSAGES_GRACE_S = 2.0


class Admission(StrEnum):
    ACCEPTED = "accepted"
    FULL = "full"
    SHUTTING_DOWN = "shutting_down"


@dataclass(eq=False)
class SessionHandle:
    """What the manager holds per session: the session and the signal that asks it to wind down."""

    session: Session
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when the shutdown deadline passes with the session still open: its frame in flight is
    # then answered as failed at once instead of being waited for.
    deadline_passed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class SessionManager:
    """The registry of active sessions, created on connect and removed on disconnect.

    All methods run on the event loop; no lock is needed.
    """

    def __init__(self, max_sessions: int) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self._handles: dict[str, SessionHandle] = {}
        self._shutting_down = False

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def register(self, session: Session) -> tuple[Admission, SessionHandle | None]:
        if self._shutting_down:
            return Admission.SHUTTING_DOWN, None
        if len(self._handles) >= self.max_sessions:
            return Admission.FULL, None
        handle = SessionHandle(session=session, task=asyncio.current_task())
        self._handles[session.session_id] = handle
        return Admission.ACCEPTED, handle

    def unregister(self, session_id: str) -> None:
        handle = self._handles.pop(session_id, None)
        if handle is not None:
            handle.finished.set()

    def get(self, session_id: str) -> Session | None:
        handle = self._handles.get(session_id)
        return handle.session if handle else None

    def active_count(self) -> int:
        return len(self._handles)

    def sessions(self) -> list[Session]:
        return [handle.session for handle in self._handles.values()]

    async def shutdown(self, deadline_s: float, final_grace_s: float = FINAL_MESSAGES_GRACE_S) -> int:
        """Ask every session to answer its frames and close with 1012, then wait.

        Until `deadline_s` each session finishes its frame in flight. At the
        deadline the sessions still open are told so (`deadline_passed`): they
        answer their frame in flight with pipeline_failure without waiting for
        it, answer waiting frames as dropped, and close; that takes a moment
        unless the client has stopped reading. Those still open `final_grace_s`
        later are cancelled. Returns how many had to be cancelled.
        """
        self._shutting_down = True
        handles = list(self._handles.values())
        for handle in handles:
            handle.stop_requested.set()
        if not handles:
            return 0
        if not await self._wait_finished(handles, deadline_s):
            late = [h for h in handles if not h.finished.is_set()]
            logger.warning("shutdown deadline passed with %d session(s) still busy; answering their frames as failed", len(late))
            for handle in late:
                handle.deadline_passed.set()
            await self._wait_finished(late, final_grace_s)
        stragglers = [h for h in handles if not h.finished.is_set()]
        for handle in stragglers:
            if handle.task is not None:
                handle.task.cancel()
        return len(stragglers)

    @staticmethod
    async def _wait_finished(handles: list[SessionHandle], timeout_s: float) -> bool:
        waiters = [asyncio.ensure_future(handle.finished.wait()) for handle in handles]
        _, pending = await asyncio.wait(waiters, timeout=timeout_s)
        for waiter in pending:
            waiter.cancel()
        return not pending
