"""The Prometheus adapter and the fan-out observer in-process, each test with a registry of its own."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest

from adapters.observability.logs import LoggingStreamObserver
from adapters.observability.metrics import (
    DURATION_BUCKETS_S,
    MULTIPROC_DIR_VARIABLE,
    MetricsExporter,
    PrometheusObserver,
    new_registry,
    shared_metrics_directory,
)
from application.observers import FanOutStreamObserver
from application.ports import PipelineObserver, StreamObserver
from domain import DropCause, ErrorCode, Session
from tests.observability.support import TEXT_FORMAT, Scrape


def render(exporter: MetricsExporter) -> Scrape:
    body, content_type = exporter.render()
    assert content_type == TEXT_FORMAT
    return Scrape.parse(body.decode())


def observed(*pipeline_ids: str) -> tuple[PrometheusObserver, MetricsExporter]:
    registry = new_registry()
    return PrometheusObserver(registry, pipeline_ids), MetricsExporter(registry)


def test_known_pipelines_start_at_zero_and_nothing_else_is_labelled() -> None:
    _, exporter = observed("probe", "slow")
    now = render(exporter)
    assert now.label_values("stream_sessions_active", "pipeline_id") == {"probe", "slow"}
    assert now.value("stream_frames_processed_total", pipeline_id="slow") == 0
    assert now.value("stream_frames_dropped_total", pipeline_id="probe", cause="lagging") == 0
    assert now.value("stream_frame_latency_seconds_count", pipeline_id="probe") == 0
    assert not [name for (name, _) in now.samples if name.endswith("_created")]


def test_a_one_off_frames_failure_counts_as_a_failed_frame_of_its_pipeline() -> None:
    metrics, exporter = observed("probe", "slow")
    metrics.single_frame_failed("slow", 0, RuntimeError("x"), code=ErrorCode.PIPELINE_FAILURE)
    after = render(exporter)
    assert after.value("stream_frames_failed_total", pipeline_id="slow") == 1
    assert after.value("stream_frames_failed_total", pipeline_id="probe") == 0


def test_stream_events_move_their_metrics_by_exactly_one_event_each() -> None:
    metrics, exporter = observed("probe")
    session = Session(pipeline_id="probe")
    metrics.session_opened(session, "127.0.0.1:1")
    metrics.frame_received(session, 0, 1000)
    metrics.frame_received(session, 1, 500)
    metrics.frame_processed(session, 0, queue_ms=2.0, processing_ms=40.0, latency_ms=250.0)
    metrics.frame_dropped(session, 1, DropCause.LAGGING)
    metrics.frame_failed(session, 2, RuntimeError("x"), code=ErrorCode.PIPELINE_FAILURE)
    metrics.error_sent(session, ErrorCode.PIPELINE_FAILURE)
    metrics.slowdown_sent(session, 0.5, 10.0)
    during = render(exporter)
    metrics.session_closed(session, "127.0.0.1:1", 1000, "peer_gone")
    metrics.session_rejected("no-such", "127.0.0.1:2", ErrorCode.INVALID_PIPELINE, "unknown")
    metrics.error_sent(None, ErrorCode.INVALID_PIPELINE)
    after = render(exporter)

    assert during.value("stream_sessions_active", pipeline_id="probe") == 1
    assert after.value("stream_sessions_active", pipeline_id="probe") == 0
    assert after.value("stream_sessions_closed_total", pipeline_id="probe", reason="peer_gone") == 1
    assert after.value("stream_frames_received_total", pipeline_id="probe") == 2
    assert after.value("stream_received_bytes_total", pipeline_id="probe") == 1500
    assert after.value("stream_frames_processed_total", pipeline_id="probe") == 1
    assert after.value("stream_frames_dropped_total", pipeline_id="probe", cause="lagging") == 1
    assert after.value("stream_frames_dropped_total", pipeline_id="probe", cause="buffer_full") == 0
    assert after.value("stream_frames_failed_total", pipeline_id="probe") == 1
    assert after.value("stream_slowdown_signals_total", pipeline_id="probe") == 1
    assert after.value("stream_errors_sent_total", code="pipeline_failure") == 1
    assert after.value("stream_errors_sent_total", code="invalid_pipeline") == 1
    assert after.value("stream_sessions_rejected_total", reason="invalid_pipeline") == 1
    # Milliseconds in, seconds out: 250 ms lands in the 0.25 s bucket and not below.
    assert after.value("stream_frame_latency_seconds_bucket", pipeline_id="probe", le="0.1") == 0
    assert after.value("stream_frame_latency_seconds_bucket", pipeline_id="probe", le="0.25") == 1
    assert after.value("stream_frame_latency_seconds_sum", pipeline_id="probe") == 0.25
    assert after.value("stream_frame_queue_seconds_bucket", pipeline_id="probe", le="0.0025") == 1
    assert "no-such" not in after.label_values("stream_sessions_rejected_total", "reason")


def test_pipeline_events_fill_the_duration_histograms_and_count_node_failures() -> None:
    metrics, exporter = observed("faces")
    metrics.node_finished("faces", "detect", 12.0, failed=False)
    metrics.node_finished("faces", "detect", 3.0, failed=True)
    metrics.pipeline_finished("faces", 15.0, failed=True)
    now = render(exporter)
    assert now.value("stream_pipeline_node_duration_seconds_count", pipeline_id="faces", node_id="detect") == 2
    assert now.value("stream_pipeline_node_duration_seconds_bucket", pipeline_id="faces", node_id="detect", le="0.005") == 1
    assert now.value("stream_pipeline_node_failures_total", pipeline_id="faces", node_id="detect") == 1
    assert now.value("stream_pipeline_duration_seconds_count", pipeline_id="faces") == 1
    assert now.value("stream_pipeline_duration_seconds_bucket", pipeline_id="faces", le="0.025") == 1


def test_buckets_span_a_millisecond_to_the_frame_timeout() -> None:
    assert DURATION_BUCKETS_S[0] == 0.001 and DURATION_BUCKETS_S[-1] == 10.0
    assert list(DURATION_BUCKETS_S) == sorted(set(DURATION_BUCKETS_S))


def test_two_apps_in_one_process_keep_separate_metrics() -> None:
    first, first_exporter = observed("probe")
    _, second_exporter = observed("probe")  # the same names again: no clash, a registry each
    first.frame_received(Session(pipeline_id="probe"), 0, 10)
    assert render(first_exporter).value("stream_frames_received_total", pipeline_id="probe") == 1
    assert render(second_exporter).value("stream_frames_received_total", pipeline_id="probe") == 0


def test_openmetrics_is_served_when_the_scraper_asks_for_it() -> None:
    _, exporter = observed("probe")
    body, content_type = exporter.render("application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")


def test_the_observer_fits_both_ports() -> None:
    metrics, _ = observed()
    stream: StreamObserver = metrics
    assert isinstance(metrics, PipelineObserver)
    assert stream is metrics


def test_shared_metrics_directory_is_fresh_exported_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_DIR_VARIABLE, "/somewhere/else")
    with shared_metrics_directory() as directory:
        assert directory.is_dir() and list(directory.iterdir()) == []
        assert os.environ[MULTIPROC_DIR_VARIABLE] == str(directory)
        (directory / "counter_1.db").write_bytes(b"")
    assert not directory.exists()
    assert os.environ[MULTIPROC_DIR_VARIABLE] == "/somewhere/else"


# Fan-out ---------------------------------------------------------------------------------


class Recorder:
    """Records the events it hears, as any StreamObserver may."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, event: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.heard.append((event, args, kwargs))

        return record


