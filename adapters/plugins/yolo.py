"""Object detection with a YOLOv8-style ONNX model on ONNX Runtime (CPU).

No model ships with the server: the operator points FORGESYTE_STREAM_YOLO_MODEL
at an exported model (for instance `yolo export model=yolov8n.pt format=onnx`).
Without one the plugin is present but unavailable, so the yolo pipeline is
listed with its reason instead of failing at start-up.
"""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from adapters.plugins.common import FrameGeometry, bgr_image, detection, float_param, frame_geometry, int_param
from application.ports import Availability, Tool, ToolContext

NO_MODEL_REASON = "no model configured (set FORGESYTE_STREAM_YOLO_MODEL)"
DEFAULT_INPUT_SIZE = 640
# Ultralytics pads with this grey; using the same value keeps scores identical to its own predictor.
_LETTERBOX_FILL = (114, 114, 114)
_MAX_DETECTIONS = 300


class ModelLoadError(RuntimeError):
    """A configured model or labels file that cannot be used; start-up must stop and name the file."""


@dataclass(frozen=True, slots=True)
class Letterbox:
    """How a frame was fitted into the model input, kept to map boxes back to frame pixels."""

    scale: float
    pad_x: float
    pad_y: float

    def to_frame(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        """Map x1, y1, x2, y2 rows from model-input pixels back to frame pixels, clipped to the frame."""
        mapped = boxes.astype(np.float64).copy()
        mapped[:, [0, 2]] = (mapped[:, [0, 2]] - self.pad_x) / self.scale
        mapped[:, [1, 3]] = (mapped[:, [1, 3]] - self.pad_y) / self.scale
        mapped[:, [0, 2]] = mapped[:, [0, 2]].clip(0, width)
        mapped[:, [1, 3]] = mapped[:, [1, 3]].clip(0, height)
        return mapped


def letterbox(image: np.ndarray, input_width: int, input_height: int) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad to the model input, as the model was trained.

    Stretching instead would distort every object and lower the scores.
    """
    height, width = image.shape[:2]
    scale = min(input_width / width, input_height / height)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    resized = image if (new_width, new_height) == (width, height) else cv2.resize(
        image, (new_width, new_height), interpolation=cv2.INTER_LINEAR
    )
    pad_x, pad_y = (input_width - new_width) / 2, (input_height - new_height) / 2
    top, left = int(round(pad_y - 0.1)), int(round(pad_x - 0.1))
    bottom, right = input_height - new_height - top, input_width - new_width - left
    padded = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=_LETTERBOX_FILL)
    return padded, Letterbox(scale=scale, pad_x=float(left), pad_y=float(top))


def _parse_names(raw: str, source: str) -> dict[int, str]:
    """Class names from the metadata Ultralytics writes: a Python literal such as "{0: 'person', 1: 'bicycle'}"."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError) as exc:
        raise ModelLoadError(f"{source}: metadata 'names' is not a Python literal ({exc}); pass a labels file instead") from None
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    if not isinstance(value, dict) or not all(isinstance(key, int) for key in value):
        raise ModelLoadError(f"{source}: metadata 'names' is not a mapping of class index to name; pass a labels file instead")
    return {int(key): str(name) for key, name in value.items()}


def _read_labels(path: str) -> dict[int, str]:
    """One class name per line, in class order; blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
    except OSError as exc:
        raise ModelLoadError(f"cannot read YOLO labels file {path!r}: {exc.strerror or exc}") from None
    if not names:
        raise ModelLoadError(f"YOLO labels file {path!r} holds no class names")
    return dict(enumerate(names))


def _dimension(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


class YoloPlugin:
    """The "yolo" plugin: one "detect" tool over one ONNX Runtime session.

    The model is loaded in the constructor so that a wrong path or a broken file
    stops start-up with the path in the message. InferenceSession.run is
    thread-safe, so all worker threads share the session; each run uses one
    intra-op thread so that concurrent sessions do not oversubscribe the cores.
    """

    plugin_id = "yolo"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None,
        labels_path: str | os.PathLike[str] | None = None,
        confidence: float = 0.25,
        iou: float = 0.45,
    ) -> None:
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {confidence}")
        if not 0.0 <= iou <= 1.0:
            raise ValueError(f"iou must be in [0, 1], got {iou}")
        self._confidence = confidence
        self._iou = iou
        self._model_path = None if model_path is None else os.fspath(model_path)
        self._session: ort.InferenceSession | None = None
        self._names: dict[int, str] = {}
        self._input_name = ""
        self._output_name = ""
        self._input_width = self._input_height = DEFAULT_INPUT_SIZE
        self._input_dtype: Any = np.float32
        self._tools: dict[str, Tool] = {"detect": self._declared_detect()}
        if self._model_path is not None:
            self._load(self._model_path, None if labels_path is None else os.fspath(labels_path))

    def _declared_detect(self) -> Tool:
        """The detect tool, declaring the model input's longer side as all it needs of a frame (it letterboxes to it)."""

        def detect(inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
            return self.detect(inputs, context)

        detect.max_input_side = lambda params: max(self._input_width, self._input_height)  # type: ignore[attr-defined]
        return detect

    def _load(self, path: str, labels_path: str | None) -> None:
        if not Path(path).is_file():
            raise ModelLoadError(f"YOLO model {path!r} does not exist or is not a file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # ONNX Runtime's warnings about unused initialisers are noise here
        try:
            session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
            raise ModelLoadError(f"YOLO model {path!r} does not load in ONNX Runtime: {exc}") from exc
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelLoadError(f"YOLO model {path!r}: expected one NCHW image input, found {[(i.name, i.shape) for i in inputs]}")
        if not outputs or len(outputs[0].shape) != 3:
            raise ModelLoadError(
                f"YOLO model {path!r}: expected a (1, 4 + classes, boxes) output, found {[(o.name, o.shape) for o in outputs]}"
            )
        if inputs[0].type not in ("tensor(float)", "tensor(float16)"):
            raise ModelLoadError(f"YOLO model {path!r}: expected a float input, found {inputs[0].type}")
        channels = _dimension(inputs[0].shape[1])
        if channels not in (None, 3):
            raise ModelLoadError(f"YOLO model {path!r}: expected a 3-channel input, found shape {inputs[0].shape}")
        self._input_name = inputs[0].name
        self._output_name = outputs[0].name
        self._input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        self._input_height = _dimension(inputs[0].shape[2]) or DEFAULT_INPUT_SIZE
        self._input_width = _dimension(inputs[0].shape[3]) or DEFAULT_INPUT_SIZE
        if labels_path is not None:
            self._names = _read_labels(labels_path)
        else:
            raw_names = session.get_modelmeta().custom_metadata_map.get("names")
            self._names = _parse_names(raw_names, f"YOLO model {path!r}") if raw_names else {}
        rows = _dimension(outputs[0].shape[1])
        if rows is not None and rows <= 4:
            raise ModelLoadError(f"YOLO model {path!r}: output shape {outputs[0].shape} has no class scores after the 4 box rows")
        # A count that disagrees with the names is most often an end-to-end export (boxes, 6) or another
        # layout; decoding it as (4 + classes, boxes) would produce confident nonsense, so refuse it.
        if rows is not None and self._names and rows - 4 != len(self._names):
            source = f"labels file {labels_path!r}" if labels_path is not None else "its 'names' metadata"
            raise ModelLoadError(
                f"YOLO model {path!r}: output shape {outputs[0].shape} has {rows - 4} class rows but {source} "
                f"names {len(self._names)} classes; expected the YOLOv8 layout (1, 4 + classes, boxes)"
            )
        self._session = session

    @property
    def class_names(self) -> Mapping[int, str]:
        return dict(self._names)

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the model input that frames are letterboxed to."""
        return self._input_width, self._input_height

    def tools(self) -> Mapping[str, Tool]:
        return self._tools

    def availability(self) -> Availability:
        if self._session is None:
            return Availability(False, NO_MODEL_REASON)
        return Availability(True)

    def _label(self, class_id: int) -> str:
        return self._names.get(class_id, f"class_{class_id}")

    def detect(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """Objects as detections labelled with their class name.

        Parameters (override the server-wide settings per pipeline node):
        confidence (threshold on the best class score), iou (class-wise NMS overlap),
        max_detections (300).
        """
        if self._session is None:
            raise RuntimeError(f"yolo.detect called without a model: {NO_MODEL_REASON}")
        confidence = float_param(inputs, "confidence", self._confidence, low=0.0, high=1.0)
        iou = float_param(inputs, "iou", self._iou, low=0.0, high=1.0)
        max_detections = int_param(inputs, "max_detections", _MAX_DETECTIONS, low=1, high=100_000)
        image = bgr_image(context.image())
        height, width = image.shape[:2]
        padded, fit = letterbox(image, self._input_width, self._input_height)
        blob = cv2.dnn.blobFromImage(padded, scalefactor=1.0 / 255.0, swapRB=True).astype(self._input_dtype, copy=False)
        (raw,) = self._session.run([self._output_name], {self._input_name: blob})
        geometry = frame_geometry(context, image)
        return {"detections": self._decode(np.asarray(raw), fit, geometry, width, height, confidence, iou, max_detections)}

    def _decode(
        self,
        raw: np.ndarray,
        fit: Letterbox,
        geometry: FrameGeometry,
        width: int,
        height: int,
        confidence: float,
        iou: float,
        max_detections: int,
    ) -> list[dict[str, Any]]:
        if raw.ndim != 3 or raw.shape[0] != 1 or raw.shape[1] <= 4:
            raise ValueError(f"YOLO output has shape {raw.shape}; expected (1, 4 + classes, boxes)")
        predictions = raw[0].astype(np.float32, copy=False).T  # one row per candidate: cx, cy, w, h, class scores...
        scores = predictions[:, 4:]
        class_ids = scores.argmax(axis=1)
        best = scores[np.arange(len(scores)), class_ids]
        # A non-positive width or height can only come from a broken export; such a row is no box at all.
        keep = (best >= confidence) & (predictions[:, 2] > 0) & (predictions[:, 3] > 0)
        if not keep.any():
            return []
        predictions, class_ids, best = predictions[keep], class_ids[keep], best[keep]
        cx, cy, w, h = predictions[:, 0], predictions[:, 1], predictions[:, 2], predictions[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        # Class-wise: a person standing in front of a car must not suppress the car.
        kept = cv2.dnn.NMSBoxesBatched(
            np.stack([boxes[:, 0], boxes[:, 1], w, h], axis=1).astype(np.float64).tolist(),
            best.astype(np.float64).tolist(),
            class_ids.astype(np.int32).tolist(),
            float(confidence),
            float(iou),
        )
        order = [int(i) for i in np.asarray(kept).reshape(-1)]
        order.sort(key=lambda i: -float(best[i]))
        if not order:
            return []
        frame_boxes = fit.to_frame(boxes[order], width, height)
        results = []
        for row, i in zip(frame_boxes.tolist(), order):
            if row[2] <= row[0] or row[3] <= row[1]:
                continue  # the box lies wholly in the letterbox padding: nothing of it is in the frame
            score = float(best[i])
            if not math.isfinite(score):
                raise ValueError(f"YOLO output holds a non-finite score {score}")
            results.append(detection(self._label(int(class_ids[i])), min(1.0, max(0.0, score)), *geometry.box(*row)))
            if len(results) == max_detections:
                break
        return results
