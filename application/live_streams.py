"""Live per-stream statistics: what GET /v1/streams shows of the sessions open in this process.

An observer on both observation ports, fed by the reports the stream and the
pipelines already make. Per frame it only writes the frame's latency, and
each node's duration, into preallocated rings of the last WINDOW values; the
counts are the session's own (received, answered, failed), drops are counted
by cause as they are reported, and the frame rates come from those counts as
a timer on the event loop reads them once a second (`tick`), for every open
session at once. So a session's memory does not grow with its length:

    bytes per session <= BASE_BYTES + (8 * WINDOW + RING_BYTES) * (1 + nodes) + SAMPLE_BYTES * (RATE_SECONDS + 1)

about 9 KB for a one-node pipeline and 2.5 KB more per node with the
defaults (tests/unit/test_live_streams.py measures it). Percentiles and
rates are computed when a snapshot is asked for.

Node reports carry no session: they come from the worker thread running the
frame, which runs in a copy of the session task's context (the executors copy
it), so the session's record is found through a context variable set when the
session opens. One frame of a session runs at a time, so a node report belongs
to the session whose context it runs in.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from application.connection import current_connection
from domain import DropCause, ErrorCode, Session

# Samples kept per latency series: the percentiles describe the last WINDOW frames (or node runs).
WINDOW = 256
# The frame rates are averaged over the last RATE_SECONDS seconds (from the counts read once a second).
RATE_SECONDS = 10
TICK_S = 1.0
# A session's record, its dictionaries and the counters outside the rings (measured with tracemalloc, rounded up).
BASE_BYTES = 4096
# A ring's own object and array header, and its entry in the nodes' dictionary.
RING_BYTES = 512
# One reading of a session's counts: a tuple of a time and two counts.
SAMPLE_BYTES = 160


class _Ring:
    """The last WINDOW values of a series, in a preallocated array of doubles."""

    __slots__ = ("_count", "_values")

    def __init__(self) -> None:
        self._values = array("d", bytes(8 * WINDOW))
        self._count = 0

    def add(self, value: float) -> None:
        self._values[self._count % WINDOW] = value
        self._count += 1

    def percentiles(self) -> Percentiles | None:
        """p50 and p95 of the kept values (nearest rank), None before the first value."""
        kept = min(self._count, WINDOW)
        if kept == 0:
            return None
        ordered = sorted(self._values[:kept])
        return Percentiles(p50_ms=_rank(ordered, 0.50), p95_ms=_rank(ordered, 0.95), samples=kept)


def _rank(ordered: list[float], quantile: float) -> float:
    index = max(0, min(len(ordered) - 1, int(quantile * len(ordered) + 0.999999) - 1))
    return round(ordered[index], 3)


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50_ms: float
    p95_ms: float
    samples: int


@dataclass(frozen=True, slots=True)
class NodeStats:
    node_id: str
    duration: Percentiles


@dataclass(frozen=True, slots=True)
class StreamSnapshot:
    """One open session as an operator sees it. `key_name` is the API key's name, never the key."""

    session_id: str
    pipeline_id: str
    transport: str
    age_s: float
    remote_address: str
    key_name: str
    frames_received: int
    frames_answered: int
    frames_failed: int
    frames_dropped: dict[str, int]
    fps_in: float
    fps_out: float
    latency: Percentiles | None
    nodes: list[NodeStats]


class _StreamRecord:
    __slots__ = ("client", "dropped", "key_name", "latency", "nodes", "opened_s", "samples", "session", "transport")

    def __init__(self, session: Session, client: str, transport: str, key_name: str, opened_s: float) -> None:
        self.session = session
        self.client = client
        self.transport = transport
        self.key_name = key_name
        self.opened_s = opened_s
        self.dropped = dict.fromkeys(DropCause, 0)
        # (time, frames received, frames answered), read once a second; the oldest is about RATE_SECONDS old.
        self.samples: deque[tuple[float, int, int]] = deque([(opened_s, 0, 0)], maxlen=RATE_SECONDS + 1)
        self.latency = _Ring()
        # Bounded by the pipeline's graph: node ids come from the catalogue.
        self.nodes: dict[str, _Ring] = {}

    def sample(self, now: float) -> None:
        session = self.session
        self.samples.append((now, session.frame_index, session.processed_frames))

    def rates(self, now: float) -> tuple[float, float]:
        """Frames received and answered per second since the oldest reading kept (at most about RATE_SECONDS ago)."""
        then, received, answered = self.samples[0]
        span = now - then
        if span < 1e-3:
            return 0.0, 0.0
        session = self.session
        return round((session.frame_index - received) / span, 3), round((session.processed_frames - answered) / span, 3)


_SESSION_RECORD: ContextVar[_StreamRecord | None] = ContextVar("forgesyte_live_stream", default=None)


