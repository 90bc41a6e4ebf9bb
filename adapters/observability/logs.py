"""Structured JSON logs: one structlog configuration for the app, uvicorn and the CLI."""

from __future__ import annotations

import logging
import logging.config
import os
import re
import sys
from typing import Any, TextIO

import structlog

from domain import DropCause, ErrorCode, Session
from domain.errors import clip_client_text


_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def _add_pid(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """With several worker processes writing to one stdout, the pid tells their lines apart.

    Cached (and refreshed in a forked child): it is a system call, and every
    record asks for it.
    """
    event_dict.setdefault("pid", _PID[0])
    return event_dict


_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    _add_pid,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]

# What a log line must never hold, whatever wrote it (uvicorn, websockets, the app, an exception's text):
# - the value of a header that carries credentials (to the end of the line: a header record is one line);
# - the key in a `forgesyte.bearer.<key>` subprotocol, in any case;
# - the token after `Bearer`;
# - every query value but pipeline_id's: a client may put a key in any parameter, under any name.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "x-auth-token", "x-access-token"}
)
_CREDENTIAL_HEADERS = "|".join(re.escape(name) for name in sorted(CREDENTIAL_HEADERS, key=len, reverse=True))
_SECRET = re.compile(
    rf"(?i)(?P<header>(?<![\w-])(?:{_CREDENTIAL_HEADERS})\s*:[ \t]*)[^\r\n]*"
    r"|(?P<subprotocol>forgesyte\.bearer\.)[^\s,;\"'\\]+"
    r"|(?P<bearer>\bbearer\s+)(?!realm=)[^\s,;\"'\\]+"
    r"|\?(?P<query>[^\s\"'#]*=[^\s\"'#]*)"
)
REDACTED = "<redacted>"
# Query parameters whose value is logged as sent: nothing secret is ever asked for in them.
_PLAIN_QUERY_PARAMETERS = frozenset({"pipeline_id"})


def _redact_query(query: str) -> str:
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        parts.append(part if not equals or name.lower() in _PLAIN_QUERY_PARAMETERS else f"{name}={REDACTED}")
    return "?" + "&".join(parts)


def _redaction(match: re.Match[str]) -> str:
    for group in ("header", "subprotocol", "bearer"):
        prefix = match.group(group)
        if prefix is not None:
            return prefix + REDACTED
    return _redact_query(match.group("query"))


def redact_secrets(text: str) -> str:
    """Text as a log line may hold it: credentials replaced by <redacted> (the rules above).

    Shared by every transport and applied to every record, because the
    libraries that see handshakes (uvicorn, websockets) log query strings and,
    at debug, every header, and neither knows which of them are secrets.
    """
    return _SECRET.sub(_redaction, text)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redacted(item) for item in value)
    return value


