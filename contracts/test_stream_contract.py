"""The stream contract, case by case: each declared message, error code, close code and drop cause.

Which messages and codes exist comes from asyncapi.yaml (through the client,
which validates every message and every close against it); these cases are
the ways to drive a server into each of them. contracts/test_zz_coverage.py
fails the run when a declared one was reached by none.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from contracts.asyncapi_doc import Contract
from contracts.client import ClosedWithoutError, ServerBusy, ServerError, StreamClient, StreamClosed, error_classes
from contracts.fault_plugin import SECRET
from contracts.frames import SOI, jpeg, jpeg_of_size
from contracts.raw_websocket import OP_BINARY, Closed, RawWebSocket
from contracts.raw_websocket import frame as raw_frame
from contracts.scenarios import assert_serving, check_invariants, run_session
from contracts.targets import Target


T = TypeVar("T")
# How long past the target's idle timeout the idle case waits for idle_timeout before it fails.
IDLE_MARGIN_S = 10.0


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def test_the_client_raises_one_exception_class_per_declared_error(contract: Contract) -> None:
    assert set(error_classes()) == set(contract.error_codes())


# Results -----------------------------------------------------------------------------


def test_every_frame_gets_a_result_carrying_the_index_it_was_sent_as(target: Target) -> None:
    frames = [jpeg(32 + 8 * i, 24 + 4 * i, seed=i) for i in range(6)]
    outcome = run(run_session(target, "result", frames, lockstep=True))
    check_invariants(outcome)
    assert outcome.kinds() == dict.fromkeys(range(6), "result"), "a frame that finds the pipeline idle always runs"
    assert outcome.close_code == 1000, "a client's normal close is answered with 1000"


def test_a_tracked_object_keeps_its_tracker_id_and_is_counted_once_at_the_line(target: Target) -> None:
    # The tracked role's object moves right across the frame's centre line (contracts/pipelines/tracked.json).
    frames = [jpeg(160, 48, seed=i) for i in range(20)]
    outcome = run(run_session(target, "tracked", frames, lockstep=True))
    check_invariants(outcome)
    assert outcome.kinds() == dict.fromkeys(range(20), "result")
    results = [outcome.replies[index].model_dump(mode="json", by_alias=True)["result"] for index in range(20)]
    assert {item["tracker_id"] for r in results for item in r["objects"]} == {1}, "one object, one id, from its first frame"
    assert [r["line_counts"]["middle"] for r in results][-1] == {"in": 1, "out": 0}
    assert sum(1 for a, b in zip(results, results[1:]) if a["line_counts"] != b["line_counts"]) == 1, "counted once"
    assert results[0]["zone_counts"] == {"right": {"occupancy": 0, "entered": 0}}
    assert results[-1]["zone_counts"] == {"right": {"occupancy": 1, "entered": 1}}


def test_a_pipeline_failure_costs_only_its_frame(target: Target) -> None:
    async def scenario() -> tuple[StreamClient, list[tuple[int, Any]]]:
        client = await target.open("failing")
        replies = []
        for _ in range(4):
            index = await client.send_frame(jpeg())
            replies.append((index, await client.receive()))
        await client.close()
        return client, replies

    client, replies = run(scenario())
    assert [(index, type(reply).__name__) for index, reply in replies] == [
        (0, "PipelineFailureErrorPayload"),
        (1, "FrameResultPayload"),
        (2, "PipelineFailureErrorPayload"),
        (3, "FrameResultPayload"),
    ]
    failure = replies[0][1]
    assert failure.frame_index == 0 and SECRET not in failure.detail
    assert client.close_code == 1000


# Errors that end the session ---------------------------------------------------------------


@pytest.mark.parametrize(
    "pipeline_id",
    [pytest.param(None, id="missing"), pytest.param("", id="empty"), pytest.param("no-such-pipeline-7f3a", id="unknown")],
)
def test_a_missing_or_unknown_pipeline_is_invalid_pipeline(target: Target, pipeline_id: str | None) -> None:
    async def scenario() -> ServerError:
        client = await target.open(pipeline_id=pipeline_id)
        with pytest.raises(error_classes()["invalid_pipeline"]) as refused:
            await client.receive()
        return refused.value

    refused = run(scenario())
    assert refused.close_code == 1008 and refused.frame_index is None


def test_a_text_message_is_invalid_message(target: Target) -> None:
    outcome = run(run_session(target, "result", [jpeg(), jpeg(seed=1), '{"frame": "not like this"}'], lockstep=True))
    check_invariants(outcome)
    assert outcome.kinds() == {0: "result", 1: "result"}
    assert outcome.error is not None and outcome.error.code == "invalid_message" and outcome.error.frame_index is None
    assert outcome.close_code == 1003


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"GIF89a\x01\x00\x01\x00", id="gif"),
        pytest.param(jpeg()[:-2], id="no-end-marker"),
        pytest.param(jpeg()[2:], id="no-start-marker"),
    ],
)
def test_a_frame_that_is_not_a_jpeg_is_invalid_frame(target: Target, frame: bytes) -> None:
    outcome = run(run_session(target, "result", [jpeg(), frame, jpeg()], lockstep=True))
    check_invariants(outcome)
    assert outcome.kinds() == {0: "result", 1: "error:invalid_frame"}
    assert outcome.close_code == 1007


def test_a_frame_whose_image_does_not_decode_is_invalid_frame(target: Target) -> None:
    garbage = SOI + bytes(range(1, 255)) * 4 + b"\xff\xd9"
    outcome = run(run_session(target, "decode", [jpeg(), garbage], lockstep=True))
    check_invariants(outcome)
    assert outcome.kinds() == {0: "result", 1: "error:invalid_frame"}
    assert outcome.close_code == 1007


def test_a_frame_at_the_limit_is_answered_and_one_byte_more_is_frame_too_large(target: Target) -> None:
    limit = target.max_frame_bytes
    outcome = run(run_session(target, "result", [jpeg_of_size(limit), jpeg_of_size(limit + 1)], lockstep=True))
    check_invariants(outcome)
    assert outcome.kinds() == {0: "result", 1: "error:frame_too_large"}
    assert outcome.error is not None and str(limit) in outcome.error.detail
    assert outcome.close_code == 1009


def test_a_message_beyond_the_websocket_limit_is_refused_unread_with_1009(target: Target) -> None:
    # Far beyond the frame limit the WebSocket layer refuses the message before it is read:
    # no frame, so no reply, and the close the document declares for it.
    oversized = jpeg_of_size(2 * target.max_frame_bytes + 2 * 1024 * 1024)
    outcome = run(run_session(target, "result", [jpeg(), oversized], until_closed=True, lockstep=True))
    check_invariants(outcome)
    assert outcome.kinds() == {0: "result"}
    assert outcome.error is None
    assert isinstance(outcome.closed_without_error, ClosedWithoutError)
    assert outcome.close_code == 1009


def test_an_unexpected_server_error_is_internal_error_with_generic_detail(target: Target) -> None:
    outcome = run(run_session(target, "crash", [jpeg(), jpeg(seed=1)], lockstep=True))
    check_invariants(outcome)
    assert outcome.kinds() == {0: "error:internal_error"}
    assert outcome.error is not None
    assert SECRET not in outcome.error.detail and "Traceback" not in outcome.error.detail
    assert outcome.close_code == 1011
    run(assert_serving(target))


def test_sessions_beyond_the_limit_get_server_busy(target: Target) -> None:
    async def scenario() -> tuple[int, ServerBusy | None]:
        opened: list[StreamClient] = []
        refused: ServerBusy | None = None
        try:
            # Each admitted session proves itself with a reply; the first refused one is the limit.
            for _ in range(512):
                client = await target.open("result")
                try:
                    await client.send_frame(jpeg())
                except StreamClosed:
                    pass  # refused before the frame went out; the refusal is waiting to be read
                try:
                    await client.receive()
                except ServerBusy as busy:
                    refused = busy
                    break
                opened.append(client)
        finally:
            for client in opened:
                await client.close()
        return len(opened), refused

    admitted, refused = run(scenario())
    assert refused is not None, f"{admitted} sessions were admitted and none was refused"
    assert refused.close_code == 1013 and refused.frame_index is None
    assert admitted >= 1
    run(assert_serving(target))


def test_a_session_without_messages_ends_with_idle_timeout(target: Target) -> None:
    async def scenario() -> tuple[float, float, ServerError]:
        client = await target.open("result")
        index = await client.send_frame(jpeg())
        await client.receive()
        quiet_from = time.monotonic()
        with pytest.raises(error_classes()["idle_timeout"]) as ended:
            # The error comes only after the target's idle timeout (a minute by default), not within a reply's usual wait.
            await client.receive(timeout_s=target.idle_timeout_s + IDLE_MARGIN_S)
        assert index == 0
        return quiet_from, time.monotonic(), ended.value

    quiet_from, ended_at, error = run(scenario())
    assert error.close_code == 3008 and error.frame_index is None
    assert target.idle_timeout_s - 0.5 <= ended_at - quiet_from <= target.idle_timeout_s + 5, (
        f"closed {ended_at - quiet_from:.1f} s after the last message; the idle timeout is {target.idle_timeout_s} s"
    )
    run(assert_serving(target))


def test_a_websocket_protocol_violation_closes_with_1002(target: Target) -> None:
    def scenario() -> Closed:
        client = RawWebSocket.connect(target.url(target.pipeline("result")), headers=target.auth_headers())
        try:
            client.send(raw_frame(OP_BINARY, jpeg(), masked=False))  # clients must mask every frame
            _, closed = client.until_closed()
        finally:
            client.close()
        target.coverage.closed(closed.code, None)
        return closed

    closed = scenario()
    assert closed.code == 1002, f"expected close 1002 for an unmasked frame, got {closed}"
    run(assert_serving(target))


# Backpressure -------------------------------------------------------------------------------


def test_a_burst_fills_the_buffer_and_the_oldest_waiting_frames_are_dropped(target: Target) -> None:
    # Far more frames than any buffer holds, all before the first one finishes.
    outcome = run(run_session(target, "slow", [jpeg()] * 80))
    check_invariants(outcome)
    assert outcome.kind(0) == "result", "a frame that finds the pipeline idle always runs"
    assert outcome.kind(79) == "result", "the newest frame is never dropped"
    assert set(outcome.kinds().values()) <= {"result", "dropped:buffer_full", "dropped:lagging"}
    assert "dropped:buffer_full" in outcome.kinds().values(), outcome.describe()
    assert outcome.warnings, "a drop rate far above the threshold brings a slow_down warning"


def test_a_client_faster_than_the_pipeline_gets_lagging_drops(target: Target) -> None:
    # About three times the slow pipeline's rate, paced, so the processing time is known.
    outcome = run(run_session(target, "slow", [jpeg()] * 30, interval_s=0.03))
    check_invariants(outcome)
    assert outcome.kind(0) == "result" and outcome.kind(29) == "result"
    assert set(outcome.kinds().values()) <= {"result", "dropped:buffer_full", "dropped:lagging"}
    assert "dropped:lagging" in outcome.kinds().values(), outcome.describe()
    assert outcome.arrival != sorted(outcome.arrival), "drops overtake the frame in flight: replies come out of order"


def test_frames_waiting_when_a_client_error_ends_the_session_are_dropped_as_closing(target: Target) -> None:
    outcome = run(run_session(target, "slow", [jpeg()] * 5 + ["bye"]))
    check_invariants(outcome)
    kinds = outcome.kinds()
    assert sorted(kinds) == [0, 1, 2, 3, 4]
    assert kinds[0] == "result"
    assert set(kinds.values()) <= {"result", "dropped:closing"} and "dropped:closing" in kinds.values(), outcome.describe()
    assert outcome.error is not None and outcome.error.code == "invalid_message"
    assert outcome.close_code == 1003


# Shutdown: last, because it ends the target -------------------------------------------------


@pytest.mark.ends_target
def test_shutdown_answers_every_frame_then_sends_shutting_down(target: Target) -> None:
    assert target.shutdown is not None

    async def shut_down() -> None:
        await asyncio.sleep(0.05)  # lets the frames reach the server; five of them keep it busy 500 ms
        await asyncio.to_thread(target.shutdown)

    outcome = run(run_session(target, "slow", [jpeg()] * 5, before_close=shut_down, until_closed=True))
    check_invariants(outcome)
    kinds = outcome.kinds()
    assert sorted(kinds) == [0, 1, 2, 3, 4], outcome.describe()
    assert kinds[0] == "result", "the frame in flight is answered"
    assert set(kinds.values()) <= {"result", "dropped:shutdown"} and "dropped:shutdown" in kinds.values(), outcome.describe()
    assert outcome.error is not None and outcome.error.code == "shutting_down"
    assert outcome.close_code == 1012
