"""The Python client and CLI over `--transport webrtc`, against the real server, a real aiortc peer, 127.0.0.1 only.

The promises are the WebSocket path's (tests/clients): one outcome per source
frame, in order; the face boxed in the results; the same errors, summary line
and exit status.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aioice.ice
import cv2
import numpy as np
import pytest
from websockets.asyncio.client import connect

from forgesyte_stream_client import (
    Dropped,
    Frame,
    InvalidPipelineError,
    Pacing,
    Reconnect,
    Result,
    ServerBusyError,
    SlowDown,
    StreamError,
    WebRtcOptions,
    stream,
)
from forgesyte_stream_client.stats import Stats
from forgesyte_stream_client.webrtc import IceServer, ice_servers_from_links, whip_url
from tests.support.media import PEDESTRIANS_MP4, jpeg, moving_face_clip
from tests.support.server import RunningServer, start_server
from tests.webrtc.test_whip_turn import PASSWORD, USER, turn_port  # noqa: F401 - the module's coturn fixture

WEBRTC_ENV = {"FORGESYTE_STREAM_WEBRTC_HOST_ADDRESSES": "127.0.0.1", "FORGESYTE_STREAM_LOG_LEVEL": "info"}
LOOPBACK = WebRtcOptions(ice_host_addresses=("127.0.0.1",))
CLIENT_PATH = str(Path(__file__).resolve().parents[2] / "clients" / "python")


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_server(WEBRTC_ENV)
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _restore_aioice() -> Iterator[None]:
    """The client's ice_host_addresses replaces aioice's lookup for the process: put it back after each test."""
    original = aioice.ice.get_host_addresses
    yield
    aioice.ice.get_host_addresses = original


def face_frames(count: int) -> list[Frame]:
    return [Frame(i, jpeg=data) for i, data in enumerate(moving_face_clip(count))]


async def collect(*args: object, **kwargs: object) -> list:
    return [outcome async for outcome in stream(*args, transport="webrtc", **kwargs)]  # type: ignore[arg-type]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forgesyte_stream_client.cli", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, check=False,
    )


def _boxes_follow_the_face(outcomes: list) -> None:
    results = [o.reply for o in outcomes if isinstance(o.reply, Result)]
    assert all(r.detections for r in results), "every result found the face"
    first, last = results[0].detections[0].box, results[-1].detections[0].box
    assert last.x1 - first.x1 > 200, (first, last)  # the face crosses the frame left to right


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_a_file_over_webrtc_gets_one_result_per_frame_in_order_with_the_face_boxed(server: RunningServer, codec: str) -> None:
    """Window pacing, as a file over the WebSocket: at most two frames unanswered, so nothing is dropped."""
    options = WebRtcOptions(codec=codec, ice_host_addresses=("127.0.0.1",))
    outcomes = asyncio.run(collect(server.http, "faces", face_frames(24), webrtc=options))
    assert [o.index for o in outcomes] == list(range(24))
    assert all(isinstance(o.reply, Result) for o in outcomes), [o.reply for o in outcomes if not isinstance(o.reply, Result)]
    # Matched by RTP timestamp: on loopback nothing is lost, so the server's decode count is the frame number.
    assert [o.frame_index for o in outcomes] == list(range(24))
    assert all(o.reply.raw["rtp_timestamp"] >= 0 and o.latency_s and o.latency_s > 0 for o in outcomes)
    _boxes_follow_the_face(outcomes)
    stats = Stats()
    for outcome in outcomes:
        stats.add(outcome)
    assert stats.summary().startswith("24 frames: 24 results, 0 dropped, 0 failed, 0 skipped")


def test_paced_at_a_fixed_rate_over_webrtc_every_frame_is_answered_once(server: RunningServer) -> None:
    started = time.perf_counter()
    outcomes = asyncio.run(collect(server.http, "faces", face_frames(30), pacing=Pacing.fixed(15.0), webrtc=LOOPBACK))
    took = time.perf_counter() - started
    assert [o.index for o in outcomes] == list(range(30))
    assert all(isinstance(o.reply, (Result, Dropped)) for o in outcomes)
    assert sum(isinstance(o.reply, Result) for o in outcomes) >= 27
    _boxes_follow_the_face(outcomes)
    assert took >= 29 / 15.0, "the sender keeps the fixed rate"


def _live(count: int, fps: float) -> Iterator[Frame]:
    started = time.perf_counter()
    image = cv2.imdecode(np.frombuffer(jpeg(320, 240), np.uint8), cv2.IMREAD_COLOR)
    for i in range(count):
        delay = started + i / fps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield Frame(i, image=image)


def test_slow_down_lowers_the_rate_of_a_paced_webrtc_stream(server: RunningServer) -> None:
    """A live source at 30 fps, four frames in flight, into a 100 ms pipeline: the server drops, says slow_down, the sender obeys."""
    warnings: list[tuple[float, SlowDown]] = []
    sent_after: list[float] = []
    outcomes = asyncio.run(
        collect(server.http, "slow", _live(120, 30.0), live=True, pacing=Pacing("live", 4), webrtc=LOOPBACK,
                on_warning=lambda w: warnings.append((time.time(), w)))
    )
    assert [o.index for o in outcomes] == list(range(120))
    assert warnings and warnings[0][1].suggested_fps is not None
    first_at, first = warnings[0]
    sent_after = sorted(o.sent_at for o in outcomes if o.sent_at is not None and o.sent_at > first_at + 0.2)
    assert len(sent_after) >= 3
    rate = (len(sent_after) - 1) / (sent_after[-1] - sent_after[0])
    assert rate <= first.suggested_fps * 1.3 + 0.5, (rate, first.suggested_fps)


def test_an_unknown_pipeline_is_the_websockets_error_over_webrtc(server: RunningServer) -> None:
    with pytest.raises(InvalidPipelineError) as raised:
        asyncio.run(collect(server.http, "nope", face_frames(2), webrtc=LOOPBACK))
    assert raised.value.code == "invalid_pipeline" and raised.value.close_code == 1008 and "nope" in raised.value.detail


def test_cli_streams_a_video_over_webrtc_with_the_websockets_output_and_exit_status(server: RunningServer, tmp_path: Path) -> None:
    frames = [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for data in moving_face_clip(16)]
    video = tmp_path / "face.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (640, 240))
    for image in frames:
        writer.write(image)
    writer.release()
    outputs = {}
    for transport in ("websocket", "webrtc"):
        jsonl = tmp_path / f"{transport}.jsonl"
        done = cli("stream", str(video), "--url", f"ws://127.0.0.1:{server.port}", "--pipeline", "faces", "--quiet",
                   "--jsonl", str(jsonl), "--transport", transport, "--ice-host-address", "127.0.0.1")
        assert done.returncode == 0, done.stderr
        outputs[transport] = (done.stderr.strip().splitlines(), [json.loads(line) for line in jsonl.read_text().splitlines()])
    stderr, lines = outputs["webrtc"]
    assert len(stderr) == 1, stderr  # the summary and nothing else, as over the WebSocket
    (line,) = stderr
    assert line.startswith("16 frames: 16 results, 0 dropped, 0 failed, 0 skipped by the client;"), line
    assert outputs["websocket"][0][0].split(";")[0] == line.split(";")[0]
    assert [r["frame_index"] for r in lines] == list(range(16))
    assert all(r["reply"]["result"]["faces"] for r in lines)
    assert [sorted(r) for r in lines] == [sorted(r) for r in outputs["websocket"][1]]


def test_cli_over_webrtc_streams_the_pedestrian_clip_in_realtime(server: RunningServer) -> None:
    done = cli("stream", str(PEDESTRIANS_MP4), "--url", f"http://127.0.0.1:{server.port}", "--pipeline", "probe", "--quiet",
               "--realtime", "--max-frames", "20", "--transport", "webrtc", "--codec", "H264", "--ice-host-address", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("20 frames: "), done.stderr


@pytest.mark.parametrize("transport", ["websocket", "webrtc"])
def test_cli_unknown_pipeline_is_the_same_line_and_exit_status_over_either_transport(server: RunningServer, transport: str) -> None:
    done = cli("stream", str(PEDESTRIANS_MP4), "--url", f"ws://127.0.0.1:{server.port}", "--pipeline", "nope", "--quiet",
               "--transport", transport, "--ice-host-address", "127.0.0.1")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("forgesyte-stream-client: error: invalid_pipeline: ") and line.endswith(", close 1008"), line


def test_without_aiortc_the_websocket_client_works_and_webrtc_names_the_extra(server: RunningServer) -> None:
    """aiortc made unimportable in a fresh process: the package imports, the WebSocket path streams, webrtc says what to install."""
    block = "import sys; sys.modules['aiortc'] = None; from forgesyte_stream_client.cli import main; sys.exit(main(sys.argv[1:]))"
    common = ["stream", str(PEDESTRIANS_MP4), "--url", f"ws://127.0.0.1:{server.port}", "--pipeline", "probe", "--quiet", "--max-frames", "3"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([CLIENT_PATH, os.environ.get("PYTHONPATH", "")])}
    plain = subprocess.run([sys.executable, "-c", block, *common], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert plain.returncode == 0 and plain.stderr.startswith("3 frames: 3 results"), plain.stderr
    rtc = subprocess.run([sys.executable, "-c", block, *common, "--transport", "webrtc"], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert rtc.returncode == 1
    assert "pip install 'forgesyte-stream-client[webrtc]'" in rtc.stderr, rtc.stderr


def test_busy_server_over_webrtc_is_retried_like_the_websocket_path() -> None:
    """MAX_SESSIONS=1 held by a WebSocket: the POST answers 503 server_busy, which is close 1013 to the reconnect policy."""
    busy = start_server({**WEBRTC_ENV, "FORGESYTE_STREAM_MAX_SESSIONS": "1"})
    release, ready = threading.Event(), threading.Event()

    def hold() -> None:
        async def main() -> None:
            async with connect(busy.ws("probe"), compression=None, proxy=None) as ws:
                await ws.send(jpeg())
                await ws.recv()
                ready.set()
                await asyncio.to_thread(release.wait, 30)

        asyncio.run(main())

    holder = threading.Thread(target=hold)
    try:
        holder.start()
        assert ready.wait(20)
        with pytest.raises(ServerBusyError) as raised:
            asyncio.run(collect(busy.http, "probe", face_frames(2), webrtc=LOOPBACK, reconnect=Reconnect(attempts=0)))
        assert raised.value.close_code == 1013 and raised.value.retryable
        retries: list[StreamError] = []

        def on_reconnect(error: StreamError, delay: float) -> None:
            retries.append(error)
            release.set()

        policy = Reconnect(attempts=5, initial_delay_s=0.3, max_delay_s=1.0)
        outcomes = asyncio.run(collect(busy.http, "probe", face_frames(4), webrtc=LOOPBACK, reconnect=policy, on_reconnect=on_reconnect))
        assert retries and isinstance(retries[0], ServerBusyError)
        assert [o.index for o in outcomes] == list(range(4)) and all(isinstance(o.reply, Result) for o in outcomes)
        assert outcomes[-1].connection >= 1
    finally:
        release.set()
        holder.join(20)
        busy.stop()


def test_whip_url_and_link_headers() -> None:
    assert whip_url("ws://h:1/ws/video/stream?pipeline_id=x", "faces") == "http://h:1/v1/whip?pipeline_id=faces"
    assert whip_url("wss://h", "a b") == "https://h/v1/whip?pipeline_id=a+b"
    links = [
        '<stun:127.0.0.1:3478>; rel="ice-server", <turn:127.0.0.1:3479?transport=udp>; rel="ice-server"; '
        'username="u"; credential="p,q"; credential-type="password"',
        '</other>; rel="next"',
    ]
    assert ice_servers_from_links(links) == [
        IceServer(("stun:127.0.0.1:3478",)),
        IceServer(("turn:127.0.0.1:3479?transport=udp",), "u", "p,q"),
    ]


def test_cli_pipeline_failures_over_webrtc_complete_with_exit_status_3(server: RunningServer) -> None:
    done = cli("stream", str(PEDESTRIANS_MP4), "--url", f"ws://127.0.0.1:{server.port}", "--pipeline", "failing", "--quiet",
               "--max-frames", "6", "--transport", "webrtc", "--ice-host-address", "127.0.0.1")
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("6 frames: 3 results, 0 dropped, 3 failed"), done.stderr


def test_relay_only_without_a_turn_server_of_its_own_uses_the_one_the_servers_link_header_names(turn_port: int) -> None:  # noqa: F811
    """The first offer (relay-only, no TURN server) has no candidate; the client reads the Link header and offers again through coturn."""
    import json as json_

    ice = json_.dumps([{"urls": f"turn:127.0.0.1:{turn_port}?transport=udp", "username": USER, "credential": PASSWORD}])
    relayed = start_server({**WEBRTC_ENV, "FORGESYTE_STREAM_WEBRTC_ICE_SERVERS": ice})
    try:
        options = WebRtcOptions(ice_host_addresses=("127.0.0.1",), ice_transport_policy="relay")
        outcomes = asyncio.run(collect(relayed.http, "faces", face_frames(8), webrtc=options))
    finally:
        relayed.stop()
    assert [o.index for o in outcomes] == list(range(8)) and all(isinstance(o.reply, Result) for o in outcomes)