class LiveStreams:
    """Implements the StreamObserver and PipelineObserver ports; `snapshot()` and `get()` read what they kept."""

    ignored_events = frozenset(
        {
            "session_rejected",
            "frame_received",
            "frame_failed",
            "slowdown_sent",
            "error_sent",
            "single_frame_failed",
            "node_skipped",
            "pipeline_finished",
        }
    )

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, timer: bool = True) -> None:
        """`timer`: read the counts once a second on the running event loop (tests call `tick` instead)."""
        self._clock = clock
        self._timer = timer
        self._ticking: asyncio.TimerHandle | None = None
        self._streams: dict[str, _StreamRecord] = {}

    def tick(self) -> None:
        """Read every open session's counts: what the frame rates are computed from."""
        now = self._clock()
        for record in list(self._streams.values()):
            record.sample(now)

    def _timer_fired(self) -> None:
        self.tick()
        self._ticking = None
        self._start_timer()

    def _start_timer(self) -> None:
        if self._timer and self._ticking is None and self._streams:
            try:
                self._ticking = asyncio.get_running_loop().call_later(TICK_S, self._timer_fired)
            except RuntimeError:  # no loop here: the rates cover the time since the last reading
                self._ticking = None

    # Queries ----------------------------------------------------------------------

    def snapshot(self) -> list[StreamSnapshot]:
        """Every open session, oldest first."""
        now = self._clock()
        return [self._view(record, now) for record in sorted(list(self._streams.values()), key=lambda r: r.opened_s)]

    def get(self, session_id: str) -> StreamSnapshot | None:
        record = self._streams.get(session_id)
        return None if record is None else self._view(record, self._clock())

    def _view(self, record: _StreamRecord, now: float) -> StreamSnapshot:
        age = max(0.0, now - record.opened_s)
        session = record.session
        fps_in, fps_out = record.rates(now)
        return StreamSnapshot(
            session_id=record.session.session_id,
            pipeline_id=record.session.pipeline_id,
            transport=record.transport,
            age_s=round(age, 3),
            remote_address=record.client,
            key_name=record.key_name,
            frames_received=session.frame_index,
            frames_answered=session.processed_frames,
            frames_failed=session.failed_frames,
            frames_dropped={cause.value: count for cause, count in record.dropped.items()},
            fps_in=fps_in,
            fps_out=fps_out,
            latency=record.latency.percentiles(),
            nodes=[
                NodeStats(node_id, stats)
                for node_id, ring in sorted(dict(record.nodes).items())
                if (stats := ring.percentiles()) is not None
            ],
        )

    # StreamObserver ---------------------------------------------------------------

    def session_opened(self, session: Session, client: str) -> None:
        facts = current_connection()
        record = _StreamRecord(
            session,
            client,
            facts.transport if facts is not None else "unknown",
            facts.key_name if facts is not None else "anonymous",
            self._clock(),
        )
        self._streams[session.session_id] = record
        _SESSION_RECORD.set(record)
        self._start_timer()

    def session_closed(self, session: Session, client: str, close_code: int, reason: str) -> None:
        self._streams.pop(session.session_id, None)
        _SESSION_RECORD.set(None)
        if not self._streams and self._ticking is not None:
            self._ticking.cancel()
            self._ticking = None

    def session_rejected(self, pipeline_id: str | None, client: str, code: ErrorCode, detail: str) -> None:
        return None

    def frame_received(self, session: Session, frame_index: int, size: int) -> None:
        return None  # counted by the session itself (frame_index)

    def frame_dropped(self, session: Session, frame_index: int, cause: DropCause) -> None:
        record = self._streams.get(session.session_id)
        if record is not None:
            record.dropped[cause] += 1

    def frame_processed(self, session: Session, frame_index: int, *, queue_ms: float, processing_ms: float, latency_ms: float) -> None:
        record = self._streams.get(session.session_id)
        if record is not None:
            ring = record.latency  # _Ring.add, inlined: it runs for every frame
            ring._values[ring._count % WINDOW] = latency_ms
            ring._count += 1

    def frame_failed(self, session: Session, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        return None  # counted by the session itself (failed_frames)

    def slowdown_sent(self, session: Session, drop_rate: float, suggested_fps: float | None) -> None:
        return None

    def error_sent(self, session: Session | None, code: ErrorCode) -> None:
        return None

    def single_frame_failed(self, pipeline_id: str, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        return None

    # PipelineObserver (from the worker thread running the frame, in the session's context) ------

    def node_finished(self, pipeline_id: str, node_id: str, duration_ms: float, *, failed: bool) -> None:
        record = _SESSION_RECORD.get()
        if record is not None and record.session.pipeline_id == pipeline_id:
            ring = record.nodes.get(node_id)
            if ring is None:
                ring = record.nodes[node_id] = _Ring()
            ring._values[ring._count % WINDOW] = duration_ms
            ring._count += 1

    def node_skipped(self, pipeline_id: str, node_id: str) -> None:
        return None

    def pipeline_finished(self, pipeline_id: str, duration_ms: float, *, failed: bool) -> None:
        return None
