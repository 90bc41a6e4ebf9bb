"""Running figures of a stream: frames sent and answered, their rates, latency percentiles, drops, slow-downs."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from forgesyte_stream_client.client import Outcome, Skipped
from forgesyte_stream_client.errors import StreamError
from forgesyte_stream_client.replies import Dropped, FrameFailed, Result

_RATE_WINDOW_S = 2.0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Stats:
    started: float = field(default_factory=time.perf_counter)
    frames: int = 0
    sent: int = 0
    results: int = 0
    dropped: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0
    slow_downs: int = 0
    reconnects: int = 0
    first_send: float | None = None
    last_reply: float | None = None
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    _sent_times: deque[float] = field(default_factory=deque)
    _answer_times: deque[float] = field(default_factory=deque)

    def add(self, outcome: Outcome) -> None:
        now = time.perf_counter()
        self.frames += 1
        reply = outcome.reply
        if isinstance(reply, Skipped):
            self.skipped += 1
            return
        self.sent += 1
        if outcome.latency_s is not None:
            sent_at = now - outcome.latency_s
            self.first_send = sent_at if self.first_send is None else min(self.first_send, sent_at)
            self._sent_times.append(sent_at)
        self.last_reply = now
        self._answer_times.append(now)
        if isinstance(reply, Result):
            self.results += 1
            if outcome.latency_s is not None:
                self.latencies_s.append(outcome.latency_s)
        elif isinstance(reply, Dropped):
            self.dropped += 1
        elif isinstance(reply, FrameFailed):
            self.failed += 1
        elif isinstance(reply, StreamError):
            self.errors += 1

    def _rate(self, times: deque[float]) -> float:
        now = time.perf_counter()
        while times and times[0] < now - _RATE_WINDOW_S:
            times.popleft()
        span = min(_RATE_WINDOW_S, now - self.started)
        return len(times) / span if span > 0 else 0.0

    def answered_fps_overall(self) -> float:
        """Replies per second from the first send to the last reply."""
        if self.first_send is None or self.last_reply is None or self.last_reply <= self.first_send:
            return 0.0
        return self.sent / (self.last_reply - self.first_send)

    def line(self) -> str:
        latencies = list(self.latencies_s)
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        ms = lambda v: "-" if v is None else f"{v * 1000:.0f}"  # noqa: E731
        parts = [
            f"frames {self.frames}",
            f"sent {self._rate(self._sent_times):.1f}/s",
            f"answered {self._rate(self._answer_times):.1f}/s",
            f"p50 {ms(p50)} ms",
            f"p95 {ms(p95)} ms",
            f"dropped {self.dropped}",
            f"slow-downs {self.slow_downs}",
        ]
        if self.skipped:
            parts.append(f"skipped {self.skipped}")
        if self.failed:
            parts.append(f"failed {self.failed}")
        return "  ".join(parts)

    def short(self) -> str:
        """The figures drawn on an annotated frame."""
        p50 = percentile(list(self.latencies_s), 0.5)
        latency = "" if p50 is None else f"  p50 {p50 * 1000:.0f} ms"
        return f"{self._rate(self._answer_times):.1f} fps{latency}  dropped {self.dropped}"

    def summary(self) -> str:
        latencies = list(self.latencies_s)
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        fmt = lambda v: "-" if v is None else f"{v * 1000:.1f} ms"  # noqa: E731
        return (
            f"{self.frames} frames: {self.results} results, {self.dropped} dropped, {self.failed} failed, "
            f"{self.skipped} skipped by the client; {self.answered_fps_overall():.1f} frames/s answered; "
            f"latency p50 {fmt(p50)}, p95 {fmt(p95)}; {self.slow_downs} slow-downs, {self.reconnects} reconnects"
        )
