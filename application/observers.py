"""Reporting one stream to several observers (logs, metrics, live statistics, traces) through the single ports.

An observer may declare `ignored_events`, a frozenset of the event names it
does nothing with: the fan-outs then do not call it for them, which saves a
call per frame for the events that fire on every frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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


def _ignored(observer: Any) -> frozenset[str]:
    declared = getattr(observer, "ignored_events", None)
    return declared if isinstance(declared, frozenset) else frozenset()


def _handlers(observers: tuple[Any, ...], event: str) -> list[tuple[str, Any]]:
    return [(type(observer).__name__, getattr(observer, event)) for observer in observers if event not in _ignored(observer)]


class FanOutStreamObserver:
    """Forwards every event to each observer in order.

    The port promises that observation never changes what a client receives;
    here that promise holds even when one observer breaks it: its failure is
    logged with the traceback and the remaining observers still hear the event.
    """

    def __init__(self, *observers: StreamObserver) -> None:
        # Bound methods looked up once: several events fire on every frame.
        self._handlers: dict[str, list[tuple[str, Any]]] = {event: _handlers(observers, event) for event in _EVENTS}
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
    """Forwards the pipelines' reports to each observer that wants them, in order (from worker threads).

    With several observers of an event, a failing one is logged and skipped,
    as in FanOutStreamObserver. An event only one observer wants goes to it
    directly, as the pipeline engine called its one observer before: every
    node of every frame reports, and the port forbids raising.
    """

    def __init__(self, *observers: PipelineObserver) -> None:
        self._node_finished = _handlers(observers, "node_finished")
        self._node_skipped = _handlers(observers, "node_skipped")
        self._pipeline_finished = _handlers(observers, "pipeline_finished")
        for event, handlers in (
            ("node_finished", self._node_finished),
            ("node_skipped", self._node_skipped),
            ("pipeline_finished", self._pipeline_finished),
        ):
            if len(handlers) == 1:
                setattr(self, event, handlers[0][1])
        # Optional in the port: offered only when some observer offers it (the engine then times decodes).
        decoded = [(type(o).__name__, getattr(o, "image_decoded")) for o in observers if callable(getattr(o, "image_decoded", None))]
        self.image_decoded: Callable[[str, float], None] | None = None
        if len(decoded) == 1:
            self.image_decoded = decoded[0][1]
        elif decoded:

            def each(pipeline_id: str, duration_ms: float) -> None:
                for name, handler in decoded:
                    try:
                        handler(pipeline_id, duration_ms)
                    except Exception:
                        logger.exception("observer %s failed on image_decoded", name)

            self.image_decoded = each

    def node_finished(self, pipeline_id: str, node_id: str, duration_ms: float, *, failed: bool) -> None:
        for name, handler in self._node_finished:
            try:
                handler(pipeline_id, node_id, duration_ms, failed=failed)
            except Exception:
                logger.exception("observer %s failed on node_finished", name)

    def node_skipped(self, pipeline_id: str, node_id: str) -> None:
        for name, handler in self._node_skipped:
            try:
                handler(pipeline_id, node_id)
            except Exception:
                logger.exception("observer %s failed on node_skipped", name)

    def pipeline_finished(self, pipeline_id: str, duration_ms: float, *, failed: bool) -> None:
        for name, handler in self._pipeline_finished:
            try:
                handler(pipeline_id, duration_ms, failed=failed)
            except Exception:
                logger.exception("observer %s failed on pipeline_finished", name)
