"""What every plugin shares: the one detection shape, typed node parameters and the image check.

Clients draw every plugin's output with the same code, so a box is always
{"x1", "y1", "x2", "y2"} in pixels of the frame the client sent, and numbers are
plain Python floats: numpy scalars and float32 noise (0.8999999761581421) never
reach the wire.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

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
