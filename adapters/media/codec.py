"""JPEG decoding for pipelines and frame extraction from video files, both through OpenCV."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np

from application.errors import VideoReadError
from domain import ErrorCode, FrameValidationError, JpegInfo, check_frame_pixels, read_jpeg_info


# IMREAD_REDUCED_COLOR_N makes libjpeg scale inside its inverse DCT: no full-size image is ever made.
_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
# The decoded image is H x W x 3 uint8 (BGR).
_OUTPUT_BYTES_PER_PIXEL = 3
# A JPEG of more than one scan (progressive, or sequential with one scan per
# component) keeps every DCT coefficient of the whole frame until its last scan,
# at full size whatever the reduction: JpegInfo.coefficient_blocks blocks of
# 8 x 8 coefficients, 2 bytes each (libjpeg's JCOEF). A single-scan file needs
# none of it. The largest per pixel: four components, none subsampled.
_COEFFICIENT_BYTES = 2
_BLOCK_BYTES = 64 * _COEFFICIENT_BYTES


class OpenCvJpegDecoder:
    """Decodes a frame into the H x W x 3 uint8 BGR array every OpenCV-based tool expects.

    The declared size is checked from the header before decoding: a few
    kilobytes can declare a 60000 x 60000 image, and decoding it would allocate
    gigabytes in a worker thread shared with every other session. The pipeline
    service checks the same limit first for every frame; this check keeps the
    decoder safe on its own.
    """

    def __init__(self, max_pixels: int) -> None:
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
        self.max_pixels = max_pixels

    def memory_needed(self, info: JpegInfo, reduction: int) -> int:
        width, height = info.reduced_size(reduction)
        needed = width * height * _OUTPUT_BYTES_PER_PIXEL
        if info.multi_scan:
            needed += info.coefficient_blocks * _BLOCK_BYTES
        return needed

    def largest_memory_needed(self) -> int:
        """What the largest frame this decoder accepts can hold: a multi-scan four-component one at full size.

        Settings.DECODE_BYTES_PER_PIXEL holds the same figure, so that a budget
        too small for one such frame stops start-up. Sides that are not whole
        MCUs add their padding to the coefficients (a strip 129 pixels wide
        with every component sampled 4 x 4 is padded to 160): the budget charges
        it, and refuses as frame_too_large a frame that could never fit.
        """
        return self.max_pixels * (_OUTPUT_BYTES_PER_PIXEL + 4 * _COEFFICIENT_BYTES)

    def decode(self, image_bytes: bytes, reduction: int = 1) -> np.ndarray:
        flag = _REDUCED_FLAGS.get(reduction)
        if flag is None:
            raise ValueError(f"reduction must be one of {sorted(_REDUCED_FLAGS)}, got {reduction!r}")
        info = read_jpeg_info(image_bytes)
        check_frame_pixels(info, self.max_pixels)
        image = cv2.imdecode(np.frombuffer(image_bytes, dtype=np.uint8), flag)
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
