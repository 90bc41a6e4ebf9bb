"""How well ids survive dropped frames: the tracking plugin against ByteTrack updated once per processed frame.

Run: .venv/bin/python bench/tracking_accuracy.py [--server]

In process: the astronaut's face moves across a 640 x 240 frame (the clip of
tests/stream/test_tracking_e2e.py) at several speeds; the real Haar face
detector runs once on every frame, then each drop pattern keeps some frames
and the kept frames' detections go through (patterns: every frame; every k-th; the
first 5 frames then every k-th, as a server that starts dropping once it lags;
random gaps)

- `gap-aware`: the shipped `tracking.track` + `tracking.line_count` tools,
  which are told the frame_index gap, and
- `per-update`: supervision's ByteTrack updated once per kept frame, as a
  tracker that assumes it sees every frame is used, with the same line.

Per case: the share of kept frames whose face carries the most common id
(1.00 = one id throughout), the number of distinct ids, and the line count
(the face crosses the centre line once, so 1 is right).

With --server: the e2e scenario against a real server (faces_tracked, a frame
every 10 ms, so most are dropped), repeated, with the gaps the server produced.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import supervision as sv  # noqa: E402

from adapters.media.codec import OpenCvJpegDecoder  # noqa: E402
from adapters.plugins.opencv_vision import OpenCvVisionPlugin  # noqa: E402
from adapters.plugins.tracking import TrackingPlugin  # noqa: E402
from tests.support.media import moving_face_clip  # noqa: E402

LINE = {"source": "faces", "lines": [{"name": "centre", "start": [0.5, 0.0], "end": [0.5, 1.0]}]}


class _Context:
    """What a tool sees of one frame: the decoded image, the frame index and the node's stream state."""

    def __init__(self, frame_index: int, image: Any, state: dict[str, Any]) -> None:
        self.frame_index = frame_index
        self.image_bytes = b""
        self.pipeline_id = "bench"
        self.node_id = "node"
        self._image = image
        self._state = state

    def image(self) -> Any:
        return self._image

    def state(self) -> dict[str, Any]:
        return self._state


def _kept(frames: int, pattern: str, k: int, rng: random.Random) -> list[int]:
    if pattern == "every":
        return list(range(frames))
    if pattern == "fixed":
        return list(range(0, frames, k))
    if pattern == "warm":  # the first frames before the lag builds up, then every k-th, as a server drops
        return list(range(5)) + list(range(5 + k - 1, frames, k))
    kept, index = [], 0
    while index < frames:
        kept.append(index)
        index += rng.randint(1, 2 * k - 1)
    return kept


def _share(ids_per_frame: list[list[int | None]]) -> tuple[float, int]:
    counts = Counter(i for ids in ids_per_frame for i in set(ids) if i is not None)
    if not counts:
        return 0.0, 0
    return counts.most_common(1)[0][1] / len(ids_per_frame), len(counts)


def gap_aware(kept: list[int], detections: list[list[dict]], images: list[Any], tracking: TrackingPlugin) -> tuple[float, int, int]:
    track, count = tracking.tools()["track"], tracking.tools()["line_count"]
    track_state: dict[str, Any] = {}
    line_state: dict[str, Any] = {}
    ids, counts = [], {}
    for index in kept:
        faces = track({"source": "faces", "faces": detections[index]}, _Context(index, images[index], track_state))["faces"]
        counts = count({**LINE, "faces": faces}, _Context(index, images[index], line_state))["line_counts"]
        ids.append([f["tracker_id"] for f in faces])
    share, distinct = _share(ids)
    return share, distinct, counts["centre"]["in"] + counts["centre"]["out"]


