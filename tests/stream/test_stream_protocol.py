"""The stream protocol over a real socket: replies, errors and close codes."""

import asyncio

import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.client import StreamClient
from contracts.fault_plugin import SECRET
from tests.support.media import FACE_JPEG, jpeg, jpeg_of_size
from tests.support.server import RunningServer

LIMIT = 100_000


def run(coroutine):
    return asyncio.run(coroutine)


def test_valid_frames_get_results_in_order_with_their_index(server: RunningServer) -> None:
    async def scenario():
        client = await StreamClient.open(server.ws("probe"))
        for i in range(5):
            await client.send(jpeg(64 + i, 48))
            reply = await client.recv()
            assert reply == {"frame_index": i, "result": {"width": 64 + i, "height": 48, "bytes": reply["result"]["bytes"], "components": 3}}
        await client.close()

    run(scenario())


def test_faces_pipeline_finds_the_face_over_the_stream(server: RunningServer) -> None:
    async def scenario():
        client = await StreamClient.open(server.ws("faces"))
        await client.send(FACE_JPEG.read_bytes())
        reply = await client.recv()
        await client.close()
        return reply

    reply = run(scenario())
    (face,) = reply["result"]["faces"]
    assert face["label"] == "face"
    assert face["box"]["x1"] == pytest.approx(177, abs=10) and face["box"]["y1"] == pytest.approx(66, abs=10)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [({}, "pipeline_id is required"), ({"pipeline_id": "nope"}, "unknown pipeline_id 'nope'"), ({"pipeline_id": "offline"}, "unavailable")],
)
def test_missing_unknown_or_unavailable_pipeline_is_refused_with_1008(server: RunningServer, query, fragment) -> None:
    async def scenario():
        client = await StreamClient.open(server.ws(query.get("pipeline_id")))
        return await client.recv_until_closed()

    received = run(scenario())
    assert [m["error"] for m in received.messages] == ["invalid_pipeline"]
    assert fragment in received.messages[0]["detail"]
    assert received.close_code == 1008


def test_text_message_is_invalid_message_and_closes_1003(server: RunningServer) -> None:
    async def scenario():
        client = await StreamClient.open(server.ws("probe"))
        await client.send(jpeg())
        await client.send("not a frame")
        return await client.recv_until_closed()

    received = run(scenario())
    assert received.messages[0]["frame_index"] == 0 and "result" in received.messages[0]
    assert received.messages[-1]["error"] == "invalid_message"
    assert received.close_code == 1003


@pytest.mark.parametrize("payload", [b"", b"GIF89a....", b"\xff\xd8 no end marker", b"\x00\xff\xd9"])
def test_bad_markers_are_invalid_frame_and_close_1007(server: RunningServer, payload: bytes) -> None:
    async def scenario():
        client = await StreamClient.open(server.ws("probe"))
        await client.send(payload)
        return await client.recv_until_closed()

    received = run(scenario())
    assert received.messages == [{"error": "invalid_frame", "detail": received.messages[0]["detail"], "frame_index": 0}]
    assert received.close_code == 1007


def test_markers_around_garbage_do_not_decode_and_are_invalid_frame(server: RunningServer) -> None:
    async def scenario():
        client = await StreamClient.open(server.ws("decode"))
        await client.send(jpeg())
        await client.send(b"\xff\xd8" + b"\x13" * 400 + b"\xff\xd9")
        return await client.recv_until_closed()

    received = run(scenario())
    assert received.messages[0]["result"]["shape"] == [48, 64, 3]
    assert received.messages[1]["error"] == "invalid_frame" and received.messages[1]["frame_index"] == 1
    assert received.close_code == 1007


def test_frame_at_the_limit_is_accepted_and_one_byte_over_is_frame_too_large(server: RunningServer) -> None:
    async def scenario():
        client = await StreamClient.open(server.ws("probe"))
        await client.send(jpeg_of_size(LIMIT))
        ok = await client.recv()
        await client.send(jpeg_of_size(LIMIT + 1))
        received = await client.recv_until_closed()
        return ok, received

    ok, received = run(scenario())
    assert ok["result"]["bytes"] == LIMIT
    error = received.messages[-1]
    assert error["error"] == "frame_too_large" and error["frame_index"] == 1
    assert str(LIMIT) in error["detail"]
    assert received.close_code == 1009


def test_a_message_far_over_the_websocket_limit_is_refused_without_buffering(server: RunningServer) -> None:
    async def scenario():
        client = await StreamClient.open(server.ws("probe"))
        with pytest.raises(ConnectionClosed):
            # The server closes while the client is still writing: it never buffers the whole message.
            await client.send(jpeg_of_size(8 * 1024 * 1024))
            await client.recv()
        return client.connection.protocol.close_rcvd

    close = run(scenario())
    assert close is not None and close.code == 1009
    assert server.health()["status"] == "ok"


def test_a_failing_tool_answers_pipeline_failure_and_keeps_the_session(server: RunningServer) -> None:
    async def scenario():
        client = await StreamClient.open(server.ws("failing"))
        replies = []
        for _ in range(4):
            await client.send(jpeg())
            replies.append(await client.recv())
        await client.close()
        return replies

    replies = run(scenario())
    assert [("error" in r, r["frame_index"]) for r in replies] == [(True, 0), (False, 1), (True, 2), (False, 3)]
    for failure in (replies[0], replies[2]):
        assert failure["error"] == "pipeline_failure"
        assert "node 'boom'" in failure["detail"] and "fault.fail" in failure["detail"]
        for leaked in (SECRET, "Traceback", "RuntimeError", "/etc/"):
            assert leaked not in failure["detail"]
    assert SECRET in server.log_text(), "the private cause is logged"


def test_a_tool_past_the_frame_timeout_is_pipeline_failure_and_the_session_goes_on(server: RunningServer) -> None:
    async def scenario():
        client = await StreamClient.open(server.ws("hang"))
        await client.send(jpeg())
        first = await client.recv()
        await client.close()
        other = await StreamClient.open(server.ws("probe"))
        await other.send(jpeg())
        second = await other.recv()
        await other.close()
        return first, second

    first, second = run(scenario())
    assert first["error"] == "pipeline_failure" and first["frame_index"] == 0
    assert "500 ms frame timeout" in first["detail"]
    assert "result" in second
    # The hung worker is given back once the tool returns.
    server.wait_for(lambda h: h["busy_workers"] == 0 and h["sessions_active"] == 0)


def test_a_result_carrying_raw_bytes_is_refused_not_echoed(server: RunningServer) -> None:
    async def scenario():
        client = await StreamClient.open(server.ws("leaky"))
        await client.send(jpeg())
        reply = await client.recv()
        await client.close()
        return reply

    reply = run(scenario())
    assert reply["error"] == "pipeline_failure" and reply["frame_index"] == 0


def test_the_session_is_exposed_on_websocket_state_and_removed_on_disconnect(server: RunningServer) -> None:
    async def scenario():
        client = await StreamClient.open(server.ws("probe"))
        await client.send(jpeg())
        await client.recv()
        during = server.health()["sessions_active"]
        await client.close()
        return during

    assert run(scenario()) >= 1
    server.wait_for(lambda h: h["sessions_active"] == 0)
