"""The ports the application drives; adapters implement them.

Each is a typing.Protocol so that an adapter needs no import from here to fit,
and the application tests can pass plain fakes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, Protocol, runtime_checkable

from domain import DropCause, ErrorCode, JpegInfo, PipelineDefinition, Session


# Pipeline tools -------------------------------------------------------------


class ToolContext(Protocol):
    """What a tool sees of the frame besides its inputs."""

    @property
    def frame_index(self) -> int: ...

    @property
    def image_bytes(self) -> bytes: ...

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) the frame declares in its JPEG header: the space results are reported in."""
        ...

    @property
    def jpeg_info(self) -> JpegInfo:
        """The frame's JPEG header, read once per run by the engine: a tool need not parse it again."""
        ...

    @property
    def image_reduction(self) -> int:
        """The frame was decoded at 1/image_reduction of its size (1, 2, 4 or 8); see Tool.max_input_side."""
        ...

    @property
    def pipeline_id(self) -> str:
        """The pipeline being run, from the catalogue: a bounded label for what a tool reports (analytics metrics)."""
        ...

    @property
    def node_id(self) -> str:
        """This node's id in the pipeline graph."""
        ...

    def image(self) -> Any:
        """The decoded image, decoded at most once per pipeline run whichever node asks first.

        It may be reduced (see image_reduction) when every tool of the pipeline
        declared that it needs less than the full frame.
        """
        ...

    def state(self) -> dict[str, Any]:
        """Mutable state kept for this node across the frames of one stream (empty for one-off frames).

        Values with a close() are closed when the stream is released, and at the
        end of the run for a one-off frame's throw-away state.
        """
        ...


class Tool(Protocol):
    """One step of a pipeline.

    A tool may set the attribute `runs_inline = True` to promise work bounded by
    the JPEG header: no decode, no model, no I/O, a few microseconds. A pipeline
    made only of such tools runs on the event loop, because handing it to a
    worker thread (two thread wake-ups, about 100 us here) costs far more than
    the work. Anything that decodes or runs a model must not set it.

    A tool may set `max_input_side` to the longest image side it works on: an
    int, or a callable taking the node's params and returning one (read once at
    start-up). When every decoding tool of a pipeline declares it, frames are
    decoded at the largest JPEG reduction (1/2, 1/4, 1/8) whose longer side is
    still at least the largest declared side, and such a tool must report
    coordinates in the frame's own pixels (context.frame_size), scaling back by
    context.image_reduction. A tool that declares nothing gets the full frame.

    A tool that never calls context.image() (it works on its predecessors'
    outputs, in context.frame_size coordinates) sets `reads_image = False`, so
    that it puts no demand on how far the frame is decoded.

    A tool whose outputs are always a new dict made only of dict, list, str,
    int, finite float, bool and None may set `returns_json = True`: when every
    output node of a pipeline promises it, the result is sent as the tools
    made it, without the copy that otherwise converts or refuses anything
    JSON cannot carry (numpy scalars, arrays, NaN).

    Gates (application.gating): a tool whose output may gate other nodes
    declares the keys it outputs in `outputs` (a tuple of names), so that a
    pipeline file naming another key stops start-up. A gated node's tool may
    offer `carry(last_output, context, frames)`, the output to stand for a
    frame it does not run on, `frames` after its last run (a tracker moves its
    boxes by its motion model); without it the last output is carried as it
    was. It may offer `refresh_due(context) -> bool`, true when its own state
    says the next frame must run (a tracker that has lost a track).
    """

    def __call__(self, inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]: ...


def runs_inline(tool: Tool) -> bool:
    return getattr(tool, "runs_inline", False) is True


def returns_json(tool: Tool) -> bool:
    return getattr(tool, "returns_json", False) is True


def reads_image(tool: Tool) -> bool:
    return getattr(tool, "reads_image", True) is not False


def declared_outputs(tool: Tool) -> tuple[str, ...] | None:
    """The output keys a tool declares (see Tool: gates), or None when it declares none."""
    declared = getattr(tool, "outputs", None)
    return None if declared is None else tuple(declared)


