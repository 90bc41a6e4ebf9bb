"""When to drop a frame and when to ask the client to slow down.

The rule decides on recent measurements only (the client's frame interval over
the last second, the pipeline's smoothed processing time, the drop rate over a
short window), never on cumulative totals: a cumulative rule feeds on its own
drops and never recovers once a stream has been overloaded.

Decisions are made when a frame arrives, before any work is spent on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from domain.frame import Frame

# Positions in the waiting line (oldest first) of the frames to drop, ascending, each with its cause.
DropChoice = Sequence[tuple[int, "DropCause"]]
NO_DROPS: tuple[tuple[int, DropCause], ...] = ()


class BackpressureState(StrEnum):
    NORMAL = "normal"
    LAGGING = "lagging"
    SLOW_DOWN = "slow_down"


class DropCause(StrEnum):
    """Why a frame was dropped; every drop carries one."""

    # The pipeline is slower than the client: the waiting frame is replaced by a newer one.
    LAGGING = "lagging"
    # Not lagging on average, but a burst outgrew the waiting buffer: the oldest waiting frame goes.
    BUFFER_FULL = "buffer_full"
    # The server is shutting down: frames still waiting are answered as dropped before the close.
    SHUTDOWN = "shutdown"
    # The session is closing after an error: frames still waiting are answered as dropped before the close.
    CLOSING = "closing"


@dataclass(frozen=True, slots=True)
class BackpressurePolicy:
    """Pure decisions over measurements that the session supplies.

    `drop_threshold`: lagging means processing time exceeds the client's frame
    interval by more than this fraction. `slowdown_threshold`: a slow-down
    warning is due when the recent drop rate exceeds this fraction.
    """

    drop_threshold: float = 0.10
    slowdown_threshold: float = 0.30
    buffer_capacity: int = 4
    rate_window_ms: float = 1000.0
    drop_window_ms: float = 2000.0
    slowdown_repeat_ms: float = 5000.0

    def __post_init__(self) -> None:
        for name in ("drop_threshold", "slowdown_threshold"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
        if self.buffer_capacity < 1:
            raise ValueError(f"buffer_capacity must be at least 1, got {self.buffer_capacity!r}")
        for name in ("rate_window_ms", "drop_window_ms", "slowdown_repeat_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")

    def is_lagging(self, processing_ms: float | None, interval_ms: float | None) -> bool:
        """Processing time exceeds the frame interval by more than the drop threshold."""
        if processing_ms is None or interval_ms is None:
            return False
        return processing_ms > interval_ms * (1.0 + self.drop_threshold)

    def should_drop(
        self,
        *,
        processing_ms: float | None,
        interval_ms: float | None,
        waiting: int,
    ) -> DropCause | None:
        """Whether the oldest waiting frame must give way to the frame that just arrived.

        Only frames that wait are ever dropped: a frame that finds the pipeline
        idle always runs, so a client sending slower than capacity sees no drops
        whatever the estimates say.
        """
        if waiting <= 0:
            return None
        if self.is_lagging(processing_ms, interval_ms):
            return DropCause.LAGGING
        if waiting >= self.buffer_capacity:
            return DropCause.BUFFER_FULL
        return None

    def choose_drops(self, waiting: Sequence[Frame], *, processing_ms: float | None, interval_ms: float | None) -> DropChoice:
        """Which waiting frames to drop now that the newest (last in `waiting`) has arrived: the latest wins.

        While `should_drop` says so, the oldest waiting frame gives way; the
        newest frame is never dropped on arrival. A policy that keeps other
        frames (a steady sample, say) overrides this method and nothing else.
        """
        behind = len(waiting) - 1  # the frames that waited before the newest arrived
        victims: list[tuple[int, DropCause]] | None = None
        position = 0
        while position < behind:
            cause = self.should_drop(processing_ms=processing_ms, interval_ms=interval_ms, waiting=behind - position)
            if cause is None:
                break
            if victims is None:
                victims = []
            victims.append((position, cause))
            position += 1
        return NO_DROPS if victims is None else victims

    def should_slow_down(
        self,
        recent_drop_rate: float,
        *,
        armed: bool,
        ms_since_last_signal: float | None,
    ) -> bool:
        """A warning when the recent drop rate rises above the threshold.

        Sent once per rise (`armed` is re-set when the rate falls back to or
        below the threshold) and repeated every `slowdown_repeat_ms` while it stays above.
        """
        if recent_drop_rate <= self.slowdown_threshold:
            return False
        if armed:
            return True
        return ms_since_last_signal is not None and ms_since_last_signal >= self.slowdown_repeat_ms

    def state(self, *, lagging: bool, recent_drop_rate: float) -> BackpressureState:
        if lagging and recent_drop_rate > self.slowdown_threshold:
            return BackpressureState.SLOW_DOWN
        if lagging:
            return BackpressureState.LAGGING
        return BackpressureState.NORMAL

    def suggested_fps(self, processing_ms: float | None) -> float | None:
        """The frame rate the pipeline keeps up with, with the drop threshold as headroom."""
        if processing_ms is None or processing_ms <= 0:
            return None
        return 1000.0 / (processing_ms * (1.0 + self.drop_threshold))
