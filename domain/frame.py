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
# encoders write well under 30 segments before the first scan (APPn, DQT, SOF,
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
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# A component's sampling factors as the start of frame writes them, (h << 4) | v, each 1 to 4.
_SAMPLING_BYTES = frozenset(h << 4 | v for h in range(1, 5) for v in range(1, 5))


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
    # Whether libjpeg keeps every coefficient of the frame while it decodes: it does for a file of more
    # than one scan, which a progressive file is, and so is a sequential file whose first scan leaves
    # components out (each component is in exactly one scan). True as well when the walk met no scan.
    multi_scan: bool
    # Each component's (h << 4) | v sampling factors, in start-of-frame order.
    sampling: bytes
    # Bytes from the start of the frame to the end of its first scan's header: all the header walk read,
    # so a frame whose first `header_bytes` bytes are the same has the same info.
    header_bytes: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def coefficient_blocks(self) -> int:
        """8 x 8 blocks of coefficients the whole frame has: what a multi-scan decode holds, whatever its reduction.

        Counted as libjpeg sizes its buffer, so that the decode budget charges
        what is allocated: each component has its sampled share of the frame in
        blocks, rounded up to whole blocks and then to its sampling factors
        (whole MCUs), so a frame of awkward size or sampling is charged its padding.
        """
        h_max = max(factors >> 4 for factors in self.sampling)
        v_max = max(factors & 0x0F for factors in self.sampling)
        blocks = 0
        for factors in self.sampling:
            h, v = factors >> 4, factors & 0x0F
            wide = -(-self.width * h // (8 * h_max))
            high = -(-self.height * v // (8 * v_max))
            blocks += -(-wide // h) * h * (-(-high // v) * v)
        return blocks

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
    """Read size, components and scan layout from the JPEG header without decoding.

    Lets the server refuse a decompression bomb (a small file declaring a huge
    image), charge a decode what libjpeg will hold (a file of several scans
    holds all its coefficients, however small the file) and lets the cheap
    probe pipeline answer without a decoder. The walk goes as far as the first
    scan's header, whose component count tells a sequential file of one scan
    per component from a single interleaved scan exactly, without reading the
    entropy-coded data. It is bounded (segments before the first scan, fill
    bytes before a marker) because it runs on the event loop for header-only
    pipelines: a frame of a million tiny comment segments must cost no more
    than a camera's frame.
    """
    data = frame_bytes if type(frame_bytes) is bytes else memoryview(frame_bytes)
    if data[:2] != _SOI:
        raise FrameValidationError(ErrorCode.INVALID_FRAME, "frame does not start with the JPEG SOI marker FF D8")
    pos = 2
    end = len(data)
    segments = 0
    # The start of frame's reading, kept in locals until the first scan completes it.
    width = height = components = 0
    progressive = False
    sampling = b""
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
        if marker != 0xDA and marker != 0xD9:  # the walk ends at either: they are not counted
            segments += 1
            if segments > MAX_SEGMENTS_BEFORE_FRAME:
                raise FrameValidationError(
                    ErrorCode.INVALID_FRAME,
                    f"JPEG header has more than {MAX_SEGMENTS_BEFORE_FRAME} segments before its image data",
                )
            if marker in _STANDALONE_MARKERS:
                continue
        elif marker == 0xD9 or not components:  # EOI, or a scan before any start of frame
            break
        if pos + 2 > end:
            break
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2 or pos + length > end:
            raise FrameValidationError(
                ErrorCode.INVALID_FRAME, f"JPEG header is corrupt: segment at byte {pos - 2} overruns the frame"
            )
        if marker == 0xDA:  # the first scan (a scan before the start of frame broke out above)
            if length < 3:
                raise FrameValidationError(ErrorCode.INVALID_FRAME, "JPEG header is corrupt: start-of-scan segment too short")
            multi_scan = progressive or data[pos + 2] < components
            return JpegInfo(width, height, components, progressive, multi_scan, sampling, pos + length)
        if marker in _SOF_MARKERS and not components:  # libjpeg refuses a second one; the first is the frame's
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
            if length < 8 + 3 * components:
                raise FrameValidationError(
                    ErrorCode.INVALID_FRAME,
                    f"JPEG header is corrupt: start-of-frame segment too short for its {components} components",
                )
            sampling = bytes(data[pos + 9 : pos + 8 + 3 * components : 3])
            if not _SAMPLING_BYTES.issuperset(sampling):
                raise FrameValidationError(
                    ErrorCode.INVALID_FRAME,
                    f"JPEG declares sampling factors {sampling.hex(' ').upper()}; expected each factor from 1 to 4",
                )
            progressive = marker in _PROGRESSIVE_SOF
        pos += length
    if not components:
        raise FrameValidationError(ErrorCode.INVALID_FRAME, "JPEG has no start-of-frame segment before its image data")
    # No scan: nothing to decode (libjpeg stops at EOI), or the frame ends early. The scans are unknown, so
    # the frame counts as multi-scan, and the reading covers every byte walked so that no longer frame reuses it.
    return JpegInfo(width, height, components, progressive, True, sampling, pos)
