"""Backpressure, concurrency and lifecycle over real sockets.

No assertion here is about speed: the pipelines have a known cost, and the
checks are about which replies arrive, how many, and in what relation.
"""

import asyncio
import json
import signal

from contracts.client import StreamClient, kind_of
from tests.support.media import jpeg
from tests.support.server import RunningServer, start_server

FRAME = jpeg()


def run(coroutine):
    return asyncio.run(coroutine)


async def overload(server: RunningServer, pipeline: str, frames: int, interval_s: float):
    client = await StreamClient.connect(server.ws(pipeline))
    receiver = asyncio.create_task(client.recv_replies(set(range(frames)), timeout=60))
    await client.send_paced(FRAME, frames, interval_s)
    received = await receiver
    await client.close()
    return received


def test_overload_answers_every_frame_exactly_once_and_drops_the_waiting_ones(server: RunningServer) -> None:
    # 100 ms pipeline, a frame every 30 ms: more than three times its capacity.
    received = run(overload(server, "slow", 60, 0.03))
    replies = received.replies()
    assert sorted(replies) == list(range(60))
    assert all(len(answers) == 1 for answers in replies.values()), "exactly one reply per frame"
    kinds = {index: kind_of(answers[0]) for index, answers in replies.items()}
    dropped = [i for i, k in kinds.items() if k == "dropped"]
    results = [i for i, k in kinds.items() if k == "result"]
    assert set(kinds.values()) <= {"result", "dropped"}
    assert len(dropped) > len(results), "under 3x overload most frames are dropped"
    assert results[0] == 0 and 59 in results, "the first frame runs at once and the newest frame is never dropped"
    assert {m["cause"] for m in received.of_kind("dropped")} <= {"lagging", "buffer_full"}
    assert any(m["cause"] == "lagging" for m in received.of_kind("dropped"))
    # A dropped notice overtakes the frame in flight: replies come out of frame order.
    order = [m["frame_index"] for m in received.messages if "frame_index" in m]
    assert order != sorted(order)


def test_no_frame_is_dropped_while_the_client_waits_for_each_reply(server: RunningServer) -> None:
    async def scenario():
        client = await StreamClient.connect(server.ws("fast"))
        for _ in range(30):
            await client.send_raw(FRAME)
            await client.recv()
        await client.close()
        return client.received

    received = run(scenario())
    assert [kind_of(m) for m in received.messages] == ["result"] * 30


def test_a_client_slower_than_the_pipeline_sees_no_drops(server: RunningServer) -> None:
    # 20 ms pipeline, a frame every 150 ms.
    received = run(overload(server, "fast", 15, 0.15))
    assert {kind_of(m) for m in received.messages} == {"result"}


def test_slow_down_is_sent_under_sustained_overload_but_not_flooded(server: RunningServer) -> None:
    received = run(overload(server, "slow", 80, 0.02))
    warnings = received.of_kind("warning")
    # 1.6 s of overload is well inside the 5 s repeat interval: one warning, not one per frame.
    assert len(warnings) == 1
    warning = warnings[0]
    assert warning["warning"] == "slow_down"
    assert warning["drop_rate"] > 0.30
    assert 0 < warning["suggested_fps"] < 1000 / 20, "suggested rate is below the rate the client was sending"


def test_recovery_after_overload_stops_dropping(server: RunningServer) -> None:
    async def scenario():
        client = await StreamClient.connect(server.ws("fast"))
        receiver = asyncio.create_task(client.recv_replies(set(range(70)), timeout=60))
        await client.send_paced(FRAME, 40, 0.005)  # 20 ms pipeline, a frame every 5 ms
        await asyncio.sleep(1.2)
        await client.send_paced(FRAME, 30, 0.1)  # then slower than the pipeline
        received = await receiver
        await client.close()
        return received

    received = run(scenario())
    replies = received.replies()
    assert any(kind_of(replies[i][0]) == "dropped" for i in range(40))
    assert [kind_of(replies[i][0]) for i in range(40, 70)] == ["result"] * 30


def test_disconnect_mid_inference_leaves_no_session_or_busy_worker(server: RunningServer) -> None:
    async def scenario():
        for _ in range(3):
            client = await StreamClient.connect(server.ws("slow"))
            for _ in range(3):
                await client.send_raw(FRAME)
            await client.close()

    run(scenario())
    health = server.wait_for(lambda h: h["sessions_active"] == 0 and h["busy_workers"] == 0)
    assert health["status"] == "ok"


def test_abrupt_disconnect_is_detected_and_cleaned_up(server: RunningServer) -> None:
    async def scenario():
        client = await StreamClient.connect(server.ws("slow"))
        await client.send_raw(FRAME)
        await client.send_raw(FRAME)
        client.connection.transport.abort()  # no close frame: the TCP connection just goes

    run(scenario())
    server.wait_for(lambda h: h["sessions_active"] == 0 and h["busy_workers"] == 0)


def test_concurrent_sessions_keep_their_own_state(server: RunningServer) -> None:
    async def session(frames: int):
        client = await StreamClient.connect(server.ws("counter"))
        counts = []
        for _ in range(frames):
            await client.send_raw(FRAME)
            counts.append((await client.recv())["result"]["count"])
            await asyncio.sleep(0)
        await client.close()
        return counts

    async def scenario():
        return await asyncio.gather(session(8), session(5), session(11))

    assert run(scenario()) == [list(range(1, 9)), list(range(1, 6)), list(range(1, 12))]


