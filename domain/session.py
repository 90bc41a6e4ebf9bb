"""One client's stream: counters, timing measurements and the frame buffer.

`Session` is a state machine without I/O, like a sans-I/O protocol: the
application feeds it events (a frame arrived, a frame finished) and performs
what it returns (start this frame, answer that one as dropped). That keeps the
backpressure behaviour testable with a fake clock and identical under any transport.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from domain.backpressure import BackpressurePolicy, BackpressureState, DropCause
from domain.frame import Frame

_PROCESSING_SMOOTHING = 0.3


class SessionState(StrEnum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.CONNECTING: frozenset({SessionState.OPEN, SessionState.CLOSED}),
    SessionState.OPEN: frozenset({SessionState.CLOSING, SessionState.CLOSED}),
    SessionState.CLOSING: frozenset({SessionState.CLOSED}),
    SessionState.CLOSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A lifecycle event arrived in a state that does not allow it (a bug, never client input)."""


@dataclass(frozen=True, slots=True)
class Drop:
    frame: Frame
    cause: DropCause


class FrameAdmission(NamedTuple):
    """What the application must do after a frame arrived (a named tuple: one is made for every frame)."""

    frame: Frame
    start: Frame | None
    dropped: tuple[Drop, ...]


@dataclass(frozen=True, slots=True)
class SlowDownSignal:
    drop_rate: float
    suggested_fps: float | None
    processing_ms: float | None
    interval_ms: float | None


def _monotonic_ms() -> float:
    return time.monotonic() * 1000.0


