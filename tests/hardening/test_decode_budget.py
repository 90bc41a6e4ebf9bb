"""The decode budget against JPEGs whose decode holds the whole image's coefficients, on a real server.

libjpeg keeps every DCT coefficient of the frame, at full size whatever the
reduction, whenever a file has more than one scan: a progressive file, and
also a baseline (sequential) file whose scans each carry some of the
components. A 4K file of the second kind is well under 1 MB and holds 50 MB
while it decodes; the budget must charge it as such, or a handful of worker
threads decode far more than FORGESYTE_STREAM_DECODE_BUDGET_BYTES at once.

The server's memory is read from /proc/PID/status (VmHWM reset through
clear_refs before the attack) and /health is polled while the attack runs;
the bounds are docs/security.md's.
"""

from __future__ import annotations

import asyncio
import time
from functools import cache

import cv2
import numpy as np

from contracts.client import StreamClient
from domain import read_jpeg_info
from tests.hardening.attack_support import HealthProbe, process_status, reset_peak
from tests.support.server import ROOT, start_server

MB = 1_000_000
MiB = 1024 * 1024
PEDESTRIANS = ROOT.parent / "shared" / "testdata" / "pedestrians-vtest-0-399.mp4"
if not PEDESTRIANS.exists():  # a checkout beside /work/shared, or the shared data inside it
    PEDESTRIANS = ROOT / "shared" / "testdata" / "pedestrians-vtest-0-399.mp4"

BUDGET = 128 * MiB  # the shipped default
WORKERS = 8
SESSIONS = 8
FRAMES_PER_SESSION = 2  # the second goes through the stream's remembered header
# Beside the decodes the budget counts: the HOG detector's working copy and scratch for the runs
# holding a decode (docs/security.md: 32 MiB per 4K frame to `people`), the sessions' 0.65 MB frames
# and allocator slack.
MARGIN = 48 * MiB


def _segments(jpeg: bytes) -> list[tuple[int, bytes]]:
    """(marker, whole segment) up to and including the first SOS, then (0, entropy-coded data up to EOI)."""
    pos = 2
    found: list[tuple[int, bytes]] = []
    while True:
        marker = jpeg[pos + 1]
        length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        found.append((marker, jpeg[pos : pos + 2 + length]))
        pos += 2 + length
        if marker == 0xDA:
            assert jpeg[-2:] == b"\xff\xd9"
            found.append((0, jpeg[pos:-2]))
            return found


