"""Classic OpenCV vision: faces (Haar cascade), people (HOG), motion (MOG2) and QR codes.

None of these needs a model download, so this plugin is always available and
serves as the baseline the heavier ONNX plugins are compared with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import cv2
import numpy as np

from adapters.plugins.common import bgr_image, bool_param, detection, float_param, int_param, squash
from application.ports import Availability, Tool, ToolContext

T = TypeVar("T")

DEFAULT_FACE_CASCADE = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
# The default people detector's window: HOG on a smaller image corrupts the heap
# in OpenCV 4.x (the process aborts) instead of returning no detections.
_HOG_WINDOW_W, _HOG_WINDOW_H = 64, 128
# MOG2 marks shadows 127 and foreground 255; only the latter counts as motion.
_FOREGROUND_LEVEL = 200


class _PerThread(Generic[T]):
    """One instance per worker thread.

    CascadeClassifier, HOGDescriptor and QRCodeDetector keep scratch buffers in
    the object, so sessions running in parallel worker threads must not share
    one; a lock would serialise every session's face detection instead.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._local = threading.local()

    def get(self) -> T:
        instance = getattr(self._local, "instance", None)
        if instance is None:
            instance = self._factory()
            self._local.instance = instance
        return instance


def _box_from_points(points: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    """The axis-aligned box around a polygon, clipped to the frame."""
    xs = np.clip(points[:, 0], 0, width)
    ys = np.clip(points[:, 1], 0, height)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def _nms(boxes: list[tuple[float, float, float, float]], scores: list[float], iou: float) -> list[int]:
    """Indices of the boxes kept by non-maximum suppression, best first."""
    if not boxes:
        return []
    rects = [(x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes]
    kept = cv2.dnn.NMSBoxes(rects, scores, score_threshold=0.0, nms_threshold=iou)
    return [int(i) for i in np.asarray(kept).reshape(-1)]


@dataclass(slots=True)
class _MotionModel:
    """The background model of one stream; rebuilt when the frame size changes, since MOG2 cannot adapt to that."""

    subtractor: Any
    shape: tuple[int, int]
    settings: tuple[int, float, bool]


class OpenCvVisionPlugin:
    plugin_id = "opencv"

    def __init__(self, face_cascade_path: str = DEFAULT_FACE_CASCADE) -> None:
        self._face_cascade_path = face_cascade_path
        # Load one cascade now so that a missing or corrupt file stops start-up rather than the first frame.
        self._cascades: _PerThread[Any] = _PerThread(self._load_cascade)
        self._cascades.get()
        self._hogs: _PerThread[Any] = _PerThread(self._make_hog)
        self._qr_detectors: _PerThread[Any] = _PerThread(cv2.QRCodeDetector)
        self._tools: dict[str, Tool] = {
            "face_detect": self.face_detect,
            "people_detect": self.people_detect,
            "motion_detect": self.motion_detect,
            "qr_decode": self.qr_decode,
        }

    def tools(self) -> Mapping[str, Tool]:
        return self._tools

    def availability(self) -> Availability:
        return Availability(True)

    def _load_cascade(self) -> Any:
        cascade = cv2.CascadeClassifier(self._face_cascade_path)
        if cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {self._face_cascade_path!r}")
        return cascade

    @staticmethod
    def _make_hog() -> Any:
        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        return hog

    # Faces --------------------------------------------------------------------

    def face_detect(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """Frontal faces by Haar cascade.

        Confidence is the logistic squash of the cascade's last-stage sum
        (detectMultiScale3's levelWeights): the cascade only accepts or rejects,
        so this ranks faces by how clearly they passed, it is not a probability.

        Parameters: scale_factor (1.1), min_neighbors (5), min_size (30, pixels).
        """
        scale_factor = float_param(inputs, "scale_factor", 1.1, low=1.01, high=2.0)
        min_neighbors = int_param(inputs, "min_neighbors", 5, low=0, high=100)
        min_size = int_param(inputs, "min_size", 30, low=1, high=100_000)
        image = bgr_image(context.image())
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        rects, _levels, weights = self._cascades.get().detectMultiScale3(
            gray,
            scaleFactor=scale_factor,
            minNeighbors=min_neighbors,
            minSize=(min_size, min_size),
            outputRejectLevels=True,
        )
        faces = [
            detection("face", squash(float(weight)), x, y, x + w, y + h)
            for (x, y, w, h), weight in zip(np.asarray(rects).reshape(-1, 4).tolist(), np.asarray(weights).reshape(-1).tolist())
        ]
        faces.sort(key=lambda face: face["confidence"], reverse=True)
        return {"faces": faces}

    # People -------------------------------------------------------------------

    def people_detect(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """Standing people by HOG + linear SVM (Dalal-Triggs).

        Confidence is the logistic squash of the SVM weight, so 0.5 is the
        detector's own decision boundary. Frames larger than max_side are shrunk
        first: HOG cost grows with the pixel count, and a 1080p frame would take
        seconds; people shorter than 128 pixels after shrinking are missed.

        Parameters: win_stride (8, a multiple of 8), scale (1.05), hit_threshold (0.0),
        max_side (640), nms (true), nms_iou (0.45).
        """
        win_stride = int_param(inputs, "win_stride", 8, low=8, high=64)
        if win_stride % 8:
            raise ValueError(f"parameter 'win_stride' must be a multiple of 8 (the HOG block stride), got {win_stride}")
        scale = float_param(inputs, "scale", 1.05, low=1.01, high=2.0)
        hit_threshold = float_param(inputs, "hit_threshold", 0.0, low=-10.0, high=10.0)
        max_side = int_param(inputs, "max_side", 640, low=_HOG_WINDOW_H, high=100_000)
        use_nms = bool_param(inputs, "nms", True)
        nms_iou = float_param(inputs, "nms_iou", 0.45, low=0.0, high=1.0)

        image = bgr_image(context.image())
        height, width = image.shape[:2]
        factor = min(1.0, max_side / max(height, width))
        if factor < 1.0:
            image = cv2.resize(image, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)
        if image.shape[0] < _HOG_WINDOW_H or image.shape[1] < _HOG_WINDOW_W:
            return {"people": []}
        rects, weights = self._hogs.get().detectMultiScale(
            image, hitThreshold=hit_threshold, winStride=(win_stride, win_stride), scale=scale
        )
        boxes: list[tuple[float, float, float, float]] = []
        for x, y, w, h in np.asarray(rects).reshape(-1, 4).tolist():
            boxes.append(
                (
                    max(0.0, x / factor),
                    max(0.0, y / factor),
                    min(float(width), (x + w) / factor),
                    min(float(height), (y + h) / factor),
                )
            )
        scores = [squash(weight) for weight in np.asarray(weights).reshape(-1).tolist()]
        keep = _nms(boxes, scores, nms_iou) if use_nms else sorted(range(len(boxes)), key=lambda i: -scores[i])
        return {"people": [detection("person", scores[i], *boxes[i]) for i in keep]}

    # Motion -------------------------------------------------------------------

    def motion_detect(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """Moving regions against a per-stream MOG2 background model kept in context.state().

        The first frame of a stream (or the first after the frame size changes)
        only seeds the model, so it reports warming_up and no motion. Regions are
        connected blobs of changed pixels of at least min_area pixels; MOG2 makes
        a yes/no call per pixel, so a region's confidence is 1.0 and its changed
        pixel count is given as "area". For one-off frames (no stream) the state
        is fresh each time, so every frame is a warm-up frame.

        Parameters: min_area (500 pixels), history (500 frames), var_threshold (16.0),
        detect_shadows (false; shadow pixels never count as motion).
        """
        min_area = int_param(inputs, "min_area", 500, low=1, high=1_000_000_000)
        history = int_param(inputs, "history", 500, low=1, high=100_000)
        var_threshold = float_param(inputs, "var_threshold", 16.0, low=0.1, high=10_000.0)
        detect_shadows = bool_param(inputs, "detect_shadows", False)
        image = bgr_image(context.image())
        shape = (int(image.shape[0]), int(image.shape[1]))
        settings = (history, var_threshold, detect_shadows)

        state = context.state()
        model = state.get("model")
        warming_up = not (isinstance(model, _MotionModel) and model.shape == shape and model.settings == settings)
        if warming_up:
            model = _MotionModel(
                cv2.createBackgroundSubtractorMOG2(history=history, varThreshold=var_threshold, detectShadows=detect_shadows),
                shape,
                settings,
            )
            state["model"] = model
        mask = model.subtractor.apply(image)
        if warming_up:
            return {"motion": {"detected": False, "ratio": 0.0, "regions": [], "warming_up": True}}

        _, foreground = cv2.threshold(mask, _FOREGROUND_LEVEL, 255, cv2.THRESH_BINARY)
        # An opening removes single-pixel sensor noise that would otherwise count as motion.
        foreground = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        ratio = float(cv2.countNonZero(foreground)) / float(shape[0] * shape[1])
        count, _labels, stats, _centroids = cv2.connectedComponentsWithStats(foreground, connectivity=8)
        regions = []
        for x, y, w, h, area in stats[1:count].tolist():  # label 0 is the background
            if area >= min_area:
                regions.append(detection("motion", 1.0, x, y, x + w, y + h, area=int(area)))
        regions.sort(key=lambda region: region["area"], reverse=True)
        return {"motion": {"detected": bool(regions), "ratio": round(ratio, 6), "regions": regions, "warming_up": False}}

    # QR codes -----------------------------------------------------------------

    def qr_decode(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """Decoded QR codes; codes that are found but cannot be decoded are left out.

        Multi-code decoding misses some single codes that detectAndDecode reads,
        hence the fallback. Confidence is 1.0: QR decoding is checked by its
        error-correction code, so a decoded text is either right or absent.
        """
        image = bgr_image(context.image())
        height, width = image.shape[:2]
        detector = self._qr_detectors.get()
        found: list[tuple[str, np.ndarray]] = []
        ok, texts, points, _ = detector.detectAndDecodeMulti(image)
        if ok and points is not None:
            found = [(text, quad) for text, quad in zip(texts, np.asarray(points).reshape(-1, 4, 2)) if text]
        if not found:
            text, points, _ = detector.detectAndDecode(image)
            if text and points is not None:
                found = [(text, np.asarray(points).reshape(-1, 2))]
        return {
            "qr_codes": [detection("qr", 1.0, *_box_from_points(quad, width, height), text=str(text)) for text, quad in found]
        }
