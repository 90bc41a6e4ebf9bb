"""Knows every live session, bounds how many there are, and drains them at shutdown.

The bounds (FORGESYTE_STREAM_MAX_SESSIONS, _PER_KEY) are promised for a server,
and a server may be several worker processes: so the slots are counted behind
a port, SessionSlots, in memory for one process (InProcessSlots) or in a table
the workers share (adapters.transports.shared.session_slots).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from domain import Session

logger = logging.getLogger(__name__)

# After the shutdown deadline, how long sessions get to send their last messages before they are cancelled.
FINAL_MESSAGES_GRACE_S = 2.0


@dataclass(frozen=True, slots=True)
class SlotToken:
    """One slot taken; handed back once, with SessionSlots.release."""

    key: str | None  # None: one of the server's MAX_SESSIONS; a name: one of that API key's slots
    index: int


class SessionSlots(Protocol):
    """The admission port: slots counted over every process serving as one server.

    acquire runs on the event loop once per connection, so an implementation
    must answer at once, never wait for another process.
    """

    @property
    def max_sessions(self) -> int: ...

    @property
    def max_per_key(self) -> int:
        """Slots per API key; 0 when keys have no quota of their own (acquire(key) is then an error)."""
        ...

    def acquire(self, key: str | None = None) -> SlotToken | None:
        """A slot of the server's sessions (key None) or of that key's; None when all are taken."""
        ...

    def release(self, token: SlotToken) -> None: ...

    def in_use(self, key: str | None = None) -> int:
        """Slots taken across the server, by every process; what /health reports as the server's sessions."""
        ...


class SlotLimits:
    """The two limits every SessionSlots implementation holds, checked once for all of them."""

    def __init__(self, max_sessions: int, max_per_key: int = 0) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        if max_per_key < 0:
            raise ValueError(f"max_per_key must be 0 (no quota) or more, got {max_per_key}")
        self._max_sessions = max_sessions
        self._max_per_key = max_per_key

    @property
    def max_sessions(self) -> int:
        return self._max_sessions

    @property
    def max_per_key(self) -> int:
        return self._max_per_key


class InProcessSlots(SlotLimits):
    """SessionSlots for a server that is one process: counts in memory, on the event loop."""

    def __init__(self, max_sessions: int, max_per_key: int = 0) -> None:
        super().__init__(max_sessions, max_per_key)
        self._held: dict[str | None, set[int]] = {}
        self._numbers = itertools.count()

    def acquire(self, key: str | None = None) -> SlotToken | None:
        held = self._held.setdefault(key, set())
        if len(held) >= pool_limit(self, key):
            return None
        token = SlotToken(key, next(self._numbers))
        held.add(token.index)
        return token

    def release(self, token: SlotToken) -> None:
        held = self._held.get(token.key, set())
        if token.index not in held:
            raise ValueError(f"slot {token} is not held")
        held.discard(token.index)
        if not held and token.key is not None:
            del self._held[token.key]  # a key's entry lives while it holds a slot, so unknown names cannot pile up

    def in_use(self, key: str | None = None) -> int:
        return len(self._held.get(key, ()))


def pool_limit(slots: SessionSlots, key: str | None) -> int:
    """The size of the pool acquire(key) draws from; a key pool where keys have no quota is a caller's bug."""
    if key is None:
        return slots.max_sessions
    if slots.max_per_key == 0:
        raise ValueError("keys have no session quota of their own (max_per_key is 0)")
    return slots.max_per_key


class Registration(StrEnum):
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
    slot: SlotToken | None = None


class SessionManager:
    """The registry of this process's sessions, created on connect and removed on disconnect.

    Registration draws a slot from `slots`, which counts the whole server's
    sessions; the registry itself, and so active_count, is this process's.
    All methods run on the event loop; no lock is needed.
    """

    def __init__(self, max_sessions: int, slots: SessionSlots | None = None) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self._slots: SessionSlots = slots if slots is not None else InProcessSlots(max_sessions)
        if self._slots.max_sessions != max_sessions:
            raise ValueError(f"the slots count to {self._slots.max_sessions} sessions, not max_sessions={max_sessions}")
        self._handles: dict[str, SessionHandle] = {}
        self._shutting_down = False

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def register(self, session: Session) -> tuple[Registration, SessionHandle | None]:
        if self._shutting_down:
            return Registration.SHUTTING_DOWN, None
        slot = self._slots.acquire()
        if slot is None:
            return Registration.FULL, None
        handle = SessionHandle(session=session, task=asyncio.current_task(), slot=slot)
        self._handles[session.session_id] = handle
        return Registration.ACCEPTED, handle

    def unregister(self, session_id: str) -> None:
        handle = self._handles.pop(session_id, None)
        if handle is not None:
            if handle.slot is not None:
                self._slots.release(handle.slot)
            handle.finished.set()

    def get(self, session_id: str) -> Session | None:
        handle = self._handles.get(session_id)
        return handle.session if handle else None

    def active_count(self) -> int:
        return len(self._handles)

    def server_active_count(self) -> int:
        """Sessions open in every process of the server, this one included."""
        return self._slots.in_use()

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
