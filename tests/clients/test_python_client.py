"""The Python client package against the real server: typed replies, errors as exceptions, stream()'s promises."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from websockets.asyncio.client import connect

from forgesyte_stream_client import (
    AsyncStreamClient,
    ConnectError,
    Dropped,
    Frame,
    FrameFailed,
    InvalidPipelineError,
    Pacing,
    Reconnect,
    Result,
    ServerBusyError,
    Skipped,
    SlowDown,
    StreamClient,
    StreamError,
    UnauthorizedError,
    run,
    stream,
    stream_url,
)
from forgesyte_stream_client.errors import error_from_close
from tests.clients.support import RefusingServer
from tests.support.media import FACE_JPEG, jpeg
from tests.support.server import free_port, start_server


def frames(count: int, *, width: int = 64, height: int = 48) -> list[Frame]:
    return [Frame(i, jpeg=jpeg(width, height, seed=i)) for i in range(count)]


def test_stream_url_accepts_a_server_base_or_the_endpoint() -> None:
    assert stream_url("ws://h:1", "faces") == "ws://h:1/ws/video/stream?pipeline_id=faces"
    assert stream_url("http://h:1/", "a b") == "ws://h:1/ws/video/stream?pipeline_id=a+b"
    assert stream_url("wss://h/ws/video/stream?pipeline_id=x&k=1", "qr") == "wss://h/ws/video/stream?k=1&pipeline_id=qr"
    with pytest.raises(ValueError, match="ws://HOST:PORT"):
        stream_url("ftp://h", "faces")


def test_a_bare_close_becomes_the_contracts_error() -> None:
    assert isinstance(error_from_close(3000), UnauthorizedError)
    busy = error_from_close(1013)
    assert isinstance(busy, ServerBusyError) and busy.retryable and busy.code == "server_busy"
    lost = error_from_close(None)
    assert lost.code == "connection_lost" and lost.close_code == 1006 and not lost.retryable


def test_blocking_client_sends_bytes_and_images_and_gets_typed_results(base_url: str) -> None:
    image = np.zeros((48, 80, 3), np.uint8)
    with StreamClient(base_url, "probe", quality=70) as client:
        assert client.send(jpeg(64, 48)) == 0
        assert client.send(image) == 1
        replies = [client.receive(), client.receive()]
    assert all(isinstance(r, Result) for r in replies)
    by_index = {r.frame_index: r for r in replies}
    assert by_index[0].frame_info is not None and (by_index[0].frame_info.width, by_index[0].frame_info.height) == (64, 48)
    assert (by_index[1].frame_info.width, by_index[1].frame_info.height) == (80, 48)
    assert by_index[1].raw["result"]["bytes"] == by_index[1].frame_info.bytes > 0  # the raw dict stays at hand


def test_async_client_reads_a_face_as_a_typed_detection(base_url: str) -> None:
    async def main() -> Result:
        async with AsyncStreamClient(base_url, "faces") as client:
            await client.send(FACE_JPEG.read_bytes())
            reply = await client.receive()
            assert isinstance(reply, Result)
            return reply

    reply = asyncio.run(main())
    (face,) = reply.detections
    assert face.label == "face" and face.confidence > 0.5
    # The face of tests/data/face-astronaut.jpg (512x512) is in the upper middle.
    assert 150 < (face.box.x1 + face.box.x2) / 2 < 300 and 50 < (face.box.y1 + face.box.y2) / 2 < 200


def test_a_non_jpeg_is_refused_before_it_is_sent(base_url: str) -> None:
    with StreamClient(base_url, "probe") as client, pytest.raises(ValueError, match="FF D8"):
        client.send(b"not a jpeg")


def test_unknown_pipeline_raises_with_the_contracts_code_detail_and_close(base_url: str) -> None:
    # The server sends the error right after accepting: a send that finds the socket closed raises it too.
    with StreamClient(base_url, "nope") as client, pytest.raises(InvalidPipelineError) as raised:
        client.send(jpeg())
        client.receive()
    assert raised.value.code == "invalid_pipeline" and raised.value.close_code == 1008
    assert "nope" in raised.value.detail


def test_refused_connection_is_a_connect_error() -> None:
    with pytest.raises(ConnectError, match="cannot connect"):
        StreamClient(f"ws://127.0.0.1:{free_port()}", "probe").connect()


def test_a_file_loses_no_frame_to_drops_and_every_frame_gets_one_outcome_in_order(base_url: str) -> None:
    """Window pacing: the server's `fast` pipeline (20 ms) is never flooded, so nothing is dropped."""
    outcomes = list(run(base_url, "fast", frames(25)))
    assert [o.index for o in outcomes] == list(range(25))
    assert all(isinstance(o.reply, Result) for o in outcomes), [o.reply for o in outcomes if not isinstance(o.reply, Result)]
    assert all(o.latency_s is not None and o.latency_s > 0.015 for o in outcomes)