@dataclass(eq=False)
class Session:
    """The per-connection state of a stream, with the backpressure rule applied to it.

    `frame_index` is the number of frames received so far, so the next frame
    gets that index. `drop_rate()` is cumulative and reports what happened;
    decisions use `recent_drop_rate()` and the recent interval and processing estimates.
    """

    pipeline_id: str
    policy: BackpressurePolicy = field(default_factory=BackpressurePolicy)
    clock: Callable[[], float] = field(default=_monotonic_ms, repr=False)
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    frame_index: int = 0
    dropped_frames: int = 0
    processed_frames: int = 0
    failed_frames: int = 0
    last_processed_ts: float | None = None
    state: SessionState = SessionState.CONNECTING
    started_ms: float = field(init=False)
    processing_ms: float | None = None
    in_flight: Frame | None = None
    slowdown_signals: int = 0
    _arrivals: deque[float] = field(default_factory=deque, repr=False)
    _previous_arrival: float | None = field(default=None, repr=False)
    _recent_drops: deque[float] = field(default_factory=deque, repr=False)
    _recent_frames: deque[float] = field(default_factory=deque, repr=False)
    _waiting: deque[Frame] = field(default_factory=deque, repr=False)
    _slowdown_armed: bool = field(default=True, repr=False)
    _last_slowdown_ms: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.started_ms = self.clock()

    @property
    def drop_threshold(self) -> float:
        return self.policy.drop_threshold

    @property
    def slowdown_threshold(self) -> float:
        return self.policy.slowdown_threshold

    @property
    def waiting_frames(self) -> int:
        return len(self._waiting)

    def now_ms(self) -> float:
        return self.clock()

    # Lifecycle -------------------------------------------------------------

    def transition(self, target: SessionState) -> None:
        if target not in _TRANSITIONS[self.state]:
            raise IllegalTransition(f"session {self.session_id}: cannot go from {self.state.value} to {target.value}")
        self.state = target

    # Counters and rates ----------------------------------------------------

    def increment_frame(self) -> int:
        """Count a received frame and return the index it gets."""
        index = self.frame_index
        self.frame_index += 1
        return index

    def mark_drop(self, at_ms: float | None = None) -> None:
        self.dropped_frames += 1
        self._recent_drops.append(self.now_ms() if at_ms is None else at_ms)

    def drop_rate(self) -> float:
        """Dropped frames over received frames since the session began."""
        return self.dropped_frames / self.frame_index if self.frame_index else 0.0

    def recent_drop_rate(self, now: float | None = None) -> float:
        self._expire(self.now_ms() if now is None else now)
        return self._recent_drop_rate()

    def _recent_drop_rate(self) -> float:
        """The rate over the windows as they stand (the caller has expired them)."""
        if not self._recent_frames:
            return 0.0
        return min(1.0, len(self._recent_drops) / len(self._recent_frames))

    def frame_interval_ms(self, now: float | None = None) -> float | None:
        """The client's mean frame interval over the last rate window.

        With fewer than two arrivals in the window, the gap since the previous
        arrival stands in, so a client that slowed right down is seen as slow at once.
        """
        self._expire(self.now_ms() if now is None else now)
        return self._frame_interval_ms()

    def _frame_interval_ms(self) -> float | None:
        if len(self._arrivals) >= 2:
            return (self._arrivals[-1] - self._arrivals[0]) / (len(self._arrivals) - 1)
        if self._previous_arrival is not None and self._arrivals:
            return self._arrivals[-1] - self._previous_arrival
        return None

    def drop_cause(self, processing_time_ms: float | None, now: float | None = None) -> DropCause | None:
        """Why the oldest waiting frame must give way to a newer one now, if it must (the policy decides)."""
        return self.policy.should_drop(
            processing_ms=processing_time_ms, interval_ms=self.frame_interval_ms(now), waiting=len(self._waiting)
        )

    def should_drop_frame(self, processing_time_ms: float | None, now: float | None = None) -> bool:
        """Whether, at this processing time, a waiting frame would be dropped now (lagging, or the buffer full).

        `receive_frame` asks this first; only then does the policy choose which frames go.
        """
        return self.drop_cause(processing_time_ms, now) is not None

    def should_slow_down(self) -> bool:
        now = self.now_ms()
        since = None if self._last_slowdown_ms is None else now - self._last_slowdown_ms
        return self.policy.should_slow_down(self.recent_drop_rate(now), armed=self._slowdown_armed, ms_since_last_signal=since)

    # Frame flow ------------------------------------------------------------

    def receive_frame(self, data: bytes) -> FrameAdmission:
        """Admit a validated frame: start it, keep it waiting, and drop what it displaces."""
        now = self.now_ms()
        frame = Frame(index=self.increment_frame(), data=data, received_ms=now)
        if self._arrivals:
            self._previous_arrival = self._arrivals[-1]
        self._arrivals.append(now)
        self._recent_frames.append(now)

        if self.in_flight is None and not self._waiting:
            self.in_flight = frame
            self._refresh_state(now)
            return FrameAdmission(frame=frame, start=frame, dropped=())

        waiting = self._waiting
        must_drop = self.should_drop_frame(self.processing_ms, now)  # expires the windows at `now`
        waiting.append(frame)
        dropped: tuple[Drop, ...] = ()
        choice = self.policy.choose_drops(waiting, processing_ms=self.processing_ms, interval_ms=self.frame_interval_ms(now)) if must_drop else ()
        if choice:
            dropped = tuple(Drop(waiting[position], cause) for position, cause in choice)
            if choice[-1][0] == len(choice) - 1:  # the oldest frames: the common case
                for _ in choice:
                    waiting.popleft()
            else:
                gone = {position for position, _ in choice}
                self._waiting = deque(f for position, f in enumerate(waiting) if position not in gone)
            for _ in choice:
                self.mark_drop(now)
        start = None
        if self.in_flight is None and self._waiting:
            start = self.in_flight = self._waiting.popleft()
        self._refresh_state(now)
        return FrameAdmission(frame=frame, start=start, dropped=dropped)

    def complete_frame(self, frame: Frame, *, processing_ms: float, succeeded: bool = True, now: float | None = None) -> None:
        """Record a finished frame; the pipeline is idle until `start_next` is called. `now`: the caller's clock reading, if it has one."""
        if self.in_flight is None or self.in_flight.index != frame.index:
            raise IllegalTransition(f"session {self.session_id}: frame {frame.index} completed but was not in flight")
        if now is None:
            now = self.now_ms()
        if self.processing_ms is None:
            self.processing_ms = processing_ms
        else:
            self.processing_ms += _PROCESSING_SMOOTHING * (processing_ms - self.processing_ms)
        if succeeded:
            self.processed_frames += 1
            self.last_processed_ts = now
        else:
            self.failed_frames += 1
        self.in_flight = None
        self._refresh_state(now)

    def start_next(self) -> Frame | None:
        """Put the oldest waiting frame in flight, if the pipeline is idle and one waits.

        Returns only the frame it started: a frame that `receive_frame` started
        is already in the caller's hands, and returning it here would run it twice.
        """
        if self.in_flight is not None or not self._waiting:
            return None
        self.in_flight = self._waiting.popleft()
        return self.in_flight

    def take_slowdown_signal(self) -> SlowDownSignal | None:
        """The slow-down warning due now, if any; taking it disarms the next one."""
        if not self.should_slow_down():
            return None
        now = self.now_ms()
        self._slowdown_armed = False
        self._last_slowdown_ms = now
        self.slowdown_signals += 1
        return SlowDownSignal(
            drop_rate=self.recent_drop_rate(now),
            suggested_fps=self.policy.suggested_fps(self.processing_ms),
            processing_ms=self.processing_ms,
            interval_ms=self.frame_interval_ms(now),
        )

    def drain_waiting(self, cause: DropCause = DropCause.CLOSING) -> tuple[Drop, ...]:
        """Answer every waiting frame as dropped: the stream is ending before they can run."""
        now = self.now_ms()
        drained = []
        while self._waiting:
            frame = self._waiting.popleft()
            self.mark_drop(now)
            drained.append(Drop(frame, cause))
        return tuple(drained)

    def _expire(self, now: float) -> None:
        policy = self.policy
        arrivals = self._arrivals
        rate_horizon = now - policy.rate_window_ms
        while len(arrivals) > 1 and arrivals[0] < rate_horizon:
            self._previous_arrival = arrivals.popleft()
        drop_horizon = now - policy.drop_window_ms
        recent = self._recent_frames
        while recent and recent[0] < drop_horizon:
            recent.popleft()
        drops = self._recent_drops
        while drops and drops[0] < drop_horizon:
            drops.popleft()

    def _refresh_state(self, now: float) -> None:
        """After each frame event: expire the windows and re-arm the slow-down warning once the rate is back down."""
        self._expire(now)
        if not self._recent_drops or self._recent_drop_rate() <= self.policy.slowdown_threshold:
            self._slowdown_armed = True

    @property
    def backpressure_state(self) -> BackpressureState:
        """`normal`, `lagging` or `slow_down` now, from the windows as they stand (computed when asked: nothing serving reads it per frame)."""
        now = self.now_ms()
        lagging = self.policy.is_lagging(self.processing_ms, self.frame_interval_ms(now))
        return self.policy.state(lagging=lagging, recent_drop_rate=self.recent_drop_rate(now))
