"""The stream protocol fed event sequences with a fake clock: every race the pump once had, as a synchronous test."""

from __future__ import annotations

from typing import Any

import pytest

from application.errors import JobGivenUp, JobStillRunning, JobTimedOut, PipelineExecutionError
from application.ports import ConnectionClosed, FrameReply, Inbound, InboundKind, SendTimedOut
from application.protocol import ABNORMAL_CLOSURE, Ending, StreamProtocol
from domain import BackpressurePolicy, ErrorCode, Frame, FrameValidationError, Session, SessionState
from domain.errors import GENERIC_INTERNAL_DETAIL
from tests.support.fakes import Clock, RecordingObserver
from tests.support.media import jpeg

FRAME = jpeg()


def protocol(
    policy: BackpressurePolicy | None = None, idle_timeout_s: float = 60.0, *, inline: bool = False
) -> tuple[StreamProtocol, Clock, RecordingObserver]:
    clock = Clock()
    session = Session(pipeline_id="p", policy=policy or BackpressurePolicy(), clock=clock)
    session.transition(SessionState.OPEN)
    observer = RecordingObserver()
    stream = StreamProtocol(session, observer, frame_timeout_s=2.0, max_frame_bytes=1_000_000, idle_timeout_s=idle_timeout_s, runs_inline=inline)  # type: ignore[arg-type]
    return stream, clock, observer


def frame() -> Inbound:
    return Inbound(InboundKind.BINARY, FRAME)


def reply(frame: Frame) -> FrameReply:
    return FrameReply(frame.index, {})


def started(start: Frame | None) -> Frame:
    """The frame an event started (it must have started one)."""
    assert start is not None
    return start


def sent(stream: StreamProtocol) -> list[dict[str, Any]]:
    """Deal with everything queued, as the pump does: send what has a wire form, then hand each item back."""
    messages = []
    while stream.outbox:
        outgoing = stream.outbox.popleft()
        message = outgoing.to_json()
        if message is not None:
            messages.append(message)
        stream.delivered(outgoing)
    return messages


def replies_per_frame(messages: list[dict[str, Any]]) -> dict[int, list[str]]:
    per_frame: dict[int, list[str]] = {}
    for message in messages:
        if "frame_index" in message:
            kind = "result" if "result" in message else message.get("cause") or message["error"]
            per_frame.setdefault(message["frame_index"], []).append(kind)
    return per_frame


def test_a_frame_that_finds_the_pipeline_idle_starts_and_its_result_is_reported_once_sent() -> None:
    stream, clock, observer = protocol()
    start = started(stream.message_received(frame()))
    assert start.index == 0
    clock.now += 40
    assert stream.frame_finished(start, reply(start)) is None
    assert "frame_processed" not in observer.names(), "reported only once the reply has gone out"
    assert sent(stream) == [{"frame_index": 0, "result": {}}]
    (processed,) = [event for event in observer.reports if event[0] == "frame_processed"]
    assert processed[1:] == (0, 0.0, 40.0, 40.0)


def test_a_frame_admitted_while_a_reply_is_being_sent_starts_exactly_once() -> None:
    stream, clock, _ = protocol()
    first = started(stream.message_received(frame()))
    assert stream.frame_finished(first, reply(first)) is None  # its reply is now being written
    second = started(stream.message_received(frame()))  # arrives meanwhile: the pipeline is idle, so it starts
    assert second.index == 1
    assert stream.frame_finished(second, reply(second)) is None, "nothing else waits: no frame runs twice"
    assert replies_per_frame(sent(stream)) == {0: ["result"], 1: ["result"]}


def test_a_frame_arriving_during_work_waits_and_starts_when_the_work_finishes() -> None:
    stream, clock, _ = protocol()
    first = started(stream.message_received(frame()))
    assert stream.message_received(frame()) is None
    clock.now += 10
    following = stream.frame_finished(first, reply(first))
    assert following is not None and following.index == 1


def test_under_overload_the_displaced_frames_are_answered_as_dropped_with_a_slow_down() -> None:
    stream, clock, observer = protocol(BackpressurePolicy(buffer_capacity=1))
    started(stream.message_received(frame()))
    for _ in range(6):
        clock.now += 5
        assert stream.message_received(frame()) is None
    messages = sent(stream)
    assert replies_per_frame(messages) == {index: ["buffer_full"] for index in range(1, 6)}
    assert [m for m in messages if m.get("warning") == "slow_down"], "the drop rate passed the threshold"
    assert observer.names().count("frame_dropped") == 5


def test_a_frame_read_just_as_the_session_ends_is_answered_as_dropped_and_never_started() -> None:
    stream, _, observer = protocol()
    first = started(stream.message_received(frame()))
    stream.stop_requested()
    assert stream.message_received(frame()) is None
    assert stream.frame_finished(first, reply(first)) is None
    stream.closing_messages()
    messages = sent(stream)
    assert replies_per_frame(messages) == {0: ["result"], 1: ["shutdown"]}
    assert messages[-1]["error"] == "shutting_down"
    assert observer.names().count("frame_received") == 2 and stream.session.dropped_frames == 1


