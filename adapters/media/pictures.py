"""Decoded pictures as the pipeline engine takes them (application.ports.DecodedPicture).

A WebRTC track's frames arrive decoded by the track's own decoder as planar
YUV; converting one to the tools' BGR image is the frame's work, so it waits
until the pipeline asks (in a worker, never for a dropped frame), and libswscale
scales and converts in one pass when the pipeline needs less than the frame.
"""

from __future__ import annotations

from typing import Any

import av
import cv2
import numpy as np


class VideoFramePicture:
    """A decoded av.VideoFrame, converted on demand; pickled (to a Ray actor) as its BGR pixels."""

    __slots__ = ("_frame", "height", "nbytes", "rtp_timestamp", "width")

    def __init__(self, frame: av.VideoFrame, rtp_timestamp: int | None, nbytes: int) -> None:
        self._frame = frame
        self.width: int = frame.width
        self.height: int = frame.height
        self.rtp_timestamp = rtp_timestamp
        self.nbytes = nbytes

    def image(self, reduction: int = 1) -> Any:
        frame = self._frame
        if reduction == 1:
            return frame.to_ndarray(format="bgr24")
        width, height = -(-self.width // reduction), -(-self.height // reduction)
        return frame.reformat(width=width, height=height, format="bgr24", interpolation="AREA").to_ndarray()

    def __reduce__(self) -> tuple[Any, ...]:
        return (ArrayPicture, (self.image(1), self.rtp_timestamp, self.nbytes))


class ArrayPicture:
    """A decoded picture held as BGR pixels: what a VideoFramePicture becomes in another process."""

    __slots__ = ("_pixels", "height", "nbytes", "rtp_timestamp", "width")

    def __init__(self, pixels: np.ndarray[Any, Any], rtp_timestamp: int | None, nbytes: int) -> None:
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"a picture is H x W x 3 BGR pixels, got an array of shape {pixels.shape}")
        self._pixels = pixels
        self.height, self.width = int(pixels.shape[0]), int(pixels.shape[1])
        self.rtp_timestamp = rtp_timestamp
        self.nbytes = nbytes

    def image(self, reduction: int = 1) -> Any:
        if reduction == 1:
            return self._pixels
        size = (-(-self.width // reduction), -(-self.height // reduction))
        return cv2.resize(self._pixels, size, interpolation=cv2.INTER_AREA)
