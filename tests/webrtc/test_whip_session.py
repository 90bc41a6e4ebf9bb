"""WHIP sessions against the real server with a real aiortc publisher on 127.0.0.1: results, drops, endings.

A frame of the session is a frame the server decoded, each released to the
decoder at its marked last packet (receive_bounds.MarkerJitterBuffer), the
publisher's last frame included.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.observability.support import scrape, settled
from tests.support.server import RunningServer, start_server
from tests.webrtc.whip_support import WEBRTC_ENV, ClipTrack, Publisher, face_frames, loopback_only, publish, still_face

VIDEO_STEP = 3000  # 90 kHz / 30 fps


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_server({**WEBRTC_ENV, "FORGESYTE_STREAM_IDLE_TIMEOUT_S": "2", "FORGESYTE_STREAM_WEBRTC_CONNECT_TIMEOUT_S": "3"})
    yield running
    running.stop()


def run(coroutine: Any) -> Any:
    with loopback_only():
        return asyncio.run(coroutine)


async def _published(server: RunningServer, pipeline: str, track: ClipTrack, **options: Any) -> Publisher:
    published = await publish(server.http, pipeline, track, **options)
    assert isinstance(published, Publisher), f"{published.status_code}: {published.text}"
    return published


def _check_replies(publisher: Publisher, decoded: int) -> list[dict[str, Any]]:
    """Exactly one reply per decoded frame, numbered 0..n-1, RTP timestamps rising with the index; all declared."""
    replies = publisher.replies_in_order(decoded)
    stamps = [m["rtp_timestamp"] for m in replies]
    steps = {(later - earlier) % 2**32 for earlier, later in zip(stamps, stamps[1:])}
    assert all(VIDEO_STEP - 2 <= step <= VIDEO_STEP * 3 for step in steps), f"RTP steps {sorted(steps)[:10]}"
    return replies


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_a_face_clip_is_boxed_in_every_result_over_either_codec(server: RunningServer, codec: str) -> None:
    frames = face_frames(40)

    async def scenario() -> Publisher:
        publisher = await _published(server, "faces", ClipTrack(frames, fps=15), codec=codec)
        assert await publisher.finish(40, 30) == 200
        return publisher

    publisher = run(scenario())
    replies = _check_replies(publisher, 40)
    assert len(replies) == 40, "every frame sent, the last one included, is decoded and answered"
    results = [m for m in replies if "result" in m]
    assert len(results) >= 0.9 * len(replies)
    boxed = [m for m in results if m["result"]["faces"]]
    assert len(boxed) >= 0.95 * len(results), f"{len(boxed)} of {len(results)} results found the face"
    # The face moves left to right across the clip (tests/support/media.py): so do the boxes.
    first, last = boxed[0]["result"]["faces"][0]["box"], boxed[-1]["result"]["faces"][0]["box"]
    assert last["x1"] - first["x1"] > 200
    settled(server)


def test_a_pipeline_slower_than_the_camera_drops_the_waiting_frames_each_once_with_its_cause(server: RunningServer) -> None:
    async def scenario() -> Publisher:
        publisher = await _published(server, "slow", ClipTrack([still_face(320, 240)] * 61, fps=30))
        await publisher.finish(60, 20)
        return publisher

    publisher = run(scenario())
    replies = _check_replies(publisher, 60)
    dropped = [m for m in replies if m.get("dropped")]
    results = [m for m in replies if "result" in m]
    assert results and dropped, "100 ms per frame at 30 fps: some run, most are dropped"
    assert {m["cause"] for m in dropped} <= {"lagging", "buffer_full", "closing"}
    assert len(dropped) > len(results)
    warnings = [m for m in publisher.messages if m.get("warning") == "slow_down"]
    assert warnings and warnings[0]["suggested_fps"] is not None and warnings[0]["suggested_fps"] < 12


def test_a_frame_failure_answers_that_frame_and_the_session_goes_on(server: RunningServer) -> None:
    async def scenario() -> Publisher:
        publisher = await _published(server, "failing", ClipTrack([still_face(160, 120)] * 11, fps=10))
        await publisher.finish(10, 20)
        return publisher

    publisher = run(scenario())
    replies = _check_replies(publisher, 10)
    failures = [m for m in replies if m.get("error") == "pipeline_failure"]
    assert failures and any("result" in m for m in replies)


def test_delete_ends_the_session_and_its_slot_and_a_second_delete_is_not_found(server: RunningServer) -> None:
    async def scenario() -> tuple[Publisher, int, httpx.Response]:
        publisher = await _published(server, "probe", ClipTrack([still_face(160, 120)] * 1000, fps=15))
        await publisher.wait_for(5, 15)
        active = int(scrape(server).total("stream_sessions_active"))
        async with httpx.AsyncClient(base_url=server.http, trust_env=False) as http:
            (listed,) = (await http.get("/v1/streams")).json()
        assert listed["transport"] == "webrtc" and listed["pipeline_id"] == "probe" and listed["frames_received"] >= 5
        assert (await publisher.delete()).status_code == 200
        again = await publisher.delete()
        await publisher.close()
        return publisher, active, again

    publisher, active, again = run(scenario())
    assert active == 1
    assert again.status_code == 404 and again.json()["error"] == "not_found"
    assert publisher.replies()[0]["result"] == {"width": 160, "height": 120, "bytes": publisher.replies()[0]["result"]["bytes"], "components": 3}
    settled(server)


def test_the_peer_closing_ends_the_session(server: RunningServer) -> None:
    async def scenario() -> None:
        publisher = await _published(server, "probe", ClipTrack([still_face(160, 120)] * 1000, fps=15))
        await publisher.wait_for(3, 15)
        await publisher.close()

    run(scenario())
    settled(server)


def test_a_publisher_that_stops_sending_gets_idle_timeout_and_the_channel_closes(server: RunningServer) -> None:
    async def scenario() -> tuple[Publisher, float]:
        publisher = await _published(server, "probe", ClipTrack([still_face(160, 120)] * 4, fps=15))
        await publisher.wait_for(3, 10)
        started = time.monotonic()
        closed = await publisher.wait_closed(15)
        waited = time.monotonic() - started
        assert closed, "the server closes the channel after idle_timeout"
        await publisher.close()
        return publisher, waited

    publisher, waited = run(scenario())
    assert publisher.errors()[-1]["error"] == "idle_timeout"
    assert 1.0 < waited < 8.0
    settled(server)


def test_writing_on_the_results_channel_is_invalid_message_and_ends_the_session(server: RunningServer) -> None:
    async def scenario() -> Publisher:
        publisher = await _published(server, "probe", ClipTrack([still_face(160, 120)] * 1000, fps=15))
        await publisher.wait_for(2, 10)
        channel = next(iter(publisher.pc.sctp._data_channels.values())) if publisher.pc.sctp else None  # type: ignore[union-attr]
        assert channel is not None
        channel.send("hello")
        assert await publisher.wait_closed(10)
        await publisher.close()
        return publisher

    publisher = run(scenario())
    assert publisher.errors()[-1]["error"] == "invalid_message"
    settled(server)


def test_an_offer_that_never_connects_frees_its_slot_at_the_connect_timeout(server: RunningServer) -> None:
    before = scrape(server)

    async def scenario() -> None:
        published = await _published(server, "probe", ClipTrack([still_face(160, 120)] * 10, fps=15))
        # The publisher leaves without ever answering ICE: the server's connect deadline (3 s here) ends the session.
        await published.pc.close()

    started = time.monotonic()
    run(scenario())
    after = settled(server, timeout=10)
    assert time.monotonic() - started < 10
    assert after.total("stream_sessions_closed_total") - before.total("stream_sessions_closed_total") == 1
    failed = after.total("stream_webrtc_connect_failures_total", stage="ice_dtls") - before.total("stream_webrtc_connect_failures_total", stage="ice_dtls")
    assert failed == 1


def test_without_a_results_channel_the_session_runs_and_its_frames_are_counted(server: RunningServer) -> None:
    before = scrape(server)

    async def scenario() -> None:
        published = await _published(server, "probe", ClipTrack([still_face(160, 120)] * 11, fps=15), channel=False)
        await asyncio.sleep(2.0)
        await published.delete()
        await published.close()

    run(scenario())
    after = settled(server)
    processed = after.total("stream_frames_processed_total", pipeline_id="probe") - before.total("stream_frames_processed_total", pipeline_id="probe")
    assert processed >= 10


def test_at_shutdown_the_channel_gets_shutting_down_then_closes() -> None:
    own = start_server({**WEBRTC_ENV, "FORGESYTE_STREAM_SHUTDOWN_TIMEOUT_S": "5"})

    async def scenario() -> Publisher:
        publisher = await _published(own, "probe", ClipTrack([still_face(160, 120)] * 1000, fps=15))
        await publisher.wait_for(3, 10)
        own.process.send_signal(signal.SIGTERM)
        assert await publisher.wait_closed(15), "the server closes the channel once it has said why"
        await publisher.close()
        return publisher

    try:
        publisher = run(scenario())
        code = own.process.wait(timeout=20)
    finally:
        own.stop()
    assert publisher.errors()[-1]["error"] == "shutting_down"
    assert code == -signal.SIGTERM, "uvicorn ends a graceful shutdown by re-raising the signal"
    _check_replies(publisher, 3)
