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
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, multiprocess
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


class _LocalCounter:
    """One labelled counter of a `_LocalFamily`: a number in this process, read at scrape time."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up; got an increment of {amount}")
        with self._lock:
            self.value += amount


class _LocalHistogram:
    """One labelled histogram of a `_LocalFamily`: bucket counts and a sum in this process, read at scrape time."""

    __slots__ = ("_bounds", "_lock", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, amount: float) -> None:
        index = bisect_left(self._bounds, amount)  # the first bucket whose upper bound `le` holds the amount
        with self._lock:
            self.counts[index] += 1
            self.sum += amount

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self.counts), self.sum


class _LocalFamily(Collector):
    """A counter or histogram family kept in plain numbers and exposed by a collector, for per-frame series.

    prometheus-client's own objects cost about 1.3 us per histogram
    observation and 0.5 us per counter increment, in layers of Python calls
    around a lock; a frame touches seven such series, which made metrics the
    largest part of a `probe` frame's time on the event loop. These children
    cost one call and one lock each and render exactly as prometheus-client's
    would. They serve one process only: in multiprocess mode (`--workers`)
    values must live in prometheus-client's shared files, so the observer
    uses prometheus-client's own objects there.
    """

    def __init__(
        self, kind: str, name: str, documentation: str, labelnames: Sequence[str], buckets: tuple[float, ...] = ()
    ) -> None:
        if kind not in ("counter", "histogram"):
            raise ValueError(f"kind must be counter or histogram, got {kind!r}")
        self._kind = kind
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._buckets = tuple(float(bound) for bound in buckets if bound != float("inf"))
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str) -> Any:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes {len(self._labelnames)} label values {self._labelnames}, got {len(values)}")
        key = tuple(str(value) for value in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = _LocalCounter() if self._kind == "counter" else _LocalHistogram(self._buckets)
                    self._children[key] = child
        return child

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        with self._lock:
            children = list(self._children.items())
        for key, child in children:
            if isinstance(family, CounterMetricFamily):
                family.add_metric(list(key), child.value)
            else:
                counts, total = child.snapshot()
                cumulative, buckets = 0, []
                for bound, count in zip((*self._buckets, float("inf")), counts):
                    cumulative += count
                    buckets.append((floatToGoString(bound), cumulative))
                family.add_metric(list(key), buckets, total)
        return [family]

    def _family(self) -> CounterMetricFamily | HistogramMetricFamily:
        if self._kind == "counter":
            return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)


def _per_frame_counter(registry: CollectorRegistry, name: str, documentation: str, labelnames: Sequence[str]) -> Any:
    """A counter updated on every frame: in-process numbers, or prometheus-client's in multiprocess mode."""
    if multiprocess_enabled():
        return Counter(name, documentation, labelnames, registry=registry)
    family = _LocalFamily("counter", name, documentation, labelnames)
    registry.register(family)
    return family


def _per_frame_histogram(registry: CollectorRegistry, name: str, documentation: str, labelnames: Sequence[str]) -> Any:
    """A histogram observed on every frame: in-process numbers, or prometheus-client's in multiprocess mode."""
    if multiprocess_enabled():
        return Histogram(name, documentation, labelnames, registry=registry, buckets=DURATION_BUCKETS_S)
    family = _LocalFamily("histogram", name, documentation, labelnames, DURATION_BUCKETS_S)
    registry.register(family)
    return family


class PrometheusObserver:
    """Implements the StreamObserver and PipelineObserver ports with Prometheus metrics.

    Label sets for the known pipelines are created up front, so every series
    exists from start-up at 0 and a rate over the first scrapes is not lost.
    """

    def __init__(
        self, registry: CollectorRegistry, pipeline_ids: Iterable[str] = (), pipeline_nodes: Mapping[str, Sequence[str]] | None = None
    ) -> None:
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
        self.frames_received = _per_frame_counter(registry, "stream_frames_received", "Frames received on sessions", ["pipeline_id"])
        self.bytes_received = _per_frame_counter(registry, "stream_received_bytes", "Bytes of frames received on sessions", ["pipeline_id"])
        self.frames_processed = _per_frame_counter(registry, "stream_frames_processed", "Frames answered with a pipeline result", ["pipeline_id"])
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
        self.reply_latency = _per_frame_histogram(
            registry,
            "stream_frame_latency_seconds",
            "From a frame's arrival to its result reply having been handed to the connection",
            ["pipeline_id"],
        )
        self.queue_wait = _per_frame_histogram(
            registry,
            "stream_frame_queue_seconds",
            "From a processed frame's arrival to the start of its processing (waiting behind the frame in flight)",
            ["pipeline_id"],
        )
        self.pipeline_duration = _per_frame_histogram(
            registry,
            "stream_pipeline_duration_seconds",
            "One run of a pipeline graph over one frame, failed runs included",
            ["pipeline_id"],
        )
        self.node_duration = _per_frame_histogram(
            registry,
            "stream_pipeline_node_duration_seconds",
            "One node (tool call) of a pipeline run, failed calls included",
            ["pipeline_id", "node_id"],
        )
        self.node_failures = Counter(
            "stream_pipeline_node_failures",
            "Tool calls that raised or returned something unusable",
            ["pipeline_id", "node_id"],
            registry=registry,
        )
        self.node_runs = Counter(
            "stream_node_runs",
            "Pipeline nodes per frame by outcome: ran, or skipped (a gated node's last output carried; docs/gating.md)",
            ["pipeline_id", "node", "outcome"],
            registry=registry,
        )
        self._series: dict[str, _PipelineSeries] = {}
        self._node_series: dict[str, dict[str, Any]] = {}
        self._node_runs: dict[tuple[str, str, str], Any] = {}
        for pipeline_id in pipeline_ids:
            self._for(pipeline_id)
        for pipeline_id, nodes in (pipeline_nodes or {}).items():
            for node_id in nodes:
                for outcome in ("ran", "skipped"):
                    self._node_run(pipeline_id, node_id, outcome)

    def _node_run(self, pipeline_id: str, node_id: str, outcome: str) -> Any:
        key = (pipeline_id, node_id, outcome)
        child = self._node_runs.get(key)
        if child is None:  # bounded: node ids come from the catalogue's graphs
            child = self._node_runs[key] = self.node_runs.labels(pipeline_id, node_id, outcome)
        return child

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
        nodes = self._node_series.get(pipeline_id)
        child = None if nodes is None else nodes.get(node_id)
        if child is None:  # bounded: node ids come from the catalogue's graphs
            child = self._node_series.setdefault(pipeline_id, {})[node_id] = self.node_duration.labels(pipeline_id, node_id)
        child.observe(duration_ms / 1000.0)
        self._node_run(pipeline_id, node_id, "ran").inc()
        if failed:
            self.node_failures.labels(pipeline_id, node_id).inc()

    def node_skipped(self, pipeline_id: str, node_id: str) -> None:
        self._node_run(pipeline_id, node_id, "skipped").inc()

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

    def __init__(self, registry: CollectorRegistry, extra: Sequence[Collector] = ()) -> None:
        """`extra`: collectors already on `registry` that read this process's state at scrape time; kept in multiprocess mode too."""
        if multiprocess_enabled():
            self._source = CollectorRegistry(auto_describe=True)
            multiprocess.MultiProcessCollector(self._source)
            for collector in extra:
                self._source.register(collector)
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