def multi_scan_baseline(planes: list[np.ndarray], quality: int = 75) -> bytes:
    """A baseline (SOF0) JPEG with one non-interleaved scan per plane, planes given in JPEG order (Y, Cb, Cr).

    No encoder at hand writes one (libjpeg's scan scripts are not reachable
    from OpenCV or Pillow), but a one-component baseline file's scan is
    exactly a non-interleaved scan of a component sampled 1x1: each plane is
    encoded as a greyscale JPEG with the same standard tables, and the scans
    are put one after another under a start of frame declaring every plane.
    """
    encoded = []
    for plane in planes:
        ok, data = cv2.imencode(".jpg", plane, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        encoded.append(_segments(data.tobytes()))
    tables = [segment for marker, segment in encoded[0] if marker in (0xDB, 0xC4)]
    height, width = planes[0].shape
    sof_body = bytes([8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes([len(planes)])
    sof_body += b"".join(bytes([index + 1, 0x11, 0]) for index in range(len(planes)))
    out = bytearray(b"\xff\xd8")
    for marker, segment in encoded[0]:
        if marker == 0xC0:
            out += b"\xff\xc0" + (len(sof_body) + 2).to_bytes(2, "big") + sof_body
        elif marker == 0xDA:
            break
        else:
            out += segment
    for index, segments in enumerate(encoded):
        assert [segment for marker, segment in segments if marker in (0xDB, 0xC4)] == tables, "tables differ between planes"
        # One component, table 0 for DC and AC, spectral selection 0-63, no successive approximation.
        out += b"\xff\xda\x00\x08\x01" + bytes([index + 1, 0x00]) + b"\x00\x3f\x00"
        out += segments[-1][1]
    return bytes(out + b"\xff\xd9")


@cache
def uhd_multi_scan(seed: int = 0) -> bytes:
    """A 3840 x 2160 pedestrian scene as a three-scan baseline JPEG (about 0.7 MB)."""
    capture = cv2.VideoCapture(str(PEDESTRIANS))
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, 10 + seed)
        ok, frame = capture.read()
    finally:
        capture.release()
    assert ok, f"cannot read {PEDESTRIANS}"
    canvas = np.full((2160, 3840, 3), 90, np.uint8)
    canvas[:, 480:3360] = cv2.resize(frame, (2880, 2160), interpolation=cv2.INTER_LINEAR)  # 768 x 576 scaled 3.75x
    frame = canvas
    y, cr, cb = cv2.split(cv2.cvtColor(frame, cv2.COLOR_BGR2YCrCb))
    return multi_scan_baseline([y, cb, cr])


def test_the_generated_file_is_a_decodable_baseline_file_of_one_scan_per_component() -> None:
    data = uhd_multi_scan()
    assert data.count(b"\xff\xc0") == 1 and b"\xff\xc2" not in data
    assert data.count(b"\xff\xda\x00\x08\x01") == 3  # three scans of one component each
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (2160, 3840, 3)
    assert float(image.std()) > 20  # a scene, not a blank


def test_multi_scan_baseline_frames_sent_at_once_stay_within_the_decode_budget() -> None:
    frames = [uhd_multi_scan(seed) for seed in range(FRAMES_PER_SESSION)]
    header = frames[0][: read_jpeg_info(frames[0]).header_bytes]
    assert all(frame.startswith(header) for frame in frames), "later frames are read from the stream's remembered header"
    server = start_server(
        {
            "FORGESYTE_STREAM_PIPELINES_DIR": str(ROOT / "adapters" / "pipelines"),
            "FORGESYTE_STREAM_PLUGINS": "",
            "FORGESYTE_STREAM_INFERENCE_WORKERS": str(WORKERS),
            "FORGESYTE_STREAM_DECODE_BUDGET_BYTES": str(BUDGET),
            "FORGESYTE_STREAM_FRAME_TIMEOUT_MS": "60000",
            "FORGESYTE_STREAM_LOG_LEVEL": "info",
        }
    )
    try:
        pid = server.process.pid
        # One frame first, so the HOG detector's lasting allocations are not counted as the attack's.
        asyncio.run(_send(server.ws("people"), [frames[0]]))
        before = reset_peak(pid)
        started = time.monotonic()
        with HealthProbe(server) as probe:
            replies = asyncio.run(_attack(server.ws("people"), frames))
        elapsed = time.monotonic() - started
        peak = process_status(pid)["VmHWM"] - before
        health = probe.check()
    finally:
        server.stop()
    for session in replies:
        assert [sorted(reply) for reply in session] == [["frame_index", "result"]] * FRAMES_PER_SESSION, session
        assert all(isinstance(reply["result"]["people"], list) for reply in session), session
    print(
        f"{SESSIONS} sessions x {FRAMES_PER_SESSION} 4K three-scan baseline frames ({len(frames[0]) / MB:.2f} MB each)"
        f" to people, {WORKERS} workers: peak RSS growth {peak / MB:.1f} MB in {elapsed:.1f} s; {health}"
    )
    bound = BUDGET + MARGIN
    assert peak < bound, f"peak RSS grew {peak / MB:.0f} MB; the budget is {BUDGET / MB:.0f} MB (+{MARGIN / MB:.0f} MB margin)"


async def _attack(url: str, frames: list[bytes]) -> list[list[dict]]:
    sessions = asyncio.gather(*(_send(url, frames) for _ in range(SESSIONS)))
    return await asyncio.wait_for(sessions, timeout=120)


async def _send(url: str, frames: list[bytes]) -> list[dict]:
    client = await StreamClient.connect(url)
    try:
        for frame in frames:
            await client.send_raw(frame)
        await client.recv_replies(set(range(len(frames))), timeout=90)
        replies = client.received.replies()
        return [replies[index][0] for index in range(len(frames))]
    finally:
        await client.close()
