"""What both transports' connection limits read from raw WebSocket input: frame sizes, and the slicing bounds."""

from __future__ import annotations

# Input is parsed in slices, checked between them. A masked frame takes at least 6 bytes and ~7-11 us to
# parse, so a slice of 8 KiB holds at most ~1,400 frames (~10-15 ms). Slices end where frames end: whole
# frames up to 8 KiB, or one larger frame (up to 64 KiB of it). Should a parser ever disagree with the
# boundaries, a connection falls back to plain byte slices, 32 KiB while the input holds few frames and
# 8 KiB as soon as it holds many.
DENSE_SLICE_BYTES = 8192
SPARSE_SLICE_BYTES = 32768
MAX_SLICE_BYTES = 65536
DENSE_FRAMES = 8
MAX_HEADER_BYTES = 14  # 2, then a 2- or 8-byte extended length, then a 4-byte mask
# Parsing time one connection may take in one turn of the event loop before it yields to the others.
TURN_BUDGET_S = 0.005
# Complete messages the application has not taken yet may total this much before reading pauses.
READ_AHEAD_BYTES = 256 * 1024
PONG_START = bytes([0x8A])  # FIN + PONG; server frames are unmasked


def frame_size(head: bytes) -> int | None:
    """A WebSocket frame's whole size (header, mask and payload) from its first bytes; None if they are too few."""
    if len(head) < 2:
        return None
    second = head[1]
    length = second & 0x7F
    size = 6 if second & 0x80 else 2
    if length == 126:
        if len(head) < 4:
            return None
        return size + 2 + ((head[2] << 8) | head[3])
    if length == 127:
        if len(head) < 10:
            return None
        return size + 8 + int.from_bytes(head[2:10], "big")
    return size + length
