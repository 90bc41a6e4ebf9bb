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
    """A decoded av.VideoFrame, converted on demand.

    Pickled (to a Ray actor) as its I420 planes, half the bytes of BGR pixels
    (460 KB at 640x480), and converted where the pipeline runs.
    """

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
        frame = self._frame
        if frame.format.name == "yuv420p" and self.width % 2 == 0 and self.height % 2 == 0:
            return (I420Picture, (frame.to_ndarray(), self.rtp_timestamp, self.nbytes))
        return (ArrayPicture, (self.image(1), self.rtp_timestamp, self.nbytes))


class I420Picture:
    """A decoded picture held as its I420 planes (H * 3/2 x W bytes): what a VideoFramePicture becomes in another process."""

    __slots__ = ("_planes", "height", "nbytes", "rtp_timestamp", "width")

    def __init__(self, planes: np.ndarray[Any, Any], rtp_timestamp: int | None, nbytes: int) -> None:
        if planes.ndim != 2 or planes.shape[0] % 3 != 0:
            raise ValueError(f"I420 planes are a (H * 3/2) x W array, got shape {planes.shape}")
        self._planes = planes
        self.height, self.width = int(planes.shape[0] * 2 // 3), int(planes.shape[1])
        self.rtp_timestamp = rtp_timestamp
        self.nbytes = nbytes

    def image(self, reduction: int = 1) -> Any:
        pixels = cv2.cvtColor(self._planes, cv2.COLOR_YUV2BGR_I420)
        if reduction == 1:
            return pixels
        size = (-(-self.width // reduction), -(-self.height // reduction))
        return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


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
