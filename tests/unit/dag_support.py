"""Shared fakes and builders for the DagPipelineService unit tests (test_dag_execution, test_dag_errors, test_dag_state).

They were in one test module; the tests are now split by topic and these helpers, used by more than one of the
new modules, live here once: a fake plugin, graph and service builders, the diamond graph and the failing chain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from application.pipeline import DagPipelineService
from application.ports import Availability, ToolContext
from application.stream_state import StreamStateStore
from domain import PipelineDefinition, PipelineEdge, PipelineNode
from tests.support.catalog import DictCatalog
from tests.support.fakes import CountingDecoder
from tests.support.media import jpeg_header

SECRET_TEXT = "tool-internal-secret-/var/lib/model.bin"
PAYLOAD = {"frame_index": 7, "image_bytes": jpeg_header(64, 48)}


# Fakes ------------------------------------------------------------------------


class FakePlugin:
    def __init__(self, plugin_id: str, tools: Mapping[str, Callable[..., Any]], availability: Availability | None = None) -> None:
        self._plugin_id = plugin_id
        self._tools = dict(tools)
        self._availability = availability or Availability(True)

    @property
    def plugin_id(self) -> str:
        return self._plugin_id

    def tools(self) -> Mapping[str, Callable[..., Any]]:
        return self._tools

    def availability(self) -> Availability:
        return self._availability


def definition(
    pipeline_id: str,
    nodes: list[tuple[str, str, str] | tuple[str, str, str, dict[str, Any]]],
    edges: list[tuple[str, str]] = (),  # type: ignore[assignment]
    *,
    entry: list[str],
    output: list[str],
) -> PipelineDefinition:
    built = []
    for spec in nodes:
        node_id, plugin_id, tool_id = spec[:3]
        params = spec[3] if len(spec) > 3 else {}
        built.append(PipelineNode(node_id, plugin_id, tool_id, dict(params)))
    return PipelineDefinition.build(
        id=pipeline_id,
        name=pipeline_id,
        nodes=built,
        edges=[PipelineEdge(a, b) for a, b in edges],
        entry_nodes=entry,
        output_nodes=output,
    )


def service(
    definitions: list[PipelineDefinition],
    plugins: list[FakePlugin],
    *,
    decoder: CountingDecoder | None = None,
    store: StreamStateStore | None = None,
    observer: Any = None,
) -> DagPipelineService:
    return DagPipelineService(
        DictCatalog(*definitions),
        {plugin.plugin_id: plugin for plugin in plugins},
        decoder or CountingDecoder(),
        store or StreamStateStore(),
        observer,
    )


def recording_tool(name: str, calls: list[tuple[str, dict[str, Any]]], output: Mapping[str, Any]) -> Callable[..., Any]:
    def tool(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        calls.append((name, dict(inputs)))
        return dict(output)

    return tool


def diamond() -> tuple[PipelineDefinition, list[tuple[str, dict[str, Any]]], FakePlugin]:
    calls: list[tuple[str, dict[str, Any]]] = []
    plugin = FakePlugin(
        "fake",
        {
            "a": recording_tool("a", calls, {"from_a": 1}),
            "b": recording_tool("b", calls, {"from_b": 2}),
            "c": recording_tool("c", calls, {"from_c": 3}),
            "d": recording_tool("d", calls, {"from_d": 4}),
        },
    )
    # Nodes listed out of order on purpose: execution must follow the edges, not the list.
    graph = definition(
        "diamond",
        [
            ("d", "fake", "d", {"pd": "x"}),
            ("c", "fake", "c", {"pc": 30}),
            ("b", "fake", "b"),
            ("a", "fake", "a", {"pa": True}),
        ],
        [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
        entry=["a"],
        output=["c", "d"],
    )
    return graph, calls, plugin


def failing_setup(observer: Any = None) -> tuple[DagPipelineService, list[str]]:
    ran: list[str] = []

    def ok(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        ran.append("first")
        return {"ok": True}

    def boom(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        ran.append("second")
        raise RuntimeError(SECRET_TEXT)

    def never(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        ran.append("third")
        return {}

    plugin = FakePlugin("crashy", {"ok": ok, "explode": boom, "never": never})
    graph = definition(
        "fragile",
        [("first", "crashy", "ok"), ("second", "crashy", "explode"), ("third", "crashy", "never")],
        [("first", "second"), ("second", "third")],
        entry=["first"],
        output=["third"],
    )
    return service([graph], [plugin], observer=observer), ran
