"""OpenTelemetry traces: one trace span per streamed frame, exported over OTLP/HTTP.

The third observer on the observation ports, beside the logs and the metrics.
A frame's span covers its arrival to its reply being handed to the connection;
its children are `receive` (waiting behind the frame in flight), `pipeline`
with one child per node that ran (the decode happens inside the first node
that reads the image), and `reply` (from the result to the send). The spans
are made when the frame's outcome is reported, with the start and end times
the reports carry, so nothing is timed on the hot path that the stream does
not already time; an unsampled frame costs one sampler decision.

The client may send a W3C `traceparent` (and `tracestate`) header with the
WebSocket handshake: every frame span of that stream is then a child of the
client's span, and the parent's sampled flag is honoured by the default
parent-based samplers.

Configured only by the standard OpenTelemetry variables, and off unless
OTEL_TRACES_EXPORTER=otlp or an OTLP endpoint is set (see `tracing_from_env`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

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


def tracing_from_env(environ: Mapping[str, str] | None = None) -> TracingObserver | None:
    """The tracing observer the OTEL_* variables ask for, or None when tracing is off.

    The SDK reads the variables itself (endpoint, headers, timeout, sampler,
    batch sizes), from the process environment; this only decides whether to
    trace and refuses what it cannot honour.
    """
    environment = os.environ if environ is None else environ
    if not tracing_enabled(environment):
        return None
    check_tracing_environment(environment)
    named = "OTEL_SERVICE_NAME" in environment or "service.name=" in environment.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return TracingObserver(provider)


class _StreamTrace:
    """One session's trace state: the client's context, and the node reports of the frame in flight."""

    __slots__ = ("nodes", "parent", "transport")

    def __init__(self, parent: Context | None, transport: str) -> None:
        self.parent = parent
        self.transport = transport
        # (node_id, start_ns, end_ns, failed), appended by the worker thread, taken by the loop.
        self.nodes: list[tuple[str, int, int, bool]] = []

    def take_nodes(self) -> list[tuple[str, int, int, bool]]:
        nodes, self.nodes = self.nodes, []
        return nodes


_STREAM_TRACE: ContextVar[_StreamTrace | None] = ContextVar("forgesyte_stream_trace", default=None)


class TracingObserver:
    """Implements the StreamObserver and PipelineObserver ports with OpenTelemetry spans."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("forgesyte_stream")
        self._propagator = TraceContextTextMapPropagator()
        self._streams: dict[str, _StreamTrace] = {}

    def shutdown(self) -> None:
        """Export what is still batched, then stop the exporter."""
        self._provider.shutdown()

    # StreamObserver -----------------------------------------------------------------

    def session_opened(self, session: Session, client: str) -> None:
        facts = current_connection()
        parent = None
        if facts is not None and facts.traceparent:
            carrier = {"traceparent": facts.traceparent}
            if facts.tracestate:
                carrier["tracestate"] = facts.tracestate
            parent = self._propagator.extract(carrier)
        record = _StreamTrace(parent, facts.transport if facts is not None else "unknown")
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
        if record is None:
            return
        now = time.time_ns()
        root = self._root(record, session, frame_index, "dropped", now)
        if root.is_recording():
            root.set_attribute("forgesyte.drop_cause", cause.value)
            root.end(end_time=now)

    def frame_processed(self, session: Session, frame_index: int, *, queue_ms: float, processing_ms: float, latency_ms: float) -> None:
        record = self._streams.get(session.session_id)
        if record is None:
            return
        nodes = record.take_nodes()
        end = time.time_ns()
        received = end - int(latency_ms * 1e6)
        started = received + int(queue_ms * 1e6)
        finished = min(end, started + int(processing_ms * 1e6))
        root = self._root(record, session, frame_index, "processed", received)
        if not root.is_recording():
            return
        context = trace.set_span_in_context(root)
        self._tracer.start_span("receive", context=context, start_time=received).end(end_time=started)
        self._pipeline_span(context, session.pipeline_id, nodes, started, finished)
        self._tracer.start_span("reply", context=context, start_time=finished).end(end_time=end)
        root.end(end_time=end)

    def frame_failed(self, session: Session, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        record = self._streams.get(session.session_id)
        if record is None:
            return
        nodes = record.take_nodes()
        end = time.time_ns()
        start = min((node[1] for node in nodes), default=end)
        root = self._root(record, session, frame_index, "failed", start)
        if not root.is_recording():
            return
        root.set_attribute("forgesyte.error", code.value)
        root.set_status(Status(StatusCode.ERROR, code.value))
        if nodes:
            self._pipeline_span(trace.set_span_in_context(root), session.pipeline_id, nodes, start, max(node[2] for node in nodes))
        root.end(end_time=end)

    def slowdown_sent(self, session: Session, drop_rate: float, suggested_fps: float | None) -> None:
        return None

    def error_sent(self, session: Session | None, code: ErrorCode) -> None:
        return None

    def single_frame_failed(self, pipeline_id: str, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        return None

    # PipelineObserver (from the worker thread running the frame, in the session's context) -------

    def node_finished(self, pipeline_id: str, node_id: str, duration_ms: float, *, failed: bool) -> None:
        record = _STREAM_TRACE.get()
        if record is not None:
            end = time.time_ns()
            record.nodes.append((node_id, end - int(duration_ms * 1e6), end, failed))

    def node_skipped(self, pipeline_id: str, node_id: str) -> None:
        return None

    def pipeline_finished(self, pipeline_id: str, duration_ms: float, *, failed: bool) -> None:
        return None

    # Spans ------------------------------------------------------------------------

    def _root(self, record: _StreamTrace, session: Session, frame_index: int, outcome: str, start: int) -> Any:
        return self._tracer.start_span(
            "frame",
            context=record.parent,
            kind=SpanKind.SERVER,
            start_time=start,
            attributes={
                "forgesyte.pipeline_id": session.pipeline_id,
                "forgesyte.session_id": session.session_id,
                "forgesyte.frame_index": frame_index,
                "forgesyte.outcome": outcome,
                "forgesyte.transport": record.transport,
            },
        )

    def _pipeline_span(self, context: Context, pipeline_id: str, nodes: list[tuple[str, int, int, bool]], start: int, end: int) -> None:
        pipeline = self._tracer.start_span("pipeline", context=context, start_time=start, attributes={"forgesyte.pipeline_id": pipeline_id})
        inner = trace.set_span_in_context(pipeline)
        for node_id, node_start, node_end, failed in nodes:
            if node_start < start - _NODE_SLACK_NS:
                continue  # reported by work that outlived an earlier frame's deadline
            span = self._tracer.start_span(
                f"node {node_id}", context=inner, start_time=node_start, attributes={"forgesyte.node_id": node_id, "forgesyte.node_failed": failed}
            )
            if failed:
                span.set_status(Status(StatusCode.ERROR))
            span.end(end_time=node_end)
        pipeline.end(end_time=end)
