"""Gated nodes in the engine, with fake tools: when a gated node runs, what its carried output says, and start-up checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from application.pipeline import DagPipelineService
from application.ports import ToolContext
from application.stream_state import StreamStateStore
from domain import NodeGate, PipelineDefinition, PipelineEdge, PipelineNode, PipelineValidationError
from tests.support.catalog import DictCatalog
from tests.support.fakes import Clock, CountingDecoder, RecordingPipelineObserver
from tests.support.media import jpeg_header

SMALL = jpeg_header(64, 48)
LARGE = jpeg_header(128, 96)


class Gate:
    """A gate tool whose answer the test sets before each frame."""

    outputs = ("open", "level")
    reads_image = False

    def __init__(self) -> None:
        self.open = False

    def __call__(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        return {"open": self.open, "level": 1.0 if self.open else 0.0}


class Detector:
    """A gated tool that counts its runs and outputs them, so a carried output shows which run it came from."""

    reads_image = False

    def __init__(self, key: str = "boxes") -> None:
        self.key = key
        self.frames: list[int] = []

    def __call__(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        self.frames.append(context.frame_index)
        return {self.key: [{"run": len(self.frames), "frame": context.frame_index}]}


class Moving(Detector):
    """A gated tool with the carry and refresh hooks a tracker offers."""

    def __init__(self) -> None:
        super().__init__("tracks")
        self.refresh = False
        self.carries: list[int] = []

    def carry(self, last_output: Mapping[str, Any], context: ToolContext, frames: int) -> dict[str, Any]:
        self.carries.append(frames)
        return {"tracks": [{**item, "moved_by": frames} for item in last_output["tracks"]]}

    def refresh_due(self, context: ToolContext) -> bool:
        return self.refresh


class Plugin:
    def __init__(self, tools: Mapping[str, Any]) -> None:
        self._tools = dict(tools)

    @property
    def plugin_id(self) -> str:
        return "p"

    def tools(self) -> Mapping[str, Any]:
        return self._tools

    def availability(self) -> Any:
        from application.ports import Availability

        return Availability(True)


def gated(
    pipeline_id: str = "g", *, max_skip: int | None = 5, refresh_ms: float | None = None, stride: int = 1, second: bool = False
) -> PipelineDefinition:
    gate = NodeGate("gate", "open", max_skip, refresh_ms, stride)
    nodes = [PipelineNode("gate", "p", "gate"), PipelineNode("detect", "p", "detect", gate=gate)]
    edges = [PipelineEdge("gate", "detect")]
    if second:
        nodes.append(PipelineNode("follow", "p", "follow", gate=gate))
        edges.append(PipelineEdge("detect", "follow"))
    return PipelineDefinition.build(
        id=pipeline_id,
        name=pipeline_id,
        nodes=nodes,
        edges=edges,
        entry_nodes=["gate"],
        output_nodes=["detect", "follow"] if second else ["detect"],
    )


class Rig:
    def __init__(self, *, second: bool = False, **gate: Any) -> None:
        self.gate = Gate()
        self.detect = Detector()
        self.follow = Moving()
        self.clock = Clock()
        self.observer = RecordingPipelineObserver()
        self.store = StreamStateStore()
        self.service = DagPipelineService(
            DictCatalog(gated(second=second, **gate)),
            {"p": Plugin({"gate": self.gate, "detect": self.detect, "follow": self.follow})},
            CountingDecoder(),
            self.store,
            self.observer,
            clock=self.clock,
        )
        self.index = 0
        for stream in ("s", "a", "b"):
            self.service.open_stream(stream)

    def frame(self, *, open: bool = False, image: bytes = SMALL, stream: str | None = "s") -> dict[str, Any]:
        self.gate.open = open
        result = self.service.run_pipeline("g", {"frame_index": self.index, "image_bytes": image}, stream_id=stream)
        self.index += 1
        return result


def test_the_first_frame_runs_and_closed_gates_carry_it_marked_with_its_age() -> None:
    rig = Rig()
    first = rig.frame(open=False)
    assert first == {"boxes": [{"run": 1, "frame": 0}], "carried": False, "carried_frames": 0}
    carried = [rig.frame(open=False) for _ in range(3)]
    assert [c["carried_frames"] for c in carried] == [1, 2, 3]
    assert all(c["carried"] is True and c["boxes"] == [{"run": 1, "frame": 0}] for c in carried)
    assert rig.detect.frames == [0]
    assert rig.observer.skipped == [("g", "detect")] * 3


def test_an_open_gate_runs_the_node_and_resets_the_age() -> None:
    rig = Rig()
    rig.frame()
    rig.frame()
    fresh = rig.frame(open=True)
    assert fresh["carried"] is False and fresh["carried_frames"] == 0 and fresh["boxes"] == [{"run": 2, "frame": 2}]
    assert rig.frame()["carried_frames"] == 1
    assert rig.detect.frames == [0, 2]


def test_max_skip_forces_a_run_however_still_the_scene() -> None:
    rig = Rig(max_skip=3)
    results = [rig.frame() for _ in range(8)]
    assert rig.detect.frames == [0, 3, 6]
    assert [r["carried_frames"] for r in results] == [0, 1, 2, 0, 1, 2, 0, 1]


def test_refresh_ms_forces_a_run_when_time_has_passed() -> None:
    rig = Rig(max_skip=None, refresh_ms=500.0)
    rig.frame()
    for _ in range(20):
        rig.clock.now += 0.01
        rig.frame()
    assert rig.detect.frames == [0]
    rig.clock.now += 0.5
    assert rig.frame()["carried"] is False
    assert rig.detect.frames == [0, 21]


def test_a_frame_size_change_runs_the_node() -> None:
    rig = Rig()
    rig.frame()
    assert rig.frame()["carried"] is True
    assert rig.frame(image=LARGE)["carried"] is False
    assert rig.frame(image=LARGE)["carried"] is True
    assert rig.detect.frames == [0, 2]


def test_frames_outside_a_stream_always_run() -> None:
    rig = Rig()
    results = [rig.frame(stream=None) for _ in range(3)]
    assert rig.detect.frames == [0, 1, 2]
    assert all(r["carried"] is False for r in results)
    assert rig.observer.skipped == []


def test_nodes_sharing_a_gate_decide_together_and_a_carry_hook_shapes_the_carried_output() -> None:
    rig = Rig(second=True)
    rig.frame()
    carried = rig.frame()
    assert carried["tracks"] == [{"run": 1, "frame": 0, "moved_by": 1}] and carried["carried_frames"] == 1
    assert rig.follow.carries == [1]
    # The second node's state asks for a run: the first node of its group runs too, on the same frame.
    rig.follow.refresh = True
    fresh = rig.frame()
    assert fresh["carried"] is False
    assert rig.detect.frames == rig.follow.frames == [0, 2]
    assert sorted(rig.observer.skipped) == [("g", "detect"), ("g", "follow")]


def test_streams_carry_their_own_outputs() -> None:
    rig = Rig()
    rig.frame(stream="a")
    rig.frame(stream="b")
    assert rig.frame(stream="a")["boxes"] == [{"run": 1, "frame": 0}]
    assert rig.frame(stream="b")["boxes"] == [{"run": 2, "frame": 1}]
    rig.service.release_stream("a")
    rig.service.open_stream("a")
    assert rig.frame(stream="a")["carried"] is False


# Start-up checks ----------------------------------------------------------------------------


def build(nodes: list[PipelineNode], edges: list[tuple[str, str]], entry: list[str]) -> PipelineDefinition:
    return PipelineDefinition.build(
        id="bad", name="bad", nodes=nodes, edges=[PipelineEdge(a, b) for a, b in edges], entry_nodes=entry, output_nodes=[nodes[-1].id]
    )


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        (NodeGate("nowhere", "open"), "node 'detect': gate names unknown node 'nowhere'"),
        (NodeGate("detect", "open"), "names the node itself"),
        (NodeGate("gate", "open", 0), "max_skip must be at least 1 frame, got 0"),
        (NodeGate("gate", "open", None, -5.0), "refresh_ms must be above 0, got -5.0"),
        (NodeGate("gate", "open", None, None), "has no refresh bound"),
    ],
)
def test_a_bad_gate_is_refused_naming_the_node(gate: NodeGate, message: str) -> None:
    with pytest.raises(PipelineValidationError, match="pipeline 'bad'") as refused:
        build([PipelineNode("gate", "p", "gate"), PipelineNode("detect", "p", "detect", gate=gate)], [("gate", "detect")], ["gate"])
    assert message in str(refused.value)


def test_a_gate_on_an_entry_node_is_refused() -> None:
    with pytest.raises(PipelineValidationError, match="node 'detect': gate on an entry node"):
        build(
            [PipelineNode("gate", "p", "gate"), PipelineNode("detect", "p", "detect", gate=NodeGate("gate", "open"))],
            [],
            ["gate", "detect"],
        )


def test_a_cycle_through_a_gate_is_refused() -> None:
    with pytest.raises(PipelineValidationError, match="cycle"):
        build(
            [
                PipelineNode("start", "p", "gate"),
                PipelineNode("gate", "p", "gate", gate=NodeGate("detect", "open")),
                PipelineNode("detect", "p", "detect", gate=NodeGate("gate", "open")),
            ],
            [("start", "gate")],
            ["start"],
        )


def test_a_gate_naming_an_output_its_tool_does_not_declare_is_refused_with_the_declared_ones() -> None:
    definition = build(
        [PipelineNode("gate", "p", "gate"), PipelineNode("detect", "p", "detect", gate=NodeGate("gate", "opne"))],
        [("gate", "detect")],
        ["gate"],
    )
    with pytest.raises(PipelineValidationError) as refused:
        DagPipelineService(DictCatalog(definition), {"p": Plugin({"gate": Gate(), "detect": Detector()})}, CountingDecoder(), StreamStateStore())
    assert "node 'detect': gate names output 'opne'" in str(refused.value)
    assert "['open', 'level']" in str(refused.value)


def test_a_gate_whose_tool_declares_no_outputs_is_refused() -> None:
    definition = build(
        [PipelineNode("gate", "p", "plain"), PipelineNode("detect", "p", "detect", gate=NodeGate("gate", "open"))],
        [("gate", "detect")],
        ["gate"],
    )
    with pytest.raises(PipelineValidationError, match="declares no outputs, so it cannot gate"):
        DagPipelineService(DictCatalog(definition), {"p": Plugin({"plain": Detector(), "detect": Detector()})}, CountingDecoder(), StreamStateStore())


# Decoding -------------------------------------------------------------------------------------


class SmallGate(Gate):
    """A gate that looks at the image, at most 80 pixels on its longer side (as change_detect)."""

    reads_image = True
    max_input_side = 80

    def __call__(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        context.image()
        return super().__call__(inputs, context)


class Looker(Detector):
    reads_image = True

    def __call__(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        context.image()
        return super().__call__(inputs, context)


def test_a_carried_frame_is_decoded_only_as_far_as_its_gate_needs_and_a_run_decodes_in_full() -> None:
    decoder = CountingDecoder()
    service = DagPipelineService(DictCatalog(gated()), {"p": Plugin({"gate": SmallGate(), "detect": Looker()})}, decoder, StreamStateStore())
    service.open_stream("s")
    frame = jpeg_header(640, 480)
    service.run_pipeline("g", {"frame_index": 0, "image_bytes": frame}, stream_id="s")
    assert decoder.reductions == [8, 1], "the first frame runs the detector: the gate's 1/8 decode, then the full one"
    decoder.reductions.clear()
    assert service.run_pipeline("g", {"frame_index": 1, "image_bytes": frame}, stream_id="s")["carried"] is True
    assert decoder.reductions == [8], "a carried frame: the gate's decode only"
    decoder.reductions.clear()
    service.run_pipeline("g", {"frame_index": 2, "image_bytes": frame})
    assert decoder.reductions == [1], "outside a stream every node runs: one decode, at the pipeline's reduction"


def test_a_stride_spaces_the_runs_an_open_gate_asks_for_but_not_the_forced_ones() -> None:
    rig = Rig(max_skip=10, stride=3)
    results = [rig.frame(open=True) for _ in range(7)]
    assert rig.detect.frames == [0, 3, 6]
    assert [r["carried_frames"] for r in results] == [0, 1, 2, 0, 1, 2, 0]
    assert rig.frame(open=True, image=LARGE)["carried"] is False, "a size change runs at once"


def test_a_stride_beyond_max_skip_or_below_one_is_refused() -> None:
    with pytest.raises(PipelineValidationError, match=r"stride \(5\) must not exceed max_skip \(4\)"):
        gated(max_skip=4, stride=5)
    with pytest.raises(PipelineValidationError, match="stride must be at least 1 frame, got 0"):
        gated(stride=0)
