"""JPEG frames as the stream receives them, and the checks every frame passes first.

The checks are byte-level on purpose: they run on the event loop for every frame
and must cost microseconds, long before any decoder touches the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.errors import ErrorCode, StreamError

DEFAULT_MAX_FRAME_BYTES = 5 * 1024 * 1024

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
# Start-of-frame markers that carry the image size (baseline, progressive,
# lossless, arithmetic); DHT (C4), JPG (C8) and DAC (CC) share the range but do not.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}


class FrameValidationError(StreamError):
    """A frame rejected before any work is spent on it: `invalid_frame` or `frame_too_large`."""

    def __init__(self, code: ErrorCode | str, detail: str) -> None:
        if code not in (ErrorCode.INVALID_FRAME, ErrorCode.FRAME_TOO_LARGE):
            raise ValueError(f"a frame is rejected as invalid_frame or frame_too_large, not {code!r}")
        super().__init__(code, detail)


@dataclass(frozen=True, slots=True)
class Frame:
    """One received frame: its position in the stream, its bytes and when it arrived."""

    index: int
    data: bytes = field(repr=False)
    received_ms: float

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class JpegInfo:
    width: int
    height: int
    components: int
    progressive: bool


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
    if bytes(frame_bytes[:2]) != _SOI:
        raise FrameValidationError(
            ErrorCode.INVALID_FRAME,
            f"frame does not start with the JPEG SOI marker FF D8 (starts with {bytes(frame_bytes[:2]).hex(' ').upper() or 'nothing'})",
        )
    if size < 4 or bytes(frame_bytes[-2:]) != _EOI:
        raise FrameValidationError(
            ErrorCode.INVALID_FRAME,
            f"frame does not end with the JPEG EOI marker FF D9 (ends with {bytes(frame_bytes[-2:]).hex(' ').upper()})",
        )


def read_jpeg_info(frame_bytes: bytes) -> JpegInfo:
    """Read width, height and component count from the JPEG header without decoding.

    Lets the server refuse a decompression bomb (a small file declaring a huge
    image) and lets the cheap probe pipeline answer without a decoder.
    """
    data = memoryview(frame_bytes)
    if bytes(data[:2]) != _SOI:
        raise FrameValidationError(ErrorCode.INVALID_FRAME, "frame does not start with the JPEG SOI marker FF D8")
    pos = 2
    end = len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise FrameValidationError(
                ErrorCode.INVALID_FRAME, f"JPEG header is corrupt: expected a marker at byte {pos}"
            )
        while pos < end and data[pos] == 0xFF:
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
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
            return JpegInfo(width=width, height=height, components=components, progressive=marker in (0xC2, 0xC6, 0xCA, 0xCE))
        pos += length
    raise FrameValidationError(ErrorCode.INVALID_FRAME, "JPEG has no start-of-frame segment before its image data")
