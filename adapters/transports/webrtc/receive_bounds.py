"""Bounds on what aiortc queues between the network and the session: its receive queues are unbounded.

aiortc (pinned to 1.16 in pyproject.toml for these internals) hands each
reassembled encoded frame to a decoder thread through a queue.Queue, and each
decoded frame to the track through an asyncio.Queue, neither with a limit: a
sender faster than the decoder grows the first, a starved event loop the
second, and memory and latency grow with them. Both are replaced before the
receiver starts:

- EncodedBacklog: at most `limit` encoded frames wait for the decoder. Beyond
  that the backlog is discarded and decoding resumes at the next keyframe,
  which a PLI asks the sender for: an inter-frame codec cannot skip frames
  otherwise. The discarded frames were never decoded, so they never become
  frames of the session; they are counted (cause `decode_backlog`).
- MarkerJitterBuffer: aiortc's jitter buffer knows a frame is complete only
  when the first packet of the next frame arrives, which holds every frame
  back one frame interval (33 ms at 30 fps) and never releases a sender's
  last frame. The RTP marker bit ends a video frame (RFC 6184 for H.264,
  RFC 7741 for VP8): this one releases a frame as soon as its marked packet
  completes an unbroken run of the frame's packets, and falls back to
  aiortc's rule otherwise (a lost marked packet).
- FrameInbox: the track's queue; at most `limit` decoded frames wait for the
  session to take them, the oldest going first (cause `receive_backlog`). The
  session takes each as it arrives (it only admits it: the backpressure
  policy decides which frame runs), so this only fills when the event loop
  itself is starved. The transport's control events (the peer left, a text
  message) go through it too, in order, and are never discarded.
"""

from __future__ import annotations

import asyncio
import queue
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

ENCODED_BACKLOG_FRAMES = 30
INBOX_FRAMES = 4
# Encoded sizes kept by RTP timestamp until the frame is decoded: a few more than can wait.
_SIZES_KEPT = 64


def is_keyframe(codec_name: str, data: bytes) -> bool:
    """Whether an encoded frame starts a new decodable sequence.

    VP8: bit 0 of the frame tag is 0 on a key frame (RFC 6386 section 9.1).
    H.264 (Annex B, as aiortc depayloads it): an IDR slice (NAL type 5) or a
    sequence parameter set (7) in the frame.
    """
    if not data:
        return False
    name = codec_name.upper()
    if name == "VP8":
        return data[0] & 0x01 == 0
    if name == "H264":
        position = data.find(b"\x00\x00\x01")
        while position != -1 and position + 3 < len(data):
            if data[position + 3] & 0x1F in (5, 7):
                return True
            position = data.find(b"\x00\x00\x01", position + 3)
        return False
    return True


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, releasing each frame at its marked (last) packet instead of at the next frame's first."""

    def __init__(self, capacity: int = 512) -> None:
        super().__init__(capacity=capacity, is_video=True)

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        origin = self._origin
        if origin is not None:
            packets: list[RtpPacket] = []
            timestamp = None
            for count in range(self._capacity):
                packet = self._packets[(origin + count) % self._capacity]
                if packet is None or (timestamp is not None and packet.timestamp != timestamp):
                    break
                timestamp = packet.timestamp
                packets.append(packet)
                if packet.marker:
                    self.remove(count + 1)
                    return JitterFrame(data=b"".join(p._data for p in packets), timestamp=packet.timestamp)  # type: ignore[attr-defined]
        return super()._remove_frame(sequence_number)


class EncodedBacklog(queue.Queue[Any]):
    """The decoder thread's input, bounded; put() runs on the event loop, get() in the decoder thread."""

    def __init__(self, limit: int, on_discard: Callable[[int], None], request_keyframe: Callable[[], None]) -> None:
        super().__init__()
        self._limit = limit
        self._on_discard = on_discard
        self._request_keyframe = request_keyframe
        self._awaiting_keyframe = False
        self._sizes: OrderedDict[int, int] = OrderedDict()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # the receiver stops: the decoder thread ends
            super().put(item)
            return
        codec, encoded = item
        if self._awaiting_keyframe:
            if not is_keyframe(codec.name, encoded.data):
                self._on_discard(1)
                return
            self._awaiting_keyframe = False
        elif self.qsize() >= self._limit:
            discarded = 0
            while True:
                try:
                    self.get_nowait()
                except queue.Empty:
                    break
                discarded += 1
            if not is_keyframe(codec.name, encoded.data):
                self._awaiting_keyframe = True
                self._request_keyframe()
                self._on_discard(discarded + 1)
                return
            self._on_discard(discarded)
        sizes = self._sizes
        sizes[encoded.timestamp] = len(encoded.data)
        if len(sizes) > _SIZES_KEPT:
            sizes.popitem(last=False)
        super().put(item)

    def encoded_size(self, timestamp: int) -> int:
        """The encoded bytes of the frame decoded with this (aiortc-mapped) timestamp; 0 when unknown."""
        return self._sizes.pop(timestamp, 0)


class Control:
    """A transport event travelling through the inbox in order with the frames: never discarded."""

    __slots__ = ("event",)

    def __init__(self, event: Any) -> None:
        self.event = event


def _is_frame(item: Any) -> bool:
    return item is not None and type(item) is not Control


class FrameInbox(asyncio.Queue[Any]):
    """The track's queue, bounded for frames: a put beyond the limit drops the oldest waiting frame.

    The decoder thread puts frames (through the event loop), the transport
    puts Control events and the decoder's end (None); the transport gets.
    """

    def __init__(self, limit: int, on_discard: Callable[[int], None]) -> None:
        super().__init__()
        self._limit = limit
        self._on_discard = on_discard
        self._frames = 0

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def _put(self, item: Any) -> None:
        if _is_frame(item):
            if self._frames >= self._limit:
                items = self._queue  # type: ignore[attr-defined]
                position = next(i for i, waiting in enumerate(items) if _is_frame(waiting))
                del items[position]
                self._frames -= 1
                self._on_discard(1)
            self._frames += 1
        super()._put(item)

    def _get(self) -> Any:
        item = super()._get()
        if _is_frame(item):
            self._frames -= 1
        return item
