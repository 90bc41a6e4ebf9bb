"""What a change gate saves: gated pipelines against their ungated twins, side by side on one real server.

Run: .venv/bin/python bench/gating.py [--repeats N] [--stride K]   (or `make bench-gating`)

Two clips, built here from the repository's test media:

- faces: 600 frames of 640 x 480, a fixed camera's textured scene with sensor
  noise: 400 still frames, then 200 frames of the astronaut's face crossing
  the frame (and its centre line) four times at different heights
  (tests/support/media.py `gated_scene_clip`). `faces_gated` against
  `faces_tracked`.
- people: 600 frames of 768 x 576: 250 frames of the empty path (the median
  of the real footage, with sensor noise), the first 100 frames of the real
  pedestrian footage, 250 still frames again (`pedestrian_scene_clip`).
  `people_counting_gated` against `people_counting`.

Each clip is streamed in file mode (send a frame, wait for its answer: every
frame is answered, none dropped) through each pipeline of its pair, in
alternating order when repeated. Reported per run: frames per second
answered, the server's CPU seconds per frame (utime + stime from
/proc/PID/stat), the detector's runs (the `stream_node_runs_total` delta),
on the whole clip and on its still part, the final line counts, and for the
faces clip the share of moving-part results whose face box covers the face's
true centre (carried or fresh). Ratios are gated / ungated within the run.
`--stride K` serves copies of the shipped gated pipelines with their gates'
stride set to K (the shipped files say 2), to show what the stride buys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from contracts.client import StreamClient, kind_of  # noqa: E402
from tests.support.media import gated_scene_clip, pedestrian_scene_clip  # noqa: E402
from tests.support.server import RunningServer, start_server  # noqa: E402

FACE_STILL, FACE_MOVING = 400, 200
PEOPLE_BEFORE, PEOPLE_MOVING, PEOPLE_AFTER = 250, 100, 250
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    pipeline: str
    frames: int
    seconds: float
    cpu_s: float
    detector_runs: int
    still_runs: int
    counts: dict[str, Any]
    carried: int
    boxed: float | None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def node_runs(server: RunningServer, pipeline: str, node: str) -> int:
    body = httpx.get(f"{server.http}/metrics", timeout=10, trust_env=False).text
    pattern = (
        rf'^stream_node_runs_total\{{(?=[^}}]*pipeline_id="{pipeline}")(?=[^}}]*node="{node}")'
        rf'(?=[^}}]*outcome="ran")[^}}]*\}} (\S+)$'
    )
    match = re.search(pattern, body, re.MULTILINE)
    if match is None:
        raise SystemExit(f"/metrics has no stream_node_runs_total series for {pipeline}/{node}")
    return int(float(match.group(1)))


async def file_mode(
    server: RunningServer, pipeline: str, clip: list[bytes], still_frames: set[int], detector: str
) -> tuple[list[dict[str, Any]], int]:
    """Every frame answered, in order; the detector's runs on the still frames counted as they happen."""
    client = await StreamClient.connect(server.ws(pipeline), reply_timeout_s=60)
    answers: list[dict[str, Any]] = []
    still_runs = 0
    try:
        for index, frame in enumerate(clip):
            await client.send_raw(frame)
            answer = await client.recv(timeout=60)
            if kind_of(answer) != "result":
                raise SystemExit(f"{pipeline}: frame {index} answered {answer}")
            answers.append(answer)
            if index in still_frames and not answer["result"].get("carried", False):
                still_runs += 1
    finally:
        await client.close()
    return answers, still_runs


def boxed_share(answers: list[dict[str, Any]], centres: list[tuple[float, float] | None]) -> float:
    moving = [(a, c) for a, c in zip(answers, centres) if c is not None]
    covered = 0
    for answer, (x, y) in moving:
        if any(f["box"]["x1"] <= x <= f["box"]["x2"] and f["box"]["y1"] <= y <= f["box"]["y2"] for f in answer["result"]["faces"]):
            covered += 1
    return covered / len(moving)


def measure(
    server: RunningServer, pipeline: str, detector: str, clip: list[bytes], still: set[int], centres: list[tuple[float, float] | None] | None
) -> Run:
    runs_before = node_runs(server, pipeline, detector)
    cpu_before = cpu_seconds(server.process.pid)
    started = time.perf_counter()
    answers, still_runs = asyncio.run(file_mode(server, pipeline, clip, still, detector))
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(server.process.pid) - cpu_before
    runs = node_runs(server, pipeline, detector) - runs_before
    last = answers[-1]["result"]
    return Run(
        pipeline=pipeline,
        frames=len(clip),
        seconds=seconds,
        cpu_s=cpu,
        detector_runs=runs,
        still_runs=still_runs,
        counts=last["line_counts"],
        carried=sum(1 for a in answers if a["result"].get("carried")),
        boxed=boxed_share(answers, centres) if centres is not None else None,
    )


