"""The frame use cases every entry uses: check a pipeline id, run one frame (a stream's, an HTTP request's, an executor's)."""

from __future__ import annotations

from typing import Any

from application.errors import PipelineUnavailableError
from application.pipeline import DagPipelineService
from application.ports import Availability, FrameJob, FrameReply
from domain import DEFAULT_MAX_FRAME_BYTES, ErrorCode, StreamError, validate_jpeg


class FramePipelineService:
    """The pipelines as the stream, the HTTP endpoint and the executors use them, one frame at a time.

    `is_valid_pipeline` and `run_on_frame` are the user stories' names; the
    stories put them on VideoFilePipelineService, which extends this with
    `run_on_file`.
    """

    def __init__(
        self,
        pipelines: DagPipelineService,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self._pipelines = pipelines
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
        return self.run_job(FrameJob(pipeline_id, frame_index, bytes(frame_bytes), stream_id, markers_checked)).to_json()

    def run_job(self, job: FrameJob) -> FrameReply:
        """Run one frame's job as an executor received it: the job whole, its reply typed."""
        if not job.markers_checked:
            validate_jpeg(job.jpeg, self.max_frame_bytes)
        result = self._pipelines.run_job(job)
        return FrameReply(job.frame_index, result)

    def open_stream(self, stream_id: str) -> None:
        self._pipelines.open_stream(stream_id)

    def release_stream(self, stream_id: str) -> None:
        self._pipelines.release_stream(stream_id)
