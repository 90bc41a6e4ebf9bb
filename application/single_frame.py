"""One frame outside any stream (POST /v1/pipelines/{id}/frames): the stream's checks, executor and timeout."""

from __future__ import annotations


from application.errors import JobTimedOut, FrameTimeoutError, PipelineExecutionError
from application.ports import FrameExecutor, FrameJob, FrameReply, StreamObserver
from application.frame_service import FramePipelineService
from domain import validate_jpeg


class SingleFrameService:
    """Runs one-off frames; their failures reach the observer port like a stream's."""

    def __init__(
        self,
        frames: FramePipelineService,
        executor: FrameExecutor,
        observer: StreamObserver,
        *,
        frame_timeout_s: float,
        max_frame_bytes: int,
    ) -> None:
        self._frames = frames
        self._executor = executor
        self._observer = observer
        self._frame_timeout_s = frame_timeout_s
        self._max_frame_bytes = max_frame_bytes

    def check_pipeline(self, pipeline_id: str) -> None:
        self._frames.check_pipeline(pipeline_id)

    async def run(self, pipeline_id: str, frame_bytes: bytes, frame_index: int = 0) -> FrameReply:
        """The frame's reply; raises the StreamError the client is told."""
        self.check_pipeline(pipeline_id)
        validate_jpeg(frame_bytes, self._max_frame_bytes)
        job = FrameJob(pipeline_id, frame_index, frame_bytes, None, True)
        try:
            if self._executor.runs_inline(pipeline_id):
                return self._executor.run_inline(job)
            return await self._executor.run(job, timeout_s=self._frame_timeout_s)
        except JobTimedOut as timed_out:
            failure = FrameTimeoutError(pipeline_id, frame_index, self._frame_timeout_s)
            self._observer.single_frame_failed(pipeline_id, frame_index, timed_out, code=failure.code)
            raise failure from None
        except PipelineExecutionError as error:
            self._observer.single_frame_failed(pipeline_id, frame_index, error, code=error.code)
            raise
