"""Text detection and recognition with RapidOCR (PP-OCR models on ONNX Runtime, shipped in the wheel).

Detection and recognition are separate tools as well as one combined tool, so a
pipeline can read only the regions an earlier node chose, or detect text
without paying for recognition.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from rapidocr import RapidOCR

from adapters.plugins.common import (
    FrameGeometry,
    bool_param,
    declares_max_side,
    detection,
    float_param,
    int_param,
    max_side_param,
    working_image,
)
from application.ports import Availability, Tool, ToolContext

# RapidOCR logs a WARNING for every frame without text ("The text detection
# result is empty") and INFO for every model load; at the stream's frame rate
# that would drown the server's own log, so only its errors get through.
_ENGINE_PARAMS = {"Global.log_level": "error"}
_DEFAULT_BOX_THRESHOLD = 0.5
# OCR works on the frame shrunk to max_side (1920: a 4K frame is decoded at half
# size, and RapidOCR would shrink anything over 2000 itself) and to at most a
# 1080p frame's pixel count, whatever the shape: the detector's memory follows
# its input's area (about +370 MB at 1920 x 1080, twice that for a square 2000).
_OCR_SIDE = max_side_param(1920, low=32)
_MAX_WORK_PIXELS = 1920 * 1088
# The detector resizes an image so that its shorter side is at least 736, so a
# tall or wide strip would be blown up to tens of megapixels (and RapidOCR's own
# resize fails outright on a side that rounds to zero). Images are padded, on
# the right or at the bottom, to at most this aspect ratio first; RapidOCR pads
# very wide images to the same ratio itself.
_MAX_ASPECT = 4


def _detection_input(context: ToolContext, max_side: int) -> tuple[np.ndarray, FrameGeometry, int, int]:
    """The image the detector gets, the way back to frame pixels, and the width and height that are image, not padding."""
    image, geometry = working_image(context, max_side, _MAX_WORK_PIXELS)
    height, width = image.shape[:2]
    pad_bottom = max(0, -(-width // _MAX_ASPECT) - height)
    pad_right = max(0, -(-height // _MAX_ASPECT) - width)
    if pad_bottom or pad_right:
        image = cv2.copyMakeBorder(image, 0, pad_bottom, 0, pad_right, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return np.ascontiguousarray(image), geometry, width, height


def _box_from_polygon(polygon: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """The axis-aligned box around a detected (possibly tilted) text quadrilateral, clipped to the frame."""
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    xs = np.clip(points[:, 0], 0, width)
    ys = np.clip(points[:, 1], 0, height)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def _read_box(item: Any, index: int) -> tuple[float, float, float, float]:
    """The box of one text_boxes entry, checked because it comes from another node's output."""
    box = item.get("box") if isinstance(item, Mapping) else None
    if not isinstance(box, Mapping):
        raise ValueError(f"text_boxes[{index}] has no 'box' mapping; expected the output of ocr.text_detect")
    try:
        return float(box["x1"]), float(box["y1"]), float(box["x2"]), float(box["y2"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"text_boxes[{index}].box must hold numeric x1, y1, x2, y2: {exc}") from None


class OcrPlugin:
    """OCR tools over one shared RapidOCR engine.

    The engine is built on first use (its models take a second to load, and a
    server without OCR pipelines in use should not pay for them) and every call
    holds a lock: RapidOCR.__call__ stores use_det/use_cls/use_rec and the
    thresholds on the engine itself, so two concurrent calls in different modes
    would run with each other's flags. ONNX Runtime already spreads one call
    over all cores, so serialising calls costs little throughput.
    """

    plugin_id = "ocr"

    def __init__(self, min_score: float = 0.5) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        self._min_score = min_score
        self._engine: RapidOCR | None = None
        self._lock = threading.Lock()
        self._tools: dict[str, Tool] = {
            "read_all": self.read_all,
            "text_detect": self.text_detect,
            "text_read": self.text_read,
        }

    def tools(self) -> Mapping[str, Tool]:
        return self._tools

    def availability(self) -> Availability:
        return Availability(True)

    def _run(self, image: np.ndarray, **flags: Any) -> Any:
        with self._lock:
            if self._engine is None:
                self._engine = RapidOCR(params=_ENGINE_PARAMS)
            return self._engine(image, **flags)

    @declares_max_side(_OCR_SIDE)
    def read_all(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """Every line of text with what it says.

        Parameters: min_score (recognition score below which a line is dropped, 0.5),
        box_thresh (detection threshold, 0.5), use_cls (false; true also reads
        upside-down lines, at the cost of the angle classifier), max_side (1920).
        """
        min_score = float_param(inputs, "min_score", self._min_score, low=0.0, high=1.0)
        box_thresh = float_param(inputs, "box_thresh", _DEFAULT_BOX_THRESHOLD, low=0.0, high=1.0)
        use_cls = bool_param(inputs, "use_cls", False)
        image, geometry, width, height = _detection_input(context, _OCR_SIDE(inputs))
        result = self._run(image, use_det=True, use_cls=use_cls, use_rec=True, text_score=min_score, box_thresh=box_thresh)
        boxes = getattr(result, "boxes", None)
        texts = getattr(result, "txts", None)
        scores = getattr(result, "scores", None)
        if boxes is None or texts is None or scores is None:
            return {"text": []}
        lines = [
            detection("text", float(score), *geometry.box(*_box_from_polygon(polygon, width, height)), text=str(text))
            for polygon, text, score in zip(boxes, texts, scores)
            if str(text).strip() and float(score) >= min_score
        ]
        return {"text": lines}

    @declares_max_side(_OCR_SIDE)
    def text_detect(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """Where text is, without reading it; feed the result to text_read.

        Parameters: box_thresh (detection threshold, 0.5), max_side (1920).
        """
        box_thresh = float_param(inputs, "box_thresh", _DEFAULT_BOX_THRESHOLD, low=0.0, high=1.0)
        image, geometry, width, height = _detection_input(context, _OCR_SIDE(inputs))
        result = self._run(image, use_det=True, use_cls=False, use_rec=False, box_thresh=box_thresh)
        boxes = getattr(result, "boxes", None)
        scores = getattr(result, "scores", None)
        if boxes is None or scores is None:
            return {"text_boxes": []}
        return {
            "text_boxes": [
                detection("text", min(1.0, max(0.0, float(score))), *geometry.box(*_box_from_polygon(polygon, width, height)))
                for polygon, score in zip(boxes, scores)
            ]
        }

    @declares_max_side(_OCR_SIDE)
    def text_read(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """Read the regions in inputs["text_boxes"] (from a text_detect node), one recognition per box.

        Boxes are in frame pixels; each is cropped from the working image (the
        frame shrunk to max_side). Each crop gets a small margin, because
        recognition clips the first and last glyph when the box hugs them.
        Lines that read as empty or score below min_score are dropped, as
        read_all drops them.

        Parameters: min_score (0.5), padding (working pixels added around each box, 2), max_side (1920).
        """
        min_score = float_param(inputs, "min_score", self._min_score, low=0.0, high=1.0)
        padding = int_param(inputs, "padding", 2, low=0, high=1000)
        raw_boxes = inputs.get("text_boxes", [])
        if not isinstance(raw_boxes, Sequence) or isinstance(raw_boxes, (str, bytes)):
            raise ValueError(f"text_boxes must be a list of detections, got {type(raw_boxes).__name__}")
        if not raw_boxes:
            return {"text": []}
        image, geometry = working_image(context, _OCR_SIDE(inputs), _MAX_WORK_PIXELS)
        height, width = image.shape[:2]
        lines = []
        for index, item in enumerate(raw_boxes):
            x1, y1, x2, y2 = _read_box(item, index)
            wx1, wy1, wx2, wy2 = geometry.to_working(x1, y1, x2, y2)
            left, top = max(0, int(np.floor(wx1)) - padding), max(0, int(np.floor(wy1)) - padding)
            right, bottom = min(width, int(np.ceil(wx2)) + padding), min(height, int(np.ceil(wy2)) + padding)
            if right - left < 2 or bottom - top < 2:
                continue
            crop = np.ascontiguousarray(image[top:bottom, left:right])
            result = self._run(crop, use_det=False, use_cls=False, use_rec=True)
            texts = getattr(result, "txts", None) or ()
            scores = getattr(result, "scores", None) or ()
            for text, score in zip(texts, scores):
                if str(text).strip() and float(score) >= min_score:
                    box = (max(0.0, x1), max(0.0, y1), min(float(geometry.width), x2), min(float(geometry.height), y2))
                    lines.append(detection("text", float(score), *box, text=str(text)))
        return {"text": lines}
