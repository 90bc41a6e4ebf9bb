"""Structured JSON logs: one structlog configuration for the app, uvicorn and the CLI."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from domain import DropCause, ErrorCode, Session

_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(level: str = "info") -> None:
    """Route structlog and the standard library (uvicorn included) through one JSON renderer to stdout.

    Idempotent: the CLI, the server and worker processes may all call it.
    """
    numeric = logging.getLevelName(level.upper())
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
    # RapidOCR logs every model load at INFO with its own colour handler.
    logging.getLogger("RapidOCR").handlers[:] = []
    logging.getLogger("RapidOCR").propagate = True
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


class LoggingStreamObserver:
    """Logs session lifecycles at info and per-frame events at debug, so a 30 fps stream stays quiet at info."""

    def __init__(self) -> None:
        self._log = structlog.get_logger("forgesyte.stream")

    def _bound(self, session: Session) -> Any:
        return self._log.bind(session_id=session.session_id, pipeline_id=session.pipeline_id)

    def session_opened(self, session: Session, client: str) -> None:
        self._bound(session).info("session_connected", client=client)

    def session_closed(self, session: Session, client: str, close_code: int, reason: str) -> None:
        self._bound(session).info(
            "session_disconnected",
            client=client,
            close_code=close_code,
            reason=reason,
            duration_ms=round(session.now_ms() - session.started_ms, 1),
            frames_received=session.frame_index,
            frames_processed=session.processed_frames,
            frames_failed=session.failed_frames,
            frames_dropped=session.dropped_frames,
            drop_rate=round(session.drop_rate(), 4),
            slowdown_signals=session.slowdown_signals,
        )

    def session_rejected(self, pipeline_id: str | None, client: str, code: ErrorCode, detail: str) -> None:
        self._log.warning("session_rejected", pipeline_id=pipeline_id, client=client, error=code.value, detail=detail)

    def frame_received(self, session: Session, frame_index: int, size: int) -> None:
        self._bound(session).debug("frame_received", frame_index=frame_index, bytes=size)

    def frame_dropped(self, session: Session, frame_index: int, cause: DropCause) -> None:
        self._bound(session).debug(
            "frame_dropped", frame_index=frame_index, cause=cause.value, dropped_frames=session.dropped_frames
        )

    def frame_processed(
        self, session: Session, frame_index: int, *, queue_ms: float, processing_ms: float, latency_ms: float
    ) -> None:
        self._bound(session).debug(
            "frame_processed",
            frame_index=frame_index,
            queue_ms=round(queue_ms, 2),
            processing_ms=round(processing_ms, 2),
            latency_ms=round(latency_ms, 2),
        )

    def frame_failed(self, session: Session, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        details: dict[str, Any] = {}
        for attribute in ("node_id", "plugin_id", "tool_id"):
            if hasattr(error, attribute):
                details[attribute.removesuffix("_id") if attribute != "node_id" else "node"] = getattr(error, attribute)
        self._bound(session).error(
            "pipeline_error",
            frame_index=frame_index,
            error=code.value,
            message=getattr(error, "log_message", str(error)),
            exc_info=error,
            **details,
        )

    def slowdown_sent(self, session: Session, drop_rate: float, suggested_fps: float | None) -> None:
        self._bound(session).info("slow_down_sent", drop_rate=round(drop_rate, 4), suggested_fps=suggested_fps)

    def error_sent(self, session: Session | None, code: ErrorCode) -> None:
        if session is not None:
            self._bound(session).debug("error_sent", error=code.value)