def test_a_slow_session_does_not_stall_another(server: RunningServer) -> None:
    async def scenario():
        slow = await StreamClient.connect(server.ws("hang"))  # 1.5 s tool, 0.5 s timeout
        await slow.send_raw(FRAME)
        fast = await StreamClient.connect(server.ws("probe"))
        for _ in range(10):
            await fast.send_raw(FRAME)
            await fast.recv()
        slow_reply = await slow.recv()
        await fast.close()
        await slow.close()
        return len(fast.received.messages), slow_reply

    answered, slow_reply = run(scenario())
    assert answered == 10
    assert slow_reply["error"] == "pipeline_failure"


def test_sessions_beyond_the_limit_get_server_busy_1013() -> None:
    server = start_server({"FORGESYTE_STREAM_MAX_SESSIONS": "2"})
    try:
        async def scenario():
            first = await StreamClient.connect(server.ws("probe"))
            second = await StreamClient.connect(server.ws("probe"))
            for client in (first, second):
                await client.send_raw(FRAME)
                await client.recv()
            third = await StreamClient.connect(server.ws("probe"))
            refused = await third.recv_until_closed()
            await first.close()
            # The close handshake completes before the server has unregistered the session.
            await asyncio.to_thread(server.wait_for, lambda health: health["sessions_active"] == 1)
            fourth = await StreamClient.connect(server.ws("probe"))
            await fourth.send_raw(FRAME)
            accepted = await fourth.recv()
            await second.close()
            await fourth.close()
            return refused, accepted

        refused, accepted = run(scenario())
        assert [m["error"] for m in refused.messages] == ["server_busy"]
        assert "2 concurrent sessions" in refused.messages[0]["detail"]
        assert refused.close_code == 1013
        assert "result" in accepted, "a freed slot is usable again"
    finally:
        server.stop()


def test_sigterm_answers_the_frame_in_flight_and_closes_every_session_with_1012() -> None:
    server = start_server()
    try:
        async def scenario():
            # 1.5 s in flight: uvicorn notices the signal on its next 0.1 s tick, long before the frame ends.
            busy = await StreamClient.connect(server.ws("hang"))
            idle = await StreamClient.connect(server.ws("probe"))
            await idle.send_raw(FRAME)
            await idle.recv()
            for _ in range(3):
                await busy.send_raw(FRAME)
            await asyncio.sleep(0.03)
            server.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(busy.recv_until_closed(), idle.recv_until_closed())

        busy, idle = run(scenario())
        replies = busy.replies()
        assert sorted(replies) == [0, 1, 2]
        assert "result" in replies[0][0], "the frame in flight is answered"
        assert [kind_of(replies[i][0]) for i in (1, 2)] == ["dropped", "dropped"]
        assert {replies[i][0]["cause"] for i in (1, 2)} == {"shutdown"}
        assert busy.messages[-1]["error"] == "shutting_down" and busy.close_code == 1012
        assert idle.messages[-1]["error"] == "shutting_down" and idle.close_code == 1012
        # uvicorn re-raises the captured signal once shutdown is complete, as a service manager expects.
        assert server.process.wait(timeout=30) == -signal.SIGTERM
        assert '"event": "draining_sessions"' in server.log_text()
    finally:
        server.stop()


def test_a_frame_still_running_at_the_shutdown_deadline_is_answered_as_failed_then_1012() -> None:
    """The frame outlives the shutdown deadline: it still gets its one reply, a pipeline_failure, before the close."""
    server = start_server({"FORGESYTE_STREAM_SHUTDOWN_TIMEOUT_S": "0.3", "FORGESYTE_STREAM_FRAME_TIMEOUT_MS": "30000"})
    try:
        async def scenario():
            stuck = await StreamClient.connect(server.ws("hang"))  # 1.5 s per frame, longer than the deadline
            await stuck.send_raw(FRAME)
            await asyncio.sleep(0.1)
            await stuck.send_raw(FRAME)  # waits behind it
            await asyncio.sleep(0.1)
            server.process.send_signal(signal.SIGTERM)
            return await stuck.recv_until_closed()

        stuck = run(scenario())
        replies = stuck.replies()
        assert sorted(replies) == [0, 1]
        (failure,) = replies[0]
        assert failure["error"] == "pipeline_failure" and "shut down before frame 0 finished" in failure["detail"]
        assert replies[1] == [{"frame_index": 1, "dropped": True, "cause": "shutdown"}]
        assert stuck.messages[-1]["error"] == "shutting_down" and stuck.close_code == 1012
        assert server.process.wait(timeout=30) == -signal.SIGTERM
        records = [json.loads(line) for line in server.lines if line.startswith("{")]
        assert [r for r in records if r["event"] == "sessions_cancelled_at_deadline"] == []
        (closed,) = [r for r in records if r["event"] == "session_disconnected"]
        assert (closed["close_code"], closed["reason"]) == (1012, "shutting_down")
        assert any("shutdown deadline passed" in r["event"] for r in records)
    finally:
        server.stop()