def test_stop_while_drop_notices_are_queued_still_answers_every_frame_once() -> None:
    stream, clock, _ = protocol(BackpressurePolicy(buffer_capacity=1))
    first = started(stream.message_received(frame()))
    stream.message_received(frame())
    stream.message_received(frame())  # displaces frame 1: its notice is queued, not yet sent
    stream.stop_requested()
    assert stream.frame_finished(first, reply(first)) is None, "the frame in flight is answered, nothing new starts"
    stream.closing_messages()
    messages = sent(stream)
    assert replies_per_frame(messages) == {0: ["result"], 1: ["buffer_full"], 2: ["shutdown"]}
    assert messages[-1] == {"error": "shutting_down", "detail": "the server is shutting down; reconnect later"}
    assert stream.close_code() == (1012, "shutting_down")


def test_work_given_up_at_the_shutdown_deadline_is_answered_as_failed() -> None:
    stream, _, observer = protocol()
    first = started(stream.message_received(frame()))
    stream.stop_requested()
    assert stream.frame_failed(first, JobGivenUp()) is None
    stream.closing_messages()
    messages = sent(stream)
    assert messages[0]["error"] == "pipeline_failure" and "shut down before frame 0 finished" in messages[0]["detail"]
    assert messages[1]["error"] == "shutting_down"
    assert observer.names().count("frame_failed") == 1


def test_after_a_timeout_the_next_frame_waits_for_the_work_still_running() -> None:
    stream, clock, _ = protocol()
    first = started(stream.message_received(frame()))
    stream.frame_still_running(first, JobStillRunning("late", finished=None))  # type: ignore[arg-type]
    assert sent(stream)[0]["error"] == "pipeline_failure"
    assert not stream.busy, "the client has its answer: the session is not busy for the idle rule"
    assert stream.message_received(frame()) is None, "two runs of one stream never overlap"
    following = stream.straggler_returned(first)
    assert following is not None and following.index == 1
    assert stream.session.failed_frames == 1


def test_a_timeout_before_the_work_started_is_a_pipeline_failure_and_the_stream_goes_on() -> None:
    stream, _, _ = protocol()
    first = started(stream.message_received(frame()))
    stream.message_received(frame())
    following = stream.frame_failed(first, JobTimedOut("queued too long"))
    assert following is not None and following.index == 1
    (message,) = sent(stream)
    assert message["error"] == "pipeline_failure" and "2000 ms frame timeout" in message["detail"]
    assert stream.ending is None


def test_a_tool_failure_is_a_pipeline_failure_for_that_frame_only() -> None:
    stream, _, observer = protocol()
    first = started(stream.message_received(frame()))
    error = PipelineExecutionError("p", "n", "plug", "tool", RuntimeError("secret"))
    assert stream.frame_failed(first, error) is None
    (message,) = sent(stream)
    assert message == {"error": "pipeline_failure", "detail": error.detail, "frame_index": 0}
    assert "secret" not in message["detail"]
    assert stream.ending is None and observer.names().count("error_sent") == 1


def test_a_frame_that_does_not_decode_ends_the_session_with_invalid_frame() -> None:
    stream, _, _ = protocol()
    first = started(stream.message_received(frame()))
    stream.frame_failed(first, FrameValidationError(ErrorCode.INVALID_FRAME, "does not decode"))
    assert stream.ending is not None and stream.ending.ending is Ending.CLIENT_ERROR
    stream.closing_messages()
    assert sent(stream) == [{"error": "invalid_frame", "detail": "does not decode", "frame_index": 0}]
    assert stream.close_code() == (1007, "invalid_frame")


def test_a_bug_in_serving_is_internal_error_without_its_text() -> None:
    stream, _, _ = protocol()
    first = started(stream.message_received(frame()))
    stream.frame_failed(first, ZeroDivisionError("secret /srv/models"))
    stream.closing_messages()
    assert sent(stream) == [{"error": "internal_error", "detail": GENERIC_INTERNAL_DETAIL, "frame_index": 0}]
    assert stream.close_code() == (1011, "internal_error")


def test_text_ends_the_session_and_waiting_frames_are_answered_as_closing() -> None:
    stream, _, _ = protocol()
    first = started(stream.message_received(frame()))
    stream.message_received(frame())
    stream.message_received(Inbound(InboundKind.TEXT, "hello"))
    assert stream.frame_finished(first, reply(first)) is None
    stream.closing_messages()
    messages = sent(stream)
    assert replies_per_frame(messages) == {0: ["result"], 1: ["closing"]}
    assert messages[-1]["error"] == "invalid_message"
    assert stream.close_code() == (1003, "invalid_message")


def test_a_bad_jpeg_is_counted_and_ends_the_session_naming_the_frame() -> None:
    stream, _, observer = protocol()
    assert stream.message_received(Inbound(InboundKind.BINARY, b"not a jpeg")) is None
    stream.closing_messages()
    (message,) = sent(stream)
    assert message["error"] == "invalid_frame" and message["frame_index"] == 0
    assert observer.names() == ["frame_received", "error_sent"]