def max_input_side(tool: Tool, params: Mapping[str, Any]) -> int | None:
    """The longest image side the tool works on with these node params; None when it needs the full frame.

    Raises ValueError when the declaration (or a parameter it reads) is unusable.
    """
    declared = getattr(tool, "max_input_side", None)
    if declared is None:
        return None
    value = declared(params) if callable(declared) else declared
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_input_side must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Availability:
    available: bool
    reason: str | None = None


class Plugin(Protocol):
    """A named set of tools; a plugin may be unavailable (say, a model not configured), with its reason."""

    @property
    def plugin_id(self) -> str: ...

    def tools(self) -> Mapping[str, Tool]: ...

    def availability(self) -> Availability: ...


class ImageDecoder(Protocol):
    def decode(self, image_bytes: bytes, reduction: int = 1) -> Any:
        """Decode a JPEG at 1/reduction of its size (1, 2, 4 or 8) into an H x W x 3 image.

        Raise domain.FrameValidationError(invalid_frame) when it does not decode.
        """
        ...

    def memory_needed(self, info: JpegInfo, reduction: int) -> int:
        """Bytes that decoding this frame at 1/reduction holds at most: what the decode budget charges."""
        ...


class DecodeBudget(Protocol):
    """A process-wide cap on the bytes decoded frames hold while their pipelines run."""

    def acquire(self, nbytes: int) -> None:
        """Wait until `nbytes` fit; raise a StreamError when they never can or the wait runs out."""
        ...

    def release(self, nbytes: int) -> None: ...


class VideoReader(Protocol):
    def frames(self, path: str, *, frame_stride: int, max_frames: int | None) -> Iterator[tuple[int, bytes]]:
        """Yield (frame number in the file, JPEG bytes); raise application.errors.VideoReadError when the file cannot be read."""
        ...


class PipelineCatalog(Protocol):
    def get(self, pipeline_id: str) -> PipelineDefinition:
        """The definition for this id; KeyError when unknown."""
        ...

    def ids(self) -> list[str]: ...

    def source(self, pipeline_id: str) -> str:
        """Where the definition came from (a file path), so that start-up errors can name it."""
        ...


# Execution ------------------------------------------------------------------


@runtime_checkable
class DecodedPicture(Protocol):
    """A frame the transport has decoded itself: a WebRTC track's, which only its own decoder can read.

    Inter-frame codecs (H.264, VP8) must decode every frame in order, so the
    transport decodes and the pipeline gets the picture as it is, without a
    JPEG round trip. `image(reduction)` converts it for the tools (BGR,
    H x W x 3, at 1/reduction of its size); the conversion is the frame's
    work, so it runs where the pipeline runs and never for a dropped frame.
    `nbytes`: what the frame cost on the wire (its encoded size), for the
    byte counters. `rtp_timestamp`: the sender's RTP timestamp of the frame,
    which the client's replies carry so that it can match them to its video.
    """

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    @property
    def rtp_timestamp(self) -> int | None: ...

    def image(self, reduction: int = 1) -> Any: ...


class FrameJob(NamedTuple):
    """One frame's work as data, so that an executor can run it anywhere (a thread here, another process elsewhere).

    `stream_id` names the per-stream tool state the run uses (None for a
    one-off frame); `markers_checked` says the JPEG markers were already
    validated where the frame arrived. `picture`: a frame the transport
    decoded (then `jpeg` is empty): the decoded-frame job.
    """

    pipeline_id: str
    frame_index: int
    jpeg: bytes
    stream_id: str | None = None
    markers_checked: bool = False
    picture: DecodedPicture | None = None


class FrameReply(NamedTuple):
    """What a frame's work returns, wherever it ran: the frame's index and the pipeline's JSON-ready outputs.

    `to_json()` is the reply's wire form (`{"frame_index", "result"}`), the
    payload format the user stories give `run_on_frame`.
    """

    frame_index: int
    result: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"frame_index": self.frame_index, "result": self.result}


