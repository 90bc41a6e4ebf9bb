"""The page at / over WebRTC in real headless Chromium (Debian's chromium, driven by Playwright), against the real server.

The fake camera plays a face moving ~24 px a frame (browser_support). The page
publishes it over WHIP to `faces`, gets results on its `results` data channel,
and paints each result's boxes on the picture its rtp_timestamp names: the
test reads the overlay canvas and checks the box against the face in the very
picture painted under it, so a result drawn on the wrong frame fails.
Everything runs on 127.0.0.1 (see browser_support).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.settings_webrtc import IceServer
from tests.support.server import RunningServer, start_server
from tests.webrtc.browser_support import (
    CLIP_FPS,
    CLIP_FRAMES,
    FACE_STEP_PX,
    FACE_TOP,
    PageWatch,
    box_pixels,
    browser,  # noqa: F401  (a fixture)
    clip_jpegs,
    face_left,
    fake_camera,  # noqa: F401  (a fixture)
    find_face,
)
from tests.webrtc.whip_support import WEBRTC_ENV

PAGE_KEY = "page-webrtc-key-0123456789"
TOLERANCE_PX = 8  # Haar boxes on a VP8-coded picture vs. on the JPEG; a frame off would be ~24 px off


@pytest.fixture(scope="module")
def rtc_server() -> Iterator[RunningServer]:
    running = start_server({**WEBRTC_ENV, "FORGESYTE_STREAM_LOG_LEVEL": "info"})
    yield running
    running.stop()


@pytest.fixture
def watch(browser: Any, rtc_server: RunningServer) -> Iterator[PageWatch]:  # noqa: F811
    context = browser.new_context()
    watch = PageWatch(context, rtc_server.port)
    yield watch
    # A test that failed mid-stream stops its page (a closed browser context says nothing to the server, whose
    # session would last until its idle timeout), so the next test starts clean.
    if watch.page.is_enabled("#stop"):
        watch.page.click("#stop")
        watch.wait_whip("DELETE")
    context.close()
    rtc_server.wait_for(lambda health: health["sessions_active"] == 0, timeout=15)


def _face_box_in_the_patch(server: RunningServer) -> dict[str, float]:
    """The box `faces` finds in clip frames, relative to the face patch's top-left corner (mean of three frames)."""
    boxes = []
    for index in (3, CLIP_FRAMES // 2, CLIP_FRAMES - 4):
        answer = httpx.post(
            f"{server.http}/v1/pipelines/faces/frames",
            content=clip_jpegs()[index],
            headers={"Content-Type": "image/jpeg"},
            timeout=30,
            trust_env=False,
        ).json()
        (face,) = answer["result"]["faces"]
        boxes.append({k: face["box"][k] - (face_left(index) if k[0] == "x" else FACE_TOP) for k in ("x1", "y1", "x2", "y2")})
    return {k: sum(b[k] for b in boxes) / len(boxes) for k in boxes[0]}


def _streams(server: RunningServer, **headers: str) -> list[dict[str, Any]]:
    return httpx.get(f"{server.http}/v1/streams", headers=headers, timeout=5, trust_env=False).json()


def test_webrtc_is_the_default_and_each_box_lands_on_the_face_of_the_picture_it_answers(watch: PageWatch, rtc_server: RunningServer) -> None:
    relative = _face_box_in_the_patch(rtc_server)
    page = watch.page
    page.goto(f"{rtc_server.http}/?pipeline=faces&source=camera&autostart=1")
    assert page.input_value("#transport") == "webrtc"
    assert page.is_hidden("#quality-field")  # JPEG quality means nothing to the encoder's video
    watch.wait_answered(5)
    assert [(m, s) for m, _, s in watch.whip] == [("POST", 201)]
    assert watch.text("status") == "streaming to faces"

    # Each painted picture shows the face where the clip has it, and the result's box on that face.
    page.wait_for_function("Number(document.getElementById('overlay-mode').dataset.value) >= 3", timeout=20_000)
    lefts = set()
    for _ in range(6):
        picture = watch.overlay()
        x, y, score = find_face(picture)
        assert score > 0.6, f"no face patch in the painted picture (best match {score:.2f})"
        assert abs(y - FACE_TOP) <= 2
        lefts.add(x)
        box = box_pixels(picture)
        assert box is not None, "no box drawn over the painted picture"
        # The label sits above the box: its sides and bottom are compared (strokes reach a pixel beyond them).
        x1, _, x2, y2 = box
        expected = {k: relative[k] + (x if k[0] == "x" else y) for k in relative}
        assert abs(x1 - expected["x1"]) <= TOLERANCE_PX, (box, expected)
        assert abs(x2 - expected["x2"]) <= TOLERANCE_PX, (box, expected)
        assert abs(y2 - expected["y2"]) <= TOLERANCE_PX, (box, expected)
        time.sleep(0.35)
    assert len(lefts) >= 3 and max(lefts) - min(lefts) >= 2 * FACE_STEP_PX, f"the painted face did not move: {sorted(lefts)}"

    # The figures move; latency runs from each frame's encoding to its result.
    first, first_matched = watch.value("answered"), watch.value("overlay-mode")
    time.sleep(1.5)
    assert watch.value("answered") > first
    # Nearly every result finds its picture (all of them, measured; a slow first bitmap may miss).
    assert watch.value("overlay-mode") - first_matched >= 0.8 * (watch.value("answered") - first)
    assert watch.value("sent") >= watch.value("answered") - 2  # answers never outrun the frames the encoder sent
    assert float(watch.text("answered-fps")) > 0 and float(watch.text("sent-fps")) > 0
    assert watch.text("p50").endswith(" ms") and watch.text("p95").endswith(" ms")
    (listed,) = _streams(rtc_server)
    assert listed["pipeline_id"] == "faces" and listed["transport"] == "webrtc" and listed["remote_address"].startswith("127.0.0.1")

    page.click("#stop")
    page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
    (delete,) = watch.wait_whip("DELETE")
    assert delete[0].startswith("/v1/whip/sessions/") and delete[1] == 200
    assert _streams(rtc_server) == []
    rtc_server.wait_for(lambda health: health["sessions_active"] == 0)
    assert not watch.errors and not watch.foreign, (watch.errors, watch.foreign)


def test_the_websocket_transport_of_the_same_page_still_streams(watch: PageWatch, rtc_server: RunningServer) -> None:
    page = watch.page
    page.goto(f"{rtc_server.http}/?pipeline=faces&source=camera&autostart=1&transport=websocket")
    assert page.input_value("#transport") == "websocket" and page.is_visible("#quality-field")
    watch.wait_answered(3)
    first = watch.value("answered")
    (listed,) = _streams(rtc_server)
    assert listed["transport"] == "litestar"
    assert box_pixels(watch.overlay()) is not None
    time.sleep(1.0)
    assert watch.value("answered") > first and watch.text("overlay-mode") == "newest result"
    page.click("#stop")
    rtc_server.wait_for(lambda health: health["sessions_active"] == 0)
    assert watch.whip == [] and not watch.errors and not watch.foreign, (watch.whip, watch.errors, watch.foreign)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    keys: Path = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(f"page {PAGE_KEY}\n", encoding="utf-8")
    running = start_server(
        {
            **WEBRTC_ENV,
            "FORGESYTE_STREAM_LOG_LEVEL": "info",
            "FORGESYTE_STREAM_API_KEYS_FILE": str(keys),
            "FORGESYTE_STREAM_MAX_SESSIONS_PER_KEY": "1",
        }
    )
    yield running
    running.stop()


def test_the_key_goes_as_bearer_and_a_refused_post_shows_the_servers_error(browser: Any, keyed_server: RunningServer) -> None:  # noqa: F811
    """The key authorises the WHIP POST; a second page on the same key meets the key's quota: 503 server_busy."""
    first, second = browser.new_context(), browser.new_context()
    try:
        streaming = PageWatch(first, keyed_server.port)
        streaming.page.goto(f"{keyed_server.http}/?pipeline=probe&source=camera&autostart=1&key={PAGE_KEY}")
        streaming.wait_answered(3)
        assert "key=" not in streaming.page.url
        (listed,) = _streams(keyed_server, Authorization=f"Bearer {PAGE_KEY}")
        assert listed["transport"] == "webrtc" and listed["key_name"] == "page"

        refused = PageWatch(second, keyed_server.port)
        refused.page.goto(f"{keyed_server.http}/?pipeline=probe&source=camera&autostart=1&key={PAGE_KEY}")
        refused.page.wait_for_function("document.getElementById('status').classList.contains('error')", timeout=20_000)
        assert [(m, s) for m, _, s in refused.whip] == [("POST", 503)]
        assert refused.text("status").startswith("server_busy: ") and refused.text("status").endswith("(HTTP 503)")
        assert refused.page.is_enabled("#start") and refused.page.is_disabled("#stop")

        streaming.page.click("#stop")
        assert [status for _, status in streaming.wait_whip("DELETE")] == [200]
        keyed_server.wait_for(lambda health: health["sessions_active"] == 0)
        assert [(m, s) for m, _, s in streaming.whip] == [("POST", 201), ("DELETE", 200)]
    finally:
        first.close()
        second.close()


def test_the_page_reads_the_ice_servers_of_the_link_headers_the_server_writes(watch: PageWatch, rtc_server: RunningServer) -> None:
    """The values are the server's own (IceServer.link_headers), joined as the WHIP answer joins them."""
    servers = (
        IceServer(("stun:127.0.0.1:3478",)),
        IceServer(("turn:127.0.0.1:3478?transport=udp", "turns:127.0.0.1:5349"), 'us"er', "c;r,e<d"),
    )
    header = ", ".join(link for server in servers for link in server.link_headers())
    watch.page.goto(f"{rtc_server.http}/")
    parsed = watch.page.evaluate("header => import('/client/webrtc.js').then(m => m.iceServersFromLink(header))", header)
    assert parsed == [
        {"urls": "stun:127.0.0.1:3478"},
        {"urls": "turn:127.0.0.1:3478?transport=udp", "username": 'us"er', "credential": "c;r,e<d"},
        {"urls": "turns:127.0.0.1:5349", "username": 'us"er', "credential": "c;r,e<d"},
    ]


def test_slow_down_caps_the_encoders_frame_rate(watch: PageWatch, rtc_server: RunningServer) -> None:
    """`slow` takes 100 ms a frame, the camera sends 15: drops, slow_down, and the encoder sends no faster than suggested."""
    page = watch.page
    page.goto(f"{rtc_server.http}/?pipeline=slow&source=camera&autostart=1")
    page.wait_for_function("document.getElementById('suggested').textContent !== '–'", timeout=30_000)
    assert watch.value("dropped") > 0
    suggested = float(watch.text("suggested"))
    assert 0 < suggested < CLIP_FPS
    time.sleep(3.0)  # the sent rate is counted over the last 2 s
    sent_fps = float(watch.text("sent-fps"))
    assert sent_fps <= suggested + 1.5, (sent_fps, suggested)
    page.click("#stop")
    assert [status for _, status in watch.wait_whip("DELETE")] == [200]