def test_pipeline_failures_answer_only_their_frames(base_url: str) -> None:
    outcomes = list(run(base_url, "failing", frames(6)))
    kinds = [type(o.reply) for o in outcomes]
    assert kinds.count(FrameFailed) == 3 and kinds.count(Result) == 3


def _live(count: int, fps: float) -> Iterator[Frame]:
    started = time.perf_counter()
    for i in range(count):
        delay = started + i / fps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield Frame(i, jpeg=jpeg(seed=i % 5))


def test_a_live_source_sends_the_newest_frame_and_skips_on_the_client_not_the_server(base_url: str) -> None:
    """50 fps into a 100 ms pipeline: the client skips what the server cannot take; the server drops nothing."""
    outcomes = list(run(base_url, "slow", _live(60, 50.0), live=True))
    assert [o.index for o in outcomes] == list(range(60))
    results = [o for o in outcomes if isinstance(o.reply, Result)]
    skipped = [o for o in outcomes if isinstance(o.reply, Skipped)]
    assert not [o for o in outcomes if isinstance(o.reply, Dropped)]
    assert len(results) >= 5 and len(skipped) >= 30
    assert max(o.latency_s for o in results) < 1.0  # one in flight: latency stays near the processing time


def test_fixed_fps_overrides_pacing_and_the_servers_slow_down_reaches_the_caller(base_url: str) -> None:
    warnings: list[SlowDown] = []
    outcomes = list(run(base_url, "slow", frames(40), pacing=Pacing.fixed(40.0), on_warning=warnings.append))
    dropped = [o for o in outcomes if isinstance(o.reply, Dropped)]
    assert len(outcomes) == 40 and len(dropped) >= 10
    assert warnings and warnings[0].drop_rate > 0.3


def test_stream_reconnects_when_the_server_is_busy_and_resends_what_it_never_read() -> None:
    busy = start_server({"FORGESYTE_STREAM_MAX_SESSIONS": "1", "FORGESYTE_STREAM_LOG_LEVEL": "info"})
    try:
        url = f"ws://127.0.0.1:{busy.port}"
        holder_ready = threading.Event()
        release = threading.Event()

        def hold() -> None:
            async def main() -> None:
                async with connect(busy.ws("probe"), compression=None, proxy=None) as ws:
                    await ws.send(jpeg())
                    await ws.recv()
                    holder_ready.set()
                    await asyncio.to_thread(release.wait, 20)

            asyncio.run(main())

        holder = threading.Thread(target=hold)
        holder.start()
        assert holder_ready.wait(20)
        retries: list[tuple[StreamError, float]] = []

        def on_reconnect(error: StreamError, delay: float) -> None:
            retries.append((error, delay))
            release.set()  # the slot frees while the client backs off

        policy = Reconnect(attempts=5, initial_delay_s=0.3, max_delay_s=1.0)
        outcomes = list(run(url, "probe", frames(5), reconnect=policy, on_reconnect=on_reconnect))
        holder.join(20)
        assert retries and retries[0][0].close_code == 1013 and isinstance(retries[0][0], ServerBusyError)
        assert [o.index for o in outcomes] == list(range(5))
        assert all(isinstance(o.reply, Result) for o in outcomes)
        assert outcomes[-1].connection >= 1
    finally:
        release.set()
        busy.stop()


