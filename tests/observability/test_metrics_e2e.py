"""/metrics of a real server moves by exactly what its clients saw happen.

Each test reads the counters before and after its own sessions and compares
the difference with the messages its client received; the shared server runs
one test at a time, so no other session contributes to a difference.
"""

from __future__ import annotations

import asyncio

import httpx
from websockets.asyncio.client import connect

from tests.observability.support import (
    FRAME,
    TEXT_FORMAT,
    delta,
    overload,
    run,
    scrape,
    settled,
    stream_in_lockstep,
)
from contracts.client import StreamClient, kind_of
from tests.support.server import RunningServer, start_server


def test_the_four_story_metrics_are_exported_for_every_pipeline_from_start_up(server: RunningServer) -> None:
    now = scrape(server)
    pipelines = {item["id"] for item in httpx.get(f"{server.http}/v1/pipelines", timeout=5, trust_env=False).json()}
    for name in ("stream_sessions_active", "stream_frames_processed_total", "stream_slowdown_signals_total"):
        assert now.label_values(name, "pipeline_id") == pipelines, name
    assert now.label_values("stream_frames_dropped_total", "cause") == {"lagging", "buffer_full", "shutdown", "closing"}


def test_processed_frames_move_the_counters_and_histograms_by_exactly_their_number(server: RunningServer) -> None:
    before = settled(server)
    received, _ = run(stream_in_lockstep(server, "probe", 12))
    after = settled(server)

    assert [kind_of(m) for m in received.messages] == ["result"] * 12
    assert delta(after, before, "stream_frames_processed_total", pipeline_id="probe") == 12
    assert delta(after, before, "stream_frames_received_total", pipeline_id="probe") == 12
    assert delta(after, before, "stream_received_bytes_total", pipeline_id="probe") == 12 * len(FRAME)
    assert delta(after, before, "stream_frames_dropped_total", pipeline_id="probe") == 0
    assert delta(after, before, "stream_frames_failed_total", pipeline_id="probe") == 0
    assert delta(after, before, "stream_frame_latency_seconds_count", pipeline_id="probe") == 12
    assert delta(after, before, "stream_frame_queue_seconds_count", pipeline_id="probe") == 12
    assert delta(after, before, "stream_pipeline_duration_seconds_count", pipeline_id="probe") == 12
    assert delta(after, before, "stream_pipeline_node_duration_seconds_count", pipeline_id="probe", node_id="probe") == 12
    assert delta(after, before, "stream_sessions_closed_total", pipeline_id="probe", reason="peer_gone") == 1
    # Every reply took some time, so the +Inf bucket equals the count and the sum grew.
    assert delta(after, before, "stream_frame_latency_seconds_bucket", pipeline_id="probe", le="+Inf") == 12
    assert delta(after, before, "stream_frame_latency_seconds_sum", pipeline_id="probe") > 0


def test_overload_counts_one_drop_per_dropped_notice_and_one_signal_per_slow_down_warning(server: RunningServer) -> None:
    before = settled(server)
    received, _ = run(overload(server, "slow", 50, 0.02))
    after = settled(server)

    notices = received.of_kind("dropped")
    results = received.of_kind("result")
    warnings = received.of_kind("warning")
    assert notices and warnings, "a 100 ms pipeline fed every 20 ms drops frames and warns"
    for cause in ("lagging", "buffer_full", "shutdown", "closing"):
        sent = sum(1 for notice in notices if notice["cause"] == cause)
        assert delta(after, before, "stream_frames_dropped_total", pipeline_id="slow", cause=cause) == sent, cause
    assert delta(after, before, "stream_frames_dropped_total", pipeline_id="slow") == len(notices)
    assert delta(after, before, "stream_slowdown_signals_total", pipeline_id="slow") == len(warnings)
    assert delta(after, before, "stream_frames_processed_total", pipeline_id="slow") == len(results)
    assert delta(after, before, "stream_frames_received_total", pipeline_id="slow") == 50
    assert delta(after, before, "stream_frame_latency_seconds_count", pipeline_id="slow") == len(results)
    # The pipeline sleeps 100 ms: no result reply can land in a bucket below 0.1 s.
    assert delta(after, before, "stream_frame_latency_seconds_bucket", pipeline_id="slow", le="0.1") == 0


def test_pipeline_failures_count_as_failed_frames_node_failures_and_errors_sent(server: RunningServer) -> None:
    before = settled(server)
    received, _ = run(stream_in_lockstep(server, "failing", 6))  # fails on frames 0, 2 and 4
    after = settled(server)

    errors = received.of_kind("error")
    assert [m["frame_index"] for m in errors] == [0, 2, 4]
    assert delta(after, before, "stream_errors_sent_total", code="pipeline_failure") == 3
    assert delta(after, before, "stream_frames_failed_total", pipeline_id="failing") == 3
    assert delta(after, before, "stream_frames_processed_total", pipeline_id="failing") == 3
    assert delta(after, before, "stream_pipeline_node_failures_total", pipeline_id="failing", node_id="boom") == 3
    assert delta(after, before, "stream_pipeline_duration_seconds_count", pipeline_id="failing") == 6


def test_a_frame_timeout_is_a_failed_frame_and_an_error_sent(server: RunningServer) -> None:
    before = settled(server)
    received, _ = run(stream_in_lockstep(server, "hang", 1))  # a 1.5 s tool against the 500 ms frame timeout
    after = settled(server)

    assert [m["error"] for m in received.of_kind("error")] == ["pipeline_failure"]
    assert delta(after, before, "stream_frames_failed_total", pipeline_id="hang") == 1
    assert delta(after, before, "stream_errors_sent_total", code="pipeline_failure") == 1
    assert delta(after, before, "stream_frames_processed_total", pipeline_id="hang") == 0


