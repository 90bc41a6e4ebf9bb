"""DagPipelineService with fake plugins and a counting decoder: execution order, data flow, where a pipeline runs,
reduced decoding, the pixel limit and the decode budget. Shared fakes are in tests/unit/dag_support.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from application.errors import DecodeBudgetExhausted, PipelineExecutionError
from application.decode_budget import DecodedBytesBudget
from application.pipeline import DagPipelineService
from application.stream_state import StreamStateStore
from application.ports import ToolContext
from domain import ErrorCode, FrameValidationError, PipelineValidationError, StreamError
from tests.support.catalog import DictCatalog
from tests.support.fakes import CountingDecoder
from tests.support.media import jpeg_header
from tests.unit.dag_support import PAYLOAD, FakePlugin, definition, diamond, service


# Execution order and data flow -------------------------------------------------


def test_nodes_run_in_topological_order() -> None:
    graph, calls, plugin = diamond()
    service([graph], [plugin]).run_pipeline("diamond", PAYLOAD)
    order = [name for name, _ in calls]
    assert sorted(order) == ["a", "b", "c", "d"]
    assert order[0] == "a"
    assert order[-1] == "d"


def test_each_node_gets_payload_params_and_predecessor_outputs() -> None:
    graph, calls, plugin = diamond()
    service([graph], [plugin]).run_pipeline("diamond", PAYLOAD)
    inputs = dict(calls)
    assert inputs["a"] == {**PAYLOAD, "pa": True}
    assert inputs["b"] == {**PAYLOAD, "from_a": 1}
    assert inputs["c"] == {**PAYLOAD, "pc": 30, "from_a": 1}
    # d sees its direct predecessors b and c, not a (which is not an edge into d).
    assert inputs["d"] == {**PAYLOAD, "pd": "x", "from_b": 2, "from_c": 3}


def test_result_is_the_merge_of_output_nodes_only() -> None:
    graph, _, plugin = diamond()
    result = service([graph], [plugin]).run_pipeline("diamond", PAYLOAD)
    assert result == {"from_c": 3, "from_d": 4}


def test_image_is_decoded_once_per_run_however_many_nodes_ask() -> None:
    seen: list[Any] = []

    def wants_image(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        seen.append(context.image())
        return {}

    plugin = FakePlugin("img", {"t": wants_image})
    graph = definition("three", [("x", "img", "t"), ("y", "img", "t"), ("z", "img", "t")], [("x", "y"), ("y", "z")], entry=["x"], output=["z"])
    decoder = CountingDecoder()
    pipelines = service([graph], [plugin], decoder=decoder)
    pipelines.run_pipeline("three", PAYLOAD)
    assert decoder.calls == 1
    assert len(seen) == 3 and seen[0] is seen[1] is seen[2]
    assert seen[0] == {"decoded_from": len(PAYLOAD["image_bytes"])}
    # A second run decodes its own frame again: the decoded image is per run, not cached across runs.
    pipelines.run_pipeline("three", PAYLOAD)
    assert decoder.calls == 2


def test_image_is_not_decoded_when_no_node_asks() -> None:
    plugin = FakePlugin("p", {"t": lambda inputs, context: {"ok": True}})
    decoder = CountingDecoder()
    service([definition("quiet", [("n", "p", "t")], entry=["n"], output=["n"])], [plugin], decoder=decoder).run_pipeline("quiet", PAYLOAD)
    assert decoder.calls == 0


def test_context_exposes_frame_index_and_bytes() -> None:
    seen: dict[str, Any] = {}

    def look(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        seen["frame_index"] = context.frame_index
        seen["image_bytes"] = context.image_bytes
        return {}

    plugin = FakePlugin("p", {"t": look})
    service([definition("look", [("n", "p", "t")], entry=["n"], output=["n"])], [plugin]).run_pipeline("look", PAYLOAD)
    assert seen == {"frame_index": 7, "image_bytes": PAYLOAD["image_bytes"]}


def test_context_names_the_pipeline_and_the_node() -> None:
    seen: list[tuple[str, str]] = []

    def look(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        seen.append((context.pipeline_id, context.node_id))
        return {}

    plugin = FakePlugin("p", {"t": look})
    pipeline = definition("look", [("a", "p", "t"), ("b", "p", "t")], [("a", "b")], entry=["a"], output=["b"])
    service([pipeline], [plugin]).run_pipeline("look", PAYLOAD)
    assert seen == [("look", "a"), ("look", "b")]


# Where a pipeline runs ------------------------------------------------------------


def test_only_pipelines_made_entirely_of_inline_tools_run_inline() -> None:
    def header(inputs: Mapping[str, Any], context: Any) -> dict[str, Any]:
        return {"bytes": len(context.image_bytes)}

    def model(inputs: Mapping[str, Any], context: Any) -> dict[str, Any]:
        return {"seen": True}

    header.runs_inline = True  # type: ignore[attr-defined]
    model.runs_inline = "yes"  # type: ignore[attr-defined]  # only the literal True counts
    plugin = FakePlugin("p", {"header": header, "model": model})
    pipelines = service(
        [
            definition("cheap", [("h", "p", "header")], entry=["h"], output=["h"]),
            definition("mixed", [("h", "p", "header"), ("m", "p", "model")], [("h", "m")], entry=["h"], output=["m"]),
            definition("heavy", [("m", "p", "model")], entry=["m"], output=["m"]),
        ],
        [plugin],
    )
    assert [pipelines.runs_inline(name) for name in ("cheap", "mixed", "heavy", "unknown")] == [True, False, False, False]


# Reduced decoding, the pixel limit and the decode budget --------------------------------------------------


def sized(side: Any) -> Callable[..., Any]:
    """A tool that asks for the image and declares `side` (an int, or a callable of the node params) as its need."""

    def tool(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        context.image()
        return {"frame_size": list(context.frame_size), "reduction": context.image_reduction}

    tool.max_input_side = side  # type: ignore[attr-defined]
    return tool


def undeclared(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    context.image()
    return {}


def header_only(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    return {"bytes": len(context.image_bytes)}


header_only.runs_inline = True  # type: ignore[attr-defined]

UHD = {"frame_index": 0, "image_bytes": jpeg_header(3840, 2160)}


@pytest.mark.parametrize(
    ("tools", "reduction"),
    [
        ({"a": sized(640)}, 4),
        ({"a": sized(1920)}, 2),
        ({"a": sized(640), "b": sized(1920)}, 2),  # the decode must satisfy every node
        ({"a": sized(640), "b": undeclared}, 1),  # a tool that declares nothing gets the full frame
        ({"a": sized(lambda params: params["side"])}, 8),  # read from the node's params (side 400 below)
        ({"a": sized(640), "h": header_only}, 4),  # header-only nodes never decode, so they need nothing
    ],
)
def test_the_frame_is_decoded_at_the_largest_reduction_every_node_allows(tools: dict[str, Any], reduction: int) -> None:
    plugin = FakePlugin("p", tools)
    nodes = [(name, "p", name, {"side": 400}) for name in tools]
    graph = definition("g", nodes, entry=list(tools), output=list(tools))
    decoder = CountingDecoder()
    pipelines = service([graph], [plugin], decoder=decoder)
    result = pipelines.run_pipeline("g", UHD)
    assert decoder.reductions == [reduction]
    if "a" in tools:
        assert result["frame_size"] == [3840, 2160] and result["reduction"] == reduction


def test_a_bad_declaration_stops_start_up_naming_the_pipeline_and_node() -> None:
    plugin = FakePlugin("p", {"t": sized(lambda params: int(params["side"]))})
    graph = definition("g", [("n", "p", "t", {"side": 0})], entry=["n"], output=["n"])
    with pytest.raises(PipelineValidationError, match=r"pipeline 'g': node 'n': max_input_side must be a positive integer"):
        service([graph], [plugin])


def test_the_pixel_limit_holds_for_pipelines_that_never_decode() -> None:
    plugin = FakePlugin("p", {"h": header_only})
    graph = definition("probe", [("n", "p", "h")], entry=["n"], output=["n"])
    pipelines = DagPipelineService(DictCatalog(graph), {"p": plugin}, CountingDecoder(), StreamStateStore(), max_frame_pixels=3840 * 2160)
    assert pipelines.run_pipeline("probe", UHD) == {"bytes": len(UHD["image_bytes"])}
    with pytest.raises(FrameValidationError) as caught:
        pipelines.run_pipeline("probe", {"frame_index": 1, "image_bytes": jpeg_header(8000, 5000)})
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    assert "8000x5000 = 40000000 pixels; the limit is 8294400" in caught.value.detail


def test_the_default_pixel_limit_is_the_4k_default() -> None:
    plugin = FakePlugin("p", {"h": header_only})
    pipelines = service([definition("probe", [("n", "p", "h")], entry=["n"], output=["n"])], [plugin])
    with pytest.raises(FrameValidationError, match="the limit is 8294400"):
        pipelines.run_pipeline("probe", {"frame_index": 1, "image_bytes": jpeg_header(3841, 2160)})


def budgeted(budget: DecodedBytesBudget, tool: Callable[..., Any]) -> DagPipelineService:
    plugin = FakePlugin("p", {"t": tool})
    return DagPipelineService(
        DictCatalog(definition("g", [("n", "p", "t")], entry=["n"], output=["n"])),
        {"p": plugin},
        CountingDecoder(),
        StreamStateStore(),
        decode_budget=budget,
    )


def test_a_run_charges_the_budget_while_it_holds_the_image_and_gives_it_back_even_when_a_tool_fails() -> None:
    budget = DecodedBytesBudget(capacity_bytes=10_000, wait_s=1.0)
    held: list[int] = []

    def look(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        context.image()
        held.append(budget.in_use())
        return {}

    budgeted(budget, look).run_pipeline("g", UHD)
    assert held == [1000] and budget.in_use() == 0  # CountingDecoder charges 1000 bytes at reduction 1

    def explode(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        context.image()
        raise RuntimeError("tool broke")

    with pytest.raises(PipelineExecutionError):
        budgeted(budget, explode).run_pipeline("g", UHD)
    assert budget.in_use() == 0 and budget.peak() == 1000


def test_a_charge_that_does_not_fit_waits_for_a_release() -> None:
    budget = DecodedBytesBudget(capacity_bytes=1000, wait_s=5.0)
    budget.acquire(700)
    acquired = threading.Event()

    def second() -> None:
        budget.acquire(700)
        acquired.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not acquired.wait(0.2), "700 + 700 bytes must not fit a 1000-byte budget"
    budget.release(700)
    assert acquired.wait(5.0)
    thread.join()
    assert budget.in_use() == 700 and budget.peak() == 700


def test_a_charge_that_waits_too_long_fails_the_frame_without_leaking_the_reason_to_the_client() -> None:
    budget = DecodedBytesBudget(capacity_bytes=1000, wait_s=0.05)
    budget.acquire(900)
    with pytest.raises(StreamError) as caught:
        budget.acquire(200)
    assert caught.value.code is ErrorCode.PIPELINE_FAILURE
    assert "retry later" in caught.value.detail
    assert "1000 bytes" in caught.value.log_message
    assert budget.in_use() == 900


def test_a_charge_larger_than_the_whole_budget_is_refused_at_once_as_frame_too_large() -> None:
    budget = DecodedBytesBudget(capacity_bytes=1000, wait_s=60.0)
    with pytest.raises(FrameValidationError) as caught:
        budget.acquire(1001)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    assert "1001 bytes" in caught.value.detail and "1000 bytes" in caught.value.detail


def test_a_run_that_cannot_get_decode_memory_fails_with_the_budget_reason_not_as_a_tool_failure() -> None:
    budget = DecodedBytesBudget(capacity_bytes=1500, wait_s=0.05)
    budget.acquire(1000)  # another run holds most of it
    with pytest.raises(DecodeBudgetExhausted) as caught:
        budgeted(budget, undeclared).run_pipeline("g", UHD)
    assert caught.value.code is ErrorCode.PIPELINE_FAILURE
    assert budget.in_use() == 1000