def report(title: str, ungated: Run, gated: Run, still: int) -> None:
    print(f"\n{title}")
    print(
        "| pipeline | fps answered | server CPU ms/frame | detector runs | on the still part | carried results | line counts | face boxed (moving part) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in (ungated, gated):
        boxed = "-" if run.boxed is None else f"{run.boxed:.1%}"
        print(
            f"| {run.pipeline} | {run.frames / run.seconds:.1f} | {run.cpu_s / run.frames * 1000:.1f} | {run.detector_runs} | "
            f"{run.still_runs} of {still} | {run.carried} | {run.counts} | {boxed} |"
        )
    ratio_runs = gated.detector_runs / ungated.detector_runs
    still_ratio = gated.still_runs / max(1, ungated.still_runs)
    fps_ratio = (gated.frames / gated.seconds) / (ungated.frames / ungated.seconds)
    cpu_ratio = (gated.cpu_s / gated.frames) / (ungated.cpu_s / ungated.frames)
    same = "identical" if gated.counts == ungated.counts else "DIFFERENT"
    print(
        f"gated / ungated: detector runs {ratio_runs:.3f} (target <= 0.4), on the still part {still_ratio:.3f} (<= 0.05); "
        f"fps x{fps_ratio:.2f} (target >= 2); CPU per frame x{cpu_ratio:.2f}; counts {same}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each pair, alternating which goes first")
    parser.add_argument("--skip-people", action="store_true", help="only the faces clip")
    parser.add_argument("--stride", type=int, default=None, help="serve the gated pipelines with this gate stride")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}")

    faces_clip, centres = gated_scene_clip(FACE_STILL, FACE_MOVING, crossings=4)
    face_still = set(range(FACE_STILL))
    people_clip = pedestrian_scene_clip(PEOPLE_BEFORE, PEOPLE_MOVING, after=PEOPLE_AFTER)
    people_still = set(range(PEOPLE_BEFORE)) | set(range(PEOPLE_BEFORE + PEOPLE_MOVING, len(people_clip)))

    pipelines = tempfile.TemporaryDirectory(prefix="gating-bench-")
    for path in (ROOT / "adapters" / "pipelines").glob("*.json"):
        document = json.loads(path.read_text())
        for node in document["nodes"]:
            if args.stride is not None and "gate" in node:
                node["gate"]["stride"] = args.stride
        (Path(pipelines.name) / path.name).write_text(json.dumps(document))
    strides = sorted(
        {
            node["gate"].get("stride", 1)
            for path in Path(pipelines.name).glob("*_gated.json")
            for node in json.loads(path.read_text())["nodes"]
            if "gate" in node
        }
    )
    print(f"gate stride of the gated pipelines: {strides}")
    server = start_server({"FORGESYTE_STREAM_PIPELINES_DIR": pipelines.name, "FORGESYTE_STREAM_PLUGINS": ""})
    try:
        for repeat in range(args.repeats):
            pair = [("faces_tracked", "faces"), ("faces_gated", "faces")]
            if repeat % 2:
                pair.reverse()
            runs = {name: measure(server, name, node, faces_clip, face_still, centres) for name, node in pair}
            report(
                f"faces, run {repeat + 1}: {len(faces_clip)} frames 640x480 ({FACE_STILL} still, {FACE_MOVING} moving)",
                runs["faces_tracked"],
                runs["faces_gated"],
                FACE_STILL,
            )
            if args.skip_people:
                continue
            pair = [("people_counting", "people"), ("people_counting_gated", "people")]
            if repeat % 2:
                pair.reverse()
            runs = {name: measure(server, name, node, people_clip, people_still, None) for name, node in pair}
            report(
                f"people, run {repeat + 1}: {len(people_clip)} frames 768x576 "
                f"({PEOPLE_BEFORE} still, {PEOPLE_MOVING} of real footage, {PEOPLE_AFTER} still)",
                runs["people_counting"],
                runs["people_counting_gated"],
                len(people_still),
            )
    finally:
        server.stop()
        pipelines.cleanup()


if __name__ == "__main__":
    main()
