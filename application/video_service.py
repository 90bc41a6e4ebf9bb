"""The video use cases: check a pipeline id, run one frame, run a video file."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from application.errors import PipelineUnavailableError
from application.pipeline import DagPipelineService
from application.ports import Availability, VideoReader
from domain import DEFAULT_MAX_FRAME_BYTES, ErrorCode, StreamError, validate_jpeg


class VideoFilePipelineService:
    """The pipelines as the stream, the HTTP endpoint and the run-file command use them.

    The name and the methods `is_valid_pipeline` and `run_on_frame` are the
    ones the user stories give.
    """

    def __init__(
        self,
        pipelines: DagPipelineService,
        video_reader: VideoReader | None = None,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self._pipelines = pipelines
        self._video_reader = video_reader
        self.max_frame_bytes = max_frame_bytes

    def is_valid_pipeline(self, pipeline_id: str | None) -> bool:
        """True when the id names a known pipeline whose plugins can run now (`pipeline_error` says why not)."""
        return self.pipeline_error(pipeline_id) is None

    def pipeline_error(self, pipeline_id: str | None) -> StreamError | None:
        """The one pipeline check the stream and the HTTP API use: the error that tells the client what is wrong, if anything."""
        if not pipeline_id:
            return StreamError(
                ErrorCode.INVALID_PIPELINE,
                f"query parameter pipeline_id is required; expected one of {sorted(self._pipelines.pipeline_ids())}",
            )
        try:
            status = self.pipeline_availability(pipeline_id)
        except StreamError as unknown:
            return unknown
        if not status.available:
            return PipelineUnavailableError(pipeline_id, status.reason or "unavailable")
        return None

    def check_pipeline(self, pipeline_id: str | None) -> None:
        """Raise `pipeline_error`'s error, if any."""
        error = self.pipeline_error(pipeline_id)
        if error is not None:
            raise error

    def runs_inline(self, pipeline_id: str) -> bool:
        return self._pipelines.runs_inline(pipeline_id)

    def pipeline_availability(self, pipeline_id: str) -> Availability:
        return self._pipelines.availability(pipeline_id)

    def run_on_frame(
        self,
        pipeline_id: str,
        frame_index: int,
        frame_bytes: bytes,
        *,
        stream_id: str | None = None,
        markers_checked: bool = False,
    ) -> dict[str, Any]:
        """Run one JPEG through the pipeline, in the payload format pipelines expect: `{"frame_index", "result"}`.

        The markers are validated here unless the caller already did (a
        stream validates each frame as it arrives). Blocking unless the
        pipeline runs inline: call it from a worker thread.
        """
        if not markers_checked:
            validate_jpeg(frame_bytes, self.max_frame_bytes)
        payload = {"frame_index": frame_index, "image_bytes": bytes(frame_bytes)}
        result = self._pipelines.run_pipeline(pipeline_id, payload, stream_id=stream_id)
        return {"frame_index": frame_index, "result": result}

    def open_stream(self, stream_id: str) -> None:
        self._pipelines.open_stream(stream_id)

    def release_stream(self, stream_id: str) -> None:
        self._pipelines.release_stream(stream_id)

    def run_on_file(
        self, path: str, pipeline_id: str, frame_stride: int = 1, max_frames: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Run every `frame_stride`-th frame of a video file, as one stream, yielding one result each.

        Frame indices are the frames' positions in the file, so results can be
        matched to timestamps. Stateful tools (motion) see the frames as one stream.
        """
        if self._video_reader is None:
            raise RuntimeError("no video reader is configured")
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be at least 1, got {frame_stride}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be at least 1 or None, got {max_frames}")
        self.check_pipeline(pipeline_id)
        stream_id = f"file:{uuid.uuid4()}"
        self.open_stream(stream_id)
        try:
            for frame_number, jpeg in self._video_reader.frames(path, frame_stride=frame_stride, max_frames=max_frames):
                yield self.run_on_frame(pipeline_id, frame_number, jpeg, stream_id=stream_id)
        finally:
            self.release_stream(stream_id)
