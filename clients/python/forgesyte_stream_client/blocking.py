"""The blocking client: the asynchronous one run on an event loop in a background thread.

For scripts and notebooks that do not run asyncio. Every call blocks until
the asynchronous call it stands for finishes, and raises what it raises.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

from forgesyte_stream_client.client import Outcome, stream
from forgesyte_stream_client.session import AsyncStreamClient
from forgesyte_stream_client.replies import ServerMessage
from forgesyte_stream_client.sources import Frame, Source

T = TypeVar("T")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="forgesyte-client-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


class StreamClient:
    """One stream session, blocking: `with StreamClient(url, "faces") as client: client.send(jpeg); client.receive()`."""

    def __init__(self, url: str, pipeline: str, **options: Any) -> None:
        self._runner = _LoopThread()
        self._client = AsyncStreamClient(url, pipeline, **options)

    @property
    def url(self) -> str:
        return self._client.url

    def connect(self) -> None:
        self._runner.run(self._client.connect())

    def send(self, frame: bytes | np.ndarray | Frame, *, quality: int | None = None) -> int:
        return self._runner.run(self._client.send(frame, quality=quality))

    def receive(self) -> ServerMessage:
        """The next reply or warning; raises the StreamError that ends the session, StopIteration after a normal close."""
        try:
            return self._runner.run(self._client.receive())
        except StopAsyncIteration:
            raise StopIteration from None

    def __iter__(self) -> Iterator[ServerMessage]:
        while True:
            try:
                yield self.receive()
            except StopIteration:
                return

    def close(self) -> None:
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.stop()

    def __enter__(self) -> StreamClient:
        self.connect()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def run(url: str, pipeline: str, frames: Iterable[Frame] | Source, **options: Any) -> Iterator[Outcome]:
    """Blocking `stream()`: one Outcome per frame, in source order (same options as stream())."""
    runner = _LoopThread()
    outcomes = stream(url, pipeline, frames, **options)
    try:
        while True:
            try:
                yield runner.run(outcomes.__anext__())
            except StopAsyncIteration:
                return
    finally:
        runner.run(outcomes.aclose())
        runner.stop()
