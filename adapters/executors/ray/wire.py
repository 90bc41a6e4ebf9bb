"""What crosses between a front end and its Ray actors: plain, picklable data, never exception objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapters.settings import SettingsError
from application.errors import PipelineExecutionError
from application.ports import FrameReply
from domain import ErrorCode, FrameValidationError, StreamError

@dataclass(frozen=True, slots=True)
class Timing:
    """One observation for the PipelineObserver port: node_id None is the whole pipeline."""

    pipeline_id: str
    node_id: str | None
    duration_ms: float
    failed: bool
    skipped: bool = False  # a gated node whose output was carried (PipelineObserver.node_skipped)


@dataclass(frozen=True, slots=True)
class Failure:
    """A failure in the actor, as data: exception objects with their causes do not pickle reliably."""

    kind: str  # "execution" | "frame" | "stream" | "internal"
    code: str
    detail: str
    log_message: str
    where: tuple[str, str, str, str] | None = None  # pipeline, node, plugin, tool of an execution error


# What tools report besides their result (the tracking plugin's AnalyticsSink): recorded in the
# actor, replayed on the front end's sink, so the counters and gauges live where /metrics is.
ANALYTICS_EVENTS = frozenset({"line_crossed", "zone_entered", "zone_occupancy_changed"})


@dataclass(frozen=True, slots=True)
class Event:
    method: str  # one of ANALYTICS_EVENTS
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    result: FrameReply | None
    failure: Failure | None
    timings: tuple[Timing, ...]
    actor: str
    run_ms: float
    events: tuple[Event, ...] = ()


class RemoteToolError(Exception):
    """Stands for the exception a tool raised in an actor: its type name and message, for the log."""


def failure_of(error: BaseException) -> Failure:
    """The failure as data, so that the front end can raise what the thread executor would."""
    if isinstance(error, PipelineExecutionError):
        return Failure(
            "execution",
            error.code.value,
            error.detail,
            error.log_message,
            (error.pipeline_id, error.node_id, error.plugin_id, error.tool_id),
        )
    if isinstance(error, FrameValidationError):
        return Failure("frame", error.code.value, error.detail, error.log_message)
    if isinstance(error, StreamError):
        return Failure("stream", error.code.value, error.detail, error.log_message)
    return Failure("internal", ErrorCode.INTERNAL_ERROR.value, f"{type(error).__name__}: {error}", repr(error))


def raise_failure(failure: Failure) -> None:
    """Raise in the front end what the same failure raises on the thread executor."""
    if failure.kind == "execution":
        assert failure.where is not None
        pipeline_id, node_id, plugin_id, tool_id = failure.where
        error = PipelineExecutionError(pipeline_id, node_id, plugin_id, tool_id, RemoteToolError(failure.log_message))
        error.log_message = failure.log_message
        raise error
    if failure.kind == "frame":
        raise FrameValidationError(failure.code, failure.detail)
    if failure.kind == "stream":
        raise StreamError(failure.code, failure.detail, log_message=failure.log_message)
    # A bug in a tool's plumbing rather than a tool failure: the thread executor lets it propagate too.
    raise RuntimeError(f"pipeline actor failed: {failure.detail}")


class ExecutorLostError(StreamError):
    """The actor or the cluster running a frame is gone: that frame is a pipeline_failure, the stream goes on."""

    def __init__(self, detail: str, *, log_message: str) -> None:
        super().__init__(ErrorCode.PIPELINE_FAILURE, detail, log_message=log_message)


class RayClusterUnreachable(SettingsError):
    """The configured cluster cannot be reached or cannot host the actors: a configuration error at start-up."""


