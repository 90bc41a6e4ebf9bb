"""Per-frame cost of each tool chain the server ships, on a 640x480 JPEG, in this process.

Run: .venv/bin/python bench/pipeline_costs.py [--runs 20] [--warmup 2]

The tools are called directly, without the server or the pipeline engine, so
the numbers are what one worker thread spends on a frame: the JPEG decode (once
per frame, shared by chained tools, as the engine does) plus the tools. They
are the floor under the latency a client sees, and the basis for choosing
FORGESYTE_STREAM_FRAME_TIMEOUT_MS and a client's frame rate.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.media.codec import OpenCvJpegDecoder  # noqa: E402
from adapters.plugins.ocr import OcrPlugin  # noqa: E402
from adapters.plugins.opencv_vision import OpenCvVisionPlugin  # noqa: E402
from adapters.plugins.probe import ProbePlugin  # noqa: E402
from adapters.plugins.yolo import YoloPlugin  # noqa: E402
from application.run_context import FrameContext  # noqa: E402
from domain import DEFAULT_MAX_FRAME_PIXELS, read_jpeg_info  # noqa: E402

WIDTH, HEIGHT = 640, 480
FACE_IMAGE = ROOT / "tests" / "data" / "face-astronaut.jpg"


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), 90])
    if not ok:
        raise RuntimeError("cannot encode the benchmark frame")
    return data.tobytes()


def _fit(image: np.ndarray) -> np.ndarray:
    """Scale into 640x480 keeping the aspect ratio, padded grey, as a webcam frame would be."""
    scale = min(WIDTH / image.shape[1], HEIGHT / image.shape[0])
    resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    top = (HEIGHT - resized.shape[0]) // 2
    left = (WIDTH - resized.shape[1]) // 2
    return cv2.copyMakeBorder(
        resized, top, HEIGHT - resized.shape[0] - top, left, WIDTH - resized.shape[1] - left, cv2.BORDER_CONSTANT, value=(128, 128, 128)
    )


def _face_frame() -> bytes:
    image = cv2.imread(str(FACE_IMAGE), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError(f"cannot read {FACE_IMAGE}")
    return _jpeg(_fit(image))


def _qr_frame() -> bytes:
    code = cv2.QRCodeEncoder.create().encode("forgesyte-stream")
    code = cv2.resize(code, None, fx=10, fy=10, interpolation=cv2.INTER_NEAREST)
    canvas = np.full((HEIGHT, WIDTH), 255, np.uint8)
    top, left = (HEIGHT - code.shape[0]) // 2, (WIDTH - code.shape[1]) // 2
    canvas[top : top + code.shape[0], left : left + code.shape[1]] = code
    return _jpeg(cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))


def _text_frame() -> bytes:
    image = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    for row, line in enumerate(("FORGESYTE STREAM", "frame 2026 / 0042", "latency budget 100 ms")):
        cv2.putText(image, line, (30, 110 + row * 120), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (0, 0, 0), 3, cv2.LINE_AA)
    return _jpeg(image)


def _motion_frames() -> list[bytes]:
    """A still textured background with a bright square moving across it."""
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(0, 120, (HEIGHT, WIDTH, 3), dtype=np.uint8), (5, 5), 0)
    frames = []
    for step in range(8):
        frame = background.copy()
        x = 40 + step * 60
        cv2.rectangle(frame, (x, 180), (x + 100, 300), (255, 255, 255), -1)
        frames.append(_jpeg(frame))
    return frames


Chain = Callable[[FrameContext], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    chain: Chain
    frames: list[bytes]
    stateful: bool = False


def _tool_chain(*steps: tuple[Callable[..., Mapping[str, Any]], Mapping[str, Any]]) -> Chain:
    """Run tools in order, each given the payload, its params and the outputs before it, as the engine does."""

    def run(context: FrameContext) -> Mapping[str, Any]:
        produced: dict[str, Any] = {}
        for tool, params in steps:
            produced.update(tool({"frame_index": context.frame_index, "image_bytes": context.image_bytes, **params, **produced}, context))
        return produced

    return run


def _measure(case: Case, decoder: OpenCvJpegDecoder, runs: int, warmup: int) -> tuple[list[float], Mapping[str, Any]]:
    """Milliseconds per frame of the measured runs, and the last run's output (to show the chain did its work)."""
    state: dict[str, Any] = {}
    timings = []
    output: Mapping[str, Any] = {}
    for i in range(warmup + runs):
        data = case.frames[i % len(case.frames)]
        # The bench's 640 x 480 frames are decoded whole by every shipped pipeline (reduction 1).
        context = FrameContext(i, data, decoder, state if case.stateful else {}, read_jpeg_info(data))
        started = time.perf_counter()
        output = case.chain(context)
        elapsed = (time.perf_counter() - started) * 1000.0
        if i >= warmup:
            timings.append(elapsed)
    return timings, output


def _summary(output: Mapping[str, Any]) -> str:
    parts = []
    for key, value in output.items():
        if isinstance(value, list):
            value = f"{len(value)} found"
        elif isinstance(value, Mapping):
            value = "{" + ", ".join(f"{k}: {len(v) if isinstance(v, list) else v}" for k, v in value.items()) + "}"
        parts.append(f"{key}: {value}")
    return ", ".join(parts)


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    decoder = OpenCvJpegDecoder(max_pixels=DEFAULT_MAX_FRAME_PIXELS)
    opencv = OpenCvVisionPlugin().tools()
    ocr = OcrPlugin().tools()
    probe = ProbePlugin().tools()
    face, qr, text, motion = _face_frame(), _qr_frame(), _text_frame(), _motion_frames()

    cases = [
        Case("decode only", lambda context: {"shape": context.image().shape}, [face]),
        Case("probe", _tool_chain((probe["frame_info"], {})), [face]),
        Case("faces", _tool_chain((opencv["face_detect"], {})), [face]),
        Case("people", _tool_chain((opencv["people_detect"], {})), [face]),
        Case("motion", _tool_chain((opencv["motion_detect"], {})), motion, stateful=True),
        Case("qr", _tool_chain((opencv["qr_decode"], {})), [qr]),
        Case("ocr_only", _tool_chain((ocr["read_all"], {})), [text]),
        Case("text_detect_read", _tool_chain((ocr["text_detect"], {}), (ocr["text_read"], {})), [text]),
    ]
    yolo_model = os.environ.get("FORGESYTE_STREAM_YOLO_MODEL")
    if yolo_model:
        yolo = YoloPlugin(yolo_model, os.environ.get("FORGESYTE_STREAM_YOLO_LABELS") or None, confidence=0.25, iou=0.45)
        cases.append(Case("yolo", _tool_chain((yolo.tools()["detect"], {})), [face]))

    print(
        f"# {WIDTH}x{HEIGHT} JPEG frames, {args.runs} runs after {args.warmup} warm-up runs, one thread; "
        f"Python {platform.python_version()}, OpenCV {cv2.__version__}, {os.cpu_count()} CPUs, "
        f"OpenCV threads {cv2.getNumThreads()}"
    )
    print(f"{'chain':<18} {'median ms':>10} {'p90 ms':>10} {'min ms':>10}  output")
    for case in cases:
        timings, output = _measure(case, decoder, args.runs, args.warmup)
        print(f"{case.name:<18} {statistics.median(timings):>10.3f} {_p90(timings):>10.3f} {min(timings):>10.3f}  {_summary(output)[:90]}")
    if not yolo_model:
        print("yolo               skipped: set FORGESYTE_STREAM_YOLO_MODEL to an exported YOLOv8 ONNX model to include it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