def test_busy_without_reconnect_raises_after_answering_every_frame_sent() -> None:
    busy = start_server({"FORGESYTE_STREAM_MAX_SESSIONS": "1", "FORGESYTE_STREAM_LOG_LEVEL": "info"})
    try:
        async def main() -> None:
            async with connect(busy.ws("probe"), compression=None, proxy=None) as ws:
                await ws.send(jpeg())
                await ws.recv()
                seen = []
                with pytest.raises(ServerBusyError) as raised:
                    async for outcome in stream(f"ws://127.0.0.1:{busy.port}", "probe", frames(3), reconnect=Reconnect(attempts=0)):
                        seen.append(outcome)
                assert raised.value.close_code == 1013
                assert all(isinstance(o.reply, ServerBusyError) for o in seen)

        asyncio.run(main())
    finally:
        busy.stop()


def test_the_api_key_goes_in_the_authorization_header_and_unauthorized_is_its_own_error() -> None:
    with RefusingServer() as refusing:
        with StreamClient(f"ws://127.0.0.1:{refusing.port}", "faces", api_key="s3cret") as client:
            client.send(jpeg())
            with pytest.raises(UnauthorizedError) as raised:
                client.receive()
    assert refusing.seen.authorization == ["Bearer s3cret"]
    assert raised.value.code == "unauthorized" and raised.value.close_code == 3000 and raised.value.detail == "unknown API key"


def test_an_image_is_encoded_at_the_chosen_quality(base_url: str) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    sizes = []
    with StreamClient(base_url, "probe") as client:
        for quality in (20, 95):
            client.send(image, quality=quality)
            reply = client.receive()
            assert isinstance(reply, Result) and reply.frame_info is not None
            sizes.append(reply.frame_info.bytes)
    assert sizes[0] < sizes[1]
    assert sizes[1] == len(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())


def test_the_contracts_result_examples_read_as_typed_views() -> None:
    """asyncapi.yaml's FrameResult examples: faces, OCR text, motion regions, nothing; and a QR result as the qr tool makes it."""
    import yaml

    from contracts.asyncapi_doc import DEFAULT_PATH
    from forgesyte_stream_client.replies import parse_message

    examples = {e["name"]: e["payload"] for e in yaml.safe_load(DEFAULT_PATH.read_text())["components"]["messages"]["FrameResult"]["examples"]}
    faces = parse_message(examples["faces"])
    assert isinstance(faces, Result) and [d.label for d in faces.detections] == ["face"] and faces.detections[0].box.x2 == 236
    text = parse_message(examples["text"])
    assert [line.text for line in text.text_lines] == ["EXIT 12"] and text.qr_payloads == []
    motion = parse_message(examples["motion"])
    assert [d.area for d in motion.detections] == [7840]
    assert parse_message(examples["empty"]).detections == []
    counted = parse_message({"frame_index": 4, "result": {"line_counts": {"door": {"in": 2, "out": 1}}}})
    assert counted.payload.result.line_counts["door"].in_ == 2
    plain = parse_message({"frame_index": 5, "result": {"width": 8, "height": 6, "bytes": 99}})
    assert plain.payload.frame_index == 5 and plain.frame_info is not None and plain.frame_info.bytes == 99
    qr = parse_message({"frame_index": 0, "result": {"qr_codes": [{"label": "qr", "confidence": 1.0, "box": {"x1": 1, "y1": 1, "x2": 9, "y2": 9}, "text": "hello"}]}})
    assert qr.qr_payloads == ["hello"] and qr.text_lines == [] and qr.frame_info is None


def test_a_message_outside_the_contract_is_a_protocol_error() -> None:
    from forgesyte_stream_client import ProtocolError
    from forgesyte_stream_client.replies import parse_message

    with pytest.raises(ProtocolError):
        parse_message({"frame_index": -1, "result": {}})
    for index in (None, -3, 1.5):
        with pytest.raises(ProtocolError):
            parse_message({"frame_index": index, "result": {}})
    with pytest.raises(ProtocolError):
        parse_message({"frame_index": 0, "result": []})
    with pytest.raises(ProtocolError):  # the keys the contract types are checked, even on the fast path for results
        parse_message({"frame_index": 0, "result": {"line_counts": {"door": {"in": -1, "out": 0}}}})
    with pytest.raises(ProtocolError):
        parse_message({"frame_index": 1, "dropped": True, "cause": "tired"})
    with pytest.raises(ProtocolError):
        parse_message({"hello": "world"})