def test_an_error_that_closes_the_session_is_counted_with_its_close_reason(server: RunningServer) -> None:
    async def scenario() -> list[str]:
        client = await StreamClient.connect(server.ws("probe"))
        await client.send_raw("not a frame")
        received = await client.recv_until_closed()
        return [m["error"] for m in received.of_kind("error")]

    before = settled(server)
    assert run(scenario()) == ["invalid_message"]
    after = settled(server)
    assert delta(after, before, "stream_errors_sent_total", code="invalid_message") == 1
    assert delta(after, before, "stream_sessions_closed_total", pipeline_id="probe", reason="invalid_message") == 1


def test_an_unknown_pipeline_is_a_rejection_and_never_becomes_a_label(server: RunningServer) -> None:
    async def scenario() -> list[str]:
        client = await StreamClient.connect(server.ws("no-such-pipeline-7f3a"))
        received = await client.recv_until_closed()
        return [m["error"] for m in received.of_kind("error")]

    before = settled(server)
    assert run(scenario()) == ["invalid_pipeline"]
    after = settled(server)
    assert delta(after, before, "stream_sessions_rejected_total", reason="invalid_pipeline") == 1
    assert delta(after, before, "stream_errors_sent_total", code="invalid_pipeline") == 1
    labelled = {value for (_, labels) in after.samples for key, value in labels if key == "pipeline_id"}
    assert "no-such-pipeline-7f3a" not in labelled


def test_the_gauge_counts_open_sessions_and_returns_to_zero_after_clean_and_abrupt_disconnects(server: RunningServer) -> None:
    async def scenario() -> tuple[float, float, float]:
        settled(server)
        clients = [await StreamClient.connect(server.ws(pipeline)) for pipeline in ("probe", "probe", "fast")]
        for client in clients:
            await client.send_raw(FRAME)
            await client.recv()
        during = scrape(server)
        await clients[0].close()
        clients[1].connection.transport.abort()  # no close frame: the TCP connection just goes
        await clients[2].close()
        return (
            during.value("stream_sessions_active", pipeline_id="probe"),
            during.value("stream_sessions_active", pipeline_id="fast"),
            during.total("stream_sessions_active"),
        )

    probe, fast, total = run(scenario())
    assert (probe, fast, total) == (2, 1, 3)
    after = settled(server)
    assert after.value("stream_sessions_active", pipeline_id="probe") == 0
    assert after.value("stream_sessions_active", pipeline_id="fast") == 0


def test_a_thousand_connect_disconnect_cycles_leave_the_gauge_at_zero(server: RunningServer) -> None:
    cycles, parallel = 1000, 8

    async def churn(count: int) -> None:
        for _ in range(count):
            async with connect(server.ws("probe"), proxy=None, compression=None, open_timeout=10, close_timeout=5):
                pass

    async def scenario() -> None:
        await asyncio.gather(*(churn(cycles // parallel) for _ in range(parallel)))

    before = settled(server)
    run(scenario())
    after = settled(server)
    assert delta(after, before, "stream_sessions_closed_total", pipeline_id="probe") == cycles
    assert delta(after, before, "stream_sessions_rejected_total") == 0
    assert after.value("stream_sessions_active", pipeline_id="probe") == 0


def test_server_busy_rejections_are_counted_and_do_not_touch_the_gauge() -> None:
    busy = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "info", "FORGESYTE_STREAM_MAX_SESSIONS": "2"})
    try:
        async def scenario() -> tuple[list[str], float]:
            first = await StreamClient.connect(busy.ws("probe"))
            second = await StreamClient.connect(busy.ws("probe"))
            for client in (first, second):
                await client.send_raw(FRAME)
                await client.recv()
            refused = [m["error"] for m in (await (await StreamClient.connect(busy.ws("probe"))).recv_until_closed()).messages]
            again = [m["error"] for m in (await (await StreamClient.connect(busy.ws("fast"))).recv_until_closed()).messages]
            during = scrape(busy).total("stream_sessions_active")
            await first.close()
            await second.close()
            return refused + again, during

        refused, during = run(scenario())
        assert refused == ["server_busy", "server_busy"]
        assert during == 2
        after = settled(busy)
        assert after.value("stream_sessions_rejected_total", reason="server_busy") == 2
        assert after.value("stream_errors_sent_total", code="server_busy") == 2
        assert after.total("stream_sessions_closed_total") == 2
    finally:
        busy.stop()


def test_metrics_speak_openmetrics_when_asked_and_are_in_the_api_schema(server: RunningServer) -> None:
    plain = httpx.get(f"{server.http}/metrics", timeout=5, trust_env=False)
    assert plain.headers["content-type"] == TEXT_FORMAT
    assert "# TYPE stream_sessions_active gauge" in plain.text
    assert "# TYPE stream_frames_processed_total counter" in plain.text
    negotiated = httpx.get(
        f"{server.http}/metrics",
        headers={"accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"},
        timeout=5,
        trust_env=False,
    )
    assert negotiated.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert negotiated.text.endswith("# EOF\n")
    paths = httpx.get(f"{server.http}/schema/openapi.json", timeout=5, trust_env=False).json()["paths"]
    assert "get" in paths["/metrics"]
