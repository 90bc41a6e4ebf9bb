# Generated from asyncapi.yaml by asyncapi-python 0.3.1 (codegen); do not edit by hand.
# Regenerate with `make models` (python -m contracts.generate_models).
# source-sha256: 171754b95f51b6f11bac9b65952280960cc090d93ac40f32a3f2f8b8caaaaa2d

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    RootModel,
    confloat,
    conint,
    constr,
)


class Model(RootModel[Any]):
    root: Any


class VideoFrame(RootModel[bytes]):
    root: bytes = Field(
        ...,
        description="The frame as the codec encoded it (RTP payloads, reassembled by the server).",
    )


class Box(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    x1: float
    y1: float
    x2: float
    y2: float


class Detection(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    label: constr(min_length=1)
    confidence: confloat(ge=0.0, le=1.0)
    box: Box
    text: str | None = None
    area: conint(ge=0) | None = None
    tracker_id: conint(ge=1) | None = Field(
        None,
        description="Added by the tracking plugin's `track` node (pipelines `faces_tracked`, `people_counting`, `yolo_counting`): the id of the detection's track, stable over the stream's frames, dropped frames included, and never shared between streams; ids start at 1 in each stream. `null` while no confirmed track holds the detection (a detection below the tracker's activation confidence, or a new object on its first frame).",
    )


class LineCounts1(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    in_: conint(ge=0) = Field(..., alias="in")
    out: conint(ge=0)


class ZoneCounts1(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    occupancy: conint(ge=0)
    entered: conint(ge=0)


class Cause(Enum):
    LAGGING = "lagging"
    BUFFER_FULL = "buffer_full"
    CLOSING = "closing"
    SHUTDOWN = "shutdown"


class FrameDroppedPayload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    frame_index: conint(ge=0) = Field(
        ...,
        description="Position of the frame in the stream, counted from 0 in arrival order.",
    )
    rtp_timestamp: conint(ge=0, le=4294967295) | None = Field(
        None,
        description="Only on the WebRTC results channel (never on the WebSocket), on results, dropped notices and pipeline_failure: the RTP timestamp (32 bits, 90 kHz clock) the sender gave the video frame this message answers, as it was on the wire, so that a client can match a result or a drop to the frame of its own video. frame_index still counts the frames the server decoded, from 0 in arrival order.",
    )
    dropped: Literal[True]
    cause: Cause = Field(
        ...,
        description="lagging: the pipeline is slower than the client and a newer frame replaced this one. buffer_full: a burst outgrew the waiting buffer and the oldest waiting frame went. closing: the session is ending after an error before the frame could run. shutdown: the server is shutting down before the frame could run.",
    )


class SlowDownWarningPayload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    warning: Literal["slow_down"]
    drop_rate: confloat(ge=0.0, le=1.0) = Field(
        ..., description="Drops / frames received over the last 2000 ms."
    )
    suggested_fps: PositiveFloat | None = Field(
        ...,
        description="The frame rate the pipeline keeps up with, 1000 / (processing_ms × (1 + drop_threshold)); null while no frame has been processed.",
    )
    processing_ms: confloat(ge=0.0) | None = Field(
        ...,
        description="A duration in milliseconds, or null while it is not known yet.",
    )
    interval_ms: confloat(ge=0.0) | None = Field(
        ...,
        description="A duration in milliseconds, or null while it is not known yet.",
    )


class InvalidMessageErrorPayload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    error: Literal["invalid_message"]
    detail: str = Field(
        ...,
        description="A human-readable explanation; never exception text or a stack trace.",
    )
    frame_index: conint(ge=0) | None = Field(
        None,
        description="Position of the frame in the stream, counted from 0 in arrival order.",
    )


class InvalidFrameErrorPayload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    error: Literal["invalid_frame"]
    detail: str = Field(
        ...,
        description="A human-readable explanation; never exception text or a stack trace.",
    )
    frame_index: conint(ge=0) | None = Field(
        None,
        description="Position of the frame in the stream, counted from 0 in arrival order.",
    )


class FrameTooLargeErrorPayload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    error: Literal["frame_too_large"]
    detail: str = Field(
        ...,
        description="A human-readable explanation; never exception text or a stack trace.",
    )
    frame_index: conint(ge=0) | None = Field(
        None,
        description="Position of the frame in the stream, counted from 0 in arrival order.",
    )


class PipelineFailureErrorPayload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    error: Literal["pipeline_failure"]
    detail: str = Field(
        ...,
        description="A human-readable explanation; never exception text or a stack trace.",
    )
    frame_index: conint(ge=0) = Field(
        ...,
        description="Position of the frame in the stream, counted from 0 in arrival order.",
    )
    rtp_timestamp: conint(ge=0, le=4294967295) | None = Field(
        None,
        description="Only on the WebRTC results channel (never on the WebSocket), on results, dropped notices and pipeline_failure: the RTP timestamp (32 bits, 90 kHz clock) the sender gave the video frame this message answers, as it was on the wire, so that a client can match a result or a drop to the frame of its own video. frame_index still counts the frames the server decoded, from 0 in arrival order.",
    )


class InternalErrorPayload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    error: Literal["internal_error"]
    detail: str = Field(
        ...,
        description="A human-readable explanation; never exception text or a stack trace.",
    )
    frame_index: conint(ge=0) | None = Field(
        None,
        description="Position of the frame in the stream, counted from 0 in arrival order.",
    )


class InvalidPipelineErrorPayload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    error: Literal["invalid_pipeline"]
    detail: str = Field(
        ...,
        description="A human-readable explanation; never exception text or a stack trace.",
    )
    frame_index: conint(ge=0) | None = Field(
        None,
        description="Position of the frame in the stream, counted from 0 in arrival order.",
    )


class ServerBusyErrorPayload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    error: Literal["server_busy"]
    detail: str = Field(
        ...,
        description="A human-readable explanation; never exception text or a stack trace.",
    )
    frame_index: conint(ge=0) | None = Field(
        None,
        description="Position of the frame in the stream, counted from 0 in arrival order.",
    )


class UnauthorizedErrorPayload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    error: Literal["unauthorized"]
    detail: str = Field(
        ...,
        description="A human-readable explanation; never exception text or a stack trace.",
    )
    frame_index: conint(ge=0) | None = Field(
        None,
        description="Position of the frame in the stream, counted from 0 in arrival order.",
    )


class ShuttingDownErrorPayload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    error: Literal["shutting_down"]
    detail: str = Field(
        ...,
        description="A human-readable explanation; never exception text or a stack trace.",
    )
    frame_index: conint(ge=0) | None = Field(
        None,
        description="Position of the frame in the stream, counted from 0 in arrival order.",
    )


class IdleTimeoutErrorPayload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    error: Literal["idle_timeout"]
    detail: str = Field(
        ...,
        description="A human-readable explanation; never exception text or a stack trace.",
    )
    frame_index: conint(ge=0) | None = Field(
        None,
        description="Position of the frame in the stream, counted from 0 in arrival order.",
    )


class VideoTrackFrame(RootModel[bytes]):
    root: bytes = Field(
        ...,
        description="The frame as the codec encoded it (RTP payloads, reassembled by the server).",
    )


class FrameDropped(RootModel[FrameDroppedPayload]):
    root: FrameDroppedPayload


class SlowDownWarning(RootModel[SlowDownWarningPayload]):
    root: SlowDownWarningPayload


class InvalidMessageError(RootModel[InvalidMessageErrorPayload]):
    root: InvalidMessageErrorPayload


class FrameTooLargeError(RootModel[FrameTooLargeErrorPayload]):
    root: FrameTooLargeErrorPayload


class PipelineFailureError(RootModel[PipelineFailureErrorPayload]):
    root: PipelineFailureErrorPayload


class InternalError(RootModel[InternalErrorPayload]):
    root: InternalErrorPayload


class ShuttingDownError(RootModel[ShuttingDownErrorPayload]):
    root: ShuttingDownErrorPayload


class IdleTimeoutError(RootModel[IdleTimeoutErrorPayload]):
    root: IdleTimeoutErrorPayload


class Frame(RootModel[bytes]):
    root: bytes = Field(
        ...,
        description="One complete JPEG image (FF D8 ... FF D9) sent as a binary WebSocket message, at most FORGESYTE_STREAM_MAX_FRAME_BYTES bytes (default 5242880).",
        json_schema_extra={"contentMediaType": "image/jpeg"},
    )


class InvalidFrameError(RootModel[InvalidFrameErrorPayload]):
    root: InvalidFrameErrorPayload


class InvalidPipelineError(RootModel[InvalidPipelineErrorPayload]):
    root: InvalidPipelineErrorPayload


class ServerBusyError(RootModel[ServerBusyErrorPayload]):
    root: ServerBusyErrorPayload


class UnauthorizedError(RootModel[UnauthorizedErrorPayload]):
    root: UnauthorizedErrorPayload


class Result(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    line_counts: dict[str, LineCounts1] | None = None
    zone_counts: dict[str, ZoneCounts1] | None = None
    carried: bool | None = Field(
        None,
        description="Only from a pipeline with gated nodes whose output is in the result: true when the gated nodes did not run on this frame (their gate saw no change) and their last output stands for it, tracked boxes moved by the tracker's motion model and counts unchanged; false when they ran on this frame (a fresh detection).",
    )
    carried_frames: conint(ge=0) | None = Field(
        None,
        description="With `carried`: how many frames ago the gated nodes last ran (0 for a fresh detection). Bounded by the gate's `max_skip` (30 in the shipped pipelines).",
    )


class FrameResultPayload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    frame_index: conint(ge=0) = Field(
        ...,
        description="Position of the frame in the stream, counted from 0 in arrival order.",
    )
    rtp_timestamp: conint(ge=0, le=4294967295) | None = Field(
        None,
        description="Only on the WebRTC results channel (never on the WebSocket), on results, dropped notices and pipeline_failure: the RTP timestamp (32 bits, 90 kHz clock) the sender gave the video frame this message answers, as it was on the wire, so that a client can match a result or a drop to the frame of its own video. frame_index still counts the frames the server decoded, from 0 in arrival order.",
    )
    result: Result = Field(
        ...,
        description="The pipeline's output for the frame, JSON values only. Its keys are defined by the pipeline; detections inside it have the shape of #/components/schemas/Detection. Pipelines with tracking analytics add `line_counts` and `zone_counts`. Pipelines with gated nodes (docs/gating.md: `faces_gated`, `people_counting_gated`) add `carried` and `carried_frames`.",
    )


class FrameResult(RootModel[FrameResultPayload]):
    root: FrameResultPayload


__all__ = [
    "Model",
    "VideoFrame",
    "Box",
    "Detection",
    "LineCounts1",
    "ZoneCounts1",
    "Cause",
    "FrameDroppedPayload",
    "SlowDownWarningPayload",
    "InvalidMessageErrorPayload",
    "InvalidFrameErrorPayload",
    "FrameTooLargeErrorPayload",
    "PipelineFailureErrorPayload",
    "InternalErrorPayload",
    "InvalidPipelineErrorPayload",
    "ServerBusyErrorPayload",
    "UnauthorizedErrorPayload",
    "ShuttingDownErrorPayload",
    "IdleTimeoutErrorPayload",
    "VideoTrackFrame",
    "FrameDropped",
    "SlowDownWarning",
    "InvalidMessageError",
    "FrameTooLargeError",
    "PipelineFailureError",
    "InternalError",
    "ShuttingDownError",
    "IdleTimeoutError",
    "Frame",
    "InvalidFrameError",
    "InvalidPipelineError",
    "ServerBusyError",
    "UnauthorizedError",
    "Result",
    "FrameResultPayload",
    "FrameResult",
]