class FrameExecutor(Protocol):
    """Runs frames' pipelines off the event loop and owns the per-stream tool state they use.

    `run` returns the pipeline's result or raises: the pipeline's own errors
    (application.errors), JobTimedOut when `timeout_s` passes (work not
    started never runs), JobStillRunning when the work cannot be stopped,
    JobGivenUp when `give_up` completes first.
    """

    def runs_inline(self, pipeline_id: str) -> bool:
        """Whether the pipeline's work is bounded by the JPEG header, so it runs on the caller's thread (`run_inline`)."""
        ...

    def run_inline(self, job: FrameJob) -> FrameReply: ...

    async def run(self, job: FrameJob, *, timeout_s: float, give_up: Awaitable[object] | None = None) -> FrameReply: ...

    def open_stream(self, stream_id: str) -> None: ...

    def release_stream(self, stream_id: str) -> None:
        """Release the stream's tool state once no run uses it any more."""
        ...

    def busy_workers(self) -> int: ...

    def health(self) -> dict[str, Any]:
        """What /health shows of the executor: its kind and its state (threads, or a cluster's actors)."""
        ...

    def shutdown(self) -> None: ...


# Transport ------------------------------------------------------------------


class InboundKind(StrEnum):
    BINARY = "binary"
    TEXT = "text"
    DISCONNECT = "disconnect"
    # A frame the transport decoded (a DecodedPicture): a media track's, not a message's.
    PICTURE = "picture"


class Inbound(NamedTuple):
    """One event from the transport (a named tuple: one is made for every message)."""

    kind: InboundKind
    data: bytes | str | DecodedPicture | None = None
    close_code: int | None = None


class ConnectionClosed(Exception):
    """The peer is gone: sending to or receiving from it is no longer possible."""


class SendTimedOut(ConnectionClosed):
    """The peer took no data for longer than the send timeout; the transport has cut the connection.

    A client that stops reading would otherwise hold its session, and the
    replies queued for it, for as long as the TCP connection lasts.
    """


class Transport(Protocol):
    """One accepted client connection, whatever the wire protocol."""

    @property
    def client(self) -> str: ...

    async def receive(self) -> Inbound: ...

    async def send_json(self, message: Mapping[str, Any]) -> None:
        """Send one JSON message; raise ConnectionClosed when the peer is gone."""
        ...

    async def close(self, code: int, reason: str = "") -> None: ...

    def attach_session(self, session: Session) -> None:
        """Expose the session to the transport's own state (websocket.state.session for Litestar)."""
        ...


# Observation ----------------------------------------------------------------


class StreamObserver(Protocol):
    """Events the stream reports; the logging and metrics adapters listen.

    Implementations must not raise: observation never changes what a client receives.
    """

    def session_opened(self, session: Session, client: str) -> None: ...

    def session_closed(self, session: Session, client: str, close_code: int, reason: str) -> None: ...

    def session_rejected(self, pipeline_id: str | None, client: str, code: ErrorCode, detail: str) -> None: ...

    def frame_received(self, session: Session, frame_index: int, size: int) -> None: ...

    def frame_dropped(self, session: Session, frame_index: int, cause: DropCause) -> None: ...

    def frame_processed(self, session: Session, frame_index: int, *, queue_ms: float, processing_ms: float, latency_ms: float) -> None: ...

    def frame_failed(self, session: Session, frame_index: int, error: Exception, *, code: ErrorCode) -> None: ...

    def slowdown_sent(self, session: Session, drop_rate: float, suggested_fps: float | None) -> None: ...

    def error_sent(self, session: Session | None, code: ErrorCode) -> None: ...

    def single_frame_failed(self, pipeline_id: str, frame_index: int, error: Exception, *, code: ErrorCode) -> None:
        """A frame sent outside any stream (POST /v1/pipelines/{id}/frames) failed in its pipeline or timed out."""
        ...


@runtime_checkable
class PipelineObserver(Protocol):
    """The pipelines' reports. An observer may also offer `image_decoded(pipeline_id, duration_ms)`,
    called where a node's first context.image() decoded the frame (the tracing adapter's decode span);
    it is optional, so the engine asks for it once and observers without it pay nothing.
    """

    def node_finished(self, pipeline_id: str, node_id: str, duration_ms: float, *, failed: bool) -> None: ...

    def node_skipped(self, pipeline_id: str, node_id: str) -> None:
        """A gated node did not run on a frame: its output was carried (application.gating)."""
        ...

    def pipeline_finished(self, pipeline_id: str, duration_ms: float, *, failed: bool) -> None: ...
