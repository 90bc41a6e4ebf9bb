"""Classic OpenCV vision: faces (Haar cascade), people (HOG), motion (MOG2), QR codes, and scene change (change_detect.py).

None of these needs a model download, so this plugin is always available and
serves as the baseline the heavier ONNX plugins are compared with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import cv2
import cv2.data
import numpy as np

from adapters.plugins.change_detect import ChangeDetect
from adapters.plugins.common import (
    bool_param,
    declares_max_side,
    detection,
    float_param,
    int_param,
    max_side_param,
    squash,
    working_image,
)
from application.ports import Availability, Tool, ToolContext

T = TypeVar("T")

DEFAULT_FACE_CASCADE = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
# The default people detector's window: HOG on a smaller image corrupts the heap
# in OpenCV 4.x (the process aborts) instead of returning no detections.
_HOG_WINDOW_W, _HOG_WINDOW_H = 64, 128
# MOG2 marks shadows 127 and foreground 255; only the latter counts as motion.
_FOREGROUND_LEVEL = 200
# The longest side each tool works on by default (node parameter max_side): frames
# are decoded reduced and shrunk to it, which bounds every tool's memory and time.
# Faces and QR codes keep 1920 so that a 4K frame loses at most half its
# resolution; people (HOG) and motion (MOG2, whose model is ~100 bytes per
# pixel per stream) work at 640.
_FACES_SIDE = max_side_param(1920, low=24)
_PEOPLE_SIDE = max_side_param(640, low=_HOG_WINDOW_H)
_MOTION_SIDE = max_side_param(640, low=16)
_QR_SIDE = max_side_param(1920, low=21)


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


def _box_from_points(points: np.ndarray) -> tuple[float, float, float, float]:
    """The axis-aligned box around a polygon."""
    return float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max())


def _nms(boxes: list[tuple[float, float, float, float]], scores: list[float], iou: float) -> list[int]:
    """Indices of the boxes kept by non-maximum suppression, best first."""
    if not boxes:
        return []
    rects = [(x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes]
    kept = cv2.dnn.NMSBoxes(rects, scores, score_threshold=0.0, nms_threshold=iou)
    return [int(i) for i in np.asarray(kept).reshape(-1)]


@dataclass(slots=True)
class _MotionModel:
    """The background model of one stream; rebuilt when the frame or working size changes, since MOG2 cannot adapt to that."""

    subtractor: Any
    shape: tuple[int, int, int, int]
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
            "change_detect": ChangeDetect(),
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
        hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), dtype=np.float32))
        return hog

    # Faces --------------------------------------------------------------------

    @declares_max_side(_FACES_SIDE)
    def face_detect(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """Frontal faces by Haar cascade.

        Confidence is the logistic squash of the cascade's last-stage sum
        (detectMultiScale3's levelWeights): the cascade only accepts or rejects,
        so this ranks faces by how clearly they passed, it is not a probability.
        Frames larger than max_side are worked on shrunk: the cascade's cost and
        its scratch buffers (kept per worker thread, sized by the largest image
        seen) grow with the pixel count; faces under 24 pixels after shrinking
        are missed.

        Parameters: scale_factor (1.1), min_neighbors (5), min_size (30, frame pixels),
        max_side (1920).
        """
        scale_factor = float_param(inputs, "scale_factor", 1.1, low=1.01, high=2.0)
        min_neighbors = int_param(inputs, "min_neighbors", 5, low=0, high=100)
        min_size = int_param(inputs, "min_size", 30, low=1, high=100_000)
        image, geometry = working_image(context, _FACES_SIDE(inputs))
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        working_min = (max(1, round(min_size / geometry.scale_x)), max(1, round(min_size / geometry.scale_y)))
        rects, _levels, weights = self._cascades.get().detectMultiScale3(
            gray,
            scaleFactor=scale_factor,
            minNeighbors=min_neighbors,
            minSize=working_min,
            outputRejectLevels=True,
        )
        faces = [
            detection("face", squash(float(weight)), *geometry.box(x, y, x + w, y + h))
            for (x, y, w, h), weight in zip(np.asarray(rects).reshape(-1, 4).tolist(), np.asarray(weights).reshape(-1).tolist())
        ]
        faces.sort(key=lambda face: face["confidence"], reverse=True)
        return {"faces": faces}

    # People -------------------------------------------------------------------

    @declares_max_side(_PEOPLE_SIDE)
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
        use_nms = bool_param(inputs, "nms", True)
        nms_iou = float_param(inputs, "nms_iou", 0.45, low=0.0, high=1.0)

        image, geometry = working_image(context, _PEOPLE_SIDE(inputs))
        if image.shape[0] < _HOG_WINDOW_H or image.shape[1] < _HOG_WINDOW_W:
            return {"people": []}
        rects, weights = self._hogs.get().detectMultiScale(
            image, hitThreshold=hit_threshold, winStride=(win_stride, win_stride), scale=scale
        )
        boxes = [geometry.box(x, y, x + w, y + h) for x, y, w, h in np.asarray(rects).reshape(-1, 4).tolist()]
        scores = [squash(weight) for weight in np.asarray(weights).reshape(-1).tolist()]
        keep = _nms(boxes, scores, nms_iou) if use_nms else sorted(range(len(boxes)), key=lambda i: -scores[i])
        return {"people": [detection("person", scores[i], *boxes[i]) for i in keep]}

    # Motion -------------------------------------------------------------------

    @declares_max_side(_MOTION_SIDE)
    def motion_detect(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """Moving regions against a per-stream MOG2 background model kept in context.state().

        The model works on the frame shrunk to max_side: it holds about 101
        bytes per working pixel for as long as the stream lasts, so its size
        must not follow what a client sends (640 x 360 is 23 MB, a 4K frame
        at full size would be 840 MB). The first frame of a stream (or the
        first after the frame size changes) only seeds the model, so it
        reports warming_up and no motion. Regions are connected blobs of
        changed pixels covering at least min_area frame pixels; MOG2 makes a
        yes/no call per pixel, so a region's confidence is 1.0, and "area" is
        its changed pixel count in frame pixels (counted at the working size
        and scaled). For one-off frames (no stream) the state is fresh each
        time, so every frame is a warm-up frame.

        Parameters: min_area (500 frame pixels), history (500 frames), var_threshold (16.0),
        detect_shadows (false; shadow pixels never count as motion), max_side (640).
        """
        min_area = int_param(inputs, "min_area", 500, low=1, high=1_000_000_000)
        history = int_param(inputs, "history", 500, low=1, high=100_000)
        var_threshold = float_param(inputs, "var_threshold", 16.0, low=0.1, high=10_000.0)
        detect_shadows = bool_param(inputs, "detect_shadows", False)
        image, geometry = working_image(context, _MOTION_SIDE(inputs))
        shape = (geometry.width, geometry.height, int(image.shape[1]), int(image.shape[0]))
        settings = (history, var_threshold, detect_shadows)

        state = context.state()
        model = state.get("model")
        warming_up = False
        if not (isinstance(model, _MotionModel) and model.shape == shape and model.settings == settings):
            warming_up = True
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
        ratio = float(cv2.countNonZero(foreground)) / float(foreground.shape[0] * foreground.shape[1])
        count, _labels, stats, _centroids = cv2.connectedComponentsWithStats(foreground, connectivity=8)
        pixel_area = geometry.scale_x * geometry.scale_y  # frame pixels per working pixel
        regions = []
        for x, y, w, h, area in stats[1:count].tolist():  # label 0 is the background
            frame_area = round(area * pixel_area)
            if frame_area >= min_area:
                regions.append(detection("motion", 1.0, *geometry.box(x, y, x + w, y + h), area=int(frame_area)))
        regions.sort(key=lambda region: region["area"], reverse=True)
        return {"motion": {"detected": bool(regions), "ratio": round(ratio, 6), "regions": regions, "warming_up": False}}

    # QR codes -----------------------------------------------------------------

    @declares_max_side(_QR_SIDE)
    def qr_decode(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """Decoded QR codes; codes that are found but cannot be decoded are left out.

        Multi-code decoding misses some single codes that detectAndDecode reads,
        hence the fallback. Confidence is 1.0: QR decoding is checked by its
        error-correction code, so a decoded text is either right or absent.
        Frames larger than max_side are worked on shrunk, so a code needs
        modules of about 2 frame pixels or more in a 4K frame.

        Parameter: max_side (1920).
        """
        image, geometry = working_image(context, _QR_SIDE(inputs))
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
            "qr_codes": [detection("qr", 1.0, *geometry.box(*_box_from_points(quad)), text=str(text)) for text, quad in found]
        }