def test_the_peer_leaving_ends_with_its_close_code_and_nothing_more_is_sent() -> None:
    stream, _, _ = protocol()
    stream.message_received(Inbound(InboundKind.DISCONNECT, close_code=1001))
    assert stream.ending is not None and stream.ending.cut_off
    assert stream.close_code() == (1001, "peer_gone")


@pytest.mark.parametrize(("gone", "expected"), [(SendTimedOut(), (ABNORMAL_CLOSURE, "send_timeout")), (ConnectionClosed(), (1001, "peer_gone"))])
def test_a_lost_connection_overrides_a_graceful_close_and_drops_the_queue(gone: ConnectionClosed, expected: tuple[int, str]) -> None:
    stream, _, _ = protocol()
    stream.message_received(Inbound(InboundKind.TEXT, "hello"))
    stream.closing_messages()
    stream.connection_lost(gone)
    assert not stream.outbox
    assert stream.close_code() == expected


def test_idle_timer_rearms_for_the_quiet_remainder_and_ends_after_the_timeout() -> None:
    stream, clock, _ = protocol(idle_timeout_s=10.0)
    clock.now += 4000
    assert stream.idle_check() == pytest.approx(6.0)
    clock.now += 6000
    assert stream.idle_check() is None
    assert stream.ending is not None and stream.ending.error is not None
    assert stream.ending.error.code is ErrorCode.IDLE_TIMEOUT
    stream.closing_messages()
    assert stream.close_code() == (3008, "idle_timeout")


def test_a_frame_in_flight_keeps_the_session_from_idling_and_a_message_restarts_the_quiet_time() -> None:
    stream, clock, _ = protocol(idle_timeout_s=10.0)
    first = started(stream.message_received(frame()))
    clock.now += 30_000
    assert stream.idle_check() == 10.0, "the client waits for its answer"
    stream.frame_finished(first, reply(first))
    clock.now += 3000
    second = started(stream.message_received(frame()))
    stream.frame_finished(second, reply(second))
    clock.now += 9000
    assert stream.idle_check() == pytest.approx(1.0), "quiet since the second frame arrived"
    assert stream.ending is None


def test_a_frame_answered_at_once_is_reported_after_its_reply_and_before_the_reply_s_report() -> None:
    stream, _, observer = protocol(inline=True)
    start = started(stream.message_received(frame()))
    assert stream.runs_inline, "a header-only pipeline's frame is run where it was read"
    assert not stream.outbox and observer.names() == [], "nothing is reported before the reply of a frame answered at once"
    assert stream.frame_finished(start, reply(start)) is None
    assert sent(stream) == [{"frame_index": 0, "result": {}}]
    assert observer.names() == ["frame_received", "frame_processed"]


def test_a_frame_handed_to_the_executor_is_reported_as_it_arrives() -> None:
    stream, _, observer = protocol()
    started(stream.message_received(frame()))
    assert not stream.runs_inline
    assert sent(stream) == [], "only the observer hears of it"
    assert observer.names() == ["frame_received"]


def test_arrivals_are_reported_in_order_and_before_a_failure() -> None:
    stream, _, observer = protocol()
    first = started(stream.message_received(frame()))
    sent(stream)
    second_started = stream.frame_failed(first, PipelineExecutionError("p", "n", "plugin", "tool", RuntimeError("boom")))
    assert second_started is None
    sent(stream)
    third = started(stream.message_received(frame()))
    assert stream.frame_failed(third, PipelineExecutionError("p", "n", "plugin", "tool", RuntimeError("boom"))) is None
    sent(stream)
    assert observer.names() == ["frame_received", "frame_failed", "error_sent", "frame_received", "frame_failed", "error_sent"]


def test_what_never_goes_out_is_still_reported_but_never_as_sent() -> None:
    stream, _, observer = protocol()
    first = started(stream.message_received(frame()))
    stream.frame_failed(first, JobTimedOut("queued too long"))
    stream.connection_lost(ConnectionClosed())
    assert not stream.outbox
    assert observer.names() == ["frame_received", "frame_failed"], "the failure counts; the error was never sent"
    stream.session_ended()
    assert observer.names() == ["frame_received", "frame_failed"]


def test_frames_admitted_but_never_answered_are_reported_when_the_session_ends() -> None:
    stream, _, observer = protocol(inline=True)
    stream.message_received(frame())
    stream.message_received(Inbound(InboundKind.DISCONNECT, close_code=1001))
    stream.session_ended()
    assert observer.names() == ["frame_received"]


def test_a_stop_interrupts_a_wait_for_a_message_but_not_a_message_being_taken_in() -> None:
    stream, _, _ = protocol()
    assert not stream.interrupt_receive(waiting_for_message=True), "nothing has ended"
    stream.stop_requested()
    assert stream.interrupt_receive(waiting_for_message=True), "waiting for the next message: the wait is cut short"
    assert not stream.interrupt_receive(waiting_for_message=False), "a message being taken in is finished first"
    stream.connection_lost(ConnectionClosed())
    assert stream.interrupt_receive(waiting_for_message=False), "nothing more can be sent: no reason to finish it"
