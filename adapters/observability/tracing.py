"""OpenTelemetry traces: one trace span per streamed frame, exported over OTLP/HTTP.

The third observer on the observation ports, beside the logs and the metrics.
A frame's span covers its arrival to its reply being handed to the connection;
its children are `receive` (waiting behind the frame in flight), one
`node <id>` per node that ran, `decode` (inside the span of the node that
first read the image) and `reply` (from the result to the send). The spans
are made when the frame's outcome is reported, with the start and end times
the reports carry, so nothing is timed on the hot path that the stream does
not already time; an unsampled frame costs a countdown.

The client may send a W3C `traceparent` (and `tracestate`) header with the
WebSocket handshake: every frame span of that stream is then a child of the
client's span, and the parent's sampled flag is honoured by the default
parent-based samplers.

Configured only by the standard OpenTelemetry variables, and off unless
OTEL_TRACES_EXPORTER=otlp or an OTLP endpoint is set (see `tracing_from_env`).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any, NamedTuple

from opentelemetry import trace
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from adapters.observability.otlp_export import ExportSettings, OtlpSpanBatcher
from application.connection import current_connection
from domain import DropCause, ErrorCode, Session

SERVICE_NAME = "forgesyte-stream"
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
# A node report older than its frame's start by more than this belongs to work answered at an earlier deadline.
_NODE_SLACK_NS = 2_000_000


class TracingConfigError(ValueError):
    """An OTEL_* variable the server cannot honour; the message names it, what it accepts and what it got."""


def tracing_enabled(environ: Mapping[str, str]) -> bool:
    """On when OTEL_TRACES_EXPORTER=otlp, or when it is unset and an OTLP endpoint is set; `none` turns it off."""
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    if exporter:
        if exporter != "otlp":
            raise TracingConfigError(f"OTEL_TRACES_EXPORTER={exporter!r} is not supported; expected 'otlp' or 'none'")
        return True
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def check_tracing_environment(environ: Mapping[str, str]) -> None:
    """Refuse, at start-up, the values the SDK would otherwise replace by a default with only a warning."""
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(variable)
        if protocol and protocol.strip() != "http/protobuf":
            raise TracingConfigError(f"{variable}={protocol!r} is not supported; expected 'http/protobuf'")
    sampler = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler not in _SAMPLERS:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER={sampler!r} is not supported; expected one of {', '.join(_SAMPLERS)}")
    argument = environ.get("OTEL_TRACES_SAMPLER_ARG")
    if sampler in _RATIO_SAMPLERS and argument is not None:
        try:
            ratio = float(argument)
        except ValueError:
            ratio = float("nan")
        if not 0.0 <= ratio <= 1.0:
            raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={argument!r} is not a sampling ratio; expected a number in [0, 1]")


def sampling_from_env(environ: Mapping[str, str]) -> tuple[float, bool]:
    """(the ratio of root frames sampled, whether a client's sampled flag decides instead), from OTEL_TRACES_SAMPLER(_ARG).

    The standard samplers' meaning, decided here once per frame with one
    random draw instead of by the SDK's sampler per span: a frame span is a
    root (or a child of the client's span), so a ratio of frames drawn at
    random is what traceidratio samples.
    """
    sampler = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler.endswith("always_off"):
        ratio = 0.0
    elif sampler.endswith("traceidratio"):
        ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    else:
        ratio = 1.0
    return ratio, sampler.startswith("parentbased_")


def tracing_from_env(environ: Mapping[str, str] | None = None) -> TracingObserver | None:
    """The tracing observer the OTEL_* variables ask for, or None when tracing is off."""
    environment = os.environ if environ is None else environ
    if not tracing_enabled(environment):
        return None
    check_tracing_environment(environment)
    named = "OTEL_SERVICE_NAME" in environment or "service.name=" in environment.get("OTEL_RESOURCE_ATTRIBUTES", "")
    # The SDK's resource: service.name, telemetry.sdk.*, and OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME.
    resource = Resource.create({} if named else {"service.name": SERVICE_NAME})
    ratio, parent_based = sampling_from_env(environment)
    exporter = OtlpSpanBatcher(ExportSettings.from_env(environment), dict(resource.attributes), "forgesyte_stream", write_frame)
    return TracingObserver(exporter, ratio=ratio, parent_based=parent_based)


# (span name: "node <id>" or "decode", start ns, end ns, failed)
_Node = tuple[str, int, int, bool]
_SERVER = 2  # opentelemetry.proto Span.SpanKind
_INTERNAL = 1
_STATUS_ERROR = 2  # opentelemetry.proto Status.StatusCode
_NEVER = sys.maxsize


def _skip(rate: float) -> int:
    """Frames to leave out before the next sampled one: geometric, so each frame is sampled with probability `rate`.

    One draw per sampled frame instead of one per frame.
    """
    if rate >= 1.0:
        return 0
    if rate <= 0.0:
        return _NEVER
    return int(math.log(1.0 - random.random()) / math.log(1.0 - rate))


def _text(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


class _StreamTrace:
    """One session's trace state: the client's span, this stream's sampling, the node reports of the frame in flight."""

    __slots__ = ("attributes", "nodes", "parent_span", "rate", "skip", "trace_id", "trace_state")

    def __init__(self, parent: trace.SpanContext | None, session: Session, transport: str, rate: float) -> None:
        # A client's span: every frame's span is its child, in its trace.
        self.trace_id = parent.trace_id.to_bytes(16, "big") if parent is not None else None
        self.parent_span = parent.span_id.to_bytes(8, "big") if parent is not None else b""
        self.trace_state = parent.trace_state.to_header() if parent is not None else ""
        # The frame span's attributes that every frame of the stream shares, made once.
        self.attributes = [
            _text("forgesyte.pipeline_id", session.pipeline_id),
            _text("forgesyte.session_id", session.session_id),
            _text("forgesyte.transport", transport),
        ]
        self.rate = rate
        # 0: the frame in flight is sampled (its nodes are kept); n: n more frames are left out first.
        self.skip = _skip(rate)
        # (node_id, start_ns, end_ns, failed) of the sampled frame in flight, appended where its nodes run.
        self.nodes: list[_Node] = []

    def sampled(self) -> list[_Node] | None:
        """At a frame's outcome: its nodes when it was sampled (and the next sampled frame drawn), else None."""
        if self.skip:
            self.skip -= 1
            return None
        nodes, self.nodes = self.nodes, []
        self.skip = _skip(self.rate)
        return nodes


_STREAM_TRACE: ContextVar[_StreamTrace | None] = ContextVar("forgesyte_stream_trace", default=None)


class _Frame(NamedTuple):
    """One sampled frame as queued on the event loop; the export thread writes its spans (write_frame)."""

    stream: _StreamTrace
    frame_index: int
    outcome: str  # processed, dropped, failed
    detail: str | None  # the drop cause, or the error code
    start: int
    started: int  # processing began
    finished: int  # processing ended
    end: int
    nodes: Sequence[_Node]


def _span_id() -> bytes:
    return (random.getrandbits(64) or 1).to_bytes(8, "big")


def write_frame(frame: _Frame, spans: Any) -> int:
    """Write a frame's spans into `spans` (a ScopeSpans' repeated spans); how many were written.

    `frame`, and under it `receive`, `decode` (when a node decoded the image;
    it lies inside that node's span), one `node <id>` per node that ran, and
    `reply` (`receive` and `reply` for a frame answered with a result).
    """
    stream = frame.stream
    state = stream.trace_state
    trace_id = stream.trace_id or (random.getrandbits(128) or 1).to_bytes(16, "big")
    root = _span_id()
    span = spans.add(
        trace_id=trace_id,
        span_id=root,
        parent_span_id=stream.parent_span,
        name="frame",
        kind=_SERVER,
        start_time_unix_nano=frame.start,
        end_time_unix_nano=frame.end,
        trace_state=state,
    )
    attributes = span.attributes
    attributes.extend(stream.attributes)
    attributes.add(key="forgesyte.frame_index").value.int_value = frame.frame_index
    attributes.add(key="forgesyte.outcome").value.string_value = frame.outcome
    if frame.outcome == "dropped":
        attributes.add(key="forgesyte.drop_cause").value.string_value = frame.detail or ""
    elif frame.outcome == "failed":
        attributes.add(key="forgesyte.error").value.string_value = frame.detail or ""
        span.status.code = _STATUS_ERROR
        span.status.message = frame.detail or ""
    written = 1
    processed = frame.outcome == "processed"
    if processed:
        spans.add(trace_id=trace_id, span_id=_span_id(), parent_span_id=root, name="receive", kind=_INTERNAL,
                  start_time_unix_nano=frame.start, end_time_unix_nano=frame.started, trace_state=state)
        written += 1
    for name, node_start, node_end, failed in frame.nodes:
        if node_start < frame.started - _NODE_SLACK_NS:
            continue  # reported by work that outlived an earlier frame's deadline
        node = spans.add(trace_id=trace_id, span_id=_span_id(), parent_span_id=root, name=name, kind=_INTERNAL,
                         start_time_unix_nano=node_start, end_time_unix_nano=node_end, trace_state=state)
        if failed:
            node.status.code = _STATUS_ERROR
            node.status.message = "node failed"
        written += 1
    if processed:
        spans.add(trace_id=trace_id, span_id=_span_id(), parent_span_id=root, name="reply", kind=_INTERNAL,
                  start_time_unix_nano=frame.finished, end_time_unix_nano=frame.end, trace_state=state)
        written += 1
    return written


class TracingObserver:
    """Implements the StreamObserver and PipelineObserver ports with OpenTelemetry spans.

    A sampled frame is queued as one tuple of the times the reports carry;
    the exporter's thread writes its spans (write_frame). An unsampled frame
    costs a countdown.
    """

    ignored_events = frozenset(
        {"session_rejected", "frame_received", "slowdown_sent", "error_sent", "single_frame_failed", "node_skipped", "pipeline_finished"}
    )

    def __init__(self, exporter: OtlpSpanBatcher, *, ratio: float = 1.0, parent_based: bool = True) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"the sampling ratio must be in [0, 1], got {ratio}")
        self._exporter = exporter
        self._ratio = ratio
        self._parent_based = parent_based
        self._propagator = TraceContextTextMapPropagator()
        self._streams: dict[str, _StreamTrace] = {}

    def shutdown(self) -> None:
        """Export what is still queued, then stop the exporter's thread."""
        self._exporter.shutdown()

    # StreamObserver -----------------------------------------------------------------

    def session_opened(self, session: Session, client: str) -> None:
        facts = current_connection()
        parent = None
        if facts is not None and facts.traceparent:
            carrier = {"traceparent": facts.traceparent}
            if facts.tracestate:
                carrier["tracestate"] = facts.tracestate
            context = trace.get_current_span(self._propagator.extract(carrier)).get_span_context()
            parent = context if context.is_valid else None
        rate = self._ratio
        if parent is not None and self._parent_based:
            rate = 1.0 if parent.trace_flags.sampled else 0.0
        record = _StreamTrace(parent, session, facts.transport if facts is not None else "unknown", rate)
        self._streams[session.session_id] = record
        _STREAM_TRACE.set(record)

    def session_closed(self, session: Session, client: str, close_code: int, reason: str) -> None:
        self._streams.pop(session.session_id, None)
        _STREAM_TRACE.set(None)

    def session_rejected(self, pipeline_id: str | None, client: str, code: ErrorCode, detail: str) -> None:
        return None

    def frame_received(self, session: Session, frame_index: int, size: int) -> None:
        return None

    def frame_dropped(self, session: Session, frame_index: int, cause: DropCause) -> None:
        record = self._streams.get(session.session_id)
        if record is None or not (record.rate >= 1.0 or random.random() < record.rate):
            return
        now = time.time_ns()
        self._exporter.add(_Frame(record, frame_index, "dropped", cause.value, now, now, now, now, ()))

    def frame_processed(self, session: Session, frame_index: int, *, queue_ms: float, processing_ms: float, latency_ms: float) -> None:
        record = self._streams.get(session.session_id)
        if record is None:
            return
        if record.skip:  # sampled() inlined for the frames left out: most of them
            record.skip -= 1
            return
        nodes = record.sampled()
        assert nodes is not None
        end = time.time_ns()
        received = end - int(latency_ms * 1e6)
        started = received + int(queue_ms * 1e6)
        self._exporter.add(_Frame(record, frame_index, "processed", None, received, started, min(end, started + int(processing_ms * 1e6)), end, nodes))

    def frame_failed(self, session: Session, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        record = self._streams.get(session.session_id)
        if record is None:
            return
        nodes = record.sampled()
        if nodes is None:
            return
        end = time.time_ns()
        start = min((node[1] for node in nodes), default=end)
        finished = max((node[2] for node in nodes), default=end)
        self._exporter.add(_Frame(record, frame_index, "failed", code.value, start, start, finished, end, nodes))

    def slowdown_sent(self, session: Session, drop_rate: float, suggested_fps: float | None) -> None:
        return None

    def error_sent(self, session: Session | None, code: ErrorCode) -> None:
        return None

    def single_frame_failed(self, pipeline_id: str, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        return None

    # PipelineObserver (from the worker thread running the frame, in the session's context) -------

    def node_finished(self, pipeline_id: str, node_id: str, duration_ms: float, *, failed: bool) -> None:
        record = _STREAM_TRACE.get()
        if record is not None and not record.skip:
            end = time.time_ns()
            record.nodes.append((f"node {node_id}", end - int(duration_ms * 1e6), end, failed))

    def image_decoded(self, pipeline_id: str, duration_ms: float) -> None:
        """The frame was decoded inside a node (its first context.image()): a `decode` span beside the nodes."""
        record = _STREAM_TRACE.get()
        if record is not None and not record.skip:
            end = time.time_ns()
            record.nodes.append(("decode", end - int(duration_ms * 1e6), end, False))

    def node_skipped(self, pipeline_id: str, node_id: str) -> None:
        return None

    def pipeline_finished(self, pipeline_id: str, duration_ms: float, *, failed: bool) -> None:
        return None
