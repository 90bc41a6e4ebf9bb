"""`opencv.change_detect`: a cheap "did the scene change?" measure, made to gate a detector (docs/gating.md).

It works on a small working copy of the frame (80 pixels on the longer side
by default: 1/8 of a 640 x 480 frame). A pixel has changed when its grey
level differs by more than `pixel_threshold` both from a per-stream
background that follows the scene slowly and from the frame `motion_frames`
frames before (4), after each difference's median is taken off (a global
change of light is not a change of the scene). The background alone would
keep reporting the place a walker left until it caught up (about 30 frames);
the last frame alone misses a slow, plain object, whose edges move less than
a working pixel a frame; both together report what moved in the last few
frames, which is what a gated detector must see. The scene has changed when at least
`min_changed_fraction` of the pixels did. Regions are the connected blobs of
changed pixels, as boxes in frame pixels. Costs well under a millisecond per
frame beyond the reduced decode (docs/gating.md, bench/gating.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from adapters.plugins.common import detection, float_param, int_param, max_side_param, working_image
from application.ports import ToolContext

_CHANGE_SIDE = max_side_param(80, low=16)


class ChangeDetect:
    """The tool: `{"changed": bool, "change": {"fraction", "regions", "warming_up"}}`.

    Parameters: pixel_threshold (20 grey levels a pixel must differ by),
    min_changed_fraction (0.002 of the working pixels), adapt_rate (0.05: the
    share of each frame blended into the background, so the background
    catches up with a scene that changed and stays so within ~60 frames),
    motion_frames (4: how far back the frame is that a change must also
    differ from), min_area (64 frame pixels for a region to be reported),
    max_side (80). Per stream it keeps the background and the last
    motion_frames working copies: (motion_frames + 1) x 4 bytes x the
    working pixels, 96 KB at the defaults on a 4:3 frame.
    The first frame of a stream, or the first after the frame size changes,
    seeds the background and reports a change (`warming_up`): a gated
    detector runs on it anyway.
    """

    outputs = ("changed", "change")
    returns_json = True

    def __init__(self) -> None:
        self.max_input_side = _CHANGE_SIDE

    def __call__(self, inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        threshold = float_param(inputs, "pixel_threshold", 20.0, low=1.0, high=255.0)
        min_fraction = float_param(inputs, "min_changed_fraction", 0.002, low=0.0, high=1.0)
        adapt_rate = float_param(inputs, "adapt_rate", 0.05, low=0.0, high=1.0)
        min_area = int_param(inputs, "min_area", 64, low=1, high=1_000_000_000)
        motion_frames = int_param(inputs, "motion_frames", 4, low=1, high=30)
        image, geometry = working_image(context, _CHANGE_SIDE(inputs))
        grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32), (3, 3), 0)

        state = context.state()
        background = state.get("background")
        recent = state.get("recent")
        if (
            not isinstance(background, np.ndarray)
            or background.shape != grey.shape
            or state.get("frame") != context.frame_size
            or not isinstance(recent, deque)
            or recent.maxlen != motion_frames
        ):
            state["background"] = grey.copy()
            state["recent"] = deque([grey], maxlen=motion_frames)
            state["frame"] = context.frame_size
            return {"changed": True, "change": {"fraction": 1.0, "regions": [], "warming_up": True}}

        mask = _changed(grey, background, threshold) & _changed(grey, recent[0], threshold)
        if len(recent) == recent.maxlen:
            recent.popleft()
        recent.append(grey)
        fraction = float(cv2.countNonZero(mask)) / float(mask.size)
        cv2.accumulateWeighted(grey, background, adapt_rate)

        count, _labels, stats, _centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        pixel_area = geometry.scale_x * geometry.scale_y
        regions = []
        for x, y, w, h, area in stats[1:count].tolist():  # label 0 is the unchanged rest
            frame_area = round(area * pixel_area)
            if frame_area >= min_area:
                regions.append(detection("change", 1.0, *geometry.box(x, y, x + w, y + h), area=int(frame_area)))
        regions.sort(key=lambda region: region["area"], reverse=True)
        changed = fraction >= min_fraction and fraction > 0.0
        return {"changed": changed, "change": {"fraction": round(fraction, 6), "regions": regions, "warming_up": False}}


def _changed(grey: np.ndarray, reference: np.ndarray, threshold: float) -> np.ndarray:
    """The pixels that differ from `reference` by more than `threshold`, once the whole frame's shift is taken off."""
    difference: np.ndarray = grey - reference
    difference -= np.float32(np.median(difference))  # a global change of light moves every pixel alike
    changed: np.ndarray = (np.abs(difference) > threshold).astype(np.uint8) * 255
    return changed