class Broken:
    """An observer that breaks the port's no-raise promise on every event."""

    def __getattr__(self, event: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> None:
            raise ValueError(f"broken on {event}")

        return fail


def test_fan_out_forwards_every_event_with_its_arguments_to_each_observer() -> None:
    first, second = Recorder(), Recorder()
    fan_out = FanOutStreamObserver(first, second)
    session = Session(pipeline_id="probe")
    error = RuntimeError("x")
    fan_out.session_opened(session, "c")
    fan_out.frame_received(session, 0, 10)
    fan_out.frame_dropped(session, 0, DropCause.BUFFER_FULL)
    fan_out.frame_processed(session, 1, queue_ms=1.0, processing_ms=2.0, latency_ms=3.0)
    fan_out.frame_failed(session, 2, error, code=ErrorCode.PIPELINE_FAILURE)
    fan_out.slowdown_sent(session, 0.5, None)
    fan_out.error_sent(None, ErrorCode.SERVER_BUSY)
    fan_out.session_rejected(None, "c", ErrorCode.INVALID_PIPELINE, "d")
    fan_out.session_closed(session, "c", 1000, "peer_gone")
    fan_out.single_frame_failed("probe", 0, error, code=ErrorCode.PIPELINE_FAILURE)
    expected = [
        ("session_opened", (session, "c"), {}),
        ("frame_received", (session, 0, 10), {}),
        ("frame_dropped", (session, 0, DropCause.BUFFER_FULL), {}),
        ("frame_processed", (session, 1), {"queue_ms": 1.0, "processing_ms": 2.0, "latency_ms": 3.0}),
        ("frame_failed", (session, 2, error), {"code": ErrorCode.PIPELINE_FAILURE}),
        ("slowdown_sent", (session, 0.5, None), {}),
        ("error_sent", (None, ErrorCode.SERVER_BUSY), {}),
        ("session_rejected", (None, "c", ErrorCode.INVALID_PIPELINE, "d"), {}),
        ("session_closed", (session, "c", 1000, "peer_gone"), {}),
        ("single_frame_failed", ("probe", 0, error), {"code": ErrorCode.PIPELINE_FAILURE}),
    ]
    assert first.heard == expected
    assert second.heard == expected


def test_a_broken_observer_is_logged_and_the_others_still_hear_the_event(caplog: pytest.LogCaptureFixture) -> None:
    metrics, exporter = observed("probe")
    fan_out = FanOutStreamObserver(Broken(), LoggingStreamObserver(), metrics)
    session = Session(pipeline_id="probe")
    with caplog.at_level(logging.ERROR, logger="application.observers"):
        fan_out.session_opened(session, "c")
    assert render(exporter).value("stream_sessions_active", pipeline_id="probe") == 1
    (record,) = caplog.records
    assert "Broken failed on session_opened" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    fan_out.session_closed(session, "c", 1000, "peer_gone")
