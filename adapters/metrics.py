"""Prometheus metrics: the observer that counts what the stream and the pipelines report, and the scrape.

Every app gets its own `CollectorRegistry`, so two apps in one process (tests,
an embedding host) never share or collide on metric names.

Several worker processes (`forgesyte-stream serve --workers N`) are summed with
prometheus-client's multiprocess mode. The supervisor creates a fresh
directory and exports it as PROMETHEUS_MULTIPROC_DIR before it spawns the
workers; prometheus-client reads that variable when it is first imported, so
each worker then keeps its values in memory-mapped files named after its pid.
A scrape, whichever worker answers it, merges every worker's files: counters
and histograms add up (a worker that exited keeps its share, as a counter
must), and the sessions gauge uses `livesum`, the sum over live workers only;
the supervisor removes a worker's live-gauge file when that worker exits
(`mark_process_dead`) and deletes the whole directory when it stops. Without
the variable (one process) the app's registry is scraped directly and no
directory is involved.

Labels are bounded: pipeline ids come from the catalogue (a rejected, unknown
pipeline id is never a label value), node ids from its graphs, and causes,
codes and reasons from enums. Nothing is labelled by session or client.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, multiprocess
from prometheus_client.exposition import choose_encoder

from application.access import Channel, Refusal
from domain import DropCause, ErrorCode, Session

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# From a 1 ms probe frame to the 10 s default frame timeout, about three buckets per decade.
DURATION_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def new_registry() -> CollectorRegistry:
    """A registry of one app's own, never the process-wide default one.

    The `_created` series are switched off (process-wide, it is a library
    setting): in the Prometheus text format each would be one more gauge
    series per label set, doubling what every scrape stores for no question
    this service needs answered.
    """
    disable_created_metrics()
    return CollectorRegistry(auto_describe=True)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_DIR_VARIABLE))


class PrometheusObserver:
    """Implements the StreamObserver and PipelineObserver ports with Prometheus metrics.

    Label sets for the known pipelines are created up front, so every series
    exists from start-up at 0 and a rate over the first scrapes is not lost.
    """

    def __init__(self, registry: CollectorRegistry, pipeline_ids: Iterable[str] = ()) -> None:
        self.sessions_active = Gauge(
            "stream_sessions_active",
            "WebSocket sessions currently open (summed over live worker processes)",
            ["pipeline_id"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.sessions_closed = Counter(
            "stream_sessions_closed",
            "Sessions that ended, by why: peer_gone, send_timeout (the client stopped reading) or the error code the server closed with",
            ["pipeline_id", "reason"],
            registry=registry,
        )
        self.sessions_rejected = Counter(
            "stream_sessions_rejected",
            "Connections refused before a session began, by error code",
            ["reason"],
            registry=registry,
        )
        self.http_refused = Counter(
            "stream_http_requests_refused",
            "HTTP requests refused by the access checks (Host, Origin, API key), by reason",
            ["reason"],
            registry=registry,
        )
        for refusal in Refusal:
            self.sessions_rejected.labels(refusal.value)
            if refusal is not Refusal.KEY_QUOTA:
                self.http_refused.labels(refusal.value)
        self.frames_received = Counter(
            "stream_frames_received", "Frames received on sessions", ["pipeline_id"], registry=registry
        )
        self.bytes_received = Counter(
            "stream_received_bytes", "Bytes of frames received on sessions", ["pipeline_id"], registry=registry
        )
        self.frames_processed = Counter(
            "stream_frames_processed", "Frames answered with a pipeline result", ["pipeline_id"], registry=registry
        )
        self.frames_failed = Counter(
            "stream_frames_failed",
            "Frames answered with pipeline_failure (a tool failed or the frame timed out)",
            ["pipeline_id"],
            registry=registry,
        )
        self.frames_dropped = Counter(
            "stream_frames_dropped",
            "Frames answered as dropped, by cause; one per dropped notice sent",
            ["pipeline_id", "cause"],
            registry=registry,
        )
        self.slowdown_signals = Counter(
            "stream_slowdown_signals", "slow_down warnings sent to clients", ["pipeline_id"], registry=registry
        )
        self.errors_sent = Counter(
            "stream_errors_sent",
            "Error messages sent on the WebSocket, rejections included, by error code",
            ["code"],
            registry=registry,
        )
        self.reply_latency = Histogram(
            "stream_frame_latency_seconds",
            "From a frame's arrival to its result reply having been handed to the connection",
            ["pipeline_id"],
            registry=registry,
            buckets=DURATION_BUCKETS_S,
        )
        self.queue_wait = Histogram(
            "stream_frame_queue_seconds",
            "From a processed frame's arrival to the start of its processing (waiting behind the frame in flight)",
            ["pipeline_id"],
            registry=registry,
            buckets=DURATION_BUCKETS_S,
        )
        self.pipeline_duration = Histogram(
            "stream_pipeline_duration_seconds",
            "One run of a pipeline graph over one frame, failed runs included",
            ["pipeline_id"],
            registry=registry,
            buckets=DURATION_BUCKETS_S,
        )
        self.node_duration = Histogram(
            "stream_pipeline_node_duration_seconds",
            "One node (tool call) of a pipeline run, failed calls included",
            ["pipeline_id", "node_id"],
            registry=registry,
            buckets=DURATION_BUCKETS_S,
        )
        self.node_failures = Counter(
            "stream_pipeline_node_failures",
            "Tool calls that raised or returned something unusable",
            ["pipeline_id", "node_id"],
            registry=registry,
        )
        self._series: dict[str, _PipelineSeries] = {}
        self._node_series: dict[tuple[str, str], Any] = {}
        for pipeline_id in pipeline_ids:
            self._for(pipeline_id)

    def _for(self, pipeline_id: str) -> _PipelineSeries:
        """The pipeline's children, looked up once: `.labels()` builds a key and takes a lock, on every frame otherwise.

        Pipeline ids come from the catalogue, so this dictionary is as bounded as the labels.
        """
        series = self._series.get(pipeline_id)
        if series is None:
            series = _PipelineSeries(
                sessions_active=self.sessions_active.labels(pipeline_id),
                frames_received=self.frames_received.labels(pipeline_id),
                bytes_received=self.bytes_received.labels(pipeline_id),
                frames_processed=self.frames_processed.labels(pipeline_id),
                frames_failed=self.frames_failed.labels(pipeline_id),
                slowdown_signals=self.slowdown_signals.labels(pipeline_id),
                frames_dropped={cause: self.frames_dropped.labels(pipeline_id, cause.value) for cause in DropCause},
                reply_latency=self.reply_latency.labels(pipeline_id),
                queue_wait=self.queue_wait.labels(pipeline_id),
                pipeline_duration=self.pipeline_duration.labels(pipeline_id),
            )
            self._series[pipeline_id] = series
        return series

    # StreamObserver -------------------------------------------------------------

    def session_opened(self, session: Session, client: str) -> None:
        self._for(session.pipeline_id).sessions_active.inc()

    def session_closed(self, session: Session, client: str, close_code: int, reason: str) -> None:
        self._for(session.pipeline_id).sessions_active.dec()
        self.sessions_closed.labels(session.pipeline_id, reason).inc()

    def session_rejected(self, pipeline_id: str | None, client: str, code: ErrorCode, detail: str) -> None:
        self.sessions_rejected.labels(code.value).inc()

    def access_refused(self, refusal: Refusal, channel: Channel) -> None:
        """A refusal by the access checks: a WebSocket one is a session rejected, an HTTP one a request refused."""
        counter = self.sessions_rejected if channel is Channel.WEBSOCKET else self.http_refused
        counter.labels(refusal.value).inc()

    def frame_received(self, session: Session, frame_index: int, size: int) -> None:
        series = self._for(session.pipeline_id)
        series.frames_received.inc()
        series.bytes_received.inc(size)

    def frame_dropped(self, session: Session, frame_index: int, cause: DropCause) -> None:
        self._for(session.pipeline_id).frames_dropped[cause].inc()

    def frame_processed(
        self, session: Session, frame_index: int, *, queue_ms: float, processing_ms: float, latency_ms: float
    ) -> None:
        # The stream reports this once the reply was sent, so latency_ms covers the send too.
        series = self._for(session.pipeline_id)
        series.frames_processed.inc()
        series.queue_wait.observe(queue_ms / 1000.0)
        series.reply_latency.observe(latency_ms / 1000.0)

    def frame_failed(self, session: Session, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        self._for(session.pipeline_id).frames_failed.inc()

    def single_frame_failed(self, pipeline_id: str, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        self._for(pipeline_id).frames_failed.inc()

    def slowdown_sent(self, session: Session, drop_rate: float, suggested_fps: float | None) -> None:
        self._for(session.pipeline_id).slowdown_signals.inc()

    def error_sent(self, session: Session | None, code: ErrorCode) -> None:
        self.errors_sent.labels(code.value).inc()

    # PipelineObserver (called from worker threads; prometheus-client is thread-safe) -------

    def node_finished(self, pipeline_id: str, node_id: str, duration_ms: float, *, failed: bool) -> None:
        key = (pipeline_id, node_id)
        child = self._node_series.get(key)
        if child is None:  # bounded: node ids come from the catalogue's graphs
            child = self._node_series[key] = self.node_duration.labels(pipeline_id, node_id)
        child.observe(duration_ms / 1000.0)
        if failed:
            self.node_failures.labels(pipeline_id, node_id).inc()

    def pipeline_finished(self, pipeline_id: str, duration_ms: float, *, failed: bool) -> None:
        self._for(pipeline_id).pipeline_duration.observe(duration_ms / 1000.0)


@dataclass(frozen=True, slots=True)
class _PipelineSeries:
    """One pipeline's labelled children of the per-pipeline families."""

    sessions_active: Any
    frames_received: Any
    bytes_received: Any
    frames_processed: Any
    frames_failed: Any
    slowdown_signals: Any
    frames_dropped: dict[DropCause, Any]
    reply_latency: Any
    queue_wait: Any
    pipeline_duration: Any


