"""Exceptions carrying the contract's error code, detail and close code.

A session-ending error from the server (`{"error": code, "detail": ...}`
followed by a close) becomes one `StreamError`; a close without an error
message becomes one too, named after its close code, so a caller never has
to look at a bare close. What the server says is its own to choose: the
exception keeps it whole, and its text (what a log or a terminal shows) is
one line of bounded length.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Any

# The close codes the contract declares for each session-ending error (asyncapi.yaml x-close-code).
UNAUTHORIZED_CLOSE = 3000
RESTART_CLOSE = 1012
BUSY_CLOSE = 1013

# How much of a server-chosen text (detail, code, a bad message) an exception's text shows.
SHOWN_CHARS = 200

_message_repr = reprlib.Repr()  # bounded in depth and length, whatever the message
_message_repr.maxlevel, _message_repr.maxdict, _message_repr.maxlist = 3, 6, 6
_message_repr.maxstring = _message_repr.maxother = 80


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` as one printable line of about `limit` characters, its original length said when cut.

    A server can send megabytes of detail, newlines or terminal escapes; a
    message made from it must still be one readable line.
    """
    head = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    if len(text) <= limit and len(head) <= limit:
        return head
    return f"{head[:limit]}… ({len(text)} chars)"


class ClientError(Exception):
    """Anything this package raises about the server or the connection."""


class ConnectError(ClientError):
    """The WebSocket could not be opened: refused, unreachable, timed out, or the handshake was refused."""

    def __init__(self, url: str, reason: str, *, status: int | None = None) -> None:
        super().__init__(f"cannot connect to {url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status


class StreamError(ClientError):
    """The server ended the session; `code`, `detail` and `close_code` are the contract's."""

    def __init__(self, code: str, detail: str, *, close_code: int | None = None, frame_index: int | None = None) -> None:
        where = f" (frame {frame_index})" if frame_index is not None else ""
        close = f", close {close_code}" if close_code is not None else ""
        super().__init__(f"{shorten(code, 60)}{where}: {shorten(detail)}{close}")
        self.code = code
        self.detail = detail
        self.close_code = close_code
        self.frame_index = frame_index

    @property
    def retryable(self) -> bool:
        """True when reconnecting later can help: the server restarts (1012) or is at its session limit (1013)."""
        return self.close_code in (RESTART_CLOSE, BUSY_CLOSE)


class UnauthorizedError(StreamError):
    """The server refused the credentials (error `unauthorized`, close 3000, or HTTP 401/403 at the handshake)."""


class InvalidPipelineError(StreamError):
    """pipeline_id is missing, unknown or unavailable (close 1008)."""


class ServerBusyError(StreamError):
    """The server is at its session limit (close 1013); retry later."""


class ShuttingDownError(StreamError):
    """The server is shutting down (close 1012); reconnect later."""


class ConnectionLost(StreamError):
    """The connection ended without the server's error message (network loss, a bare close)."""


class ReplyTimeout(StreamError):
    """The server answered nothing for the reply timeout (or took no frame for that long); the client closed the connection."""

    def __init__(self, detail: str) -> None:
        super().__init__("reply_timeout", detail)


class ProtocolError(StreamError):
    """The server sent something the contract does not allow: not JSON text, too large, too deep, of no declared shape.

    The client ends the session; `message` keeps what was received when it
    could be read (None otherwise).
    """

    def __init__(self, reason: str, message: Any = None, *, close_code: int | None = None) -> None:
        shown = reason if message is None else f"{reason}: {_message_repr.repr(message)}"
        super().__init__("protocol_error", shown, close_code=close_code)
        self.message = message


_BY_CODE: dict[str, type[StreamError]] = {
    "unauthorized": UnauthorizedError,
    "invalid_pipeline": InvalidPipelineError,
    "server_busy": ServerBusyError,
    "shutting_down": ShuttingDownError,
}

_BARE_CLOSE: dict[int, tuple[type[StreamError], str, str]] = {
    UNAUTHORIZED_CLOSE: (UnauthorizedError, "unauthorized", "the server refused the credentials"),
    RESTART_CLOSE: (ShuttingDownError, "shutting_down", "the server is shutting down"),
    BUSY_CLOSE: (ServerBusyError, "server_busy", "the server is at its session limit"),
}


def error_from_message(message: Mapping[str, Any], close_code: int | None) -> StreamError:
    """The exception for the server's error message and the close code that followed it."""
    code = str(message.get("error"))
    frame_index = message.get("frame_index")
    cls = _BY_CODE.get(code, StreamError)
    if close_code == UNAUTHORIZED_CLOSE:
        cls = UnauthorizedError
    return cls(code, str(message.get("detail", "")), close_code=close_code, frame_index=frame_index if isinstance(frame_index, int) else None)


def error_from_close(close_code: int | None, reason: str = "") -> StreamError:
    """The exception for a close that came without an error message."""
    if close_code in _BARE_CLOSE:
        cls, code, detail = _BARE_CLOSE[close_code]
        return cls(code, reason or detail, close_code=close_code)
    detail = reason or ("the connection was lost without a close frame" if close_code in (None, 1006) else "the server closed the connection")
    return ConnectionLost("connection_lost", detail, close_code=close_code if close_code is not None else 1006)
