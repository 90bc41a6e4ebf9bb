"""The video-file use case: a file's frames through a pipeline as one stream."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from application.frame_service import FramePipelineService
from application.pipeline import DagPipelineService
from application.ports import VideoReader
from domain import DEFAULT_MAX_FRAME_BYTES


class VideoFilePipelineService(FramePipelineService):
    """The user stories' service: the frame use cases plus `run_on_file` (the run-file command)."""

    def __init__(
        self,
        pipelines: DagPipelineService,
        video_reader: VideoReader | None = None,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        super().__init__(pipelines, max_frame_bytes=max_frame_bytes)
        self._video_reader = video_reader

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
