"""--annotate: the source re-encoded with every result drawn, one output frame per source frame.

Drawing is supervision's (box and label annotators over `sv.Detections`,
`sv.draw_text`), writing is supervision's `VideoSink` (OpenCV's writer). A
frame without a result of its own (dropped, skipped, failed) shows the most
recent result, marked as such, so the video never jumps.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import cv2
import numpy as np
import supervision as sv

from forgesyte_stream_client.client import Outcome
from forgesyte_stream_client.replies import Result


def to_detections(result: Result) -> tuple[sv.Detections, list[str]]:
    """The result's detections as supervision Detections, with their labels (label, confidence, text)."""
    found = result.detections
    if not found:
        return sv.Detections.empty(), []
    xyxy = np.array([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in found], dtype=np.float32)
    names = sorted({d.label for d in found})
    class_id = np.array([names.index(d.label) for d in found], dtype=int)
    detections = sv.Detections(xyxy=xyxy, confidence=np.array([d.confidence for d in found], dtype=np.float32), class_id=class_id)
    labels = [f"{d.label} {d.confidence:.2f}" + (f": {d.text}" if d.text else "") for d in found]
    return detections, labels


class Annotator:
    """Writes annotated frames to a video file; sized by the first frame (later frames are scaled to it)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.fps = fps
        self._sink: sv.VideoSink | None = None
        self._size: tuple[int, int] | None = None
        self._boxes = sv.BoxAnnotator(thickness=2)
        self._labels = sv.LabelAnnotator(text_scale=0.5, text_padding=4)
        self._last: Result | None = None
        self.frames_written = 0

    def __enter__(self) -> Annotator:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()

    def write(self, outcome: Outcome, status: str) -> None:
        image = outcome.frame.bgr().copy()
        if self._sink is None:
            height, width = image.shape[:2]
            self._size = (width, height)
            self._sink = sv.VideoSink(str(self.path), sv.VideoInfo(width=width, height=height, fps=self.fps))
            self._sink.__enter__()
        assert self._size is not None
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size)
        reply = outcome.reply
        own = isinstance(reply, Result)
        if own:
            self._last = reply
        shown = self._last
        if shown is not None:
            detections, labels = to_detections(shown)
            if len(detections):
                image = self._boxes.annotate(image, detections)
                image = self._labels.annotate(image, detections, labels=labels)
        note = "" if own or shown is None else f" (showing frame {shown.frame_index}'s result: this one was {type(reply).__name__.lower()})"
        text = f"frame {outcome.index}  {status}{note}"
        (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        sv.draw_text(
            image,
            text,
            sv.Point(8 + width // 2, 8 + height // 2 + 4),
            text_color=sv.Color.WHITE,
            text_scale=0.45,
            text_padding=4,
            background_color=sv.Color.BLACK,
        )
        self._sink.write_frame(image)
        self.frames_written += 1

    def close(self) -> None:
        if self._sink is not None:
            self._sink.__exit__(None, None, None)
            self._sink = None
