"""DagPipelineService per-stream state (persistence, isolation, release), the observer, and a stream's remembered
JPEG header. Shared fakes are in tests/unit/dag_support.py."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

from application.errors import PipelineExecutionError
from application.pipeline import DagPipelineService
from application.stream_state import StreamStateStore
from application.ports import PipelineObserver, ToolContext
from domain import FrameValidationError, read_jpeg_info
from tests.support.catalog import DictCatalog
from tests.support.fakes import CountingDecoder, RecordingPipelineObserver
from tests.support.media import jpeg_header
from tests.unit.dag_support import PAYLOAD, FakePlugin, definition, diamond, failing_setup, service


class Closeable:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


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


# A stream's repeated header -------------------------------------------------------


def size_service(store: StreamStateStore | None = None) -> DagPipelineService:
    def size(inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        return {"width": context.jpeg_info.width, "height": context.jpeg_info.height}

    return service([definition("size", [("n", "p", "size")], entry=["n"], output=["n"])], [FakePlugin("p", {"size": size})], store=store)


def test_a_stream_whose_header_changes_gets_the_new_reading() -> None:
    pipelines = size_service()
    pipelines.open_stream("s")
    small, large = jpeg_header(64, 48), jpeg_header(640, 480)
    sizes = [
        pipelines.run_pipeline("size", {"frame_index": i, "image_bytes": data}, stream_id="s") for i, data in enumerate([small, small, large, small])
    ]
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
