"""Reporting one stream to several observers (logs and metrics) through the single StreamObserver port."""

from __future__ import annotations

import logging
from typing import Any

from application.ports import PipelineObserver, StreamObserver
from domain import DropCause, ErrorCode, Session

logger = logging.getLogger(__name__)


_EVENTS = (
    "session_opened",
    "session_closed",
    "session_rejected",
    "frame_received",
    "frame_dropped",
    "frame_processed",
    "frame_failed",
    "slowdown_sent",
    "error_sent",
    "single_frame_failed",
)


class FanOutStreamObserver:
    """Forwards every event to each observer in order.

    The port promises that observation never changes what a client receives;
    here that promise holds even when one observer breaks it: its failure is
    logged with the traceback and the remaining observers still hear the event.
    """

    def __init__(self, *observers: StreamObserver) -> None:
        # Bound methods looked up once: several events fire on every frame.
        self._handlers: dict[str, list[tuple[str, Any]]] = {
            event: [(type(observer).__name__, getattr(observer, event)) for observer in observers] for event in _EVENTS
        }
        # The events of every frame skip the generic dispatch (a dictionary lookup and argument packing each).
        self._received = self._handlers["frame_received"]
        self._processed = self._handlers["frame_processed"]

    def _each(self, event: str, *args: Any, **kwargs: Any) -> None:
        for name, handler in self._handlers[event]:
            try:
                handler(*args, **kwargs)
            except Exception:
                logger.exception("observer %s failed on %s", name, event)

    def session_opened(self, session: Session, client: str) -> None:
        self._each("session_opened", session, client)

    def session_closed(self, session: Session, client: str, close_code: int, reason: str) -> None:
        self._each("session_closed", session, client, close_code, reason)

    def session_rejected(self, pipeline_id: str | None, client: str, code: ErrorCode, detail: str) -> None:
        self._each("session_rejected", pipeline_id, client, code, detail)

    def frame_received(self, session: Session, frame_index: int, size: int) -> None:
        for name, handler in self._received:
            try:
                handler(session, frame_index, size)
            except Exception:
                logger.exception("observer %s failed on %s", name, "frame_received")

    def frame_dropped(self, session: Session, frame_index: int, cause: DropCause) -> None:
        self._each("frame_dropped", session, frame_index, cause)

    def frame_processed(
        self, session: Session, frame_index: int, *, queue_ms: float, processing_ms: float, latency_ms: float
    ) -> None:
        for name, handler in self._processed:
            try:
                handler(session, frame_index, queue_ms=queue_ms, processing_ms=processing_ms, latency_ms=latency_ms)
            except Exception:
                logger.exception("observer %s failed on %s", name, "frame_processed")

    def frame_failed(self, session: Session, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        self._each("frame_failed", session, frame_index, error, code=code)

    def slowdown_sent(self, session: Session, drop_rate: float, suggested_fps: float | None) -> None:
        self._each("slowdown_sent", session, drop_rate, suggested_fps)

    def error_sent(self, session: Session | None, code: ErrorCode) -> None:
        self._each("error_sent", session, code)

    def single_frame_failed(self, pipeline_id: str, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        self._each("single_frame_failed", pipeline_id, frame_index, error, code=code)


class FanOutPipelineObserver:
    """Forwards the pipelines' reports to each observer in order (from worker threads, so no shared state here).

    A failing observer is logged and skipped, as in FanOutStreamObserver: a
    report never fails a frame. The bound methods are looked up once: every
    node of every frame reports.
    """

    def __init__(self, *observers: PipelineObserver) -> None:
        self._finished = [(type(o).__name__, o.node_finished) for o in observers]
        self._skipped = [(type(o).__name__, o.node_skipped) for o in observers]
        self._pipelines = [(type(o).__name__, o.pipeline_finished) for o in observers]

    def node_finished(self, pipeline_id: str, node_id: str, duration_ms: float, *, failed: bool) -> None:
        for name, handler in self._finished:
            try:
                handler(pipeline_id, node_id, duration_ms, failed=failed)
            except Exception:
                logger.exception("observer %s failed on node_finished", name)

    def node_skipped(self, pipeline_id: str, node_id: str) -> None:
        for name, handler in self._skipped:
            try:
                handler(pipeline_id, node_id)
            except Exception:
                logger.exception("observer %s failed on node_skipped", name)

    def pipeline_finished(self, pipeline_id: str, duration_ms: float, *, failed: bool) -> None:
        for name, handler in self._pipelines:
            try:
                handler(pipeline_id, duration_ms, failed=failed)
            except Exception:
                logger.exception("observer %s failed on pipeline_finished", name)
