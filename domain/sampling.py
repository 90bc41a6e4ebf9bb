"""A backpressure policy for clients that want a steady sample under overload rather than the latest frame.

With the default policy the frames that run under overload are whichever
happened to be newest when the pipeline came free (0, 3, 7, 10, ...). With
this one, frames whose index is a multiple of `keep_every` are the last to
go, so the frames that run are mostly 0, N, 2N, ...: evenly spaced in the
stream, which suits counting and tracking over time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from domain.backpressure import NO_DROPS, BackpressurePolicy, DropCause, DropChoice
from domain.frame import Frame

DEFAULT_KEEP_EVERY = 3


@dataclass(frozen=True, slots=True)
class KeepEveryNthPolicy(BackpressurePolicy):
    """When the base rule says frames must go, off-sample frames go first (the newest included), then the oldest samples.

    Below capacity nothing changes: a frame that finds the pipeline idle
    runs, and nothing is dropped while the base rule sees no need.
    """

    keep_every: int = DEFAULT_KEEP_EVERY

    def __post_init__(self) -> None:
        super(KeepEveryNthPolicy, self).__post_init__()
        if self.keep_every < 2:
            raise ValueError(f"keep_every must be at least 2, got {self.keep_every!r}")

    def choose_drops(self, waiting: Sequence[Frame], *, processing_ms: float | None, interval_ms: float | None) -> DropChoice:
        first = self.should_drop(processing_ms=processing_ms, interval_ms=interval_ms, waiting=len(waiting) - 1)
        if first is None:
            return NO_DROPS
        every = self.keep_every
        victims: list[tuple[int, DropCause]] = []
        samples: list[int] = []
        for position, frame in enumerate(waiting):
            if frame.index % every:
                victims.append((position, first))
            else:
                samples.append(position)
        # Among the samples the base rule applies: the oldest give way while it says so, the newest stays.
        behind = len(samples) - 1
        for taken, position in enumerate(samples[:-1]):
            cause = self.should_drop(processing_ms=processing_ms, interval_ms=interval_ms, waiting=behind - taken)
            if cause is None:
                break
            victims.append((position, cause))
        victims.sort()
        return victims
