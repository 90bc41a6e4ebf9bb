"""`opencv.change_detect` on a camera-like scene: still with sensor noise, a moving object, lighting drift, bad parameters."""

from __future__ import annotations

import functools
from typing import Any

import cv2
import numpy as np
import pytest

W, H = 640, 480


@functools.cache
def _view() -> np.ndarray:
    rows, columns = np.mgrid[0:H, 0:W]
    base = np.empty((H, W, 3), np.float32)
    base[..., 0] = 90 + 40 * np.sin(columns / 37.0)
    base[..., 1] = 110 + 30 * np.cos(rows / 23.0)
    base[..., 2] = 70 + 0.1 * columns
    base[300:440, 40:160] = 200
    return base


def scene(seed: int = 0, noise: float = 2.5, gain: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """A textured fixed-camera view with per-frame sensor noise; `gain`/`offset` change the light on all of it."""
    base = _view()
    noisy = base * gain + offset + np.random.default_rng(seed).normal(0.0, noise, base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def with_object(frame: np.ndarray, left: int, top: int, size: int = 96) -> np.ndarray:
    moved = frame.copy()
    moved[top : top + size, left : left + size] = (12, 16, 20)  # dark: far from every grey level of the scene
    return moved


@pytest.fixture
def change(opencv_plugin: Any, make_context: Any, jpeg: Any) -> Any:
    tool = opencv_plugin.tools()["change_detect"]
    state: dict[str, Any] = {}

    def run(frame: np.ndarray, index: int = 0, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return tool(params or {}, make_context(jpeg(frame), frame_index=index, state=state))

    return run


def test_the_first_frame_seeds_the_background_and_counts_as_a_change(change: Any) -> None:
    first = change(scene(0))
    assert first == {"changed": True, "change": {"fraction": 1.0, "regions": [], "warming_up": True}}


def test_a_still_scene_with_sensor_noise_is_unchanged_frame_after_frame(change: Any) -> None:
    change(scene(0))
    results = [change(scene(seed), seed) for seed in range(1, 40)]
    assert not any(r["changed"] for r in results), [r["change"]["fraction"] for r in results]
    assert max(r["change"]["fraction"] for r in results) < 0.002


def test_heavy_noise_alone_stays_below_the_default_threshold(change: Any) -> None:
    change(scene(0, noise=6.0))
    results = [change(scene(seed, noise=6.0), seed) for seed in range(1, 20)]
    assert not any(r["changed"] for r in results), [r["change"]["fraction"] for r in results]


def test_a_moving_object_is_a_change_with_its_region_boxed(change: Any) -> None:
    change(scene(0))
    change(scene(1), 1)
    moved = change(with_object(scene(2), 300, 200), 2)
    assert moved["changed"] is True
    assert moved["change"]["fraction"] > 0.01
    region = moved["change"]["regions"][0]
    box = region["box"]
    # The working copy is 80 px wide (1/8): a region's edges are within a working pixel or two of the object's.
    assert box["x1"] == pytest.approx(300, abs=20) and box["x2"] == pytest.approx(396, abs=20)
    assert box["y1"] == pytest.approx(200, abs=20) and box["y2"] == pytest.approx(296, abs=20)
    assert region["label"] == "change" and region["area"] >= 64


def test_an_object_that_stops_is_no_longer_a_change_and_neither_is_the_place_it_left(change: Any) -> None:
    """Changes are what moved in the last motion_frames (4) frames, not what differs from a background still catching up."""
    change(scene(0))
    frames = [change(with_object(scene(seed), 300, 200), seed) for seed in range(1, 40)]
    assert [f["changed"] for f in frames[:6]] == [True] * 4 + [False] * 2
    assert not any(f["changed"] for f in frames[4:]), [f["change"]["fraction"] for f in frames]
    # It leaves: a change for as long again; then the empty place is not one, though the background still remembers it.
    left = [change(scene(seed), seed) for seed in range(40, 50)]
    assert [f["changed"] for f in left] == [True] * 4 + [False] * 6


def test_an_object_moving_slowly_is_seen_on_every_frame(change: Any) -> None:
    change(scene(0))
    frames = [change(with_object(scene(seed), 100 + 4 * seed, 200), seed) for seed in range(1, 30)]
    assert all(f["changed"] for f in frames), [f["change"]["fraction"] for f in frames]


def test_slow_lighting_drift_and_a_sudden_global_light_step_are_not_changes(change: Any) -> None:
    change(scene(0))
    drifting = [change(scene(seed, offset=0.5 * seed), seed) for seed in range(1, 60)]
    assert not any(r["changed"] for r in drifting), [r["change"]["fraction"] for r in drifting]
    # A light switched up by 25 grey levels at once moves every pixel alike: not a change of the scene.
    stepped = change(scene(61, offset=29.5 + 25.0), 61)
    assert stepped["changed"] is False, stepped["change"]["fraction"]


def test_a_frame_size_change_reseeds(change: Any) -> None:
    change(scene(0))
    change(scene(1), 1)
    smaller = change(cv2.resize(scene(2), (320, 240)), 2)
    assert smaller["change"]["warming_up"] is True and smaller["changed"] is True
    assert change(cv2.resize(scene(3), (320, 240)), 3)["changed"] is False


def test_thresholds_are_parameters(change: Any) -> None:
    change(scene(0))
    small = with_object(scene(1), 300, 200, size=24)
    assert change(small, 1, {"min_changed_fraction": 0.5})["changed"] is False
    assert change(small, 2, {"min_changed_fraction": 0.0005})["changed"] is True


@pytest.mark.parametrize(
    ("params", "name"),
    [({"pixel_threshold": 0}, "pixel_threshold"), ({"min_changed_fraction": 2}, "min_changed_fraction"), ({"adapt_rate": "x"}, "adapt_rate")],
)
def test_a_bad_parameter_is_refused_naming_it(change: Any, params: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        change(scene(0), 0, params)


def test_the_gate_outputs_are_declared(opencv_plugin: Any) -> None:
    assert opencv_plugin.tools()["change_detect"].outputs == ("changed", "change")
