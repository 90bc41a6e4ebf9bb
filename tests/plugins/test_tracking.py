"""The tracking plugin: ids across frame gaps, line and zone counts, their metrics, and the start-up check."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from adapters.media.codec import OpenCvJpegDecoder
from adapters.observability.metrics import PrometheusAnalytics
from adapters.plugins.gap_tracker import GapAwareTracker
from adapters.plugins.tracking import TrackingPlugin
from adapters.plugins.tracking_params import TrackerSettings
from application.pipeline import DagPipelineService
from application.stream_state import StreamStateStore
from domain import PipelineDefinition, PipelineEdge, PipelineNode, PipelineValidationError
from tests.support.catalog import DictCatalog

SETTINGS = TrackerSettings(lost_track_buffer=10, activation_threshold=0.25, matching_threshold=0.8, min_consecutive_frames=1)
W, H = 640, 240


def box(x: float, y: float = 100.0, size: float = 40.0) -> np.ndarray:
    return np.array([[x, y, x + size, y + size]], dtype=np.float64)


def detection(x: float, label: str = "face", tracker_id: Any = None, y: float = 100.0) -> dict[str, Any]:
    item = {"label": label, "confidence": 0.9, "box": {"x1": x, "y1": y, "x2": x + 40.0, "y2": y + 40.0}}
    if tracker_id is not None:
        item["tracker_id"] = tracker_id
    return item


def plain_bytetrack_ids(frames: list[int], speed: float) -> list[int]:
    """supervision's ByteTrack updated once per processed frame, as every peer does: gaps are invisible to it."""
    import supervision as sv

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracker = sv.ByteTrack(lost_track_buffer=10)
    ids = []
    for frame in frames:
        tracked = tracker.update_with_detections(sv.Detections(xyxy=box(frame * speed), confidence=np.array([0.9])))
        ids.append(int(tracked.tracker_id[0]) if len(tracked) else -1)
    return ids


# The tracker ----------------------------------------------------------------------------------------


def test_gaps_advance_the_motion_model_so_a_fast_object_keeps_its_id() -> None:
    # 40-pixel box, 12 pixels a frame: after the first frames, only every 6th frame is processed,
    # so it moves 72 pixels (almost twice its width) between updates and no two boxes overlap.
    frames = [0, 1, 2, 3, 4] + list(range(10, 80, 6))
    tracker = GapAwareTracker(SETTINGS)
    ids = [tracker.update(f, box(f * 12.0), np.array([0.9]))[0] for f in frames]
    assert ids == [1] * len(frames)
    plain = plain_bytetrack_ids(frames, 12.0)
    assert len(set(plain)) > 1, f"without the gaps a per-update tracker loses the object: {plain}"


def test_the_lost_track_buffer_counts_frames_not_updates() -> None:
    # The object is missed on one processed frame, then seen again where it stood.
    near = GapAwareTracker(SETTINGS)
    ids = [near.update(f, box(100.0) if f != 3 else np.empty((0, 4)), np.array([0.9] if f != 3 else [])) for f in (0, 1, 2, 3, 12)]
    assert ids[-1] == [1], "9 frames after it was last seen, within a 10-frame buffer: the same object"
    far = GapAwareTracker(SETTINGS)
    ids = [far.update(f, box(100.0) if f != 3 else np.empty((0, 4)), np.array([0.9] if f != 3 else [])) for f in (0, 1, 2, 3, 40)]
    assert ids[-1] == [None], "37 frames after, past the buffer: a new (not yet confirmed) track, though one update passed"


def test_frames_must_advance() -> None:
    tracker = GapAwareTracker(SETTINGS)
    tracker.update(5, box(0), np.array([0.9]))
    with pytest.raises(ValueError, match="frame_index went from 5 to 5"):
        tracker.update(5, box(0), np.array([0.9]))


def test_track_tool_adds_ids_keeps_every_detection_and_needs_its_source(make_context, jpeg) -> None:
    plugin = TrackingPlugin()
    tool = plugin.tools()["track"]
    state: dict[str, Any] = {}
    frame = jpeg(np.zeros((H, W, 3), np.uint8))
    low = {**detection(300.0), "confidence": 0.1}
    out = tool({"source": "faces", "faces": [detection(10.0), low]}, make_context(frame, frame_index=0, state=state))
    assert [d["tracker_id"] for d in out["faces"]] == [1, None], "a detection below the activation threshold stays, without an id"
    assert out["faces"][0]["box"] == detection(10.0)["box"]
    out = tool({"source": "faces", "faces": [detection(14.0)]}, make_context(frame, frame_index=3, state=state))
    assert out["faces"][0]["tracker_id"] == 1
    with pytest.raises(ValueError, match="no detections list 'people'"):
        tool({"source": "people", "faces": []}, make_context(frame, state=state))
    with pytest.raises(ValueError, match="parameter 'source'"):
        tool({"faces": []}, make_context(frame, state=state))
    with pytest.raises(ValueError, match="lost_track_buffer"):
        tool({"source": "faces", "faces": [], "lost_track_buffer": 0}, make_context(frame, state=state))


