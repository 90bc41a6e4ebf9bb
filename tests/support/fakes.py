"""The unit tests' shared fakes, defined once so every test drives the same stand-in for a port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Clock:
    """A clock the test moves by hand (`clock.now += 40`), so timing rules run without sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingDecoder:
    """An ImageDecoder that counts its calls, so a test can tell a frame was (or was not) decoded."""

    def __init__(self, error: Exception | None = None, *, bytes_needed: int = 1000) -> None:
        self.calls = 0
        self.error = error
        self.reductions: list[int] = []
        self.bytes_needed = bytes_needed

    def decode(self, image_bytes: bytes, reduction: int = 1) -> Any:
        self.calls += 1
        self.reductions.append(reduction)
        if self.error is not None:
            raise self.error
        return {"decoded_from": len(image_bytes)}

    def memory_needed(self, info: Any, reduction: int) -> int:
        return self.bytes_needed // reduction


class RecordingObserver:
    """A StreamObserver that records every call, whatever the method.

    `events` holds (method name, positional args); `reports` holds each call
    flat, without the session: (method name, *other positional args, *keyword
    values), the form a test compares with a tuple literal.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.reports: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        def record(*args: Any, **kwargs: Any) -> None:
            self.events.append((name, args))
            self.reports.append((name, *args[1:], *kwargs.values()))

        return record

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


class RecordingPipelineObserver:
    """A PipelineObserver that records which nodes and pipelines finished and whether they failed."""

    def __init__(self) -> None:
        self.nodes: list[tuple[str, str, bool]] = []
        self.pipelines: list[tuple[str, bool]] = []
        self.skipped: list[tuple[str, str]] = []

    def node_finished(self, pipeline_id: str, node_id: str, duration_ms: float, *, failed: bool) -> None:
        assert duration_ms >= 0.0
        self.nodes.append((pipeline_id, node_id, failed))

    def node_skipped(self, pipeline_id: str, node_id: str) -> None:
        self.skipped.append((pipeline_id, node_id))

    def pipeline_finished(self, pipeline_id: str, duration_ms: float, *, failed: bool) -> None:
        assert duration_ms >= 0.0
        self.pipelines.append((pipeline_id, failed))
