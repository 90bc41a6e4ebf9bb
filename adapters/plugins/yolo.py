"""Object detection with a YOLO ONNX model on ONNX Runtime.

No model ships with the server: the operator points FORGESYTE_STREAM_YOLO_MODEL
at an exported model (for instance `yolo export model=yolov8n.pt format=onnx`).
Without one the plugin is present but unavailable, so the yolo pipelines are
listed with their reason instead of failing at start-up.

The exported YOLO families disagree on what the output tensor holds; the
layout is told from the output's shape when the model loads (see `Layout`),
and a shape that fits none stops start-up rather than producing confident
nonsense. FORGESYTE_STREAM_ONNX_PROVIDERS chooses the execution providers.
"""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
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
CPU_PROVIDER = "CPUExecutionProvider"
# Strides of the YOLOv5 detection heads: P3-P5, and P3-P6 for the "6" models; three anchors per cell.
_V5_STRIDE_SETS = ((8, 16, 32), (8, 16, 32, 64))
_V5_ANCHORS_PER_CELL = 3


class Layout(StrEnum):
    """The output layouts of the YOLO families exported to ONNX, for a batch of one.

    V5: (1, boxes, 5 + classes), rows cx, cy, w, h, objectness, class scores (YOLOv5, v7).
    V8: (1, 4 + classes, boxes), columns cx, cy, w, h, class scores (YOLOv8, v9, v11, v12).
    END_TO_END: (1, detections, 6), rows x1, y1, x2, y2, score, class id, already
    free of duplicates (YOLOv10 and YOLO26, or any model exported with nms=True).
    """

    V5 = "v5"
    V8 = "v8"
    END_TO_END = "end_to_end"


def _v5_box_count(width: int, height: int, strides: tuple[int, ...]) -> int:
    return _V5_ANCHORS_PER_CELL * sum(math.ceil(width / s) * math.ceil(height / s) for s in strides)


