"""The benchmark's frame and client, used by bench/stream_bench.py (and bench/client_bench.py through it).

A real 50,000-byte 640x480 JPEG, and a bare `websockets` client: ping-pong
(one frame in flight) and overload (frames on an absolute schedule while
another task receives). Why the client is not the test kit's StreamClient is
in stream_bench.py's docstring.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.stream_servers import BenchError

FRAME_BYTES = 50_000
FRAME_SIZE = (640, 480)

CLIENT_OPTIONS: dict[str, Any] = {
    "compression": None,
    "max_size": None,
    "ping_interval": None,
    "open_timeout": 10,
    "close_timeout": 2,
    "proxy": None,  # loopback only; ignore any HTTP(S)_PROXY in the environment
}


# The frame ---------------------------------------------------------------------


@dataclass(frozen=True)
class BenchFrame:
    data: bytes
    width: int
    height: int
    quality: int
    padding: int


def make_frame(target_bytes: int = FRAME_BYTES) -> BenchFrame:
    """A real 640x480 JPEG of exactly `target_bytes`: smooth shapes plus noise, then a COM segment pads the rest."""
    import cv2
    import numpy as np

    from domain import read_jpeg_info, validate_jpeg

    width, height = FRAME_SIZE
    rng = np.random.default_rng(20260509)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 255 / (width + height)], axis=-1)
    for _ in range(30):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        color = [float(c) for c in rng.integers(0, 256, 3)]
        if rng.random() < 0.5:
            cv2.rectangle(image, (x, y), (x + int(rng.integers(20, 160)), y + int(rng.integers(20, 120))), color, -1)
        else:
            cv2.circle(image, (x, y), int(rng.integers(10, 80)), color, -1)
    image += rng.normal(0.0, 6.0, image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)

    best: tuple[int, bytes] | None = None
    for quality in range(30, 101):
        ok, encoded = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        if not ok:
            raise RuntimeError("cv2.imencode failed")
        data = encoded.tobytes()
        if len(data) <= target_bytes - 4:
            best = (quality, data)
    if best is None:
        raise RuntimeError(f"cannot encode the frame under {target_bytes} bytes")
    quality, data = best
    padding = target_bytes - len(data)
    # A COM segment (FF FE, 2-byte length that counts itself) after the JFIF APP0 segment.
    insert_at = 2
    if data[2:4] == b"\xff\xe0":
        insert_at = 4 + int.from_bytes(data[4:6], "big")
    segments = bytearray()
    remaining = padding
    while remaining:
        chunk = min(remaining, 65_535 + 2)
        if remaining - chunk and remaining - chunk < 4:
            chunk -= 4
        body = chunk - 4
        segments += b"\xff\xfe" + (body + 2).to_bytes(2, "big") + bytes(((i * 7) & 0x7F) or 0x20 for i in range(body))
        remaining -= chunk
    frame = data[:insert_at] + bytes(segments) + data[insert_at:]
    if len(frame) != target_bytes:
        raise RuntimeError(f"frame is {len(frame)} bytes, expected {target_bytes}")
    validate_jpeg(frame)
    info = read_jpeg_info(frame)
    decoded = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None or decoded.shape[:2] != (height, width) or (info.width, info.height) != (width, height):
        raise RuntimeError("the benchmark frame does not decode to 640x480")
    return BenchFrame(frame, width, height, quality, padding)


# Client ----------------------------------------------------------------------------


@dataclass
class PingPong:
    frames: int
    elapsed_s: float
    latencies_s: list[float]

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies_s) * 1000.0


async def ping_pong(url: str, frame: bytes, *, seconds: float, max_frames: int, warmup: int) -> PingPong:
    """One connection; send a frame, wait for its reply, repeat. Only replies with a result count."""
    from websockets.asyncio.client import connect

    async with connect(url, **CLIENT_OPTIONS) as ws:
        index = 0

        async def one() -> float:
            nonlocal index
            started = time.perf_counter()
            await ws.send(frame)
            while True:
                message = json.loads(await ws.recv())
                if "error" in message:
                    raise BenchError(f"frame {index} answered with an error: {message}")
                if "frame_index" in message:
                    break
            finished = time.perf_counter()
            if message["frame_index"] != index:
                raise BenchError(f"expected the reply to frame {index}, got {message}")
            if "result" not in message and "echo" not in message:
                raise BenchError(f"frame {index} was not answered with a result in ping-pong: {message}")
            index += 1
            return finished - started

        for _ in range(warmup):
            await one()
        latencies: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds and len(latencies) < max_frames:
            latencies.append(await one())
        elapsed = time.perf_counter() - started
    return PingPong(len(latencies), elapsed, latencies)


@dataclass
class Overload:
    interval_s: float
    sent: int
    send_seconds: float
    send_times: list[float]
    replies: dict[int, list[tuple[float, dict[str, Any]]]]
    warnings: list[dict[str, Any]]
    other: list[dict[str, Any]]
    drain_wait_s: float
    drain_budget_s: float
    cutoff: float
    unknown_indices: list[int] = field(default_factory=list)

    def first_reply(self, index: int) -> tuple[float, dict[str, Any]] | None:
        found = self.replies.get(index)
        return found[0] if found else None

    def kind(self, index: int) -> str:
        reply = self.first_reply(index)
        if reply is None:
            return "missing"
        message = reply[1]
        if "error" in message:
            return "error"
        if message.get("dropped"):
            return "dropped"
        if "result" in message:
            return "result"
        return "unexpected"

    @property
    def missing(self) -> list[int]:
        return [i for i in range(self.sent) if i not in self.replies]

    @property
    def duplicated(self) -> list[int]:
        return [i for i, found in self.replies.items() if len(found) > 1]

    def count(self, kind: str) -> int:
        return sum(1 for i in range(self.sent) if self.kind(i) == kind)

    def drop_causes(self) -> dict[str, int]:
        causes: dict[str, int] = {}
        for i in range(self.sent):
            if self.kind(i) == "dropped":
                cause = str(self.replies[i][0][1].get("cause"))
                causes[cause] = causes.get(cause, 0) + 1
        return causes

    def latencies(self, indices: Sequence[int]) -> tuple[list[float], int]:
        """Latency (s) of result frames among `indices`; unanswered frames count as cutoff - sent (a lower bound)."""
        values: list[float] = []
        censored = 0
        for i in indices:
            kind = self.kind(i)
            if kind == "result":
                values.append(self.replies[i][0][0] - self.send_times[i])
            elif kind == "missing":
                values.append(self.cutoff - self.send_times[i])
                censored += 1
        return values, censored


async def overload(url: str, frame: bytes, *, interval_s: float, seconds: float, processing_s: float, drain_cap_s: float) -> Overload:
    """Send on an absolute schedule (frame k at start + k*interval) while a second task receives every reply.

    After the last frame, wait for the replies still owed, at most the time the
    backlog needs at the measured processing time (plus 1 s), capped at drain_cap_s.
    """
    from websockets.asyncio.client import connect

    count = max(1, round(seconds / interval_s))
    send_times = [0.0] * count
    replies: dict[int, list[tuple[float, dict[str, Any]]]] = {}
    warnings: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    unknown: list[int] = []
    answered = 0
    sending_done = False
    all_answered = asyncio.Event()

    async with connect(url, **CLIENT_OPTIONS) as ws:

        async def receive() -> None:
            nonlocal answered
            async for raw in ws:
                received = time.perf_counter()
                message = json.loads(raw)
                if message.get("warning") is not None:
                    warnings.append({**message, "_at": received})
                    continue
                index = message.get("frame_index")
                if not isinstance(index, int):
                    other.append(message)
                    continue
                if not 0 <= index < count:
                    unknown.append(index)
                    continue
                if index not in replies:
                    replies[index] = []
                    answered += 1
                replies[index].append((received, message))
                if sending_done and answered >= count:
                    all_answered.set()

        receiver = asyncio.create_task(receive())
        start = time.perf_counter() + 0.05
        for k in range(count):
            delay = start + k * interval_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            send_times[k] = time.perf_counter()
            await ws.send(frame)
        send_seconds = time.perf_counter() - send_times[0]
        sending_done = True
        if answered >= count:
            all_answered.set()
        backlog = count - answered
        budget = min(backlog * processing_s * 1.15 + 1.0, drain_cap_s)
        drain_started = time.perf_counter()
        try:
            await asyncio.wait_for(all_answered.wait(), timeout=budget)
        except TimeoutError:
            pass
        # A duplicate reply would arrive right behind the first one: give it a moment.
        await asyncio.sleep(0.05)
        cutoff = time.perf_counter()
        drain_wait = cutoff - drain_started
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        if receiver.done() and not receiver.cancelled() and receiver.exception() is not None:
            raise BenchError(f"the receiving task failed: {receiver.exception()!r}")

    return Overload(interval_s, count, send_seconds, send_times, replies, warnings, other, drain_wait, budget, cutoff, unknown)