def test_a_carried_frame_moves_tracked_boxes_by_the_motion_model_without_updating_the_tracker(make_context, jpeg) -> None:
    """What a gate carries (docs/gating.md): the last tracked output, each box where its track is expected `frames` on."""
    tool = TrackingPlugin().tools()["track"]
    state: dict[str, Any] = {}
    frame = jpeg(np.zeros((H, W, 3), np.uint8))
    last: Any = None
    for index in range(6):  # 10 pixels a frame to the right
        last = tool({"source": "faces", "faces": [detection(100.0 + 10 * index)]}, make_context(frame, frame_index=index, state=state))
    assert last["faces"][0]["tracker_id"] == 1
    carried = tool.carry(last, make_context(frame, frame_index=8, state=state), 3)
    moved = carried["faces"][0]
    assert moved["tracker_id"] == 1 and moved["label"] == "face"
    assert moved["box"]["x1"] == pytest.approx(150.0 + 30.0, abs=6.0), "three frames on at about 10 pixels a frame"
    assert moved["box"]["y1"] == pytest.approx(100.0, abs=2.0)
    assert last["faces"][0]["box"]["x1"] == 150.0, "the last output itself is left as it was"
    # The tracker was not updated: the next real update continues from frame 5.
    again = tool({"source": "faces", "faces": [detection(190.0)]}, make_context(frame, frame_index=9, state=state))
    assert again["faces"][0]["tracker_id"] == 1
    far = tool.carry(last, make_context(frame, frame_index=200, state=state), 200)
    assert 0.0 <= far["faces"][0]["box"]["x1"] <= far["faces"][0]["box"]["x2"] <= W, "clipped to the frame"


def test_a_track_lost_on_the_last_update_asks_for_the_next_frame_to_run(make_context, jpeg) -> None:
    tool = TrackingPlugin().tools()["track"]
    state: dict[str, Any] = {}
    frame = jpeg(np.zeros((H, W, 3), np.uint8))
    context = make_context(frame, state=state)
    assert tool.refresh_due(context) is False, "no tracker yet"
    for index in range(3):
        tool({"source": "faces", "faces": [detection(100.0)]}, make_context(frame, frame_index=index, state=state))
    assert tool.refresh_due(context) is False
    tool({"source": "faces", "faces": []}, make_context(frame, frame_index=3, state=state))
    assert tool.refresh_due(context) is True, "the face went unmatched: the detector must look again at once"
    tool({"source": "faces", "faces": []}, make_context(frame, frame_index=4, state=state))
    assert tool.refresh_due(context) is False, "nothing newly lost"


# Lines and zones ------------------------------------------------------------------------------------


@pytest.fixture()
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


LINE = {"source": "faces", "lines": [{"name": "door", "start": [0.5, 0.0], "end": [0.5, 1.0]}]}


def test_a_crossing_counts_once_per_track_and_direction_even_when_the_box_jitters(registry, make_context, jpeg) -> None:
    plugin = TrackingPlugin(PrometheusAnalytics(registry))
    tool = plugin.tools()["line_count"]
    frame = jpeg(np.zeros((H, W, 3), np.uint8))
    state: dict[str, Any] = {}
    # Track 1 walks right across x = 320 and jitters back and forth over it; track 2 stays left.
    path = [200, 260, 340, 300, 345, 290, 350, 420]
    for i, x in enumerate(path):
        out = tool(
            {**LINE, "faces": [detection(x - 20, tracker_id=1), detection(20, tracker_id=2)]},
            make_context(frame, frame_index=i * 4, state=state, pipeline_id="p"),
        )
    assert out == {"line_counts": {"door": {"in": 1, "out": 1}}}
    assert value(registry, "stream_line_crossings_total", pipeline_id="p", line="door", direction="in") == 1.0
    assert value(registry, "stream_line_crossings_total", pipeline_id="p", line="door", direction="out") == 1.0


def test_lines_ignore_untracked_detections_and_other_labels_and_take_pixels(make_context, jpeg) -> None:
    tool = TrackingPlugin().tools()["line_count"]
    frame = jpeg(np.zeros((H, W, 3), np.uint8))
    state: dict[str, Any] = {}
    params = {
        "source": "faces",
        "coordinates": "pixels",
        "labels": ["person"],
        "lines": [{"name": "l", "start": [100, 0], "end": [100, 240]}],
    }
    for i, x in enumerate((20, 200)):
        faces = [detection(x, "person", tracker_id=7), detection(x, "car", tracker_id=8), detection(x, "person")]
        out = tool({**params, "faces": faces}, make_context(frame, frame_index=i, state=state))
    assert out == {"line_counts": {"l": {"in": 1, "out": 0}}}


