"""Frame memory attacks, performed against a real server, with its memory read from /proc.

Each test measures the server process's resident memory (VmRSS) and its peak
(VmHWM, reset through /proc/PID/clear_refs before each attack) while a hostile
client sends frames built to cost memory, and fails when growth passes the bound
that docs/security.md documents:

- a frame declaring 8000 x 5000 pixels (a 0.6 MB JPEG) is refused from its
  header by every pipeline, header-only `probe` included: nothing is decoded;
- a 3840 x 2160 frame is decoded only as far as its pipeline needs, so one
  such frame to each decoding pipeline at once stays within the sum of the
  per-tool bounds below;
- a motion session keeps a background model of its working size (640 x 360
  for a 16:9 frame), not of the frame's size, for as long as it stays open;
- the header walk is bounded: a frame of a million comment segments is refused
  after 256 of them;
- frames of extreme aspect ratio (1 x 4000, 4000 x 1) get a result from every
  shipped pipeline;
- the decode budget bounds the decoded frames in flight across sessions.

The connection and session attacks (refused connections, bursts, sessions that
do not read) are in test_memory_session_attacks.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from functools import cache

import cv2
import httpx
import numpy as np
import pytest

from contracts.client import StreamClient
from tests.hardening.attack_support import MB, MiB, process_status, reset_peak
from tests.support.media import FACE_JPEG, jpeg_header
from tests.support.server import ROOT, RunningServer, start_server

# What one MOG2 model holds per working pixel: 5 Gaussians x (weight, variance, 3 means) x 4 bytes, plus 1 byte of mode count.
MOG2_BYTES_PER_PIXEL = 5 * 5 * 4 + 1
# A 16:9 frame is worked on at 640 x 360 by the motion pipeline (its max_side).
MOTION_MODEL_BYTES = 640 * 360 * MOG2_BYTES_PER_PIXEL
# Allocator and WebSocket buffers of one session beside its model: frames here are under 1 MB.
SESSION_SLACK = 8 * MiB
# Peak growth of one 3840 x 2160 frame per pipeline, as docs/security.md gives them: the decoded frame at the
# pipeline's reduction, the tool's working copy and its scratch (the Haar cascade keeps its buffers per worker
# thread), and for OCR the models, loaded on first use, plus one detection pass at 1920 x 1088 at most.
PEAK_PER_PIPELINE = {
    "faces": 192 * MiB,
    "qr": 64 * MiB,
    "people": 32 * MiB,
    "motion": 48 * MiB,
    "ocr_only": 704 * MiB,
}

# Every shipped pipeline; yolo runs the constant-output model the YOLO plugin tests build.
SHIPPED_PIPELINES = ("faces", "motion", "ocr_only", "people", "probe", "qr", "text_detect_read", "yolo")


@cache
def _bomb() -> bytes:
    """A real, decodable JPEG of 8000 x 5000 black pixels: 0.6 MB that would decode to 120 MB."""
    ok, encoded = cv2.imencode(".jpg", np.zeros((5000, 8000, 3), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 10])
    assert ok
    return encoded.tobytes()


@cache
def _uhd(shift: int = 0) -> bytes:
    """A 3840 x 2160 camera-like frame: the astronaut's face (2048 px) and a line of text on grey."""
    canvas = np.full((2160, 3840, 3), 90, np.uint8)
    face = cv2.resize(cv2.imread(str(FACE_JPEG)), (2048, 2048))
    canvas[56 : 56 + 2048, 200 + shift : 200 + shift + 2048] = face
    cv2.putText(canvas, "HELLO 4K WORLD", (2400, 1000), cv2.FONT_HERSHEY_SIMPLEX, 4, (255, 255, 255), 10)
    ok, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return encoded.tobytes()


