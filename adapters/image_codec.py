"""JPEG decoding for pipelines and frame extraction from video files, both through OpenCV."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np

from application.errors import VideoReadError
from domain import ErrorCode, FrameValidationError, read_jpeg_info


class OpenCvJpegDecoder:
    """Decodes a frame into the H x W x 3 uint8 BGR array every OpenCV-based tool expects.

    The declared size is checked from the header before decoding: a few
    kilobytes can declare a 60000 x 60000 image, and decoding it would allocate
    gigabytes in a worker thread shared with every other session.
    """

    def __init__(self, max_pixels: int) -> None:
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
        self.max_pixels = max_pixels

    def decode(self, image_bytes: bytes) -> np.ndarray:
        info = read_jpeg_info(image_bytes)
        pixels = info.width * info.height
        if pixels > self.max_pixels:
            raise FrameValidationError(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame declares {info.width}x{info.height} = {pixels} pixels; the limit is {self.max_pixels} pixels",
            )
        image = cv2.imdecode(np.frombuffer(image_bytes, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise FrameValidationError(ErrorCode.INVALID_FRAME, "frame has JPEG markers but does not decode as an image")
        return image


class OpenCvVideoReader:
    """Reads a local video file frame by frame for the offline `run-file` use case.

    Frames are re-encoded as JPEG so that a file goes through exactly the same
    validation and decoding as a live stream's frames.
    """

    def __init__(self, jpeg_quality: int = 90) -> None:
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
        self.jpeg_quality = jpeg_quality

    def frames(self, path: str, *, frame_stride: int, max_frames: int | None) -> Iterator[tuple[int, bytes]]:
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be at least 1, got {frame_stride}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be at least 1 or None, got {max_frames}")
        # Checked first because OpenCV reports a missing file only as a failed open (and a warning on stderr).
        if not os.path.isfile(path):
            raise VideoReadError(f"cannot read video file {path!r}: no such file")
        return self._read(path, frame_stride, max_frames)

    def _read(self, path: str, frame_stride: int, max_frames: int | None) -> Iterator[tuple[int, bytes]]:
        capture: Any = cv2.VideoCapture(path)
        try:
            if not capture.isOpened():
                raise VideoReadError(
                    f"cannot read video file {path!r}: OpenCV cannot open it (unsupported container or codec?)"
                )
            params = [int(cv2.IMWRITE_JPEG_QUALITY), self.jpeg_quality]
            yielded = 0
            frame_number = 0
            while max_frames is None or yielded < max_frames:
                # grab() skips the colour conversion of frames the stride leaves out.
                if not capture.grab():
                    break
                if frame_number % frame_stride == 0:
                    ok, image = capture.retrieve()
                    if not ok or image is None:
                        raise VideoReadError(f"cannot read video file {path!r}: frame {frame_number} does not decode")
                    encoded, jpeg = cv2.imencode(".jpg", image, params)
                    if not encoded:
                        raise VideoReadError(f"cannot read video file {path!r}: frame {frame_number} cannot be re-encoded as JPEG")
                    yield frame_number, jpeg.tobytes()
                    yielded += 1
                frame_number += 1
        finally:
            capture.release()