def detect_layout(
    shape: list[Any] | tuple[Any, ...], classes: int | None, input_size: tuple[int, int]
) -> Layout:
    """The layout of an output of this shape; raises ValueError saying why none fits.

    With the class count known (from the names), the class rows (V8) or
    columns (V5) must hold exactly that many scores; without it, rows and
    columns are told apart by which is longer (a model proposes far more boxes
    than it has classes). A V5 model with one class has the end-to-end shape (1, N, 6):
    there N is the V5 anchor grid of the input size, where an end-to-end model
    has its small detection cap (300), which decides it.
    """
    if len(shape) != 3:
        raise ValueError(f"output shape {list(shape)} is not 3-D (batch, rows, columns)")
    batch, rows, cols = (_dimension(d) for d in shape)
    if batch not in (None, 1):
        raise ValueError(f"output shape {list(shape)} has a batch of {batch}; export the model with batch 1")
    fits = []
    if rows is not None and rows > 4 and (rows - 4 == classes if classes else cols is None or cols > rows):
        fits.append(Layout.V8)
    if cols is not None and cols > 5 and (cols - 5 == classes if classes else rows is None or rows > cols):
        fits.append(Layout.V5)
    if cols == 6 and (rows is None or rows > cols):
        fits.append(Layout.END_TO_END)
    if fits == [Layout.V5, Layout.END_TO_END]:
        width, height = input_size
        grids = {_v5_box_count(width, height, strides) for strides in _V5_STRIDE_SETS}
        fits = [Layout.V5] if rows in grids else [Layout.END_TO_END]
    if len(fits) != 1:
        names = "" if classes is None else f" with the {classes} classes its names give"
        raise ValueError(
            f"output shape {list(shape)} fits no known YOLO layout{names}; expected (1, 4 + classes, boxes) "
            "for YOLOv8/v11, (1, boxes, 5 + classes) for YOLOv5 or (1, detections, 6) for an end-to-end "
            "(NMS-free) YOLOv10+ export"
        )
    return fits[0]


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
        providers: tuple[str, ...] = (CPU_PROVIDER,),
    ) -> None:
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {confidence}")
        if not 0.0 <= iou <= 1.0:
            raise ValueError(f"iou must be in [0, 1], got {iou}")
        if not providers:
            raise ValueError("providers must name at least one ONNX Runtime execution provider")
        self._confidence = confidence
        self._iou = iou
        self._providers = tuple(providers)
        self._layout = Layout.V8
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
            session = ort.InferenceSession(path, sess_options=options, providers=list(self._providers))
        except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
            raise ModelLoadError(f"YOLO model {path!r} does not load in ONNX Runtime: {exc}") from exc
        # ONNX Runtime falls back to the CPU, with a log line only, when a provider fails to initialise
        # (no driver, no device); running on the CPU when the operator asked for the GPU is refused here.
        missing = [provider for provider in self._providers if provider not in session.get_providers()]
        if missing:
            raise ModelLoadError(
                f"YOLO model {path!r}: ONNX Runtime could not initialise {', '.join(missing)} "
                f"(FORGESYTE_STREAM_ONNX_PROVIDERS); the session has only {', '.join(session.get_providers())}"
            )
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelLoadError(f"YOLO model {path!r}: expected one NCHW image input, found {[(i.name, i.shape) for i in inputs]}")
        if not outputs:
            raise ModelLoadError(f"YOLO model {path!r} has no outputs")
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
        try:
            self._layout = detect_layout(outputs[0].shape, len(self._names) or None, self.input_size)
        except ValueError as exc:
            if self._names:
                source = f"labels file {labels_path!r}" if labels_path is not None else "its 'names' metadata"
                raise ModelLoadError(f"YOLO model {path!r} (classes from {source}): {exc}") from None
            raise ModelLoadError(f"YOLO model {path!r}: {exc}") from None
        self._session = session

    @property
    def layout(self) -> Layout:
        """The output layout told from the model's output shape at load time."""
        return self._layout

    @property
    def providers(self) -> list[str]:
        """The execution providers the loaded session runs on, in priority order."""
        return [] if self._session is None else list(self._session.get_providers())

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
        if raw.ndim != 3 or raw.shape[0] != 1:
            raise ValueError(f"YOLO output has shape {raw.shape}; expected a batch of one, {self._layout.value} layout")
        output = raw[0].astype(np.float32, copy=False)
        if self._layout is Layout.END_TO_END:
            return self._decode_end_to_end(output, fit, geometry, width, height, confidence, max_detections)
        if self._layout is Layout.V8:
            if output.shape[0] <= 4:
                raise ValueError(f"YOLO output has shape {raw.shape}; expected (1, 4 + classes, boxes)")
            predictions = output.T  # one row per candidate: cx, cy, w, h, class scores...
            scores = predictions[:, 4:]
        else:
            if output.shape[1] <= 5:
                raise ValueError(f"YOLO output has shape {raw.shape}; expected (1, boxes, 5 + classes)")
            predictions = output
            scores = predictions[:, 5:] * predictions[:, 4:5]  # class score given an object, times objectness
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
        return self._detections(boxes, best, class_ids, order, fit, geometry, width, height, max_detections)

    def _decode_end_to_end(
        self,
        rows: np.ndarray,
        fit: Letterbox,
        geometry: FrameGeometry,
        width: int,
        height: int,
        confidence: float,
        max_detections: int,
    ) -> list[dict[str, Any]]:
        """Rows x1, y1, x2, y2, score, class id: the model already removed duplicates, so there is no NMS here."""
        if rows.ndim != 2 or rows.shape[1] != 6:
            raise ValueError(f"YOLO output rows have shape {rows.shape}; expected (detections, 6)")
        scores = rows[:, 4]
        keep = (scores >= confidence) & (rows[:, 2] > rows[:, 0]) & (rows[:, 3] > rows[:, 1])
        if not keep.any():
            return []
        rows = rows[keep]
        class_values = rows[:, 5]
        if not np.all(np.isfinite(class_values)) or np.any(class_values < 0) or np.any(class_values != np.round(class_values)):
            raise ValueError(f"YOLO end-to-end output holds a class id that is not a whole number >= 0: {class_values[:5]}")
        scores = rows[:, 4]
        order = sorted(range(len(rows)), key=lambda i: -float(scores[i]))
        return self._detections(
            rows[:, :4], scores, class_values.astype(np.int64), order, fit, geometry, width, height, max_detections
        )

    def _detections(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        class_ids: np.ndarray,
        order: list[int],
        fit: Letterbox,
        geometry: FrameGeometry,
        width: int,
        height: int,
        max_detections: int,
    ) -> list[dict[str, Any]]:
        """The kept candidates, best first, as detections in frame pixels."""
        if not order:
            return []
        frame_boxes = fit.to_frame(boxes[order], width, height)
        results = []
        for row, i in zip(frame_boxes.tolist(), order):
            if row[2] <= row[0] or row[3] <= row[1]:
                continue  # the box lies wholly in the letterbox padding: nothing of it is in the frame
            score = float(scores[i])
            if not math.isfinite(score):
                raise ValueError(f"YOLO output holds a non-finite score {score}")
            results.append(detection(self._label(int(class_ids[i])), min(1.0, max(0.0, score)), *geometry.box(*row)))
            if len(results) == max_detections:
                break
        return results
