"""The tracing adapter without a server: which OTEL_* values turn it on or stop start-up, sampling, a frame's spans."""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans

from adapters.observability.otlp_export import ExportConfigError, ExportSettings
from adapters.observability.tracing import TracingConfigError, TracingObserver, check_tracing_environment, tracing_enabled, write_frame
from application.connection import ConnectionFacts, connection_facts
from contracts.targets import ROOT, free_port
from domain import ErrorCode, Session

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


class Queue:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        self.items.append(item)

    def shutdown(self) -> None:
        return None


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ],
)
def test_tracing_is_off_unless_an_exporter_or_an_endpoint_is_set(environ: dict[str, str], enabled: bool) -> None:
    assert tracing_enabled(environ) is enabled


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER='sometimes'"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG='1.5'"),
    ],
)
def test_a_value_the_server_cannot_honour_is_refused_naming_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(TracingConfigError, match=named):
        tracing_enabled(environ)
        check_tracing_environment(environ)


def test_the_export_settings_follow_the_otlp_variables() -> None:
    settings = ExportSettings.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/", "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b,x-tenant=7", "OTEL_BSP_SCHEDULE_DELAY": "250"}
    )
    assert settings.endpoint == "http://collector:4318/v1/traces" and settings.headers == {"api-key": "a b", "x-tenant": "7"}
    assert settings.delay_s == 0.25 and settings.timeout_s == 10.0 and not settings.gzip
    assert ExportSettings.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c/x", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored"}).endpoint == "https://c/x"
    with pytest.raises(ExportConfigError, match="OTEL_BSP_MAX_QUEUE_SIZE='0'"):
        ExportSettings.from_env({"OTEL_BSP_MAX_QUEUE_SIZE": "0"})
    with pytest.raises(ExportConfigError, match="expected 'gzip' or 'none'"):
        ExportSettings.from_env({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"})


def test_serve_stops_at_start_up_on_an_unsupported_exporter_with_one_line_naming_it() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FORGESYTE_", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-m", "adapters.entrypoints.cli", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT), "OTEL_TRACES_EXPORTER": "jaeger"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "OTEL_TRACES_EXPORTER='jaeger' is not supported; expected 'otlp' or 'none'" in done.stderr


def _opened(observer: TracingObserver, traceparent: str | None = None) -> tuple[Session, contextvars.Context]:
    session = Session(pipeline_id="p")
    context = contextvars.copy_context()

    def open_it() -> None:
        with connection_facts(ConnectionFacts("litestar", "k", traceparent)):
            observer.session_opened(session, "c")

    context.run(open_it)
    return session, context


def _run_frames(observer: TracingObserver, session: Session, context: contextvars.Context, count: int) -> None:
    for index in range(count):
        context.run(observer.node_finished, "p", "n", 1.0, failed=False)
        observer.frame_processed(session, index, queue_ms=0.5, processing_ms=1.0, latency_ms=2.0)


def test_a_ratio_samples_about_that_share_of_frames_and_a_clients_unsampled_parent_none() -> None:
    queue = Queue()
    ratio = TracingObserver(queue, ratio=0.1)  # type: ignore[arg-type]
    session, context = _opened(ratio)
    _run_frames(ratio, session, context, 3000)
    assert 200 <= len(queue.items) <= 400, len(queue.items)
    assert all(len(item.nodes) == 1 for item in queue.items)  # a sampled frame carries its own node, no other frame's

    unsampled = Queue()
    parent_based = TracingObserver(unsampled, ratio=1.0, parent_based=True)  # type: ignore[arg-type]
    session, context = _opened(parent_based, f"00-{PARENT_TRACE}-{PARENT_SPAN}-00")
    _run_frames(parent_based, session, context, 200)
    assert unsampled.items == []


def test_a_failed_frames_spans_carry_the_error_and_its_nodes_in_the_clients_trace() -> None:
    queue = Queue()
    observer = TracingObserver(queue, ratio=1.0)  # type: ignore[arg-type]
    session, context = _opened(observer, f"00-{PARENT_TRACE}-{PARENT_SPAN}-01")
    context.run(observer.node_finished, "p", "boom", 3.0, failed=True)
    observer.frame_failed(session, 0, RuntimeError("tool"), code=ErrorCode.PIPELINE_FAILURE)
    (frame,) = queue.items
    scope = ScopeSpans()
    assert write_frame(frame, scope.spans) == 2
    root, node = scope.spans
    assert [root.name, node.name] == ["frame", "node boom"]
    assert root.trace_id.hex() == PARENT_TRACE and root.parent_span_id.hex() == PARENT_SPAN
    attributes = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in root.attributes}
    assert attributes["forgesyte.outcome"] == "failed" and attributes["forgesyte.error"] == "pipeline_failure"
    assert attributes["forgesyte.pipeline_id"] == "p" and attributes["forgesyte.frame_index"] == 0
    assert root.status.code == 2 and node.status.code == 2
    assert node.parent_span_id == root.span_id and node.end_time_unix_nano - node.start_time_unix_nano == 3_000_000
