"""VideoFilePipelineService over a real DagPipelineService, with a fake plugin and a fake video reader."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from application.errors import PipelineUnavailableError, UnknownPipelineError
from application.pipeline import DagPipelineService
from application.stream_state import StreamStateStore
from application.ports import Availability, ToolContext
from application.video_service import VideoFilePipelineService
from domain import ErrorCode, FrameValidationError, PipelineDefinition, PipelineNode, StreamError
from contracts.fault_plugin import UnavailablePlugin
from tests.support.catalog import DictCatalog
from tests.support.fakes import CountingDecoder
from tests.support.media import jpeg


class Closeable:
    def __init__(self, log: list[str]) -> None:
        self._log = log

    def close(self) -> None:
        self._log.append("closed")


class CapturingPlugin:
    """Records every call's inputs and context; keeps a per-stream counter and a closeable in state."""

    plugin_id = "cap"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.closed: list[str] = []

    def tools(self) -> Mapping[str, Any]:
        return {"capture": self.capture}

    def availability(self) -> Availability:
        return Availability(True)

    def capture(self, inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        state = context.state()
        state["seen"] = state.get("seen", 0) + 1
        state.setdefault("resource", Closeable(self.closed))
        self.calls.append({"inputs": dict(inputs), "frame_index": context.frame_index})
        return {"seen": state["seen"], "size": len(inputs["image_bytes"])}


class FakeVideoReader:
    def __init__(self, frames: list[tuple[int, bytes]]) -> None:
        self._frames = frames
        self.requests: list[tuple[str, int, int | None]] = []
        self.yielded = 0

    def frames(self, path: str, *, frame_stride: int, max_frames: int | None) -> Iterator[tuple[int, bytes]]:
        self.requests.append((path, frame_stride, max_frames))
        for item in self._frames:
            self.yielded += 1
            yield item


def one_node(pipeline_id: str, plugin_id: str, tool_id: str) -> PipelineDefinition:
    return PipelineDefinition.build(
        id=pipeline_id,
        name=pipeline_id,
        nodes=[PipelineNode("n", plugin_id, tool_id)],
        edges=[],
        entry_nodes=["n"],
        output_nodes=["n"],
    )


FRAMES = [(0, jpeg(seed=1)), (3, jpeg(seed=2)), (6, jpeg(seed=3))]


@pytest.fixture
def world() -> dict[str, Any]:
    plugin = CapturingPlugin()
    store = StreamStateStore()
    decoder = CountingDecoder(bytes_needed=0)
    pipelines = DagPipelineService(
        DictCatalog(one_node("cap", "cap", "capture"), one_node("off", "offline", "noop")),
        {"cap": plugin, "offline": UnavailablePlugin()},
        decoder,
        store,
    )
    reader = FakeVideoReader(FRAMES)
    return {
        "plugin": plugin,
        "store": store,
        "decoder": decoder,
        "reader": reader,
        "service": VideoFilePipelineService(pipelines, reader, max_frame_bytes=1024 * 1024),
    }


def test_run_on_frame_returns_index_and_result_and_passes_the_exact_payload(world: dict[str, Any]) -> None:
    frame = jpeg(seed=9)
    reply = world["service"].run_on_frame("cap", 42, frame)
    assert reply == {"frame_index": 42, "result": {"seen": 1, "size": len(frame)}}
    [call] = world["plugin"].calls
    assert call["inputs"] == {"frame_index": 42, "image_bytes": frame}
    assert type(call["inputs"]["image_bytes"]) is bytes
    assert call["frame_index"] == 42


def test_run_on_frame_copies_bytearray_into_bytes(world: dict[str, Any]) -> None:
    frame = bytearray(jpeg(seed=4))
    world["service"].run_on_frame("cap", 1, frame)
    [call] = world["plugin"].calls
    assert type(call["inputs"]["image_bytes"]) is bytes
    assert call["inputs"]["image_bytes"] == bytes(frame)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"", ErrorCode.INVALID_FRAME),
        (b"not a jpeg at all", ErrorCode.INVALID_FRAME),
        (b"\xff\xd8 truncated", ErrorCode.INVALID_FRAME),
        (b"\xff\xd8" + b"\x00" * (2 * 1024 * 1024) + b"\xff\xd9", ErrorCode.FRAME_TOO_LARGE),
    ],
)
def test_invalid_frames_are_refused_before_any_tool_runs(world: dict[str, Any], frame: bytes, code: ErrorCode) -> None:
    with pytest.raises(FrameValidationError) as caught:
        world["service"].run_on_frame("cap", 0, frame)
    assert caught.value.code is code
    assert world["plugin"].calls == []
    assert world["decoder"].calls == 0


