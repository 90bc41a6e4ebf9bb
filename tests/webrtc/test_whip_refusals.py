"""What the WHIP endpoint refuses, and how: the unified error body, the WebSocket's codes, fitting statuses.

Every refusal here comes before a peer connection exists; the limits that
count sessions (MAX_SESSIONS, the key's quota) count WebRTC and WebSocket
sessions together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection

from contracts.client import StreamClient
from tests.support.media import jpeg
from tests.support.server import RunningServer, start_server
from tests.webrtc.whip_support import WEBRTC_ENV, ClipTrack, Publisher, loopback_only, publish, still_face


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_server({**WEBRTC_ENV, "FORGESYTE_STREAM_MAX_SESSIONS": "2", "FORGESYTE_STREAM_MAX_FRAME_PIXELS": str(320 * 240)})
    yield running
    running.stop()


def run(coroutine: Any) -> Any:
    with loopback_only():
        return asyncio.run(coroutine)


async def _offer(*, video: bool = True, channel: bool = True) -> str:
    pc = RTCPeerConnection()
    if video:
        pc.addTransceiver("video", direction="sendonly")
    if channel:
        pc.createDataChannel("results")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def offer(**options: bool) -> str:
    return run(_offer(**options))


def post(server: RunningServer, body: bytes | str, *, pipeline: str = "probe", content_type: str = "application/sdp", **headers: str) -> httpx.Response:
    data = body.encode() if isinstance(body, str) else body
    return httpx.post(
        f"{server.http}/v1/whip?pipeline_id={pipeline}", content=data, headers={"content-type": content_type, **headers}, timeout=30, trust_env=False
    )


def refused(response: httpx.Response, status: int, error: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == error
    detail: str = body["detail"]
    return detail


def test_unknown_and_unavailable_pipelines_are_404_and_409(server: RunningServer) -> None:
    sdp = offer()
    assert "nope" in refused(post(server, sdp, pipeline="nope"), 404, "invalid_pipeline")
    assert "offline" in refused(post(server, sdp, pipeline="offline"), 409, "invalid_pipeline")
    refused(post(server, sdp, pipeline=""), 404, "invalid_pipeline")


def test_a_body_that_is_not_an_sdp_offer_is_refused_before_any_session(server: RunningServer) -> None:
    assert "application/sdp" in refused(post(server, offer(), content_type="text/plain"), 415, "invalid_message")
    refused(post(server, "hello"), 400, "invalid_message")
    refused(post(server, b"\xff\xfe" * 10), 400, "invalid_message")
    refused(post(server, "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=video x\r\n"), 400, "invalid_message")
    assert "video" in refused(post(server, offer(video=False)), 400, "invalid_message")


def test_an_offer_without_a_codec_the_server_decodes_is_415(server: RunningServer) -> None:
    sdp = offer().replace("VP8/90000", "VP9/90000").replace("H264/90000", "AV1/90000")
    assert "VP9" in refused(post(server, sdp), 415, "invalid_message")


def test_hundreds_of_media_sections_and_oversized_offers_are_refused(server: RunningServer) -> None:
    sdp = offer()
    sections = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n" * 300
    assert "300 media sections" not in sdp
    assert "media sections" in refused(post(server, sdp.replace("m=application", sections + "m=application")), 400, "invalid_message")
    refused(post(server, b"v=0\r\n" + b"a=x\r\n" * 2_000_000), 413, "frame_too_large")


def test_max_sessions_counts_webrtc_and_websocket_sessions_together(server: RunningServer) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        published = await publish(server.http, "probe", ClipTrack([still_face(160, 120)] * 300, fps=10))
        assert isinstance(published, Publisher)
        async with await StreamClient.connect(server.ws("probe")) as websocket:
            await websocket.send_frame(jpeg())
            await websocket.recv()
            full = await publish(server.http, "probe", ClipTrack([still_face(160, 120)] * 10, fps=10))
            assert not isinstance(full, Publisher)
        await published.delete()
        await published.close()
        again = await publish(server.http, "probe", ClipTrack([still_face(160, 120)] * 10, fps=10))
        assert isinstance(again, Publisher)
        await again.delete()
        await again.close()
        return full, httpx.Response(201)

    full, _ = run(scenario())
    assert "2 concurrent sessions" in refused(full, 503, "server_busy")
    assert full.headers["retry-after"] == "1"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    keys = Path(tmp_path_factory.mktemp("keys")) / "keys"
    keys.write_text("alice alice-secret-key-0123456789\nbob bob-secret-key-0123456789\n")
    running = start_server({**WEBRTC_ENV, "FORGESYTE_STREAM_API_KEYS_FILE": str(keys), "FORGESYTE_STREAM_MAX_SESSIONS_PER_KEY": "1"})
    yield running
    running.stop()


def test_api_keys_and_the_per_key_quota_hold_for_webrtc(keyed_server: RunningServer) -> None:
    server = keyed_server
    refused(post(server, offer()), 401, "unauthorized")
    refused(post(server, offer(), authorization="Bearer wrong"), 401, "unauthorized")

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        alice = await publish(server.http, "probe", ClipTrack([still_face(160, 120)] * 300, fps=10), api_key="alice-secret-key-0123456789")
        assert isinstance(alice, Publisher), alice.text
        second = await publish(server.http, "probe", ClipTrack([still_face(160, 120)] * 10, fps=10), api_key="alice-secret-key-0123456789")
        assert not isinstance(second, Publisher)
        # Bob may not end Alice's session: to him it does not exist.
        async with httpx.AsyncClient(base_url=server.http) as http:
            foreign = await http.delete(alice.location, headers={"authorization": "Bearer bob-secret-key-0123456789"})
        own = await alice.delete()
        await alice.close()
        return second, foreign, own

    second, foreign, own = run(scenario())
    assert "this API key" in refused(second, 503, "server_busy")
    refused(foreign, 404, "not_found")
    assert own.status_code == 200


def test_the_endpoint_is_declared_in_the_openapi_document(server: RunningServer) -> None:
    document = httpx.get(f"{server.http}/schema/openapi.json", timeout=10, trust_env=False).json()
    post_operation = document["paths"]["/v1/whip"]["post"]
    assert "application/sdp" in post_operation["requestBody"]["content"]
    assert {"201", "400", "404", "409", "413", "415", "503"} <= set(post_operation["responses"])
    assert "delete" in document["paths"]["/v1/whip/sessions/{resource_id}"]


def test_video_over_the_pixel_limit_ends_the_session_with_frame_too_large_at_its_first_frame(server: RunningServer) -> None:
    async def scenario() -> Publisher:
        publisher = await publish(server.http, "probe", ClipTrack([still_face(640, 480)] * 300, fps=10))
        assert isinstance(publisher, Publisher)
        assert await publisher.wait_closed(15)
        await publisher.close()
        return publisher

    publisher = run(scenario())
    (error,) = publisher.errors()
    assert error["error"] == "frame_too_large" and error["frame_index"] == 0 and "640x480" in error["detail"]
    assert publisher.replies() == [error], "the first frame is the last: nothing of it was run"