def test_zone_occupancy_and_entries_follow_tracks_and_leave_the_gauge_when_the_stream_ends(registry, jpeg) -> None:
    analytics = PrometheusAnalytics(registry)
    plugin = TrackingPlugin(analytics)
    catalog = DictCatalog(
        PipelineDefinition.build(
            id="zoned",
            name="zoned",
            nodes=[
                PipelineNode(
                    "zones",
                    "tracking",
                    "zone_count",
                    {"source": "faces", "zones": [{"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}]},
                )
            ],
            edges=[],
            entry_nodes=["zones"],
            output_nodes=["zones"],
        )
    )
    plugin.check_pipelines(catalog)
    assert value(registry, "stream_zone_occupancy", pipeline_id="zoned", zone="left") == 0.0
    service = DagPipelineService(catalog, {"tracking": plugin}, OpenCvJpegDecoder(max_pixels=10**7), StreamStateStore())
    frame = jpeg(np.zeros((H, W, 3), np.uint8))

    def run(index: int, faces: list[dict[str, Any]], stream: str | None = "s") -> dict[str, Any]:
        return service.run_pipeline("zoned", {"frame_index": index, "image_bytes": frame, "faces": faces}, stream_id=stream)[
            "zone_counts"
        ]["left"]

    service.open_stream("s")
    assert run(0, [detection(10, tracker_id=1), detection(50, tracker_id=2), detection(500, tracker_id=3)]) == {
        "occupancy": 2,
        "entered": 2,
    }
    assert value(registry, "stream_zone_occupancy", pipeline_id="zoned", zone="left") == 2.0
    # Track 1 leaves and comes back: still one entry; track 3 walks in.
    assert run(1, [detection(50, tracker_id=2), detection(400, tracker_id=1), detection(100, tracker_id=3)]) == {
        "occupancy": 2,
        "entered": 3,
    }
    assert run(2, [detection(10, tracker_id=1), detection(50, tracker_id=2), detection(100, tracker_id=3)])["entered"] == 3
    assert value(registry, "stream_zone_occupancy", pipeline_id="zoned", zone="left") == 3.0
    assert value(registry, "stream_zone_entries_total", pipeline_id="zoned", zone="left") == 3.0
    # A one-off frame (no stream) counts while it runs and leaves nothing behind on the gauge.
    assert run(0, [detection(10, tracker_id=1)], stream=None)["occupancy"] == 1
    assert value(registry, "stream_zone_occupancy", pipeline_id="zoned", zone="left") == 3.0
    service.release_stream("s")
    assert value(registry, "stream_zone_occupancy", pipeline_id="zoned", zone="left") == 0.0


# The start-up check -------------------------------------------------------------------------------


def _pipeline(*nodes: PipelineNode) -> DictCatalog:
    ids = [n.id for n in nodes]
    return DictCatalog(
        PipelineDefinition.build(
            id="p",
            name="p",
            nodes=list(nodes),
            edges=[PipelineEdge(a, b) for a, b in zip(ids, ids[1:])],
            entry_nodes=ids[:1],
            output_nodes=ids[-1:],
        )
    )


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"lines": LINE["lines"]}, "parameter 'source'"),
        ({"source": "faces"}, "parameter 'lines' must be a list"),
        ({"source": "faces", "lines": [{"name": "x", "start": [0.5, 0], "end": [0.5, 1.5]}]}, "outside 0..1"),
        ({"source": "faces", "lines": [{"name": "x", "start": [0.5, 0], "end": [0.5, 0]}]}, "same point"),
        ({"source": "faces", "lines": [{"start": [0, 0], "end": [1, 1]}]}, "needs a 'name'"),
        ({**LINE, "anchor": "feet"}, "parameter 'anchor'"),
        ({**LINE, "labels": []}, "parameter 'labels'"),
    ],
)
def test_bad_line_parameters_stop_start_up_naming_the_node(params, why) -> None:
    catalog = _pipeline(PipelineNode("count", "tracking", "line_count", params))
    with pytest.raises(PipelineValidationError, match=rf"in-memory pipeline 'p'.*node 'count' \(tracking.line_count\): .*{why}"):
        TrackingPlugin().check_pipelines(catalog)


def test_bad_zones_and_repeated_names_stop_start_up() -> None:
    zone = {"source": "faces", "zones": [{"name": "z", "polygon": [[0, 0], [1, 0]]}]}
    with pytest.raises(PipelineValidationError, match="at least 3 points"):
        TrackingPlugin().check_pipelines(_pipeline(PipelineNode("z", "tracking", "zone_count", zone)))
    twice = _pipeline(PipelineNode("a", "tracking", "line_count", LINE), PipelineNode("b", "tracking", "line_count", LINE))
    with pytest.raises(PipelineValidationError, match="line names repeat"):
        TrackingPlugin().check_pipelines(twice)
