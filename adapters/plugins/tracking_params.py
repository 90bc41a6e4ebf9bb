"""The tracking tools' parameters from a pipeline file, checked once at start-up with errors that name the node's key."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import supervision as sv

from adapters.plugins.common import float_param, int_param

ANCHORS: dict[str, tuple[sv.Position, ...]] = {
    "center": (sv.Position.CENTER,),
    "bottom_center": (sv.Position.BOTTOM_CENTER,),
    "top_center": (sv.Position.TOP_CENTER,),
    "center_left": (sv.Position.CENTER_LEFT,),
    "center_right": (sv.Position.CENTER_RIGHT,),
    "corners": (sv.Position.TOP_LEFT, sv.Position.TOP_RIGHT, sv.Position.BOTTOM_LEFT, sv.Position.BOTTOM_RIGHT),
}
COORDINATES = ("relative", "pixels")
DIRECTIONS = ("in", "out")
# Names become Prometheus label values and JSON keys: short, printable, from the pipeline file.
_MAX_NAME_LENGTH = 64
_MAX_SHAPES = 32




def detections_source(inputs: Mapping[str, Any]) -> str:
    source = inputs.get("source")
    if not isinstance(source, str) or not source:
        raise ValueError(
            "parameter 'source' must name the detections list to use, the key a predecessor node outputs "
            f"(faces, people, detections), got {source!r}"
        )
    return source


def choice_param(inputs: Mapping[str, Any], name: str, default: str, options: Sequence[str]) -> str:
    value = inputs.get(name, default)
    if value not in options:
        raise ValueError(f"parameter {name!r} must be one of {', '.join(options)}, got {value!r}")
    return str(value)


def label_filter(inputs: Mapping[str, Any]) -> frozenset[str] | None:
    value = inputs.get("labels")
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"parameter 'labels' must be a non-empty list of detection labels, got {value!r}")
    return frozenset(value)


def _name(value: Any, what: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > _MAX_NAME_LENGTH
        or not value.isprintable()
        or value != value.strip()
    ):
        raise ValueError(f"{what} needs a 'name': 1-{_MAX_NAME_LENGTH} printable characters, got {value!r}")
    return value


def _point(value: Any, what: str, coordinates: str) -> tuple[float, float]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise ValueError(f"{what} must be a point [x, y], got {value!r}")
    x, y = float(value[0]), float(value[1])
    if coordinates == "relative" and not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise ValueError(f"{what} {value!r} is outside 0..1 (coordinates are relative to the frame's width and height)")
    if coordinates == "pixels" and (x < 0 or y < 0):
        raise ValueError(f"{what} {value!r} has a negative pixel coordinate")
    return x, y


def _shapes(inputs: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = inputs.get(key)
    if not isinstance(value, list) or not 1 <= len(value) <= _MAX_SHAPES or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"parameter {key!r} must be a list of 1-{_MAX_SHAPES} objects, got {value!r}")
    names = [item.get("name") for item in value]
    if len(set(map(str, names))) != len(names):
        raise ValueError(f"parameter {key!r}: names must be unique, got {names!r}")
    return value


@dataclass(frozen=True, slots=True)
class LineSpec:
    name: str
    start: tuple[float, float]
    end: tuple[float, float]


@dataclass(frozen=True, slots=True)
class ZoneSpec:
    name: str
    polygon: tuple[tuple[float, float], ...]


def parse_lines(inputs: Mapping[str, Any]) -> tuple[str, tuple[LineSpec, ...]]:
    """The `coordinates` and `lines` of a line_count node; raises ValueError naming what is wrong."""
    coordinates = choice_param(inputs, "coordinates", "relative", COORDINATES)
    lines = []
    for item in _shapes(inputs, "lines"):
        name = _name(item.get("name"), "each line")
        start = _point(item.get("start"), f"line {name!r}: 'start'", coordinates)
        end = _point(item.get("end"), f"line {name!r}: 'end'", coordinates)
        if start == end:
            raise ValueError(f"line {name!r}: 'start' and 'end' are the same point")
        lines.append(LineSpec(name, start, end))
    return coordinates, tuple(lines)


def parse_zones(inputs: Mapping[str, Any]) -> tuple[str, tuple[ZoneSpec, ...]]:
    """The `coordinates` and `zones` of a zone_count node; raises ValueError naming what is wrong."""
    coordinates = choice_param(inputs, "coordinates", "relative", COORDINATES)
    zones = []
    for item in _shapes(inputs, "zones"):
        name = _name(item.get("name"), "each zone")
        polygon = item.get("polygon")
        if not isinstance(polygon, list) or len(polygon) < 3:
            raise ValueError(f"zone {name!r}: 'polygon' must be a list of at least 3 points [x, y], got {polygon!r}")
        points = tuple(_point(p, f"zone {name!r}: polygon point", coordinates) for p in polygon)
        zones.append(ZoneSpec(name, points))
    return coordinates, tuple(zones)


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    lost_track_buffer: int
    activation_threshold: float
    matching_threshold: float
    min_consecutive_frames: int


def parse_tracker_settings(inputs: Mapping[str, Any]) -> TrackerSettings:
    return TrackerSettings(
        lost_track_buffer=int_param(inputs, "lost_track_buffer", 30, low=1, high=100_000),
        activation_threshold=float_param(inputs, "activation_threshold", 0.25, low=0.0, high=1.0),
        matching_threshold=float_param(inputs, "matching_threshold", 0.8, low=0.0, high=1.0),
        min_consecutive_frames=int_param(inputs, "min_consecutive_frames", 1, low=1, high=1000),
    )
