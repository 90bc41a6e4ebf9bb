"""DagPipelineService with fake plugins and a counting decoder: execution order, data flow, errors, state."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

from application.errors import DecodeBudgetExhausted, PipelineExecutionError, PipelineUnavailableError, UnknownPipelineError
from application.decode_budget import DecodedBytesBudget
from application.pipeline import DagPipelineService
from application.stream_state import StreamStateStore
from application.ports import Availability, PipelineObserver, ToolContext
from domain import (
    ErrorCode,
    read_jpeg_info,
    FrameValidationError,
    PipelineDefinition,
    PipelineEdge,
    PipelineNode,
    PipelineValidationError,
    StreamError,
)
from tests.support.catalog import DictCatalog
from tests.support.fakes import CountingDecoder, RecordingPipelineObserver
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


class Closeable:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class NumpyLikeScalar:
    def __init__(self, value: float) -> None:
        self.value = value

    def item(self) -> float:
        return self.value


class NumpyLikeArray:
    def __init__(self, values: list[list[int]]) -> None:
        self.values = values

    def tolist(self) -> list[list[int]]:
        return self.values


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


# Execution order and data flow -------------------------------------------------


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
    graph = definition(
        "three", [("x", "img", "t"), ("y", "img", "t"), ("z", "img", "t")], [("x", "y"), ("y", "z")], entry=["x"], output=["z"]
    )
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
    service([definition("quiet", [("n", "p", "t")], entry=["n"], output=["n"])], [plugin], decoder=decoder).run_pipeline(
        "quiet", PAYLOAD
    )
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


# Failures -----------------------------------------------------------------------


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


def test_tool_exception_becomes_pipeline_execution_error_without_its_text() -> None:
    pipelines, ran = failing_setup()
    with pytest.raises(PipelineExecutionError) as caught:
        pipelines.run_pipeline("fragile", PAYLOAD)
    error = caught.value
    assert error.code is ErrorCode.PIPELINE_FAILURE
    assert "fragile" in error.detail
    assert "second" in error.detail
    assert "crashy.explode" in error.detail
    assert SECRET_TEXT not in error.detail
    assert "RuntimeError" not in error.detail
    assert SECRET_TEXT not in str(error.to_message())
    assert SECRET_TEXT in error.log_message
    assert "RuntimeError" in error.log_message
    assert isinstance(error.__cause__, RuntimeError)
    assert (error.pipeline_id, error.node_id, error.plugin_id, error.tool_id) == ("fragile", "second", "crashy", "explode")
    assert ran == ["first", "second"]


def test_frame_validation_error_from_decoder_passes_through_unchanged() -> None:
    original = FrameValidationError(ErrorCode.INVALID_FRAME, "does not decode")
    plugin = FakePlugin("img", {"t": lambda inputs, context: {"shape": context.image()}})
    pipelines = service(
        [definition("img", [("n", "img", "t")], entry=["n"], output=["n"])], [plugin], decoder=CountingDecoder(original)
    )
    with pytest.raises(FrameValidationError) as caught:
        pipelines.run_pipeline("img", PAYLOAD)
    assert caught.value is original
    assert not isinstance(caught.value, PipelineExecutionError)


def test_tool_returning_a_non_mapping_is_a_pipeline_failure() -> None:
    plugin = FakePlugin("p", {"t": lambda inputs, context: [1, 2, 3]})
    pipelines = service([definition("listy", [("n", "p", "t")], entry=["n"], output=["n"])], [plugin])
    with pytest.raises(PipelineExecutionError) as caught:
        pipelines.run_pipeline("listy", PAYLOAD)
    assert caught.value.node_id == "n"


def test_numpy_like_values_are_converted_to_plain_json() -> None:
    plugin = FakePlugin(
        "np",
        {"t": lambda inputs, context: {"score": NumpyLikeScalar(0.5), "mask": NumpyLikeArray([[1, 2], [3, 4]]), "nested": {"n": (NumpyLikeScalar(3),)}}},
    )
    result = service([definition("np", [("n", "np", "t")], entry=["n"], output=["n"])], [plugin]).run_pipeline("np", PAYLOAD)
    assert result == {"score": 0.5, "mask": [[1, 2], [3, 4]], "nested": {"n": [3]}}
    assert type(result["score"]) is float
    assert type(result["nested"]["n"]) is list


def test_outputs_of_tools_that_promise_json_are_sent_as_made_and_others_are_converted() -> None:
    made: list[dict[str, Any]] = []

    def promising(inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        made.append({"width": 64, "nested": {"n": [1, 2]}})
        return made[-1]

    promising.returns_json = True  # type: ignore[attr-defined]
    plain = lambda inputs, context: {"score": NumpyLikeScalar(0.5)}  # noqa: E731
    pipelines = service(
        [
            definition("promised", [("a", "p", "promising")], entry=["a"], output=["a"]),
            definition("mixed", [("a", "p", "promising"), ("b", "p", "plain")], entry=["a", "b"], output=["a", "b"]),
        ],
        [FakePlugin("p", {"promising": promising, "plain": plain})],
    )
    assert pipelines.run_pipeline("promised", PAYLOAD) is made[-1]
    mixed = pipelines.run_pipeline("mixed", PAYLOAD)
    assert mixed == {"width": 64, "nested": {"n": [1, 2]}, "score": 0.5} and type(mixed["score"]) is float


def test_bytes_in_output_is_a_pipeline_execution_error() -> None:
    plugin = FakePlugin("leak", {"t": lambda inputs, context: {"raw": context.image_bytes}})
    pipelines = service([definition("leaky", [("out", "leak", "t")], entry=["out"], output=["out"])], [plugin])
    with pytest.raises(PipelineExecutionError) as caught:
        pipelines.run_pipeline("leaky", PAYLOAD)
    assert caught.value.node_id == "out"
    assert "leak.t" in caught.value.detail
    assert "\\xff" not in caught.value.detail and "fake" not in caught.value.detail


# Construction-time validation and availability -----------------------------------------


def test_unknown_plugin_is_refused_at_construction() -> None:
    plugin = FakePlugin("known", {"t": lambda inputs, context: {}})
    graph = definition("bad", [("the_node", "ghost", "t")], entry=["the_node"], output=["the_node"])
    with pytest.raises(PipelineValidationError) as caught:
        service([graph], [plugin])
    message = str(caught.value)
    assert "the_node" in message and "ghost" in message and "bad" in message


def test_unknown_tool_is_refused_at_construction() -> None:
    plugin = FakePlugin("known", {"t": lambda inputs, context: {}})
    graph = definition("bad", [("the_node", "known", "missing_tool")], entry=["the_node"], output=["the_node"])
    with pytest.raises(PipelineValidationError) as caught:
        service([graph], [plugin])
    message = str(caught.value)
    assert "the_node" in message and "missing_tool" in message and "known" in message


def test_unavailable_plugin_makes_the_pipeline_unavailable() -> None:
    ran: list[str] = []
    plugin = FakePlugin("gone", {"t": lambda inputs, context: ran.append("x") or {}}, Availability(False, "model missing"))
    pipelines = service([definition("offline", [("n", "gone", "t")], entry=["n"], output=["n"])], [plugin])
    status = pipelines.availability("offline")
    assert status.available is False and "model missing" in (status.reason or "")
    with pytest.raises(PipelineUnavailableError) as caught:
        pipelines.run_pipeline("offline", PAYLOAD)
    assert caught.value.code is ErrorCode.INVALID_PIPELINE
    assert "model missing" in caught.value.detail
    assert ran == []


def test_unknown_pipeline_id_raises_unknown_pipeline_error() -> None:
    plugin = FakePlugin("p", {"t": lambda inputs, context: {}})
    pipelines = service([definition("only", [("n", "p", "t")], entry=["n"], output=["n"])], [plugin])
    with pytest.raises(UnknownPipelineError) as caught:
        pipelines.run_pipeline("nope", PAYLOAD)
    assert caught.value.code is ErrorCode.INVALID_PIPELINE
    assert "only" in caught.value.detail


# Per-stream state -------------------------------------------------------------------


def counter_service(store: StreamStateStore) -> DagPipelineService:
    def count(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        state = context.state()
        state["count"] = state.get("count", 0) + 1
        state.setdefault("resource", Closeable())
        return {"count": state["count"]}

    plugin = FakePlugin("s", {"count": count})
    graph = definition("counter", [("c1", "s", "count"), ("c2", "s", "count")], [("c1", "c2")], entry=["c1"], output=["c1"])
    return service([graph], [plugin], store=store)


def test_state_persists_across_frames_of_one_stream() -> None:
    pipelines = counter_service(StreamStateStore())
    pipelines.open_stream("s1")
    counts = [pipelines.run_pipeline("counter", PAYLOAD, stream_id="s1")["count"] for _ in range(3)]
    assert counts == [1, 2, 3]


@contextmanager
def lease(store: StreamStateStore, stream_id: str | None) -> Iterator[dict[str, dict[str, Any]]]:
    """A run's use of the stream's state, as the engine takes it."""
    state, owned = store.acquire(stream_id)
    try:
        yield state
    finally:
        store.give_back(stream_id, state, owned)


def peek(store: StreamStateStore, stream_id: str | None) -> dict[str, dict[str, Any]]:
    with lease(store, stream_id) as states:
        return states


def test_state_is_isolated_between_streams() -> None:
    pipelines = counter_service(StreamStateStore())
    pipelines.open_stream("a")
    pipelines.open_stream("b")
    assert pipelines.run_pipeline("counter", PAYLOAD, stream_id="a")["count"] == 1
    assert pipelines.run_pipeline("counter", PAYLOAD, stream_id="a")["count"] == 2
    assert pipelines.run_pipeline("counter", PAYLOAD, stream_id="b")["count"] == 1
    assert pipelines.run_pipeline("counter", PAYLOAD, stream_id="a")["count"] == 3


def test_state_is_per_node() -> None:
    store = StreamStateStore()
    pipelines = counter_service(store)
    pipelines.open_stream("s")
    pipelines.run_pipeline("counter", PAYLOAD, stream_id="s")
    states = peek(store, "s")
    assert set(states) == {"c1", "c2"}
    assert states["c1"]["resource"] is not states["c2"]["resource"]


def test_state_is_fresh_for_one_off_frames() -> None:
    store = StreamStateStore()
    pipelines = counter_service(store)
    assert [pipelines.run_pipeline("counter", PAYLOAD)["count"] for _ in range(3)] == [1, 1, 1]
    assert pipelines.run_pipeline("counter", PAYLOAD, stream_id=None)["count"] == 1
    assert peek(store, None) == {}
    assert store.active_streams() == 0


def test_a_one_off_frames_state_is_closed_when_its_run_ends() -> None:
    """What a tool registers in throw-away state (a gauge share, say) is released like a stream's."""
    closed: list[Closeable] = []

    def keep(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        resource = context.state().setdefault("resource", Closeable())
        closed.append(resource)
        assert resource.closed == 0, "not closed under the running tool"
        return {}

    pipelines = service([definition("keep", [("n", "p", "t")], entry=["n"], output=["n"])], [FakePlugin("p", {"t": keep})])
    pipelines.run_pipeline("keep", PAYLOAD)
    pipelines.run_pipeline("keep", PAYLOAD, stream_id="never-opened")
    assert [r.closed for r in closed] == [1, 1]


def test_release_closes_state_values_and_forgets_the_stream() -> None:
    store = StreamStateStore()
    pipelines = counter_service(store)
    pipelines.open_stream("s")
    pipelines.open_stream("other")
    pipelines.run_pipeline("counter", PAYLOAD, stream_id="s")
    pipelines.run_pipeline("counter", PAYLOAD, stream_id="other")
    resources = [state["resource"] for state in peek(store, "s").values()]
    other = [state["resource"] for state in peek(store, "other").values()]
    assert store.active_streams() == 2
    pipelines.release_stream("s")
    assert [r.closed for r in resources] == [1, 1]
    assert [r.closed for r in other] == [0, 0]
    assert store.active_streams() == 1
    # A run after the release (its thread was late) gets throw-away state; nothing is re-created.
    assert pipelines.run_pipeline("counter", PAYLOAD, stream_id="s")["count"] == 1
    assert pipelines.run_pipeline("counter", PAYLOAD, stream_id="s")["count"] == 1
    assert store.active_streams() == 1
    # Opened again, the stream starts over.
    pipelines.open_stream("s")
    assert [pipelines.run_pipeline("counter", PAYLOAD, stream_id="s")["count"] for _ in range(2)] == [1, 2]


def test_a_release_during_a_run_waits_for_the_run_to_return() -> None:
    """The client left while its frame ran: the state is closed after the tool is done with it, not under it."""
    import threading

    store = StreamStateStore()
    pipelines = counter_service(store)
    pipelines.open_stream("s")
    pipelines.run_pipeline("counter", PAYLOAD, stream_id="s")
    resources = [state["resource"] for state in peek(store, "s").values()]
    inside = threading.Event()
    finish = threading.Event()

    def run_holding_the_lease() -> None:
        with lease(store, "s"):
            inside.set()
            finish.wait(5)

    worker = threading.Thread(target=run_holding_the_lease)
    worker.start()
    assert inside.wait(5)
    pipelines.release_stream("s")
    assert [r.closed for r in resources] == [0, 0], "still in use by the running frame"
    assert store.active_streams() == 1
    finish.set()
    worker.join(5)
    assert [r.closed for r in resources] == [1, 1]
    assert store.active_streams() == 0


def test_release_of_unknown_stream_is_harmless() -> None:
    store = StreamStateStore()
    store.release("never-seen")
    assert store.active_streams() == 0


# Observer -------------------------------------------------------------------------


def test_observer_hears_every_node_and_the_pipeline() -> None:
    graph, _, plugin = diamond()
    observer = RecordingPipelineObserver()
    assert isinstance(observer, PipelineObserver)
    service([graph], [plugin], observer=observer).run_pipeline("diamond", PAYLOAD)
    assert sorted(node for _, node, _ in observer.nodes) == ["a", "b", "c", "d"]
    assert all(pipeline == "diamond" and failed is False for pipeline, _, failed in observer.nodes)
    assert observer.pipelines == [("diamond", False)]


def test_observer_hears_the_failed_node_and_the_failed_pipeline() -> None:
    observer = RecordingPipelineObserver()
    pipelines, _ = failing_setup(observer)
    with pytest.raises(PipelineExecutionError):
        pipelines.run_pipeline("fragile", PAYLOAD)
    assert observer.nodes == [("fragile", "first", False), ("fragile", "second", True)]
    assert observer.pipelines == [("fragile", True)]


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
    pipelines = DagPipelineService(
        DictCatalog(graph), {"p": plugin}, CountingDecoder(), StreamStateStore(), max_frame_pixels=3840 * 2160
    )
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


# A stream's repeated header -------------------------------------------------------


def size_service(store: StreamStateStore | None = None) -> DagPipelineService:
    def size(inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        return {"width": context.jpeg_info.width, "height": context.jpeg_info.height}

    return service([definition("size", [("n", "p", "size")], entry=["n"], output=["n"])], [FakePlugin("p", {"size": size})], store=store)


def test_a_stream_whose_header_changes_gets_the_new_reading() -> None:
    pipelines = size_service()
    pipelines.open_stream("s")
    small, large = jpeg_header(64, 48), jpeg_header(640, 480)
    sizes = [pipelines.run_pipeline("size", {"frame_index": i, "image_bytes": data}, stream_id="s") for i, data in enumerate([small, small, large, small])]
    assert [(r["width"], r["height"]) for r in sizes] == [(64, 48), (64, 48), (640, 480), (64, 48)]


def test_the_pixel_limit_holds_for_a_repeated_header() -> None:
    pipelines = DagPipelineService(
        DictCatalog(definition("size", [("n", "p", "size")], entry=["n"], output=["n"])),
        {"p": FakePlugin("p", {"size": lambda inputs, context: {}})},
        CountingDecoder(),
        StreamStateStore(),
        max_frame_pixels=100 * 100,
    )
    pipelines.open_stream("s")
    for _ in range(2):
        with pytest.raises(FrameValidationError):
            pipelines.run_pipeline("size", {"frame_index": 0, "image_bytes": jpeg_header(200, 200)}, stream_id="s")


def test_headers_are_remembered_for_open_streams_only_and_forgotten_on_release() -> None:
    store = StreamStateStore()
    pipelines = size_service(store)
    frame = {"frame_index": 0, "image_bytes": jpeg_header(64, 48)}
    pipelines.run_pipeline("size", frame, stream_id="never-opened")
    pipelines.run_pipeline("size", frame)
    assert store.header("never-opened") is None
    pipelines.open_stream("s")
    pipelines.run_pipeline("size", frame, stream_id="s")
    remembered = store.header("s")
    assert remembered is not None and frame["image_bytes"].startswith(remembered[0])
    pipelines.release_stream("s")
    assert store.header("s") is None
    pipelines.run_pipeline("size", frame, stream_id="s")  # a run that started late, after the release
    assert store.header("s") is None


def test_a_header_read_by_a_run_that_outlives_its_streams_release_is_not_kept() -> None:
    store = StreamStateStore()
    store.open("s")
    with lease(store, "s"):
        store.release("s")  # deferred: a run holds the state
        store.remember_header("s", (b"\xff\xd8", read_jpeg_info(jpeg_header(8, 8))))
    assert store.header("s") is None