def per_update(kept: list[int], detections: list[list[dict]], width: int, height: int) -> tuple[float, int, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracker = sv.ByteTrack()
    line = sv.LineZone(start=sv.Point(width / 2, 0), end=sv.Point(width / 2, height), triggering_anchors=(sv.Position.CENTER,))
    ids = []
    for index in kept:
        faces = detections[index]
        xyxy = np.array([[f["box"][k] for k in ("x1", "y1", "x2", "y2")] for f in faces], dtype=np.float32).reshape(-1, 4)
        tracked = tracker.update_with_detections(sv.Detections(xyxy=xyxy, confidence=np.array([f["confidence"] for f in faces], dtype=np.float32)))
        line.trigger(tracked)
        ids.append([int(i) for i in tracked.tracker_id] if len(tracked) else [])
    share, distinct = _share(ids)
    return share, distinct, line.in_count + line.out_count


def in_process() -> None:
    decoder = OpenCvJpegDecoder(max_pixels=10**8)
    faces = OpenCvVisionPlugin().tools()["face_detect"]
    tracking = TrackingPlugin()
    print("| clip frames | face speed (px/frame) | drops | mean gap | kept | gap-aware: one-id share / ids / line count | per-update ByteTrack: one-id share / ids / line count |")
    print("|---|---|---|---|---|---|---|")
    for frames in (120, 60, 30):
        clip = moving_face_clip(frames)
        images = [decoder.decode(jpeg) for jpeg in clip]
        detections = [faces({"scale_factor": 1.1, "min_neighbors": 5}, _Context(i, images[i], {}))["faces"] for i in range(frames)]
        speed = (640 - 192) / (frames - 1)
        rng = random.Random(12)
        patterns = (("every", 1), ("fixed", 2), ("fixed", 4), ("fixed", 8), ("fixed", 12), ("random", 4), ("random", 8))
        for pattern, k in (*patterns, ("warm", 8), ("warm", 12), ("warm", 16)):
            kept = _kept(frames, pattern, k, rng)
            gaps = [b - a for a, b in zip(kept, kept[1:])]
            mean_gap = statistics.mean(gaps) if gaps else 1
            ours = gap_aware(kept, detections, images, tracking)
            theirs = per_update(kept, detections, 640, 240)
            name = {"every": "none", "fixed": f"1 in {k}", "warm": f"first 5, then 1 in {k}", "random": f"random 1..{2 * k - 1}"}[pattern]
            print(
                f"| {frames} | {speed:.1f} | {name} | {mean_gap:.1f} | {len(kept)} | "
                f"{ours[0]:.2f} / {ours[1]} / {ours[2]} | {theirs[0]:.2f} / {theirs[1]} / {theirs[2]} |"
            )
    # What the two tracking nodes cost per frame (one face), without the detector.
    state_t: dict[str, Any] = {}
    state_l: dict[str, Any] = {}
    image = images[0]
    runs = 2000
    started = time.perf_counter()
    for i in range(runs):
        out = tracking.tools()["track"]({"source": "faces", "faces": detections[0]}, _Context(i * 3, image, state_t))
        tracking.tools()["line_count"]({**LINE, **out}, _Context(i * 3, image, state_l))
    print(f"\ntrack + line_count, one face, gap 3: {(time.perf_counter() - started) / runs * 1e6:.0f} us per frame")


def against_server(repeats: int) -> None:
    from tests.stream.test_tracking_e2e import FAST_INTERVAL_S, FRAMES, _dominant_id_share, _fast, _results
    from tests.support.server import start_server

    server = start_server({"FORGESYTE_STREAM_PIPELINES_DIR": str(ROOT / "adapters" / "pipelines"), "FORGESYTE_STREAM_PLUGINS": ""})
    try:
        print(f"\nreal server, faces_tracked, {FRAMES} frames every {FAST_INTERVAL_S * 1000:.0f} ms:")
        print("| run | results | dropped | gaps min/median/max | one-id share | line count at the end |")
        print("|---|---|---|---|---|---|")
        for run in range(repeats):
            received = asyncio.run(_fast(server))
            results = _results(received)
            gaps = [b["frame_index"] - a["frame_index"] for a, b in zip(results, results[1:])]
            _, share = _dominant_id_share(results)
            counts = results[-1]["result"]["line_counts"]["centre"]
            print(
                f"| {run + 1} | {len(results)} | {len(received.of_kind('dropped'))} | "
                f"{min(gaps)}/{statistics.median(gaps):g}/{max(gaps)} | {share:.2f} | in {counts['in']}, out {counts['out']} |"
            )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="store_true", help="also run the e2e scenario against a real server")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, supervision {sv.__version__}\n")
    in_process()
    if args.server:
        against_server(args.repeats)


if __name__ == "__main__":
    main()