@pytest.mark.parametrize("pipeline_id", [None, "", "unknown", "off"])
def test_is_valid_pipeline_is_false_for_missing_unknown_and_unavailable(world: dict[str, Any], pipeline_id: str | None) -> None:
    assert world["service"].is_valid_pipeline(pipeline_id) is False


def test_is_valid_pipeline_is_true_for_an_available_pipeline(world: dict[str, Any]) -> None:
    assert world["service"].is_valid_pipeline("cap") is True


def test_check_pipeline_explains_what_is_wrong(world: dict[str, Any]) -> None:
    service = world["service"]
    with pytest.raises(StreamError) as missing:
        service.check_pipeline(None)
    assert missing.value.code is ErrorCode.INVALID_PIPELINE and "pipeline_id" in missing.value.detail
    with pytest.raises(UnknownPipelineError):
        service.check_pipeline("unknown")
    with pytest.raises(PipelineUnavailableError) as offline:
        service.check_pipeline("off")
    assert "the offline plugin is never available" in offline.value.detail
    service.check_pipeline("cap")


def test_run_on_file_yields_one_result_per_frame_with_the_readers_numbers(world: dict[str, Any]) -> None:
    replies = list(world["service"].run_on_file("clip.avi", "cap", frame_stride=3, max_frames=10))
    assert [reply["frame_index"] for reply in replies] == [0, 3, 6]
    # One stream: the per-stream state carries from frame to frame.
    assert [reply["result"]["seen"] for reply in replies] == [1, 2, 3]
    assert [reply["result"]["size"] for reply in replies] == [len(data) for _, data in FRAMES]
    assert world["reader"].requests == [("clip.avi", 3, 10)]
    assert [call["inputs"] for call in world["plugin"].calls] == [
        {"frame_index": number, "image_bytes": data} for number, data in FRAMES
    ]


def test_run_on_file_releases_the_stream_state_at_the_end(world: dict[str, Any]) -> None:
    list(world["service"].run_on_file("clip.avi", "cap"))
    assert world["store"].active_streams() == 0
    assert world["plugin"].closed == ["closed"]


def test_run_on_file_releases_the_stream_state_when_the_consumer_stops_early(world: dict[str, Any]) -> None:
    replies = world["service"].run_on_file("clip.avi", "cap")
    first = next(replies)
    assert first["frame_index"] == 0
    assert world["store"].active_streams() == 1
    assert world["plugin"].closed == []
    replies.close()
    assert world["store"].active_streams() == 0
    assert world["plugin"].closed == ["closed"]
    assert world["reader"].yielded == 1


def test_each_file_run_is_its_own_stream(world: dict[str, Any]) -> None:
    first = list(world["service"].run_on_file("a.avi", "cap"))
    second = list(world["service"].run_on_file("b.avi", "cap"))
    assert [r["result"]["seen"] for r in first] == [1, 2, 3]
    assert [r["result"]["seen"] for r in second] == [1, 2, 3]


@pytest.mark.parametrize("stride", [0, -1])
def test_run_on_file_refuses_a_stride_below_one(world: dict[str, Any], stride: int) -> None:
    with pytest.raises(ValueError, match="frame_stride"):
        list(world["service"].run_on_file("clip.avi", "cap", frame_stride=stride))
    assert world["reader"].requests == []


def test_run_on_file_refuses_max_frames_below_one(world: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="max_frames"):
        list(world["service"].run_on_file("clip.avi", "cap", max_frames=0))


def test_run_on_file_checks_the_pipeline_before_reading(world: dict[str, Any]) -> None:
    with pytest.raises(PipelineUnavailableError):
        list(world["service"].run_on_file("clip.avi", "off"))
    assert world["reader"].requests == []
    assert world["store"].active_streams() == 0


def test_run_on_file_needs_a_reader() -> None:
    pipelines = DagPipelineService(
        DictCatalog(one_node("cap", "cap", "capture")), {"cap": CapturingPlugin()}, CountingDecoder(), StreamStateStore()
    )
    with pytest.raises(RuntimeError, match="video reader"):
        list(VideoFilePipelineService(pipelines).run_on_file("clip.avi", "cap"))