def _redact_credentials(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Every field of every record, the rendered traceback included, through redact_secrets."""
    return {key: _redacted(value) for key, value in event_dict.items()}


# Libraries that install handlers of their own; their records go to the root handler instead.
_ROUTED_TO_ROOT = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "RapidOCR")
# The WebRTC stack logs every packet, offer and answer (ICE passwords included) at debug: it speaks from
# warning up whatever the server's level, and the transport logs what operators need itself.
_QUIET_BELOW_WARNING = ("aiortc", "aioice")


def logging_config(level: str = "info", stream: TextIO | None = None) -> dict[str, Any]:
    """The dictConfig that renders every standard-library record as one JSON line.

    uvicorn applies the `log_config` it is given when its Config is built, after
    ours; it gets this same dictionary, so whichever runs last, the result is
    the same. A fresh dictionary each call: dictConfig consumes parts of it.
    """
    numeric = logging.getLevelName(level.upper())
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": _SHARED_PROCESSORS,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    _redact_credentials,
                    structlog.processors.JSONRenderer(),
                ],
            }
        },
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": stream if stream is not None else sys.stdout,
            }
        },
        "root": {"handlers": ["json"], "level": numeric},
        "loggers": {
            **{name: {"handlers": [], "propagate": True, "level": numeric} for name in _ROUTED_TO_ROOT},
            **{name: {"handlers": [], "propagate": True, "level": max(numeric, logging.WARNING)} for name in _QUIET_BELOW_WARNING},
        },
    }


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog and the standard library (uvicorn and warnings included) through one JSON renderer.

    Logs go to stdout unless `stream` says otherwise (run-file keeps stdout for
    its results). Idempotent: the CLI, the server and worker processes may all call it.
    """
    logging.config.dictConfig(logging_config(level, stream))
    logging.captureWarnings(True)
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def pipeline_error_fields(error: Exception) -> dict[str, Any]:
    """The fields of a `pipeline_error` record, streamed or HTTP: node, plugin, tool, message and traceback."""
    fields: dict[str, Any] = {"message": getattr(error, "log_message", str(error)), "exc_info": error}
    for attribute, field_name in (("node_id", "node"), ("plugin_id", "plugin"), ("tool_id", "tool")):
        if hasattr(error, attribute):
            fields[field_name] = getattr(error, attribute)
    return fields


class LoggingStreamObserver:
    """Logs session lifecycles at info and per-frame events at debug, so a 30 fps stream stays quiet at info.

    Opening a session also binds its session_id and pipeline_id to the logging
    context of the task serving it; the session's receive and process tasks
    inherit that context, so any record logged while serving the session,
    standard-library ones included, carries both ids.
    """

    def __init__(self) -> None:
        self._log = structlog.get_logger("forgesyte.stream")
        self._stdlib = logging.getLogger("forgesyte.stream")

    def _per_frame(self) -> bool:
        """Whether per-frame (debug) events are wanted, asked before any event is built.

        structlog runs its whole processor chain (timestamp included) before the
        standard library discards a record below its level: at thousands of
        frames a second, that would be work spent on lines nobody sees.
        """
        return self._stdlib.isEnabledFor(logging.DEBUG)

    def _bound(self, session: Session) -> Any:
        return self._log.bind(session_id=session.session_id, pipeline_id=session.pipeline_id)

    def session_opened(self, session: Session, client: str) -> None:
        structlog.contextvars.bind_contextvars(session_id=session.session_id, pipeline_id=session.pipeline_id)
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
        structlog.contextvars.unbind_contextvars("session_id", "pipeline_id")

    def session_rejected(self, pipeline_id: str | None, client: str, code: ErrorCode, detail: str) -> None:
        shown = None if pipeline_id is None else clip_client_text(pipeline_id)
        self._log.warning("session_rejected", pipeline_id=shown, client=client, error=code.value, detail=detail)

    def frame_received(self, session: Session, frame_index: int, size: int) -> None:
        if self._per_frame():
            self._bound(session).debug("frame_received", frame_index=frame_index, bytes=size)

    def frame_dropped(self, session: Session, frame_index: int, cause: DropCause) -> None:
        if self._per_frame():
            self._bound(session).debug(
                "frame_dropped", frame_index=frame_index, cause=cause.value, dropped_frames=session.dropped_frames
            )

    def frame_processed(
        self, session: Session, frame_index: int, *, queue_ms: float, processing_ms: float, latency_ms: float
    ) -> None:
        if self._per_frame():
            self._bound(session).debug(
                "frame_processed",
                frame_index=frame_index,
                queue_ms=round(queue_ms, 2),
                processing_ms=round(processing_ms, 2),
                latency_ms=round(latency_ms, 2),
            )

    def frame_failed(self, session: Session, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        self._bound(session).error("pipeline_error", frame_index=frame_index, error=code.value, **pipeline_error_fields(error))

    def single_frame_failed(self, pipeline_id: str, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        self._log.error("pipeline_error", pipeline_id=pipeline_id, frame_index=frame_index, error=code.value, **pipeline_error_fields(error))

    def slowdown_sent(self, session: Session, drop_rate: float, suggested_fps: float | None) -> None:
        self._bound(session).info("slow_down_sent", drop_rate=round(drop_rate, 4), suggested_fps=suggested_fps)

    def error_sent(self, session: Session | None, code: ErrorCode) -> None:
        if session is not None and self._per_frame():
            self._bound(session).debug("error_sent", error=code.value)
