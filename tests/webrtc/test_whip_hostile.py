"""Hostile WHIP publishers over real sockets: the limits docs/security.md promises for WebRTC, attacked.

Memory is read from the server's /proc/PID/status, /health latency measured
while each attack runs (tests/hardening/attack_support.py).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Iterator
from typing import Any

import av
import cv2
import httpx
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.hardening.attack_support import MiB, HealthProbe, process_status
from tests.observability.support import scrape, settled
from tests.support.server import RunningServer, start_server
from tests.webrtc.whip_support import WEBRTC_ENV, ClipTrack, Publisher, loopback_only, publish, still_face

FLOOD_SECONDS = 60.0
FLOOD_FPS = 60


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_server(
        {**WEBRTC_ENV, "FORGESYTE_STREAM_MAX_SESSIONS": "8", "FORGESYTE_STREAM_WEBRTC_CONNECT_TIMEOUT_S": "2", "FORGESYTE_STREAM_LOG_LEVEL": "info"}
    )
    yield running
    running.stop()


def run(coroutine: Any) -> Any:
    with loopback_only():
        return asyncio.run(coroutine)


async def _offer() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="sendonly")
    pc.createDataChannel("results")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def test_a_ten_megabyte_offer_is_refused_without_being_read_into_memory(server: RunningServer) -> None:
    before = process_status(server.process.pid)["VmRSS"]
    with HealthProbe(server) as probe:
        for _ in range(20):
            response = httpx.post(
                f"{server.http}/v1/whip?pipeline_id=probe",
                content=b"v=0\r\n" + b"a=" + b"x" * (10 * 1024 * 1024),
                headers={"content-type": "application/sdp"},
                timeout=60,
                trust_env=False,
            )
            assert response.status_code == 413 and response.json()["error"] == "frame_too_large"
    grown = process_status(server.process.pid)["VmRSS"] - before
    assert grown < 4 * MiB, f"RSS grew by {grown / MiB:.1f} MiB over twenty 10 MB offers"
    probe.check()


def test_many_half_open_offers_hold_slots_only_until_the_connect_timeout(server: RunningServer) -> None:
    """Offers whose publisher never connects: at most MAX_SESSIONS are admitted, every slot comes back."""
    sdps = [run(_offer()) for _ in range(40)]
    statuses: list[int] = []
    with HealthProbe(server) as probe:
        with httpx.Client(base_url=server.http, timeout=30, trust_env=False) as http:
            for sdp in sdps:
                statuses.append(http.post("/v1/whip?pipeline_id=probe", content=sdp.encode(), headers={"content-type": "application/sdp"}).status_code)
        assert statuses.count(201) == 8 and statuses.count(503) == 32, statuses
        after = settled(server, timeout=10)
    assert after.total("stream_webrtc_connect_failures_total", stage="ice_dtls") >= 8
    probe.check()

    async def honest() -> Publisher:
        publisher = await publish(server.http, "probe", ClipTrack([still_face(160, 120)] * 6, fps=15))
        assert isinstance(publisher, Publisher), publisher.text
        await publisher.finish(5, 10)
        return publisher

    assert len(run(honest()).replies()) >= 5, "the freed slots serve an honest publisher"


def _encoded_1080p(frames: int) -> list[bytes]:
    """A 1920x1080 H.264 clip, encoded once: the flood sends it again and again without encoding."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 1920, 1080, "yuv420p"
    encoder.time_base = fractions.Fraction(1, FLOOD_FPS)
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "38", "g": str(frames), "bf": "0"}
    face = cv2.resize(still_face(640, 480), (1920, 1080))
    packets: list[bytes] = []
    for number in range(frames):
        picture = np.roll(face, 8 * number, axis=1)
        frame = av.VideoFrame.from_ndarray(picture, format="bgr24").reformat(format="yuv420p")
        frame.pts = number
        packets += [bytes(packet) for packet in encoder.encode(frame)]
    packets += [bytes(packet) for packet in encoder.encode(None)]
    assert len(packets) == frames
    return packets


