"""The clients of bench/webrtc_bench.py: one clip, paced like a camera, over WHIP and over the WebSocket.

Both return a StreamRun: when each frame left the client, the reply (or
replies) each frame got, and the bytes the transport carried, so that the
report (bench/webrtc_report.py) treats both transports with the same code.

- WebRTC: the suite's real WHIP publisher (contracts/whip_client.py
  `publish`), so what is measured is what a client of the contract gets. A
  frame "leaves" when the track hands it to aiortc (`ClipTrack.sent_at`),
  before aiortc encodes it: the encoder, the packetiser, the jitter buffer
  and the server's decoder are all on the measured path. Replies are matched
  to frames by `rtp_timestamp` (see BenchTrack), not by `frame_index`, which
  counts the frames the server decoded and would shift after a lost frame.
  The payload bytes sent are aiortc's own count (outbound-rtp `bytesSent`:
  RTP payloads, without RTP/SRTP headers, retransmissions or RTCP).
- WebSocket: a bare `websockets` connection, as bench/stream_client.py (why
  not the test kit's client is in bench/stream_bench.py's docstring), sending
  the JPEGs on an absolute schedule while another task receives.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.stream_client import CLIENT_OPTIONS
from bench.stream_servers import BenchError
from contracts.whip_client import VIDEO_CLOCK, ClipTrack, Publisher, publish

_RTP_MASK = 0xFFFFFFFF
# How far (90 kHz ticks) a frame's RTP timestamp may be from its pts and still name it (see _frame_of).
RTP_SLACK = 2
Reply = tuple[float, dict[str, Any]]


@dataclass
class StreamRun:
    """One clip through one transport: send times by frame number, replies by the frame they answer."""

    label: str
    sent_at: list[float]
    replies: dict[int, list[Reply]] = field(default_factory=dict)
    # Replies naming no frame we sent (an unknown rtp_timestamp or frame_index), and messages without one.
    unmatched: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)
    payload_bytes: int = 0
    # WebRTC only: frames the server decoded (replies carrying a frame_index), packets sent.
    decoded: int | None = None
    packets: int | None = None
    rtp_origin: int | None = None
    origin_source: str = ""

    @property
    def sent(self) -> int:
        return len(self.sent_at)

    def kind(self, frame: int) -> str:
        found = self.replies.get(frame)
        if not found:
            return "missing"
        message = found[0][1]
        if "error" in message:
            return "error"
        if message.get("dropped"):
            return "dropped"
        return "result" if "result" in message else "unexpected"

    def count(self, kind: str) -> int:
        return sum(1 for frame in range(self.sent) if self.kind(frame) == kind)

    def results(self) -> list[tuple[int, float, dict[str, Any]]]:
        """(frame, latency s, message) of every frame answered with a result, in frame order."""
        out = []
        for frame in range(self.sent):
            if self.kind(frame) == "result":
                received, message = self.replies[frame][0]
                out.append((frame, received - self.sent_at[frame], message))
        return out

    @property
    def duplicated(self) -> list[int]:
        return [frame for frame, found in self.replies.items() if len(found) > 1]


# WebRTC ------------------------------------------------------------------------------


class BenchTrack(ClipTrack):
    """A ClipTrack that learns the sender's random RTP timestamp origin, so that every reply names its frame.

    aiortc's sender encodes and sends frame k-1 completely before it asks the
    track for frame k, and keeps the RTP timestamp of the last packet it sent
    (RTCRtpSender's private `__rtp_timestamp`, aiortc 1.16 as pinned): when
    frame 1 is asked for, that is the origin plus frame 0's pts, which is 0.
    `sender` is set right after the offer is answered, before ICE and DTLS
    have connected, so before the first frame is asked for.
    """

    def __init__(self, frames: Sequence[np.ndarray[Any, Any]], fps: float) -> None:
        super().__init__(frames, fps)
        self.sender: Any = None
        self.origin: int | None = None
        self.step = round(VIDEO_CLOCK / fps)

    async def recv(self) -> Any:
        if self.origin is None and self.sent == 1 and self.sender is not None:
            self.origin = getattr(self.sender, "_RTCRtpSender__rtp_timestamp", None)
        return await super().recv()


def _frame_of(rtp_timestamp: int, origin: int, step: int, sent: int) -> int | None:
    """The frame whose pts (frame * step) the timestamp carries, within RTP_SLACK ticks; None when none does.

    aiortc's VP8 encoder reads frame.pts after PyAV's encode has rewritten it
    in place in the codec's microsecond time base (3000 ticks -> 33,333 us)
    and converts it back truncating: one frame in three goes out a tick early
    (2999, 11999, ...). H.264 keeps it exact.
    """
    offset = (rtp_timestamp - origin) & _RTP_MASK
    frame = (offset + step // 2) // step
    return frame if abs(offset - frame * step) <= RTP_SLACK and frame < sent else None


async def stream_webrtc(
    base_url: str, pipeline_id: str, frames: Sequence[np.ndarray[Any, Any]], *, codec: str, fps: float, drain_s: float, label: str
) -> StreamRun:
    """Publish `frames` at `fps`; every reply matched to its frame by rtp_timestamp."""
    track = BenchTrack(list(frames), fps)
    published = await publish(base_url, pipeline_id, track, codec=codec)
    if not isinstance(published, Publisher):
        raise BenchError(f"WHIP POST for {pipeline_id} ({codec}) answered {published.status_code}: {published.text[:300]}")
    sender = published.pc.getSenders()[0]
    track.sender = sender
    counted = len(frames)
    try:
        # The track ends itself after the last frame; then wait for the replies still owed.
        deadline = time.monotonic() + counted / fps + 30.0
        while track.readyState == "live" and time.monotonic() < deadline and not published.closed.is_set():
            await asyncio.sleep(0.05)
        await published.wait_for(counted, drain_s)
        await asyncio.sleep(0.05)  # a duplicate would come right behind
        stats = await sender.getStats()
        outbound = next((s for s in stats.values() if getattr(s, "type", "") == "outbound-rtp"), None)
    finally:
        if not published.closed.is_set():
            await published.delete()
        await published.close()
    if published.undeclared:
        raise BenchError(f"{label}: messages the contract does not declare: {published.undeclared[:3]}")
    run = StreamRun(label, [track.sent_at[n] for n in range(min(counted, track.sent))])
    if outbound is not None:
        run.payload_bytes = round(outbound.bytesSent * counted / max(1, track.sent))
        run.packets = outbound.packetsSent
    replies = list(zip(published.received_at, published.messages, strict=True))
    run.decoded = sum(1 for _, m in replies if "frame_index" in m)
    origin, source = track.origin, "sender"
    if origin is None:
        # Fallback: the first decoded frame is frame 0 (the first key frame) unless it was lost.
        first = next((m for _, m in replies if m.get("frame_index") == 0 and "rtp_timestamp" in m), None)
        origin, source = (None, "") if first is None else (int(first["rtp_timestamp"]), "first reply")
    run.rtp_origin, run.origin_source = origin, source
    for received, message in replies:
        if message.get("warning") is not None:
            run.warnings.append({**message, "_at": received})
        elif "rtp_timestamp" not in message:
            run.other.append(message)
        else:
            frame = None if origin is None else _frame_of(int(message["rtp_timestamp"]), origin, track.step, run.sent)
            if frame is None:
                run.unmatched.append(message)
            else:
                run.replies.setdefault(frame, []).append((received, message))
    return run


# WebSocket ---------------------------------------------------------------------------


async def stream_websocket(url: str, jpegs: Sequence[bytes], *, fps: float, drain_s: float, label: str) -> StreamRun:
    """Send `jpegs` on an absolute schedule at `fps` while another task receives; frame_index names the frame."""
    from websockets.asyncio.client import connect

    run = StreamRun(label, [0.0] * len(jpegs), payload_bytes=sum(len(j) for j in jpegs))
    answered = 0
    done = asyncio.Event()
    async with connect(url, **CLIENT_OPTIONS) as ws:

        async def receive() -> None:
            nonlocal answered
            async for raw in ws:
                received = time.monotonic()
                message = json.loads(raw)
                if message.get("warning") is not None:
                    run.warnings.append({**message, "_at": received})
                    continue
                index = message.get("frame_index")
                if not isinstance(index, int):
                    run.other.append(message)
                    continue
                if not 0 <= index < len(jpegs):
                    run.unmatched.append(message)
                    continue
                if index not in run.replies:
                    answered += 1
                run.replies.setdefault(index, []).append((received, message))
                if answered >= len(jpegs):
                    done.set()

        receiver = asyncio.create_task(receive())
        start = time.monotonic() + 0.05
        for k, jpeg in enumerate(jpegs):
            delay = start + k / fps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            run.sent_at[k] = time.monotonic()
            await ws.send(jpeg)
        try:
            await asyncio.wait_for(done.wait(), timeout=drain_s)
        except TimeoutError:
            pass
        await asyncio.sleep(0.05)
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
    return run


# The server process's memory ------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB (/proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no VmRSS")


class RssSampler:
    """Samples a process's RSS every `interval_s` while a run lasts: memory that grows under overload shows here."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.samples.append((time.monotonic(), rss_kib(self.pid)))
            await asyncio.sleep(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.samples.append((time.monotonic(), rss_kib(self.pid)))
