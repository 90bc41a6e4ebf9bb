"""Live per-stream statistics: what GET /v1/streams shows of the sessions open in this process.

An observer on both observation ports, fed by the reports the stream and the
pipelines already make; each report costs O(1) and touches only fixed-size
storage, so a session's memory does not grow with its length:

    bytes per session <= BASE_BYTES + (8 * WINDOW + RING_BYTES) * (1 + nodes) + 16 * RATE_SECONDS * 2

with WINDOW latency samples (end-to-end, and per node of the pipeline) kept in
preallocated rings of doubles, and two rings of RATE_SECONDS one-second
counters for the frame rates in and out: with the defaults, about 7 KB for a
one-node pipeline and 2.5 KB more per node (tests/unit/test_live_streams.py
measures it). Percentiles are computed when a
snapshot is asked for, never per frame.

Node reports carry no session: they come from the worker thread running the
frame, which runs in a copy of the session task's context (the executors copy
it), so the session's record is found through a context variable set when the
session opens. One frame of a session runs at a time, so a node report belongs
to the session whose context it runs in.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from application.connection import current_connection
from domain import DropCause, ErrorCode, Session

# Samples kept per latency series: the percentiles describe the last WINDOW frames (or node runs).
WINDOW = 256
# The frame rates are averaged over about this many seconds (the last RATE_SECONDS - 1 whole seconds and the current one).
RATE_SECONDS = 10
# A session's record, its dictionaries and the counters outside the rings (measured with tracemalloc, rounded up).
BASE_BYTES = 4096
# A ring's own object and array header, and its entry in the nodes' dictionary.
RING_BYTES = 512


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


class _Rate:
    """Events per second over the last RATE_SECONDS whole seconds: one counter per second, reused in a ring."""

    __slots__ = ("_counts", "_seconds")

    def __init__(self) -> None:
        self._seconds = array("q", [-1] * RATE_SECONDS)
        self._counts = array("q", bytes(8 * RATE_SECONDS))

    def add(self, now_s: float) -> None:
        second = int(now_s)
        slot = second % RATE_SECONDS
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._counts[slot] = 0
        self._counts[slot] += 1

    def per_second(self, now_s: float, age_s: float) -> float:
        """Events per second from the start of the second RATE_SECONDS - 1 seconds ago until now (or since the session began)."""
        second = int(now_s)
        total = sum(count for stamp, count in zip(self._seconds, self._counts, strict=True) if 0 <= second - stamp < RATE_SECONDS)
        span = min(RATE_SECONDS - 1 + (now_s - second), age_s)
        return round(total / span, 3) if span > 1e-3 else 0.0


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
    __slots__ = (
        "answered",
        "client",
        "dropped",
        "failed",
        "key_name",
        "latency",
        "nodes",
        "opened_s",
        "rate_in",
        "rate_out",
        "received",
        "session",
        "transport",
    )

    def __init__(self, session: Session, client: str, transport: str, key_name: str, opened_s: float) -> None:
        self.session = session
        self.client = client
        self.transport = transport
        self.key_name = key_name
        self.opened_s = opened_s
        self.received = 0
        self.answered = 0
        self.failed = 0
        self.dropped = dict.fromkeys(DropCause, 0)
        self.rate_in = _Rate()
        self.rate_out = _Rate()
        self.latency = _Ring()
        # Bounded by the pipeline's graph: node ids come from the catalogue.
        self.nodes: dict[str, _Ring] = {}


_SESSION_RECORD: ContextVar[_StreamRecord | None] = ContextVar("forgesyte_live_stream", default=None)


class LiveStreams:
    """Implements the StreamObserver and PipelineObserver ports; `snapshot()` and `get()` read what they kept."""

    ignored_events = frozenset(
        {"session_rejected", "slowdown_sent", "error_sent", "single_frame_failed", "node_skipped", "pipeline_finished"}
    )

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._streams: dict[str, _StreamRecord] = {}

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
        return StreamSnapshot(
            session_id=record.session.session_id,
            pipeline_id=record.session.pipeline_id,
            transport=record.transport,
            age_s=round(age, 3),
            remote_address=record.client,
            key_name=record.key_name,
            frames_received=record.received,
            frames_answered=record.answered,
            frames_failed=record.failed,
            frames_dropped={cause.value: count for cause, count in record.dropped.items()},
            fps_in=record.rate_in.per_second(now, age),
            fps_out=record.rate_out.per_second(now, age),
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

    def session_closed(self, session: Session, client: str, close_code: int, reason: str) -> None:
        self._streams.pop(session.session_id, None)
        _SESSION_RECORD.set(None)

    def session_rejected(self, pipeline_id: str | None, client: str, code: ErrorCode, detail: str) -> None:
        return None

    def frame_received(self, session: Session, frame_index: int, size: int) -> None:
        record = self._streams.get(session.session_id)
        if record is not None:
            record.received += 1
            # _Rate.add, inlined: it runs for every frame.
            rate = record.rate_in
            second = int(self._clock())
            slot = second % RATE_SECONDS
            if rate._seconds[slot] != second:
                rate._seconds[slot] = second
                rate._counts[slot] = 0
            rate._counts[slot] += 1

    def frame_dropped(self, session: Session, frame_index: int, cause: DropCause) -> None:
        record = self._streams.get(session.session_id)
        if record is not None:
            record.dropped[cause] += 1

    def frame_processed(self, session: Session, frame_index: int, *, queue_ms: float, processing_ms: float, latency_ms: float) -> None:
        record = self._streams.get(session.session_id)
        if record is not None:
            record.answered += 1
            # _Rate.add and _Ring.add, inlined: they run for every frame.
            rate = record.rate_out
            second = int(self._clock())
            slot = second % RATE_SECONDS
            if rate._seconds[slot] != second:
                rate._seconds[slot] = second
                rate._counts[slot] = 0
            rate._counts[slot] += 1
            ring = record.latency
            ring._values[ring._count % WINDOW] = latency_ms
            ring._count += 1

    def frame_failed(self, session: Session, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        record = self._streams.get(session.session_id)
        if record is not None:
            record.failed += 1

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
