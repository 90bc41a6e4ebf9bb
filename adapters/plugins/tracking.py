"""Object tracking over a stream, and the analytics built on tracks: line crossings and zone occupancy.

The server drops frames under overload, so consecutive results of one stream
can be several frames apart. Trackers assume one update per frame: their motion
model advances one step per update and a lost track expires after a number of
updates. Here every update is told how many frames passed since the stream's
previous processed frame (the gap in `frame_index`): the Kalman motion model is
advanced that many frames and the lost-track buffer is counted in frames, so an
object keeps its id across dropped frames as long as it is plausibly the same
object.

The tracker is supervision's ByteTrack, told the gaps (adapters/plugins/gap_tracker.py).

Every tool keeps its state per stream and per node in `context.state()`, like
the motion model: created with the stream's first frame, dropped (and, for
zones, taken off the occupancy gauge) when the stream is released.
"""

from __future__ import annotations


from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from adapters.plugins.common import int_param
from adapters.plugins.tracking_params import (
    ANCHORS,
    DIRECTIONS,
    LineSpec,
    ZoneSpec,
    choice_param,
    label_filter,
    detections_source,
    parse_lines,
    parse_tracker_settings,
    parse_zones,
)
from application.ports import Availability, Tool, ToolContext
from domain import PipelineValidationError

import supervision as sv

from adapters.plugins.gap_tracker import GapAwareTracker

PLUGIN_ID = "tracking"
TRACK_TOOL = "track"
LINE_TOOL = "line_count"
ZONE_TOOL = "zone_count"

class AnalyticsSink(Protocol):
    """Where counts go besides the result: Prometheus in the server (adapters.observability.metrics.PrometheusAnalytics)."""

    def declare(self, pipeline_id: str, lines: Sequence[str], zones: Sequence[str]) -> None: ...

    def line_crossed(self, pipeline_id: str, line: str, direction: str) -> None: ...

    def zone_entered(self, pipeline_id: str, zone: str) -> None: ...

    def zone_occupancy_changed(self, pipeline_id: str, zone: str, delta: int) -> None: ...


class _NoAnalytics:
    def declare(self, pipeline_id: str, lines: Sequence[str], zones: Sequence[str]) -> None:
        pass

    def line_crossed(self, pipeline_id: str, line: str, direction: str) -> None:
        pass

    def zone_entered(self, pipeline_id: str, zone: str) -> None:
        pass

    def zone_occupancy_changed(self, pipeline_id: str, zone: str, delta: int) -> None:
        pass


# Detections in and out ---------------------------------------------------------------


def _detections(inputs: Mapping[str, Any], source: str) -> list[Mapping[str, Any]]:
    if source not in inputs:
        produced = sorted(k for k in inputs if k not in ("frame_index", "image_bytes"))
        raise ValueError(f"no detections list {source!r} in this node's inputs; a predecessor must output it (inputs: {produced})")
    items = inputs[source]
    if not isinstance(items, list):
        raise ValueError(f"input {source!r} is {type(items).__name__}, expected a list of detections")
    for item in items:
        box = item.get("box") if isinstance(item, Mapping) else None
        if not isinstance(box, Mapping) or not isinstance(item.get("confidence"), (int, float)):
            raise ValueError(f"input {source!r} holds {item!r}, expected detections with a box and a confidence")
    return items


def _xyxy(items: Sequence[Mapping[str, Any]]) -> np.ndarray:
    if not items:
        return np.empty((0, 4), dtype=np.float64)
    return np.array([[float(i["box"][k]) for k in ("x1", "y1", "x2", "y2")] for i in items], dtype=np.float64)


def _frame_size(context: ToolContext) -> tuple[int, int]:
    """(width, height) of the frame the detectors' boxes are in: the frame the client sent, from its header."""
    return context.frame_size


