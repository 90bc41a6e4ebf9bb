"""What every plugin shares: the one detection shape, typed node parameters and the image check.

Clients draw every plugin's output with the same code, so a box is always
{"x1", "y1", "x2", "y2"} in pixels of the frame the client sent, and numbers are
plain Python floats: numpy scalars and float32 noise (0.8999999761581421) never
reach the wire.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import cv2
import numpy as np

from application.ports import ToolContext

F = TypeVar("F", bound=Callable[..., Any])
# Upper bound of every max_side parameter: larger than any frame the pixel limit lets through.
MAX_SIDE_LIMIT = 100_000

_BOX_DECIMALS = 2
_CONFIDENCE_DECIMALS = 4


def detection(label: str, confidence: float, x1: float, y1: float, x2: float, y2: float, **extra: Any) -> dict[str, Any]:
    """Build one detection in the shape every tool emits; `extra` adds tool-specific keys (the OCR text, say).

    Refuses a non-finite number, a confidence outside 0..1 or an inverted box:
    any of those is a bug in the tool, and it is better found here than by a client.
    """
    values = {"confidence": confidence, "x1": x1, "y1": y1, "x2": x2, "y2": y2}
    for name, value in values.items():
        if not math.isfinite(float(value)):
            raise ValueError(f"detection {label!r}: {name} is {value!r}, expected a finite number")
    if not 0.0 <= float(confidence) <= 1.0:
        raise ValueError(f"detection {label!r}: confidence {float(confidence)} is outside 0..1")
    if float(x2) < float(x1) or float(y2) < float(y1):
        raise ValueError(f"detection {label!r}: box ({x1}, {y1}, {x2}, {y2}) has x2 < x1 or y2 < y1")
    reserved = {"label", "confidence", "box"} & extra.keys()
    if reserved:
        raise ValueError(f"detection {label!r}: extra keys {sorted(reserved)} would overwrite the common shape")
    return {
        "label": str(label),
        "confidence": round(float(confidence), _CONFIDENCE_DECIMALS),
        "box": {
            "x1": round(float(x1), _BOX_DECIMALS),
            "y1": round(float(y1), _BOX_DECIMALS),
            "x2": round(float(x2), _BOX_DECIMALS),
            "y2": round(float(y2), _BOX_DECIMALS),
        },
        **extra,
    }


def squash(score: float) -> float:
    """Map an unbounded classifier margin (a HOG SVM weight, a Haar stage sum) into 0..1.

    The logistic function is monotone, so the order of detections is kept, and
    a margin of 0 (the classifier's own decision boundary) maps to 0.5. It is a
    ranking signal for clients, not a calibrated probability.
    """
    value = float(score)
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    exp = math.exp(value)
    return exp / (1.0 + exp)


def float_param(inputs: Mapping[str, Any], name: str, default: float, *, low: float, high: float) -> float:
    """A numeric node parameter from the pipeline JSON, checked so that a typo fails loudly rather than silently."""
    value = inputs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"parameter {name!r} must be a number in [{low}, {high}], got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"parameter {name!r} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def int_param(inputs: Mapping[str, Any], name: str, default: int, *, low: int, high: int) -> int:
    value = inputs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"parameter {name!r} must be an integer in [{low}, {high}], got {value!r}")
    return value


def bool_param(inputs: Mapping[str, Any], name: str, default: bool) -> bool:
    value = inputs.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"parameter {name!r} must be true or false, got {value!r}")
    return value


def bgr_image(image: Any) -> np.ndarray:
    """The decoded frame as the H x W x 3 uint8 BGR array the OpenCV decoder produces.

    Checked once here so that a decoder swapped in by mistake fails with a
    message instead of a cryptic OpenCV assertion deep inside a tool.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        description = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}".strip()
        raise TypeError(f"expected a decoded BGR image (H x W x 3 uint8 array), got {description}")
    return image


