"""The core of ForgeSyte Stream: frames, sessions, backpressure and pipeline graphs.

Nothing here performs I/O or imports anything outside the standard library, so
the same rules hold whichever transport, pipeline engine or metrics backend the
adapters plug in.
"""

from domain.backpressure import BackpressurePolicy, BackpressureState, DropCause
from domain.errors import CLOSE_CODE_FOR_ERROR, CloseCode, ErrorCode, StreamError
from domain.frame import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_FRAME_PIXELS,
    JPEG_REDUCTIONS,
    Frame,
    FrameValidationError,
    JpegInfo,
    check_frame_pixels,
    jpeg_reduction,
    read_jpeg_info,
    validate_jpeg,
)
from domain.pipeline import (
    PipelineDefinition,
    PipelineEdge,
    DEFAULT_GATE_MAX_SKIP,
    NodeGate,
    PipelineNode,
    PipelineValidationError,
)
from domain.session import Session, SessionState

__all__ = [
    "BackpressurePolicy",
    "BackpressureState",
    "CLOSE_CODE_FOR_ERROR",
    "CloseCode",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_FRAME_PIXELS",
    "JPEG_REDUCTIONS",
    "DropCause",
    "ErrorCode",
    "Frame",
    "FrameValidationError",
    "JpegInfo",
    "PipelineDefinition",
    "PipelineEdge",
    "DEFAULT_GATE_MAX_SKIP",
    "NodeGate",
    "PipelineNode",
    "PipelineValidationError",
    "Session",
    "SessionState",
    "StreamError",
    "check_frame_pixels",
    "jpeg_reduction",
    "read_jpeg_info",
    "validate_jpeg",
]
