"""Frames a transport decoded (a WebRTC track's), through the stream protocol and the pipeline engine: events in, decisions out.

No sockets and no sleeps: the protocol is fed PICTURE events with a fake clock,
the engine runs a job that carries a picture instead of a JPEG.
"""

from __future__ import annotations

import pickle
from typing import Any

import av
import numpy as np

from adapters.media.pictures import ArrayPicture, I420Picture, VideoFramePicture
from application.errors import PipelineExecutionError
from application.ports import FrameJob, FrameReply, Inbound, InboundKind
from domain import BackpressurePolicy, Frame
from tests.unit.test_stream_protocol import protocol, sent, started


class Picture:
    """A decoded picture as the port describes it: its size, its wire cost, its RTP timestamp, its pixels on demand."""

    def __init__(self, rtp_timestamp: int, width: int = 64, height: int = 48) -> None:
        self.width, self.height = width, height
        self.nbytes = 1234
        self.rtp_timestamp = rtp_timestamp
        self.converted: list[int] = []

    def image(self, reduction: int = 1) -> Any:
        self.converted.append(reduction)
        return np.zeros((-(-self.height // reduction), -(-self.width // reduction), 3), np.uint8)


def picture_event(rtp_timestamp: int) -> Inbound:
    return Inbound(InboundKind.PICTURE, Picture(rtp_timestamp))


def test_a_decoded_frame_is_admitted_and_its_result_carries_its_rtp_timestamp() -> None:
    stream, clock, observer = protocol()
    start = started(stream.message_received(picture_event(9000)))
    picture = stream.picture_of(start)
    assert isinstance(picture, Picture) and picture.rtp_timestamp == 9000
    clock.now += 10
    stream.frame_finished(start, FrameReply(start.index, {"ok": True}))
    assert sent(stream) == [{"frame_index": 0, "result": {"ok": True}, "rtp_timestamp": 9000}]
    assert ("frame_received", 0, 1234) in [event[:3] for event in observer.reports], "counted at its encoded size"
    assert stream.picture_of(start) is None, "the picture is let go once the frame is answered"


def test_frames_displaced_under_overload_are_dropped_with_their_own_rtp_timestamps() -> None:
    stream, clock, _ = protocol(BackpressurePolicy(buffer_capacity=1))
    first = started(stream.message_received(picture_event(0)))
    clock.now += 1000
    stream.frame_finished(first, FrameReply(0, {}))
    second = started(stream.message_received(picture_event(3000)))
    for number in range(2, 6):
        clock.now += 33
        assert stream.message_received(picture_event(3000 * number)) is None
    messages = sent(stream)
    dropped = [m for m in messages if m.get("dropped")]
    assert dropped and all(m["rtp_timestamp"] == 3000 * m["frame_index"] for m in dropped)
    assert len(stream._pictures) == 2, "only the frame in flight and the one waiting keep a picture"
    assert second.index == 1


def test_a_failed_decoded_frame_gets_pipeline_failure_with_its_rtp_timestamp() -> None:
    stream, _, _ = protocol()
    start = started(stream.message_received(picture_event(42)))
    stream.frame_failed(start, PipelineExecutionError("p", "n", "plugin", "tool", RuntimeError("boom")))
    (message,) = sent(stream)
    assert message["error"] == "pipeline_failure" and message["rtp_timestamp"] == 42 and message["frame_index"] == 0


def test_frames_arriving_while_the_session_ends_are_dropped_with_cause_and_timestamp() -> None:
    stream, _, _ = protocol()
    start = started(stream.message_received(picture_event(1)))
    stream.stop_requested()
    stream.message_received(picture_event(2))
    stream.frame_finished(start, FrameReply(0, {}))
    stream.closing_messages()
    messages = sent(stream)
    assert {"frame_index": 1, "dropped": True, "cause": "shutdown", "rtp_timestamp": 2} in messages
    assert messages[-1]["error"] == "shutting_down"
    stream.session_ended()
    assert stream._pictures == {}


def test_a_jpeg_frame_has_no_picture_and_no_rtp_timestamp() -> None:
    from tests.unit.test_stream_protocol import frame

    stream, _, _ = protocol()
    start = started(stream.message_received(frame()))
    assert stream.picture_of(start) is None
    stream.frame_finished(start, FrameReply(0, {}))
    assert sent(stream) == [{"frame_index": 0, "result": {}}]


def test_the_engine_runs_a_decoded_frame_without_a_jpeg_at_the_pipelines_reduction() -> None:
    from tests.support.fakes import CountingDecoder
    from tests.unit.dag_support import FakePlugin, definition, service

    def sized(inputs: Any, context: Any) -> dict[str, Any]:
        image = context.image()
        return {"shape": list(image.shape), "size": list(context.frame_size), "reduction": context.image_reduction}

    sized.max_input_side = 32  # type: ignore[attr-defined]
    decoder = CountingDecoder()
    engine = service([definition("single", [("n", "t", "sized")], entry=["n"], output=["n"])], [FakePlugin("t", {"sized": sized})], decoder=decoder)
    picture = Picture(7, width=128, height=96)
    result = engine.run_job(FrameJob("single", 3, b"", None, True, picture))
    assert result == {"shape": [24, 32, 3], "size": [128, 96], "reduction": 4}
    assert picture.converted == [4], "converted once, at the reduction the tools need"
    assert decoder.calls == 0, "no JPEG decode"


def _video_frame(width: int, height: int) -> av.VideoFrame:
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return av.VideoFrame.from_ndarray(pixels, format="bgr24").reformat(format="yuv420p")


def test_a_video_frame_picture_converts_on_demand_and_travels_to_another_process_as_pixels() -> None:
    picture = VideoFramePicture(_video_frame(64, 48), 123, 456)
    assert (picture.width, picture.height, picture.rtp_timestamp, picture.nbytes) == (64, 48, 123, 456)
    assert picture.image(1).shape == (48, 64, 3)
    assert picture.image(4).shape == (12, 16, 3)
    shipped = pickle.dumps(picture)
    assert len(shipped) < 64 * 48 * 1.5 + 500, "its I420 planes travel, not BGR pixels"
    copy = pickle.loads(shipped)
    assert isinstance(copy, I420Picture)
    assert (copy.width, copy.height, copy.rtp_timestamp, copy.nbytes) == (64, 48, 123, 456)
    assert np.abs(copy.image(1).astype(int) - picture.image(1).astype(int)).max() <= 3, "the same conversion, within rounding"
    assert copy.image(2).shape == (24, 32, 3)
    odd = pickle.loads(pickle.dumps(VideoFramePicture(_video_frame(64, 48).reformat(format="rgb24"), 1, 2)))
    assert isinstance(odd, ArrayPicture) and odd.image(1).shape == (48, 64, 3)


def test_frame_objects_for_decoded_frames_hold_no_bytes() -> None:
    stream, _, _ = protocol()
    start = started(stream.message_received(picture_event(5)))
    assert isinstance(start, Frame) and start.data == b""


def test_a_decoded_frame_over_the_pixel_limit_ends_the_session_with_frame_too_large_on_arrival() -> None:
    from application.protocol import StreamProtocol
    from domain import Session, SessionState
    from tests.support.fakes import Clock, RecordingObserver

    session = Session(pipeline_id="p", policy=BackpressurePolicy(), clock=Clock())
    session.transition(SessionState.OPEN)
    stream = StreamProtocol(
        session, RecordingObserver(), frame_timeout_s=2.0, max_frame_bytes=1000, idle_timeout_s=60.0, max_frame_pixels=64 * 48 - 1  # type: ignore[arg-type]
    )
    assert stream.message_received(picture_event(1)) is None
    assert stream._pictures == {}, "never kept"
    stream.closing_messages()
    (message,) = [m for m in sent(stream) if "error" in m]
    assert message["error"] == "frame_too_large" and message["frame_index"] == 0 and "64x48" in message["detail"]
