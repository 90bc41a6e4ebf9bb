"""The server's stdout: JSON lines only, the session events with their fields, per-frame events only at debug."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.observability.support import (
    FRAME,
    PER_FRAME_EVENTS,
    overload,
    records,
    run,
    session_of,
    settled,
    stream_in_lockstep,
    wait_for_records,
)
from tests.support.client import StreamClient
from contracts.fault_plugin import SECRET
from tests.support.server import RunningServer, start_server

SESSION_FIELDS = {"session_id", "pipeline_id"}


@pytest.fixture(scope="module")
def debug_server() -> Iterator[RunningServer]:
    running = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "debug"})
    yield running
    running.stop()


def session_records(server: RunningServer, session_id: str) -> list[dict[str, Any]]:
    return [r for r in records(server) if r.get("session_id") == session_id]


def closed_record(server: RunningServer, session_id: str) -> dict[str, Any]:
    (closed,) = wait_for_records(server, lambda r: r["event"] == "session_disconnected" and r.get("session_id") == session_id)
    return closed


def test_a_short_stream_logs_connect_and_disconnect_with_its_counts(server: RunningServer) -> None:
    _, client = run(stream_in_lockstep(server, "probe", 5))
    session_id = session_of(server, client)
    closed = closed_record(server, session_id)

    (connected,) = [r for r in session_records(server, session_id) if r["event"] == "session_connected"]
    assert connected["pipeline_id"] == "probe" and connected["level"] == "info" and connected["logger"] == "forgesyte.stream"
    assert closed["client"] == client and closed["pipeline_id"] == "probe" and closed["level"] == "info"
    assert (closed["frames_received"], closed["frames_processed"], closed["frames_dropped"], closed["frames_failed"]) == (5, 5, 0, 0)
    assert (closed["close_code"], closed["reason"]) == (1000, "peer_gone")
    assert closed["duration_ms"] > 0
    for record in (connected, closed):
        assert {"timestamp", "level", "logger", "pid", "event"} <= set(record)


def test_overload_logs_the_slow_down_at_info_and_the_drops_in_the_disconnect_summary(server: RunningServer) -> None:
    received, client = run(overload(server, "slow", 40, 0.02))
    session_id = session_of(server, client)
    closed = closed_record(server, session_id)

    slowdowns = [r for r in session_records(server, session_id) if r["event"] == "slow_down_sent"]
    assert len(slowdowns) == len(received.of_kind("warning")) == closed["slowdown_signals"]
    assert all(r["level"] == "info" and r["pipeline_id"] == "slow" and r["drop_rate"] > 0.30 for r in slowdowns)
    assert closed["frames_dropped"] == len(received.of_kind("dropped"))
    assert closed["frames_processed"] == len(received.of_kind("result"))
    assert closed["frames_received"] == 40


def test_per_frame_events_are_absent_at_info(server: RunningServer) -> None:
    run(stream_in_lockstep(server, "probe", 5))
    settled(server)
    assert {r["event"] for r in records(server)} & PER_FRAME_EVENTS == set()


def test_per_frame_events_are_logged_at_debug_with_the_session_bound(debug_server: RunningServer) -> None:
    _, client = run(stream_in_lockstep(debug_server, "probe", 4))
    session_id = session_of(debug_server, client)
    closed_record(debug_server, session_id)
    events = session_records(debug_server, session_id)

    received = [r for r in events if r["event"] == "frame_received"]
    processed = [r for r in events if r["event"] == "frame_processed"]
    assert [r["frame_index"] for r in received] == [0, 1, 2, 3]
    assert [r["frame_index"] for r in processed] == [0, 1, 2, 3]
    assert all(r["level"] == "debug" for r in received + processed)
    assert all(r["latency_ms"] >= r["processing_ms"] >= 0 and r["queue_ms"] >= 0 for r in processed)
    assert all(r["pipeline_id"] == "probe" for r in events)


def test_dropped_frames_are_logged_at_debug_with_their_cause(debug_server: RunningServer) -> None:
    received, client = run(overload(debug_server, "slow", 30, 0.02))
    session_id = session_of(debug_server, client)
    closed_record(debug_server, session_id)

    dropped = [r for r in session_records(debug_server, session_id) if r["event"] == "frame_dropped"]
    notices = received.of_kind("dropped")
    assert sorted((r["frame_index"], r["cause"]) for r in dropped) == sorted((m["frame_index"], m["cause"]) for m in notices)
    assert all(r["level"] == "debug" for r in dropped)


def test_a_pipeline_error_is_logged_with_node_plugin_tool_and_traceback_but_not_sent(server: RunningServer) -> None:
    received, client = run(stream_in_lockstep(server, "failing", 2))  # frame 0 fails
    session_id = session_of(server, client)
    closed_record(server, session_id)

    (error,) = [r for r in session_records(server, session_id) if r["event"] == "pipeline_error"]
    assert error["level"] == "error" and error["pipeline_id"] == "failing" and error["frame_index"] == 0
    assert (error["node"], error["plugin"], error["tool"]) == ("boom", "fault", "fail")
    assert error["error"] == "pipeline_failure"
    assert "Traceback (most recent call last)" in error["exception"]
    assert "RuntimeError: injected failure at frame 0" in error["exception"]
    (reply,) = received.of_kind("error")
    assert SECRET not in str(reply) and "Traceback" not in str(reply)


def test_a_rejected_connection_is_logged_with_its_reason(server: RunningServer) -> None:
    async def scenario() -> None:
        client = await StreamClient.open(server.ws("no-such-pipeline-51c2"))
        await client.recv_until_closed()

    run(scenario())
    (rejected,) = wait_for_records(server, lambda r: r["event"] == "session_rejected" and r.get("pipeline_id") == "no-such-pipeline-51c2")
    assert rejected["level"] == "warning" and rejected["error"] == "invalid_pipeline"
    assert rejected["client"].startswith("127.0.0.1:")
    assert "unknown pipeline_id" in rejected["detail"]


def test_every_stdout_line_of_a_server_is_json_from_start_up_to_exit() -> None:
    running = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "debug"})
    try:
        async def scenario() -> None:
            await stream_in_lockstep(running, "failing", 3)
            await overload(running, "slow", 12, 0.02)
            client = await StreamClient.open(running.ws("nope"))
            await client.recv_until_closed()
            open_at_shutdown = await StreamClient.open(running.ws("probe"))
            await asyncio.sleep(0.05)
            running.process.send_signal(signal.SIGTERM)
            await open_at_shutdown.recv_until_closed()

        run(scenario())
    finally:
        running.stop()
    lines = records(running)  # json.loads every line
    events = {r["event"] for r in lines}
    # uvicorn's own start-up and shutdown lines are among them, as JSON.
    assert {"Application startup complete.", f"Finished server process [{running.process.pid}]"} <= events
    assert {"session_connected", "session_disconnected", "pipeline_error", "session_rejected", "draining_sessions"} <= events
    assert all({"event", "level", "logger", "timestamp", "pid"} <= set(r) for r in lines)
    assert all(r["pid"] == running.process.pid for r in lines)
    assert all(SESSION_FIELDS <= set(r) for r in lines if r["logger"] == "forgesyte.stream" and r["event"] != "session_rejected")


def test_the_server_runs_on_uvloop_by_default(server: RunningServer) -> None:
    (record,) = wait_for_records(server, lambda r: r["event"] == "event_loop")
    assert record["loop"].startswith("uvloop"), record


def test_the_standard_library_event_loop_can_be_chosen_and_serves_the_stream() -> None:
    running = start_server({"FORGESYTE_STREAM_EVENT_LOOP": "asyncio", "FORGESYTE_STREAM_LOG_LEVEL": "info"})
    try:
        (record,) = wait_for_records(running, lambda r: r["event"] == "event_loop")
        assert record["loop"].startswith("asyncio."), record

        async def one_frame() -> dict[str, Any]:
            client = await StreamClient.open(running.ws("probe"))
            await client.send(FRAME)
            reply = await client.recv()
            await client.close()
            return reply

        assert run(one_frame())["frame_index"] == 0
    finally:
        running.stop()
