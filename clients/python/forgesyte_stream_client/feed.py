"""Where `stream()` takes its frames from: a live source's newest frame, a costly source read ahead, or frames in memory."""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Iterable
from typing import Any

from forgesyte_stream_client.sources import Frame


class Feed:
    """Frames from the source, in one of three ways.

    live: a thread reads the source and keeps only the newest frame; frames
    overwritten before they were taken are reported as skipped. prefetch: a
    thread reads (decodes, encodes, splits a file) ahead, so that reading
    overlaps the network and the server's work. Its frames are handed over in
    batches (one as soon as the sender waits, else up to _BATCH at a time):
    a hand-off per frame would wake the reader, and contend for the GIL, once
    per frame. inline: frames that cost nothing to read (frames already in
    memory) are taken on the event loop.
    """

    _BATCH = 16

    _END = object()

    def __init__(
        self, frames: Iterable[Frame], live: bool, prefetch: bool, quality: int | None, loop: asyncio.AbstractEventLoop, *, images: bool = False
    ) -> None:
        self._live = live
        # images: the transport sends pixels (WebRTC's video track), not JPEGs: each frame is decoded to its
        # BGR image where a JPEG would have been encoded, off the event loop too.
        self._images = images
        self._quality = quality
        self._loop = loop
        self._iterator = iter(frames)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=4)  # batches
        self._taken: collections.deque[Frame] = collections.deque()  # the current batch
        self._latest: Frame | None = None
        self._skipped: list[Frame] = []
        self._ended = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if live or prefetch:
            self._thread = threading.Thread(target=self._run, name="forgesyte-feed", daemon=True)
            self._thread.start()

    def _needs_encoding(self, frame: Frame) -> bool:
        if self._images:
            return frame.image is None
        return frame.jpeg is None or self._quality is not None

    def _prepare(self, frame: Frame) -> Frame:
        if self._images:
            frame.bgr()
        else:
            frame.jpeg = frame.to_jpeg(self._quality)
        return frame

    def _run(self) -> None:
        batch: list[Frame] = []
        try:
            for frame in self._iterator:
                if self._stop.is_set():
                    return
                if self._live:
                    with self._lock:
                        if self._latest is not None:
                            self._skipped.append(self._latest)
                        self._latest = frame
                    self._loop.call_soon_threadsafe(self._ready.set)
                else:
                    if self._needs_encoding(frame):
                        self._prepare(frame)  # encode here, off the event loop
                    batch.append(frame)
                    if len(batch) >= self._BATCH or self._queue.empty():
                        self._put(batch)
                        batch = []
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            self._error = error
        finally:
            self._ended = True
            if self._live:
                self._loop.call_soon_threadsafe(self._ready.set)
            else:
                if batch:
                    self._put(batch)
                self._put(self._END)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def take_skipped(self) -> list[Frame]:
        if not self._live:
            return []
        with self._lock:
            skipped, self._skipped = self._skipped, []
        return skipped

    async def next(self) -> Frame | None:
        """The next frame to send (live: the newest), None at the end of the source."""
        if self._live:
            return await self._next_live()
        if self._thread is None:
            frame = next(self._iterator, None)
            if frame is not None and self._needs_encoding(frame):
                frame = await asyncio.to_thread(self._prepare, frame)
            return frame
        if self._taken:
            return self._taken.popleft()
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            item = await asyncio.to_thread(self._queue.get)
        if item is self._END:
            self._queue.put_nowait(self._END)  # the end stays the answer to every later call
            self._raise_error()
            return None
        self._taken.extend(item)
        return self._taken.popleft()

    async def _next_live(self) -> Frame | None:
        while True:
            with self._lock:
                frame, self._latest = self._latest, None
                if frame is None and not self._ended:
                    self._ready.clear()
            if frame is not None:
                return await asyncio.to_thread(self._prepare, frame) if self._needs_encoding(frame) else frame
            if self._ended:
                self._raise_error()
                return None
            await self._ready.wait()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        """Stop reading and wait for the reading thread, so that the source is never closed under it."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