class PacketTrack(MediaStreamTrack):
    """Pre-encoded H.264 at a fixed rate: a camera far faster than the pipeline, at no encoding cost to the test."""

    kind = "video"

    def __init__(self, packets: list[bytes], fps: int, seconds: float) -> None:
        super().__init__()
        self._packets = packets
        self._fps = fps
        self._count = int(fps * seconds)
        self.sent = 0
        self._started: float | None = None

    async def recv(self) -> av.Packet:
        if self.sent >= self._count:
            self.stop()
            raise MediaStreamError
        if self._started is None:
            self._started = time.monotonic()
        wait = self._started + self.sent / self._fps - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        packet = av.Packet(self._packets[self.sent % len(self._packets)])
        packet.pts = self.sent * (90_000 // self._fps)
        packet.time_base = fractions.Fraction(1, 90_000)
        self.sent += 1
        return packet


def test_1080p_at_60_fps_into_a_slow_pipeline_keeps_memory_and_latency_flat_and_reports_drops(server: RunningServer) -> None:
    packets = _encoded_1080p(60)
    pid = server.process.pid
    rss: list[tuple[float, int]] = []

    async def scenario() -> Publisher:
        track = PacketTrack(packets, FLOOD_FPS, FLOOD_SECONDS)
        publisher = await publish(server.http, "slow", track, codec="H264")  # type: ignore[arg-type]
        assert isinstance(publisher, Publisher), publisher.text
        started = time.monotonic()
        while track.readyState == "live" and time.monotonic() - started < FLOOD_SECONDS + 10:
            rss.append((time.monotonic() - started, process_status(pid)["VmRSS"]))
            await asyncio.sleep(1.0)
        await asyncio.sleep(1.0)
        await publisher.delete()
        await publisher.close()
        return publisher

    before = scrape(server)
    with HealthProbe(server) as probe:
        publisher = run(scenario())
    after = settled(server)
    replies = publisher.replies_in_order()
    results = [m for m in replies if "result" in m]
    dropped = [m for m in replies if m.get("dropped")]
    decoded = len(replies)
    discarded = after.total("stream_webrtc_frames_discarded_total") - before.total("stream_webrtc_frames_discarded_total")
    # The pipeline takes 100 ms: about 10 of the 60 frames a second run, the rest are dropped, each reported.
    assert 0.6 * FLOOD_SECONDS * 10 <= len(results) <= 1.2 * FLOOD_SECONDS * 10, (len(results), decoded)
    assert len(dropped) >= 0.5 * decoded
    assert decoded + discarded >= 0.9 * FLOOD_SECONDS * FLOOD_FPS, (decoded, discarded)
    # Latency: the age of each result at arrival, relative to the first one's (matched by RTP timestamp).
    arrivals = {id(m): t for m, t in zip(publisher.messages, publisher.received_at)}
    ages = [arrivals[id(m)] - ((m["rtp_timestamp"] - results[0]["rtp_timestamp"]) % 2**32) / 90_000 for m in results]
    tenth = max(1, len(ages) // 10)
    first, last = sorted(ages[:tenth])[tenth // 2], sorted(ages[-tenth:])[tenth // 2]
    assert last - first < 0.25, f"result latency grew by {(last - first) * 1000:.0f} ms over the flood"
    # Memory: flat after the first seconds (decoders and buffers warmed up).
    warm = [value for at, value in rss if at >= 10]
    print(
        f"\n1080p60 flood: {decoded} frames decoded, {int(discarded)} discarded before decoding, {len(results)} results, "
        f"{len(dropped)} dropped; result age growth {(last - first) * 1000:.0f} ms; RSS {rss[0][1] / MiB:.0f} MiB at start, "
        f"{warm[0] / MiB:.0f} MiB at 10 s, max {max(warm) / MiB:.0f} MiB; {probe.check()}"
    )
    assert max(warm) - warm[0] < 24 * MiB, f"RSS went from {warm[0] / MiB:.0f} MiB to {max(warm) / MiB:.0f} MiB"
    probe.check()
