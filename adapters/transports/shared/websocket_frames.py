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


class FrameBoundaries:
    """Where one connection's WebSocket frames end, followed from their headers as the bytes arrive.

    Both transports slice input at frame boundaries so that limits are checked
    between whole frames; this is the one reader of those boundaries. `left`
    is what remains of the current frame (0 at a boundary), `head` the current
    frame's header bytes seen so far while they are too few to give its size.
    """

    __slots__ = ("head", "left")

    def __init__(self) -> None:
        self.left = 0
        self.head = b""

    def aligned_slice(self, data: bytes | memoryview, start: int, size: int) -> tuple[int, int]:
        """The end of the next slice from `start`, at a frame boundary where the data allows, and how many frames end in it.

        Whole frames up to DENSE_SLICE_BYTES, or one larger frame up to
        MAX_SLICE_BYTES of it; data ending inside a header is taken whole and
        the header kept, to finish it with the next read.
        """
        position = start
        frames_ending = 0
        while position < size and position - start < DENSE_SLICE_BYTES:
            left = self.left
            if not left:
                head = self.head + bytes(data[position : position + MAX_HEADER_BYTES - len(self.head)])
                whole = frame_size(head)
                if whole is None:
                    self.head = head
                    return size, frames_ending
                left = whole - len(self.head)
                self.head = b""
            take = min(left, size - position, MAX_SLICE_BYTES - (position - start))
            position += take
            self.left = left - take
            if not self.left:
                frames_ending += 1
        return position, frames_ending