class _OutputsOnly:
    """A tool that works on its predecessors' detections only: it never asks for the decoded image."""

    reads_image = False

    def __init__(self, tool: Callable[[Mapping[str, Any], ToolContext], dict[str, Any]]) -> None:
        self._tool = tool

    def __call__(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        return self._tool(inputs, context)


class _TrackTool(_OutputsOnly):
    """The `track` tool, with the hooks a gate uses (application.gating) when the detector before it is skipped.

    A carried frame gets the last tracked detections moved to where each
    track's motion model puts them `frames` frames on; nothing is updated,
    so the tracker still sees only the frames the detector ran on. A track
    lost at the last update makes the next frame run the detector.
    """

    @staticmethod
    def carry(last_output: Mapping[str, Any], context: ToolContext, frames: int) -> dict[str, Any]:
        tracker = context.state().get("tracker")
        if not isinstance(tracker, GapAwareTracker):
            return dict(last_output)
        predicted = tracker.predicted_boxes(frames)
        width, height = context.frame_size
        carried: dict[str, Any] = {}
        for key, items in last_output.items():
            if not isinstance(items, list):
                carried[key] = items
                continue
            moved = []
            for item in items:
                tracker_id = item.get("tracker_id") if isinstance(item, Mapping) else None
                box = predicted.get(tracker_id) if isinstance(tracker_id, int) else None
                if box is None:
                    moved.append(item)
                    continue
                x1, y1, x2, y2 = (round(min(max(value, 0.0), float(limit)), 2) for value, limit in zip(box, (width, height, width, height)))
                moved.append({**item, "box": {**item["box"], "x1": x1, "y1": y1, "x2": x2, "y2": y2}})
            carried[key] = moved
        return carried

    @staticmethod
    def refresh_due(context: ToolContext) -> bool:
        tracker = context.state().get("tracker")
        return isinstance(tracker, GapAwareTracker) and tracker.lost_in_last_update


def _tracked(items: Sequence[Mapping[str, Any]], labels: frozenset[str] | None) -> tuple[np.ndarray, list[int]]:
    """Boxes and ids of the detections that carry a tracker id (and one of `labels`, when given)."""
    chosen = [
        item
        for item in items
        if isinstance(item.get("tracker_id"), int) and (labels is None or item.get("label") in labels)
    ]
    return _xyxy(chosen), [int(item["tracker_id"]) for item in chosen]


def _to_space(xyxy: np.ndarray, coordinates: str, size: tuple[int, int]) -> np.ndarray:
    if coordinates == "pixels" or not len(xyxy):
        return xyxy
    width, height = size
    return xyxy / np.array([width, height, width, height], dtype=np.float64)


# Tracking ---------------------------------------------------------------------------


class _LineCounter:
    """One line of one stream: supervision's LineZone for the geometry, counted once per track and direction."""

    def __init__(self, spec: LineSpec, anchor: str, min_crossing_frames: int) -> None:
        self.spec = spec
        self._zone = sv.LineZone(
            start=sv.Point(*spec.start),
            end=sv.Point(*spec.end),
            triggering_anchors=ANCHORS[anchor],
            minimum_crossing_threshold=min_crossing_frames,
        )
        self._counted: dict[str, set[int]] = {direction: set() for direction in DIRECTIONS}
        self.counts = {direction: 0 for direction in DIRECTIONS}

    def trigger(self, xyxy: np.ndarray, ids: list[int]) -> list[tuple[int, str]]:
        detections = sv.Detections(xyxy=xyxy.reshape(-1, 4), tracker_id=np.asarray(ids, dtype=int).reshape(-1))
        crossed_in, crossed_out = self._zone.trigger(detections)
        events = []
        for direction, crossed in (("in", crossed_in), ("out", crossed_out)):
            crossers = [tracker_id for tracker_id, hit in zip(ids, np.asarray(crossed, dtype=bool).tolist()) if hit]
            for tracker_id in crossers:
                if tracker_id not in self._counted[direction]:
                    self._counted[direction].add(int(tracker_id))
                    self.counts[direction] += 1
                    events.append((int(tracker_id), direction))
        return events

    def forget(self, alive: set[int]) -> None:
        """Keep only the ids of tracks still seen, so a long stream's memory stays bounded."""
        for direction in DIRECTIONS:
            self._counted[direction] &= alive


@dataclass(slots=True)
class _LineState:
    config: tuple[Any, ...]
    counters: list[_LineCounter]
    recent: dict[int, int]  # tracker id -> last frame it was seen


# Zones ------------------------------------------------------------------------------


class _ZoneState:
    """The zones of one stream; closing it (stream released) takes its objects off the occupancy gauge."""

    def __init__(self, config: tuple[Any, ...], zones: tuple[ZoneSpec, ...], sink: AnalyticsSink, pipeline_id: str) -> None:
        self.config = config
        self.zones = zones
        self.sink = sink
        self.pipeline_id = pipeline_id
        self.size: tuple[int, int] | None = None
        self.polygons: list[Any] = []
        self.occupancy = {zone.name: 0 for zone in zones}
        self.entered = {zone.name: 0 for zone in zones}
        self.seen_in: dict[str, dict[int, int]] = {zone.name: {} for zone in zones}
        self._closed = False

    def polygons_for(self, size: tuple[int, int], coordinates: str, anchor: str) -> list[Any]:
        """PolygonZones in frame pixels; rebuilt when the frame size changes (they hold a pixel mask)."""
        if size != self.size:
            width, height = size
            scale = (width, height) if coordinates == "relative" else (1.0, 1.0)
            self.polygons = [
                sv.PolygonZone(
                    polygon=np.rint(np.array(zone.polygon, dtype=np.float64) * np.array(scale)).astype(np.int64),
                    triggering_anchors=ANCHORS[anchor],
                )
                for zone in self.zones
            ]
            self.size = size
        return self.polygons

    def set_occupancy(self, zone: str, count: int) -> None:
        delta = count - self.occupancy[zone]
        if delta and not self._closed:
            self.occupancy[zone] = count
            self.sink.zone_occupancy_changed(self.pipeline_id, zone, delta)

    def close(self) -> None:
        for zone in self.occupancy:
            self.set_occupancy(zone, 0)
        self._closed = True


# The plugin -------------------------------------------------------------------------


class TrackingPlugin:
    """The "tracking" plugin: track (ids over a stream), line_count and zone_count (analytics on tracked detections).

    Detections flow through: `track` returns its source list with a
    `tracker_id` on every detection (null while no confirmed track holds it),
    and the counting nodes read that list from their predecessor.
    """

    plugin_id = PLUGIN_ID

    def __init__(self, analytics: AnalyticsSink | None = None) -> None:
        self._analytics: AnalyticsSink = analytics if analytics is not None else _NoAnalytics()
        self._tools: dict[str, Tool] = {
            TRACK_TOOL: _TrackTool(self.track),
            LINE_TOOL: _OutputsOnly(self.line_count),
            ZONE_TOOL: _OutputsOnly(self.zone_count),
        }

    def tools(self) -> Mapping[str, Tool]:
        return self._tools

    def availability(self) -> Availability:
        return Availability(True)

    def check_pipelines(self, catalog: Any) -> None:
        """Check every tracking node's parameters before the server listens, and declare its metric series.

        A misspelt line or zone would otherwise fail every frame of the stream;
        this stops start-up naming the file and the node instead.
        """
        for pipeline_id in catalog.ids():
            definition = catalog.get(pipeline_id)
            lines: list[str] = []
            zones: list[str] = []
            for node in definition.nodes:
                if node.plugin_id != PLUGIN_ID:
                    continue
                params = dict(node.params)
                try:
                    detections_source(params)
                    if node.tool_id == TRACK_TOOL:
                        parse_tracker_settings(params)
                    elif node.tool_id == LINE_TOOL:
                        choice_param(params, "anchor", "center", tuple(ANCHORS))
                        label_filter(params)
                        int_param(params, "min_crossing_frames", 1, low=1, high=1000)
                        lines.extend(line.name for line in parse_lines(params)[1])
                    elif node.tool_id == ZONE_TOOL:
                        choice_param(params, "anchor", "bottom_center", tuple(ANCHORS))
                        label_filter(params)
                        zones.extend(zone.name for zone in parse_zones(params)[1])
                except ValueError as error:
                    raise PipelineValidationError(
                        f"{catalog.source(pipeline_id)}: pipeline {pipeline_id!r}: node {node.id!r} "
                        f"({PLUGIN_ID}.{node.tool_id}): {error}"
                    ) from None
            for kind, names in (("line", lines), ("zone", zones)):
                if len(set(names)) != len(names):
                    raise PipelineValidationError(
                        f"{catalog.source(pipeline_id)}: pipeline {pipeline_id!r}: {kind} names repeat across nodes "
                        f"({names}); they label the pipeline's metrics, so each must be unique"
                    )
            if lines or zones:
                self._analytics.declare(pipeline_id, lines, zones)

    # Tools ----------------------------------------------------------------------------

    def track(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """The source detections, each with the `tracker_id` of its track in this stream.

        Parameters: source (required: the detections key, e.g. "faces"),
        lost_track_buffer (30 frames a lost track is kept to be found again; dropped
        frames count), activation_threshold (0.25, the confidence a detection needs to
        start a track), matching_threshold (0.8, the largest 1 - IoU a match may have),
        min_consecutive_frames (1, matches before a track gets its id).
        """
        source = detections_source(inputs)
        settings = parse_tracker_settings(inputs)
        items = _detections(inputs, source)
        state = context.state()
        tracker = state.get("tracker")
        if not isinstance(tracker, GapAwareTracker) or tracker.settings != settings:
            tracker = state["tracker"] = GapAwareTracker(settings)
        confidence = np.array([float(item["confidence"]) for item in items], dtype=np.float64)
        ids = tracker.update(context.frame_index, _xyxy(items), confidence)
        return {source: [{**item, "tracker_id": tracker_id} for item, tracker_id in zip(items, ids)]}

    def line_count(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """In/out crossings of each line by tracked detections, counted once per track and direction.

        A detection's side of a line is that of its anchor point; "in" is the
        side to the left of the line walking from start to end (supervision's
        LineZone convention). Counts are per stream and cumulative.

        Parameters: source (required), lines (required: [{"name", "start": [x, y], "end": [x, y]}]),
        coordinates ("relative": fractions of the frame's width and height, or "pixels"),
        anchor ("center"; or bottom_center, top_center, center_left, center_right, corners),
        min_crossing_frames (1, processed frames on the new side before a crossing counts),
        labels (optional: only detections with these labels count).
        """
        source = detections_source(inputs)
        coordinates, lines = parse_lines(inputs)
        anchor = choice_param(inputs, "anchor", "center", tuple(ANCHORS))
        min_frames = int_param(inputs, "min_crossing_frames", 1, low=1, high=1000)
        labels = label_filter(inputs)
        items = _detections(inputs, source)
        config = (coordinates, lines, anchor, min_frames)
        state = context.state()
        line_state = state.get("lines")
        if not isinstance(line_state, _LineState) or line_state.config != config:
            line_state = state["lines"] = _LineState(config, [_LineCounter(spec, anchor, min_frames) for spec in lines], {})
        xyxy, ids = _tracked(items, labels)
        xyxy = _to_space(xyxy, coordinates, _frame_size(context)) if len(ids) else xyxy
        for counter in line_state.counters:
            for _tracker_id, direction in counter.trigger(xyxy, ids):
                self._analytics.line_crossed(context.pipeline_id, counter.spec.name, direction)
        self._forget_gone(line_state, ids, context.frame_index)
        return {"line_counts": {c.spec.name: dict(c.counts) for c in line_state.counters}}

    @staticmethod
    def _forget_gone(line_state: _LineState, ids: list[int], frame_index: int) -> None:
        for tracker_id in ids:
            line_state.recent[tracker_id] = frame_index
        horizon = _FORGET_AFTER_FRAMES
        if len(line_state.recent) > 64:
            line_state.recent = {t: f for t, f in line_state.recent.items() if frame_index - f <= horizon}
            alive = set(line_state.recent)
            for counter in line_state.counters:
                counter.forget(alive)

    def zone_count(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        """Tracked detections in each zone now (occupancy) and distinct tracks that were ever in it (entered).

        A detection is in a zone when its anchor point is. Parameters: source
        (required), zones (required: [{"name", "polygon": [[x, y], ...]}], 3 points or more),
        coordinates ("relative" or "pixels"), anchor ("bottom_center"), labels (optional).
        """
        source = detections_source(inputs)
        coordinates, zones = parse_zones(inputs)
        anchor = choice_param(inputs, "anchor", "bottom_center", tuple(ANCHORS))
        labels = label_filter(inputs)
        items = _detections(inputs, source)
        config = (coordinates, zones, anchor)
        state = context.state()
        zone_state = state.get("zones")
        if not isinstance(zone_state, _ZoneState) or zone_state.config != config:
            if isinstance(zone_state, _ZoneState):
                zone_state.close()
            zone_state = state["zones"] = _ZoneState(config, zones, self._analytics, context.pipeline_id)
        xyxy, ids = _tracked(items, labels)
        polygons = zone_state.polygons_for(_frame_size(context), coordinates, anchor)
        frame_index = context.frame_index
        for zone, polygon in zip(zones, polygons):
            inside = (
                polygon.trigger(sv.Detections(xyxy=xyxy.reshape(-1, 4), tracker_id=np.asarray(ids, dtype=int)))
                if ids
                else np.zeros(0, dtype=bool)
            )
            seen = zone_state.seen_in[zone.name]
            present = [tracker_id for tracker_id, hit in zip(ids, np.asarray(inside, dtype=bool).tolist()) if hit]
            for tracker_id in present:
                if tracker_id not in seen:
                    zone_state.entered[zone.name] += 1
                    self._analytics.zone_entered(context.pipeline_id, zone.name)
                seen[tracker_id] = frame_index
            if len(seen) > 64:
                zone_state.seen_in[zone.name] = {t: f for t, f in seen.items() if frame_index - f <= _FORGET_AFTER_FRAMES}
            zone_state.set_occupancy(zone.name, len(present))
        return {
            "zone_counts": {
                zone.name: {"occupancy": zone_state.occupancy[zone.name], "entered": zone_state.entered[zone.name]}
                for zone in zones
            }
        }


# A track unseen for this many frames is forgotten by the counters: far longer than any tracker
# keeps a lost track, so a track that comes back within it is still the same track.
_FORGET_AFTER_FRAMES = 9000
