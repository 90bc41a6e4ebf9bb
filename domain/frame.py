"""JPEG frames as the stream receives them, and the checks every frame passes first.

The checks are byte-level on purpose: they run on the event loop for every frame
and must cost microseconds, long before any decoder touches the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from domain.errors import ErrorCode, StreamError

DEFAULT_MAX_FRAME_BYTES = 5 * 1024 * 1024
# A 4K (UHD) camera frame: every camera a stream is meant for fits, and a frame's
# decoded pixels stay in the tens of megabytes instead of gigabytes.
DEFAULT_MAX_FRAME_PIXELS = 3840 * 2160
# libjpeg decodes at 1/1, 1/2, 1/4 and 1/8 of the declared size at no extra cost
# (it scales inside the inverse DCT), largest reduction first.
JPEG_REDUCTIONS = (8, 4, 2, 1)
# The header walk is bounded so that it costs the same for every frame: real
# encoders write well under 30 segments before the start of frame (APPn, DQT,
# DHT, DRI, COM; ICC profiles and extended XMP split into a few more), and
# rarely more than one fill byte before a marker.
MAX_SEGMENTS_BEFORE_FRAME = 256
MAX_FILL_BYTES = 64  # 0xFF bytes in a row before a marker code, the marker's own included
# Grey, YCbCr/RGB and CMYK/YCCK: everything a camera or an encoder produces.
_COMPONENT_COUNTS = frozenset({1, 3, 4})

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
# Start-of-frame markers that carry the image size (baseline, progressive,
# lossless, arithmetic); DHT (C4), JPG (C8) and DAC (CC) share the range but do not.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}
_NOT_SKIPPED = _STANDALONE_MARKERS | {0xD9, 0xDA}  # markers that are not a segment to step over
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


class FrameValidationError(StreamError):
    """A frame rejected before any work is spent on it: `invalid_frame` or `frame_too_large`."""

    def __init__(self, code: ErrorCode | str, detail: str) -> None:
        if code not in (ErrorCode.INVALID_FRAME, ErrorCode.FRAME_TOO_LARGE):
            raise ValueError(f"a frame is rejected as invalid_frame or frame_too_large, not {code!r}")
        super().__init__(code, detail)


@dataclass(slots=True)
class Frame:
    """One received frame: its position in the stream, its bytes and when it arrived.

    Nothing changes a frame once the session has made it. It is not declared
    frozen because one is made for every frame and a frozen dataclass sets each
    field through object.__setattr__, which triples the cost of making one.
    """

    index: int
    data: bytes = field(repr=False)
    received_ms: float

    @property
    def size(self) -> int:
        return len(self.data)


class JpegInfo(NamedTuple):
    width: int
    height: int
    components: int
    progressive: bool
    # Bytes from the start of the frame to the end of its start-of-frame segment: all the header walk read,
    # so a frame whose first `header_bytes` bytes are the same has the same info.
    header_bytes: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def reduced_size(self, reduction: int) -> tuple[int, int]:
        """(width, height) libjpeg produces at 1/reduction: each side rounded up."""
        return -(-self.width // reduction), -(-self.height // reduction)


def check_frame_pixels(info: JpegInfo, max_pixels: int) -> None:
    """Refuse a frame whose header declares more pixels than the server decodes.

    A few kilobytes can declare 60000 x 60000 pixels; the limit is checked on
    the header so that no pipeline, decoding or not, ever works on such a frame.
    """
    if info.pixels > max_pixels:
        raise FrameValidationError(
            ErrorCode.FRAME_TOO_LARGE,
            f"frame declares {info.width}x{info.height} = {info.pixels} pixels; the limit is {max_pixels} pixels",
        )


def jpeg_reduction(info: JpegInfo, max_side: int | None) -> int:
    """The largest libjpeg reduction whose image still has a longer side of at least `max_side`.

    `max_side` is what the pipeline's tools need (None: the full frame). A frame
    smaller than the need is decoded whole.
    """
    if max_side is None:
        return 1
    for reduction in JPEG_REDUCTIONS:
        if max(info.reduced_size(reduction)) >= max_side:
            return reduction
    return 1


def validate_jpeg(frame_bytes: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
    """Reject anything that is not plausibly one complete JPEG within the size limit.

    The size check comes first so that an oversized upload is reported as such
    even when it is also malformed: that is the fault the client must fix.
    """
    if not isinstance(frame_bytes, (bytes, bytearray, memoryview)):
        raise FrameValidationError(
            ErrorCode.INVALID_FRAME, f"expected JPEG bytes, got {type(frame_bytes).__name__}"
        )
    size = len(frame_bytes)
    if size > max_bytes:
        raise FrameValidationError(
            ErrorCode.FRAME_TOO_LARGE,
            f"frame is {size} bytes; the limit is {max_bytes} bytes",
        )
    if size == 0:
        raise FrameValidationError(ErrorCode.INVALID_FRAME, "frame is empty; expected a JPEG image")
    if frame_bytes[:2] != _SOI:  # a slice of bytes, bytearray or memoryview compares by content
        raise FrameValidationError(
            ErrorCode.INVALID_FRAME,
            f"frame does not start with the JPEG SOI marker FF D8 (starts with {bytes(frame_bytes[:2]).hex(' ').upper() or 'nothing'})",
        )
    if size < 4 or frame_bytes[-2:] != _EOI:
        raise FrameValidationError(
            ErrorCode.INVALID_FRAME,
            f"frame does not end with the JPEG EOI marker FF D9 (ends with {bytes(frame_bytes[-2:]).hex(' ').upper()})",
        )


def read_jpeg_info(frame_bytes: bytes) -> JpegInfo:
    """Read width, height and component count from the JPEG header without decoding.

    Lets the server refuse a decompression bomb (a small file declaring a huge
    image) and lets the cheap probe pipeline answer without a decoder. The walk
    is bounded (segments before the start of frame, fill bytes before a marker)
    because it runs on the event loop for header-only pipelines: a frame of a
    million tiny comment segments must cost no more than a camera's frame.
    """
    data = frame_bytes if type(frame_bytes) is bytes else memoryview(frame_bytes)
    if data[:2] != _SOI:
        raise FrameValidationError(ErrorCode.INVALID_FRAME, "frame does not start with the JPEG SOI marker FF D8")
    pos = 2
    end = len(data)
    segments = 0
    while pos < end:
        if data[pos] != 0xFF:
            raise FrameValidationError(
                ErrorCode.INVALID_FRAME, f"JPEG header is corrupt: expected a marker at byte {pos}"
            )
        pos += 1
        if pos < end and data[pos] == 0xFF:  # fill bytes: rare, so counted only when present
            fill_end = min(end, pos + MAX_FILL_BYTES)
            while pos < fill_end and data[pos] == 0xFF:
                pos += 1
            if pos == fill_end and pos < end:
                raise FrameValidationError(
                    ErrorCode.INVALID_FRAME, f"JPEG header is corrupt: more than {MAX_FILL_BYTES} fill bytes before a marker"
                )
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        segments += 1
        if segments > MAX_SEGMENTS_BEFORE_FRAME:
            raise FrameValidationError(
                ErrorCode.INVALID_FRAME,
                f"JPEG header has more than {MAX_SEGMENTS_BEFORE_FRAME} segments before its start of frame",
            )
        if marker in _NOT_SKIPPED:
            if marker in _STANDALONE_MARKERS:
                continue
            if marker in (0xD9, 0xDA):
                break
        if pos + 2 > end:
            break
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2 or pos + length > end:
            raise FrameValidationError(
                ErrorCode.INVALID_FRAME, f"JPEG header is corrupt: segment at byte {pos - 2} overruns the frame"
            )
        if marker in _SOF_MARKERS:
            if length < 8:
                raise FrameValidationError(ErrorCode.INVALID_FRAME, "JPEG header is corrupt: start-of-frame segment too short")
            height = (data[pos + 3] << 8) | data[pos + 4]
            width = (data[pos + 5] << 8) | data[pos + 6]
            components = data[pos + 7]
            if width == 0 or height == 0:
                raise FrameValidationError(
                    ErrorCode.INVALID_FRAME, f"JPEG declares an empty image ({width}x{height})"
                )
            if components not in _COMPONENT_COUNTS:
                raise FrameValidationError(
                    ErrorCode.INVALID_FRAME, f"JPEG declares {components} colour components; expected 1, 3 or 4"
                )
            return JpegInfo(width=width, height=height, components=components, progressive=marker in _PROGRESSIVE_SOF, header_bytes=pos + length)
        pos += length
    raise FrameValidationError(ErrorCode.INVALID_FRAME, "JPEG has no start-of-frame segment before its image data")
