"""A raw MJPEG file (JPEG images one after another, as `ffmpeg -f mjpeg` writes it) split into its JPEGs.

Why not PyAV's demuxer for these files: its parser walks every byte holding
the GIL, about 40 us for a 50 KB frame, a third of what the whole client may
spend on a frame when it shares two cores with the server. Here numpy finds
the marker candidates of a window of the file in one pass (the GIL released),
and Python walks only the markers, about ten a frame.

A search for the end-of-image bytes FF D9 alone would be wrong: they may
appear inside a frame's own segments (an EXIF thumbnail in APP1 is a whole
JPEG, a comment may hold anything). The split follows the JPEG syntax
instead: marker segments are skipped by their length, and an entropy-coded
scan ends at its first byte pair FF xx other than a stuffed FF 00, a restart
marker FF D0-D7 or a fill byte (the format allows no other inside a scan).
Progressive and multi-scan frames (several SOS segments) and restart
intervals are handled.
"""

from __future__ import annotations

import mmap
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

WINDOW_BYTES = 256 << 10

Buffer: TypeAlias = "bytes | bytearray | mmap.mmap"

_SOI, _EOI, _SOS, _DHT, _TEM = 0xD8, 0xD9, 0xDA, 0xC4, 0x01


class JpegStreamError(ValueError):
    """The bytes at `offset` of the file are not where a JPEG frame's syntax allows them."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"{reason} at byte {offset}")
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True, slots=True)
class JpegFrame:
    """One frame's bytes, exactly as in the file, and whether it carries its Huffman tables (AVI-style MJPEG may not)."""

    data: bytes
    has_huffman_tables: bool


def _markers(data: np.ndarray, start: int, stop: int) -> list[int]:
    """Offsets in [start, stop) of every FF xx pair that can start a marker: not FF 00 (stuffing), FF D0-D7 (restart) or FF FF (fill).

    Inside an entropy-coded scan only the marker that ends it passes; inside
    length-delimited segments some bytes may pass too, which the walk skips.
    """
    window = data[start : stop + 1]  # with the byte after `stop`, which decides about an FF just before it
    found = np.flatnonzero(window[: stop - start] == 0xFF)
    found = found[found + 1 < len(window)]  # an FF that is the file's last byte starts no marker
    following = window[found + 1]
    real = (following != 0x00) & (following != 0xFF) & ((following < 0xD0) | (following > 0xD7))
    return (found[real] + start).tolist()  # type: ignore[no-any-return]


def _frame_end(data: Buffer, start: int, markers: list[int]) -> tuple[int, bool] | None:
    """(offset just past the frame that starts at `start`, whether it has a DHT), or None when `markers` end first.

    `markers` are _markers() of the data from before `start` up to some
    offset; past that offset the walk cannot find where a scan ends.
    """
    size = len(data)
    if size - start < 2:
        raise JpegStreamError(start, "the file ends inside a JPEG image")
    if data[start] != 0xFF or data[start + 1] != _SOI:
        raise JpegStreamError(start, "not the start of a JPEG image (FF D8)")
    position = start + 2
    huffman = False
    while True:
        if position + 2 > size:
            raise JpegStreamError(start, "the file ends inside a JPEG image")
        if data[position] != 0xFF:
            raise JpegStreamError(position, "expected a JPEG marker")
        code = data[position + 1]
        if code == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if code == _EOI:
            return position + 2, huffman
        if code == _SOI:
            raise JpegStreamError(position, "a JPEG image starts inside another")
        if 0xD0 <= code <= 0xD7 or code == _TEM:  # markers without a length
            position += 2
            continue
        if position + 4 > size:
            raise JpegStreamError(start, "the file ends inside a JPEG image")
        length = (data[position + 2] << 8) | data[position + 3]
        if length < 2:
            raise JpegStreamError(position, f"a JPEG segment (FF {code:02X}) with length {length}")
        huffman = huffman or code == _DHT
        position += 2 + length
        if code == _SOS:
            # The entropy-coded scan runs to the next real marker (EOI, or the next scan's segments).
            following = bisect_left(markers, position)
            if following == len(markers):
                return None
            position = markers[following]


def split_jpegs(data: Buffer, window_bytes: int = WINDOW_BYTES) -> Iterator[JpegFrame]:
    """Every JPEG in `data` (a memory-mapped file), in order; JpegStreamError for bytes that are not a JPEG, or a truncated one.

    Markers are found `window_bytes` at a time, a size that stays in the CPU
    caches while the window's frames are walked and copied out; each frame's
    bytes are copied once, out of the file's pages.
    """
    array = np.frombuffer(data, np.uint8)
    try:
        size = len(array)
        start = 0
        markers: list[int] = []
        known = 0  # markers are known up to this offset
        while start < size:
            found = _frame_end(data, start, markers) if known > start else None
            if found is None:
                if known == size:
                    raise JpegStreamError(start, "the file ends inside a JPEG image")
                markers = markers[bisect_left(markers, start) :] + _markers(array, known, min(size, known + window_bytes))
                known = min(size, known + window_bytes)
                continue
            end, huffman = found
            yield JpegFrame(bytes(data[start:end]), huffman)
            start = end
    finally:
        del array  # an mmap cannot be closed while an array exports it, and an exception's traceback keeps this frame
