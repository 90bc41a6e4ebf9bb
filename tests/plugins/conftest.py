"""Shared pieces for the plugin tests: real images, real models, and a minimal ToolContext."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from adapters.media.codec import OpenCvJpegDecoder
from adapters.plugins.ocr import OcrPlugin
from adapters.plugins.opencv_vision import OpenCvVisionPlugin
from domain import read_jpeg_info

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
FACE_IMAGE = DATA_DIR / "face-astronaut.jpg"


class StubContext:
    """A ToolContext as the engine builds one: lazy decode through the real decoder (at a reduction, if given), and a state dict."""

    def __init__(
        self,
        image_bytes: bytes,
        *,
        frame_index: int = 0,
        state: dict[str, Any] | None = None,
        reduction: int = 1,
        pipeline_id: str = "test",
        node_id: str = "node",
    ) -> None:
        self.frame_index = frame_index
        self.image_bytes = image_bytes
        self.image_reduction = reduction
        info = read_jpeg_info(image_bytes)
        self.jpeg_info = info
        self.frame_size = (info.width, info.height)
        self.pipeline_id = pipeline_id
        self.node_id = node_id
        self._state: dict[str, Any] = {} if state is None else state
        self._image: Any = None
        self.decodes = 0

    def image(self) -> Any:
        if self._image is None:
            self._image = OpenCvJpegDecoder(max_pixels=50_000_000).decode(self.image_bytes, self.image_reduction)
            self.decodes += 1
        return self._image

    def state(self) -> dict[str, Any]:
        return self._state


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    assert ok
    return data.tobytes()


def assert_detection(item: Any, *, width: int, height: int) -> None:
    """The one detection shape every plugin promises, with plain Python numbers inside the frame."""
    assert isinstance(item, dict)
    assert type(item["label"]) is str and item["label"]
    assert type(item["confidence"]) is float and 0.0 <= item["confidence"] <= 1.0
    box = item["box"]
    assert set(box) == {"x1", "y1", "x2", "y2"}
    assert all(type(value) is float for value in box.values())
    assert 0.0 <= box["x1"] <= box["x2"] <= width
    assert 0.0 <= box["y1"] <= box["y2"] <= height


# Helpers are handed out as fixtures rather than imported: another conftest
# module elsewhere in tests/ would shadow `import conftest`.


@pytest.fixture(scope="session")
def make_context() -> Callable[..., StubContext]:
    return StubContext


@pytest.fixture(scope="session")
def jpeg() -> Callable[..., bytes]:
    return encode_jpeg


@pytest.fixture(scope="session")
def check_detection() -> Callable[..., None]:
    return assert_detection


@pytest.fixture(scope="session")
def face_jpeg() -> bytes:
    return FACE_IMAGE.read_bytes()


@pytest.fixture(scope="session")
def opencv_plugin() -> OpenCvVisionPlugin:
    return OpenCvVisionPlugin()


@pytest.fixture(scope="session")
def ocr_plugin() -> OcrPlugin:
    return OcrPlugin()