class MetricsExporter:
    """Renders a scrape: this app's registry, or every worker's files in multiprocess mode."""

    def __init__(self, registry: CollectorRegistry) -> None:
        if multiprocess_enabled():
            self._source = CollectorRegistry(auto_describe=True)
            multiprocess.MultiProcessCollector(self._source)
        else:
            self._source = registry

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type, negotiated from the Accept header as Prometheus does."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self._source), content_type


@contextmanager
def shared_metrics_directory() -> Iterator[Path]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for the worker processes spawned inside the block, removed after.

    A fresh directory each start: files left by an earlier run would otherwise
    be summed into this run's counters.
    """
    previous = os.environ.get(MULTIPROC_DIR_VARIABLE)
    directory = Path(tempfile.mkdtemp(prefix="forgesyte-metrics-"))
    os.environ[MULTIPROC_DIR_VARIABLE] = str(directory)
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_DIR_VARIABLE, None)
        else:
            os.environ[MULTIPROC_DIR_VARIABLE] = previous
        shutil.rmtree(directory)


def worker_exited(pid: int, directory: Path) -> None:
    """Drop an exited worker's sessions from the livesum gauge; its counters stay, as counters must."""
    multiprocess.mark_process_dead(pid, str(directory))


class PrometheusAnalytics:
    """The tracking plugin's AnalyticsSink: line crossings and zone occupancy as Prometheus series.

    Labels are bounded like every other series here: pipeline ids come from the
    catalogue and line and zone names from the pipeline files' node parameters
    (checked at start-up, where every series is declared at 0), never from a
    client. The occupancy gauge is the sum over the pipeline's open streams of
    the tracked objects in the zone on each stream's latest processed frame; a
    stream's share is taken off when it ends.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.line_crossings = Counter(
            "stream_line_crossings",
            "Tracked objects that crossed a line of a pipeline, by direction (in/out); once per track and direction",
            ["pipeline_id", "line", "direction"],
            registry=registry,
        )
        self.zone_entries = Counter(
            "stream_zone_entries",
            "Distinct tracked objects seen inside a zone of a pipeline; once per track",
            ["pipeline_id", "zone"],
            registry=registry,
        )
        self.zone_occupancy = Gauge(
            "stream_zone_occupancy",
            "Tracked objects inside a zone now, summed over the pipeline's open streams (and live worker processes)",
            ["pipeline_id", "zone"],
            registry=registry,
            multiprocess_mode="livesum",
        )

    def declare(self, pipeline_id: str, lines: Iterable[str], zones: Iterable[str]) -> None:
        """Create the series of a pipeline's lines and zones at 0, so that rates see their first increments."""
        for line in lines:
            for direction in ("in", "out"):
                self.line_crossings.labels(pipeline_id, line, direction)
        for zone in zones:
            self.zone_entries.labels(pipeline_id, zone)
            self.zone_occupancy.labels(pipeline_id, zone)

    def line_crossed(self, pipeline_id: str, line: str, direction: str) -> None:
        self.line_crossings.labels(pipeline_id, line, direction).inc()

    def zone_entered(self, pipeline_id: str, zone: str) -> None:
        self.zone_entries.labels(pipeline_id, zone).inc()

    def zone_occupancy_changed(self, pipeline_id: str, zone: str, delta: int) -> None:
        self.zone_occupancy.labels(pipeline_id, zone).inc(delta)