def _strip(width: int, height: int) -> bytes:
    image = np.random.default_rng(width * 7 + height).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The shipped pipelines with the shipped limits; a long frame timeout because OCR of a 4K frame takes seconds here."""
    from tests.plugins.test_yolo import _build_model

    model = _build_model(tmp_path_factory.mktemp("yolo") / "constant.onnx")
    server = start_server(
        {
            "FORGESYTE_STREAM_PIPELINES_DIR": str(ROOT / "adapters" / "pipelines"),
            "FORGESYTE_STREAM_PLUGINS": "",
            "FORGESYTE_STREAM_YOLO_MODEL": model,
            "FORGESYTE_STREAM_LOG_LEVEL": "info",
            "FORGESYTE_STREAM_FRAME_TIMEOUT_MS": "60000",
        }
    )
    yield server
    server.stop()


async def _one_frame(url: str, frame: bytes, timeout: float = 60.0) -> StreamClient:
    client = await StreamClient.connect(url)
    await client.send_raw(frame)
    await client.recv_replies({0}, timeout=timeout)
    return client


def test_a_frame_declaring_8000x5000_is_refused_from_its_header_by_every_pipeline(shipped: RunningServer) -> None:
    pid = shipped.process.pid
    before = reset_peak(pid)

    async def attack() -> list[tuple[str, dict, int | None]]:
        async def one(pipeline_id: str) -> tuple[str, dict, int | None]:
            client = await StreamClient.connect(shipped.ws(pipeline_id))
            await client.send_raw(_bomb())
            received = await client.recv_until_closed()
            return pipeline_id, received.messages[0], received.close_code

        # Three sessions per pipeline at once: before the fix each decoded 120 MB and motion built a 4 GB model.
        return await asyncio.gather(*(one(pipeline_id) for pipeline_id in SHIPPED_PIPELINES for _ in range(3)))

    outcomes = asyncio.run(attack())
    for pipeline_id, message, close_code in outcomes:
        assert message["error"] == "frame_too_large", (pipeline_id, message)
        assert "8000x5000" in message["detail"] and "8294400" in message["detail"], message
        assert close_code == 1009, pipeline_id
    growth = process_status(pid)["VmHWM"] - before
    print(f"8000x5000 frames, {len(outcomes)} sessions: peak RSS growth {growth / MB:.1f} MB")
    # The sessions' receive buffers of a 0.6 MB frame; nothing is decoded.
    assert growth < 48 * MiB, f"peak RSS grew {growth / MB:.0f} MB refusing frames from their header"


def test_probe_enforces_the_pixel_limit_over_websocket_and_http(shipped: RunningServer) -> None:
    over = jpeg_header(3841, 2160)
    at_limit = jpeg_header(3840, 2160)

    async def scenario() -> tuple[dict, dict, int | None]:
        client = await _one_frame(shipped.ws("probe"), at_limit)
        await client.send_raw(over)
        received = await client.recv_until_closed()
        return received.messages[0], received.messages[1], received.close_code

    accepted, refused, close_code = asyncio.run(scenario())
    assert accepted["result"] == {"width": 3840, "height": 2160, "bytes": len(at_limit), "components": 3}
    assert refused["error"] == "frame_too_large" and refused["frame_index"] == 1
    assert "3841x2160" in refused["detail"]
    assert close_code == 1009
    response = httpx.post(
        f"{shipped.http}/v1/pipelines/probe/frames", content=over, headers={"content-type": "image/jpeg"}, timeout=10, trust_env=False
    )
    assert response.status_code == 413
    assert response.json()["error"] == "frame_too_large"


def test_idle_motion_sessions_hold_a_model_of_their_working_size_not_of_the_frame(shipped: RunningServer) -> None:
    pid = shipped.process.pid
    sessions = 4
    before = reset_peak(pid)

    async def attack() -> list[StreamClient]:
        async def one() -> StreamClient:
            client = await StreamClient.connect(shipped.ws("motion"))
            await client.send_raw(_uhd())
            await client.send_raw(_uhd(shift=300))
            await client.recv_replies({0, 1}, timeout=60)
            return client

        clients = await asyncio.gather(*(one() for _ in range(sessions)))
        for client in clients:
            result = client.received.replies()[1][0]["result"]["motion"]
            assert result["detected"] and not result["warming_up"]
            box = result["regions"][0]["box"]
            assert box["x2"] > 1920, "regions are reported in the 3840 x 2160 frame's pixels"
        return clients

    async def scenario() -> tuple[int, int]:
        clients = await attack()
        await asyncio.sleep(0.5)
        held = process_status(pid)["VmRSS"] - before  # the sessions are open and idle
        peak = process_status(pid)["VmHWM"] - before
        for client in clients:
            await client.close()
        return held, peak

    held, peak = asyncio.run(scenario())
    bound = sessions * (MOTION_MODEL_BYTES + SESSION_SLACK)
    print(f"{sessions} idle motion sessions after 4K frames: held {held / MB:.1f} MB, peak {peak / MB:.1f} MB")
    # Before: a 3840 x 2160 model is 838 MB per session.
    assert held < bound, f"{sessions} idle motion sessions hold {held / MB:.0f} MB; the bound is {bound / MB:.0f} MB"
    assert peak < bound + PEAK_PER_PIPELINE["motion"], f"peak growth {peak / MB:.0f} MB"


def test_uhd_frames_to_every_decoding_pipeline_at_once_stay_within_the_documented_bound(shipped: RunningServer) -> None:
    pid = shipped.process.pid
    before = reset_peak(pid)
    started = time.monotonic()

    async def attack() -> dict[str, dict]:
        clients = await asyncio.gather(*(_one_frame(shipped.ws(pipeline_id), _uhd()) for pipeline_id in PEAK_PER_PIPELINE))
        replies = {pipeline_id: client.received.replies()[0][0] for pipeline_id, client in zip(PEAK_PER_PIPELINE, clients)}
        for client in clients:
            await client.close()
        return replies

    replies = asyncio.run(attack())
    elapsed = time.monotonic() - started
    for pipeline_id, reply in replies.items():
        assert "result" in reply, (pipeline_id, reply)
    faces = replies["faces"]["result"]["faces"]
    assert faces and faces[0]["box"]["x1"] > 400, "the face is found and reported in the 4K frame's pixels"
    assert any("4K" in line["text"] for line in replies["ocr_only"]["result"]["text"]), replies["ocr_only"]
    peak = process_status(pid)["VmHWM"] - before
    bound = sum(PEAK_PER_PIPELINE.values())
    print(f"one 4K frame to each of {sorted(PEAK_PER_PIPELINE)} at once: peak RSS growth {peak / MB:.1f} MB in {elapsed:.1f} s")
    assert peak < bound, f"one 4K frame per pipeline raised peak RSS by {peak / MB:.0f} MB; the bound is {bound / MB:.0f} MB"
    assert elapsed < 60


def test_a_frame_of_a_million_comment_segments_is_refused_after_a_bounded_walk(shipped: RunningServer) -> None:
    segments = (5 * MiB - 8) // 4
    flood = b"\xff\xd8" + b"\xff\xfe\x00\x02" * segments + b"\xff\xd9"
    assert len(flood) <= 5 * MiB

    async def scenario() -> tuple[dict, int | None, float]:
        client = await StreamClient.connect(shipped.ws("probe"))
        started = time.monotonic()
        await client.send_raw(flood)
        message = await client.recv(timeout=10)
        answered = time.monotonic() - started
        received = await client.recv_until_closed()
        return message, received.close_code, answered

    message, close_code, answered = asyncio.run(scenario())
    print(f"5 MiB of comment segments to probe: answered in {answered * 1000:.0f} ms")
    assert message["error"] == "invalid_frame"
    assert "more than 256 segments" in message["detail"], message
    assert close_code == 1007
    # Transfer of 5 MiB over loopback included; the unbounded walk cost 810 ms of event loop on its own.
    assert answered < 1.0, f"answered after {answered:.2f} s"


@pytest.mark.parametrize("size", [(1, 4000), (4000, 1)], ids=["1x4000", "4000x1"])
def test_extreme_aspect_ratios_get_a_result_from_every_shipped_pipeline(shipped: RunningServer, size: tuple[int, int]) -> None:
    width, height = size
    frame = _strip(width, height)

    async def scenario() -> dict[str, dict]:
        clients = await asyncio.gather(*(_one_frame(shipped.ws(pipeline_id), frame) for pipeline_id in SHIPPED_PIPELINES))
        replies = {pipeline_id: client.received.replies()[0][0] for pipeline_id, client in zip(SHIPPED_PIPELINES, clients)}
        for client in clients:
            await client.close()
        return replies

    for pipeline_id, reply in asyncio.run(scenario()).items():
        assert "result" in reply, (pipeline_id, reply)
        if pipeline_id == "probe":
            assert reply["result"]["width"] == width and reply["result"]["height"] == height
        for value in reply["result"].values():
            detections = value if isinstance(value, list) else value.get("regions", []) if isinstance(value, dict) else []
            for item in detections:
                box = item["box"]
                assert 0 <= box["x1"] <= box["x2"] <= width and 0 <= box["y1"] <= box["y2"] <= height, (pipeline_id, item)


def test_the_decode_budget_bounds_decoded_frames_in_flight_across_sessions(tmp_path) -> None:
    # Room for three 1000 x 1000 frames (3 MB each, the budget's minimum being 11 bytes per pixel of the limit),
    # four workers, and four sessions sending at once: the fourth frame waits for one of the others to finish.
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "hold.json").write_text(
        '{"id": "hold", "name": "hold", "nodes": [{"id": "hold", "plugin_id": "holding", "tool_id": "hold",'
        ' "params": {"ms": 400}}], "edges": [], "entry_nodes": ["hold"], "output_nodes": ["hold"]}'
    )
    server = start_server(
        {
            "FORGESYTE_STREAM_PIPELINES_DIR": str(pipelines),
            "FORGESYTE_STREAM_PLUGINS": "tests.hardening.holding_plugin:HoldingPlugin",
            "FORGESYTE_STREAM_MAX_FRAME_PIXELS": "1000000",
            "FORGESYTE_STREAM_DECODE_BUDGET_BYTES": "11000000",
            "FORGESYTE_STREAM_INFERENCE_WORKERS": "4",
            "FORGESYTE_STREAM_LOG_LEVEL": "info",
        }
    )
    try:
        frame = _strip(1000, 1000)

        async def scenario() -> list[dict]:
            clients = await asyncio.gather(*(StreamClient.connect(server.ws("hold")) for _ in range(4)))
            await asyncio.gather(*(client.send_raw(frame) for client in clients))
            await asyncio.gather(*(client.recv_replies({0}, timeout=30) for client in clients))
            replies = [client.received.replies()[0][0] for client in clients]
            for client in clients:
                await client.close()
            return replies

        replies = asyncio.run(scenario())
    finally:
        server.stop()
    assert all(reply["result"]["shape"] == [1000, 1000, 3] for reply in replies), replies
    # Four would be held together without the budget (the sessions send at once and each holds its frame 400 ms).
    assert 2 <= max(reply["result"]["held_together"] for reply in replies) <= 3, replies


def test_a_decode_budget_too_small_for_one_frame_stops_start_up() -> None:
    with pytest.raises(RuntimeError) as caught:
        start_server({"FORGESYTE_STREAM_DECODE_BUDGET_BYTES": "50000000"})
    assert "FORGESYTE_STREAM_DECODE_BUDGET_BYTES=50000000" in str(caught.value)
    assert "FORGESYTE_STREAM_MAX_FRAME_PIXELS=8294400" in str(caught.value)
