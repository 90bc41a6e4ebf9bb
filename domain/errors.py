"""Error codes and WebSocket close codes that clients depend on.

The string values are a public contract (asyncapi.yaml declares them); renaming
one breaks every generated client.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    INVALID_MESSAGE = "invalid_message"
    INVALID_FRAME = "invalid_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    PIPELINE_FAILURE = "pipeline_failure"
    INTERNAL_ERROR = "internal_error"
    INVALID_PIPELINE = "invalid_pipeline"
    SERVER_BUSY = "server_busy"
    SHUTTING_DOWN = "shutting_down"
    IDLE_TIMEOUT = "idle_timeout"
    UNAUTHORIZED = "unauthorized"


class CloseCode(IntEnum):
    """RFC 6455 close codes, one per kind of failure."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002  # made by the WebSocket layer, never with an error message
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    # Registered with IANA as "Timeout" (RFC 6455 11.7 leaves 3000-3999 to registration).
    TIMEOUT = 3008
    # The IANA-registered application code "Unauthorized": no valid API key.
    UNAUTHORIZED = 3000


# pipeline_failure is absent on purpose: a failing frame never ends a live stream.
CLOSE_CODE_FOR_ERROR: dict[ErrorCode, CloseCode] = {
    ErrorCode.INVALID_MESSAGE: CloseCode.UNSUPPORTED_DATA,
    ErrorCode.INVALID_FRAME: CloseCode.INVALID_PAYLOAD,
    ErrorCode.FRAME_TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.INTERNAL_ERROR: CloseCode.INTERNAL_ERROR,
    ErrorCode.INVALID_PIPELINE: CloseCode.POLICY_VIOLATION,
    ErrorCode.SERVER_BUSY: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.SHUTTING_DOWN: CloseCode.SERVICE_RESTART,
    ErrorCode.IDLE_TIMEOUT: CloseCode.TIMEOUT,
    ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
}

GENERIC_INTERNAL_DETAIL = "the server hit an unexpected error; the event was logged"

# Characters of a client-supplied string that a reply or a log line repeats.
CLIENT_TEXT_SHOWN = 64


def clip_client_text(value: str) -> str:
    """A client-supplied string cut for a reply or a log line, so that repeating it costs a bounded amount."""
    if len(value) <= CLIENT_TEXT_SHOWN:
        return value
    return f"{value[:CLIENT_TEXT_SHOWN]}... ({len(value)} characters)"


def _error_code(code: ErrorCode | str) -> ErrorCode:
    """The enumeration member for a code given as a member or as its wire string."""
    try:
        return ErrorCode(code)
    except ValueError:
        raise ValueError(f"unknown error code {code!r}; expected one of {[c.value for c in ErrorCode]}") from None


class StreamError(Exception):
    """A failure with a public detail for the client, kept apart from the private log message.

    `detail` is what the client sees; `log_message` may hold library text, paths
    or anything else that must never cross the wire.
    """

    def __init__(self, code: ErrorCode | str, detail: str, *, log_message: str | None = None) -> None:
        code = _error_code(code)
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail
        self.log_message = log_message if log_message is not None else detail

    def to_message(self) -> dict[str, str]:
        return {"error": self.code.value, "detail": self.detail}
