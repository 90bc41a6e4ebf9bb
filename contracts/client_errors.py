"""The typed client's exceptions: one class per error code the contract declares, and the closes without one.

They live apart from the client (contracts/client.py, which re-exports them)
so that the client module holds the connection and its checks only.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel


class ContractViolation(AssertionError):
    """The server did something asyncapi.yaml rules out (an AssertionError, so pytest reports it as a failure)."""


class ServerError(Exception):
    """An error message from the server; `close_code` is the close that followed it (None: still open)."""

    code: ClassVar[str] = ""

    def __init__(self, message: BaseModel, close_code: int | None = None, close_reason: str | None = None) -> None:
        self.message = message
        self.close_code = close_code
        self.close_reason = close_reason
        where = f" (frame {self.frame_index})" if self.frame_index is not None else ""
        closed = f"; closed with {close_code}" if close_code is not None else ""
        super().__init__(f"{self.code}{where}: {self.detail}{closed}")

    @property
    def detail(self) -> str:
        return str(getattr(self.message, "detail"))

    @property
    def frame_index(self) -> int | None:
        value = getattr(self.message, "frame_index", None)
        return None if value is None else int(value)


class InvalidMessage(ServerError):
    code = "invalid_message"


class InvalidFrame(ServerError):
    code = "invalid_frame"


class FrameTooLarge(ServerError):
    code = "frame_too_large"


class PipelineFailure(ServerError):
    """Only raised by `raise_for_failure`: the stream yields pipeline failures, since it stays open after them."""

    code = "pipeline_failure"


class InternalServerError(ServerError):
    code = "internal_error"


class InvalidPipeline(ServerError):
    code = "invalid_pipeline"


class ServerBusy(ServerError):
    code = "server_busy"


class ShuttingDown(ServerError):
    code = "shutting_down"


class IdleTimeout(ServerError):
    code = "idle_timeout"


class Unauthorized(ServerError):
    code = "unauthorized"


ERRORS_BY_CODE: dict[str, type[ServerError]] = {
    cls.code: cls
    for cls in (
        InvalidMessage,
        InvalidFrame,
        FrameTooLarge,
        PipelineFailure,
        InternalServerError,
        InvalidPipeline,
        ServerBusy,
        ShuttingDown,
        Unauthorized,
        IdleTimeout,
    )
}


class ClosedWithoutError(Exception):
    """The server closed with a code other than 1000 without sending an error message first."""

    def __init__(self, close_code: int | None, close_reason: str | None) -> None:
        self.close_code = close_code
        self.close_reason = close_reason
        super().__init__(f"the server closed with {close_code} ({close_reason or 'no reason'}) without an error message")


class StreamClosed(Exception):
    """Sending failed because the connection is closed; reading the stream tells why (the error, if any)."""

    def __init__(self, close_code: int | None) -> None:
        self.close_code = close_code
        super().__init__(f"the stream is closed (close code {close_code}); read it to get the server's error")
