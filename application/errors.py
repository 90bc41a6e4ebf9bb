"""The errors a pipeline, a frame's work or a video file can end in, in one place.

Each that reaches a client is a StreamError with its public code and detail;
VideoReadError never reaches a stream client (only the run-file command
reads files), so it is not one: a missing file is not an invalid frame.
"""

from __future__ import annotations

from collections.abc import Awaitable

from domain import ErrorCode, StreamError
from domain.errors import clip_client_text


class UnknownPipelineError(StreamError):
    def __init__(self, pipeline_id: str, known: list[str]) -> None:
        super().__init__(
            ErrorCode.INVALID_PIPELINE,
            f"unknown pipeline_id {clip_client_text(pipeline_id)!r}; expected one of {sorted(known)}",
        )
        self.pipeline_id = pipeline_id


class PipelineUnavailableError(StreamError):
    def __init__(self, pipeline_id: str, reason: str) -> None:
        super().__init__(ErrorCode.INVALID_PIPELINE, f"pipeline {pipeline_id!r} is unavailable: {reason}")
        self.pipeline_id = pipeline_id
        self.reason = reason


class PipelineExecutionError(StreamError):
    """A tool raised or returned something unusable; names where, keeps the cause for the log."""

    def __init__(self, pipeline_id: str, node_id: str, plugin_id: str, tool_id: str, cause: BaseException) -> None:
        super().__init__(
            ErrorCode.PIPELINE_FAILURE,
            f"pipeline {pipeline_id!r} failed at node {node_id!r} (tool {plugin_id}.{tool_id})",
            log_message=f"{type(cause).__name__}: {cause}",
        )
        self.pipeline_id = pipeline_id
        self.node_id = node_id
        self.plugin_id = plugin_id
        self.tool_id = tool_id
        self.__cause__ = cause


class DecodeBudgetExhausted(StreamError):
    """Decoded frames of other runs held the budget for longer than a frame may wait."""

    def __init__(self, needed: int, capacity: int, waited_s: float) -> None:
        super().__init__(
            ErrorCode.PIPELINE_FAILURE,
            "the server has no memory free for decoding this frame; retry later",
            log_message=f"decode budget: {needed} bytes not free within {waited_s} s (capacity {capacity} bytes)",
        )


class FrameTimeoutError(StreamError):
    """The pipeline did not finish a frame within the frame timeout: a pipeline_failure for that frame."""

    def __init__(self, pipeline_id: str, frame_index: int, timeout_s: float) -> None:
        super().__init__(
            ErrorCode.PIPELINE_FAILURE,
            f"pipeline {pipeline_id!r} did not finish frame {frame_index} within the {round(timeout_s * 1000)} ms frame timeout",
        )


class VideoReadError(Exception):
    """A video file that cannot be read: missing, not a video, a frame that does not decode."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# What a frame executor's run can end in besides a result ------------------------------------


class JobTimedOut(TimeoutError):
    """The frame's work did not finish within the frame timeout; work that had not started never runs."""


class JobStillRunning(JobTimedOut):
    """The frame timeout passed while the work runs on and the executor cannot stop it.

    `finished` completes when the work returns, so that a stream whose tool
    state the work holds starts nothing else until then.
    """

    def __init__(self, message: str, finished: Awaitable[object]) -> None:
        super().__init__(message)
        self.finished = finished


class JobGivenUp(Exception):
    """The caller's `give_up` completed first (the shutdown deadline): the outcome is discarded."""