def max_side_param(default: int, *, low: int = 16) -> Callable[[Mapping[str, Any]], int]:
    """Reads a node's `max_side` parameter: the longest image side the tool works on (larger images are shrunk)."""

    def read(params: Mapping[str, Any]) -> int:
        return int_param(params, "max_side", default, low=low, high=MAX_SIDE_LIMIT)

    return read


def declares_max_side(read: Callable[[Mapping[str, Any]], int]) -> Callable[[F], F]:
    """Mark a tool with the Tool port's `max_input_side`, so the decoder may reduce frames down to it."""

    def mark(tool: F) -> F:
        tool.max_input_side = read  # type: ignore[attr-defined]
        return tool

    return mark


@dataclass(frozen=True, slots=True)
class FrameGeometry:
    """How pixels of the image a tool works on map to the frame the client sent.

    Clients get coordinates in their own frame whatever resolution the tool
    worked at: a reduced decode, a shrunk working copy, or both.
    """

    scale_x: float
    scale_y: float
    width: int
    height: int

    def box(self, x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
        """A box in working pixels as frame pixels, clipped to the frame."""
        return (
            min(float(self.width), max(0.0, x1 * self.scale_x)),
            min(float(self.height), max(0.0, y1 * self.scale_y)),
            min(float(self.width), max(0.0, x2 * self.scale_x)),
            min(float(self.height), max(0.0, y2 * self.scale_y)),
        )

    def to_working(self, x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
        """A box in frame pixels (another node's output) as working pixels."""
        return x1 / self.scale_x, y1 / self.scale_y, x2 / self.scale_x, y2 / self.scale_y

    def shrunk(self, image_width: int, image_height: int, new_width: int, new_height: int) -> FrameGeometry:
        return FrameGeometry(
            self.scale_x * image_width / new_width, self.scale_y * image_height / new_height, self.width, self.height
        )


def frame_geometry(context: ToolContext, image: np.ndarray) -> FrameGeometry:
    """The geometry of the decoded image itself: 1/image_reduction of the frame.

    The decoder applies a JPEG's EXIF orientation, so a rotated frame decodes
    with its sides swapped relative to the header; the sides are matched to
    the decoded image to tell.
    """
    height, width = image.shape[:2]
    reduction = context.image_reduction
    if reduction == 1:
        return FrameGeometry(1.0, 1.0, width, height)
    frame_width, frame_height = context.frame_size

    def reduced(side: int) -> int:
        return -(-side // reduction)

    if (reduced(frame_width), reduced(frame_height)) != (width, height):
        if (reduced(frame_height), reduced(frame_width)) != (width, height):
            raise RuntimeError(
                f"decoded image {width}x{height} is not the frame's {frame_width}x{frame_height} at 1/{reduction}"
            )
        frame_width, frame_height = frame_height, frame_width
    return FrameGeometry(float(reduction), float(reduction), frame_width, frame_height)


def shrink_to(image: np.ndarray, max_side: int, max_pixels: int | None = None) -> tuple[np.ndarray, float]:
    """The image with its longer side at most max_side and at most max_pixels pixels (area-averaged), and the factor applied."""
    height, width = image.shape[:2]
    factor = min(1.0, max_side / max(height, width))
    if max_pixels is not None:
        factor = min(factor, math.sqrt(max_pixels / (height * width)))
    if factor >= 1.0:
        return image, 1.0
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), factor


def working_image(
    context: ToolContext, max_side: int, max_pixels: int | None = None
) -> tuple[np.ndarray, FrameGeometry]:
    """The frame as a tool works on it (longer side at most max_side) and the way back to frame pixels."""
    image = bgr_image(context.image())
    geometry = frame_geometry(context, image)
    height, width = image.shape[:2]
    work, factor = shrink_to(image, max_side, max_pixels)
    if factor < 1.0:
        geometry = geometry.shrunk(width, height, work.shape[1], work.shape[0])
    return work, geometry
