"""Every shipped tool on a reduced decode reports what it reports on the full frame, in the frame's own pixels.

The "full" run decodes at 1/1 and, where it matters, lifts the tool's max_side
so that it really works at full resolution; the "reduced" run decodes at the
reduction the pipeline service would choose for the shipped pipeline files.
Boxes must agree within a tolerance relative to the object's size.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import cv2
import numpy as np
import pytest

from adapters.media.codec import OpenCvJpegDecoder
from adapters.plugins.common import frame_geometry
from domain import jpeg_reduction, read_jpeg_info
from tests.plugins.test_opencv_vision import _draw_person, _scene

FULL = {"max_side": 100_000}


def encode(image: np.ndarray, quality: int = 92) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    assert ok
    return data.tobytes()


@cache
def uhd_with_face(face_path: str) -> bytes:
    canvas = np.full((2160, 3840, 3), 90, np.uint8)
    canvas[56 : 56 + 2048, 900 : 900 + 2048] = cv2.resize(cv2.imread(face_path), (2048, 2048))
    return encode(canvas)


def close_boxes(a: dict[str, float], b: dict[str, float], tolerance: float) -> bool:
    """Boxes agree when every edge is within `tolerance` of the larger box's longer side."""
    size = max(a["x2"] - a["x1"], a["y2"] - a["y1"], b["x2"] - b["x1"], b["y2"] - b["y1"])
    return all(abs(a[key] - b[key]) <= tolerance * size for key in ("x1", "y1", "x2", "y2"))


def test_faces_in_a_4k_frame_decoded_at_half_size(opencv_plugin, make_context, face_jpeg, check_detection) -> None:
    from tests.plugins.conftest import FACE_IMAGE

    frame = uhd_with_face(str(FACE_IMAGE))
    assert jpeg_reduction(read_jpeg_info(frame), 1920) == 2
    tool = opencv_plugin.tools()["face_detect"]
    full = tool(FULL, make_context(frame))["faces"]
    reduced = tool({}, make_context(frame, reduction=2))["faces"]
    assert full and reduced
    best_full, best_reduced = full[0]["box"], reduced[0]["box"]
    check_detection(reduced[0], width=3840, height=2160)
    assert best_reduced["x1"] > 900, "the box is in the 4K frame's pixels"
    assert close_boxes(best_full, best_reduced, 0.08), (best_full, best_reduced)


def test_qr_code_in_a_4k_frame_decoded_at_half_size(opencv_plugin, make_context, check_detection) -> None:
    code = cv2.QRCodeEncoder.create().encode("forgesyte-4k")
    code = cv2.resize(code, None, fx=16, fy=16, interpolation=cv2.INTER_NEAREST)
    canvas = np.full((2160, 3840, 3), 255, np.uint8)
    height, width = code.shape[:2]
    canvas[1000 : 1000 + height, 2500 : 2500 + width] = cv2.cvtColor(code, cv2.COLOR_GRAY2BGR)
    frame = encode(canvas)
    tool = opencv_plugin.tools()["qr_decode"]
    full = tool(FULL, make_context(frame))["qr_codes"]
    reduced = tool({}, make_context(frame, reduction=2))["qr_codes"]
    assert [c["text"] for c in full] == [c["text"] for c in reduced] == ["forgesyte-4k"]
    check_detection(reduced[0], width=3840, height=2160)
    assert close_boxes(full[0]["box"], reduced[0]["box"], 0.03), (full[0]["box"], reduced[0]["box"])
    assert reduced[0]["box"]["x1"] == pytest.approx(2500 + 4 * 16, abs=40)  # the code's quiet zone is 4 modules


def test_people_in_a_4k_frame_decoded_at_quarter_size(opencv_plugin, make_context, check_detection) -> None:
    scene = _scene(3840, 2160)
    figure = _draw_person(scene, 1900, 500, 1300)
    frame = encode(scene)
    assert jpeg_reduction(read_jpeg_info(frame), 640) == 4
    tool = opencv_plugin.tools()["people_detect"]
    full = tool({}, make_context(frame))["people"]  # decoded whole, then shrunk to 640 as before
    reduced = tool({}, make_context(frame, reduction=4))["people"]
    assert len(full) == len(reduced) == 1
    check_detection(reduced[0], width=3840, height=2160)
    assert close_boxes(full[0]["box"], reduced[0]["box"], 0.05), (full[0]["box"], reduced[0]["box"])
    assert reduced[0]["box"]["x1"] <= figure[0] + 100 and reduced[0]["box"]["x2"] >= figure[2] - 100


def test_motion_regions_of_a_shrunk_model_are_reported_in_frame_pixels(opencv_plugin, make_context, check_detection) -> None:
    background = np.full((720, 1280, 3), 60, np.uint8)
    moved = background.copy()
    cv2.rectangle(moved, (700, 200), (1000, 500), (230, 230, 230), -1)
    frames = [encode(background), encode(moved)]
    assert jpeg_reduction(read_jpeg_info(frames[0]), 640) == 2
    tool = opencv_plugin.tools()["motion_detect"]

    def run(params: dict[str, Any], reduction: int) -> dict[str, Any]:
        state: dict[str, Any] = {}
        tool(params, make_context(frames[0], state=state, reduction=reduction))
        return tool(params, make_context(frames[1], state=state, reduction=reduction))["motion"]

    full = run({"max_side": 1280}, 1)
    reduced = run({}, 2)
    assert full["detected"] and reduced["detected"]
    assert full["ratio"] == pytest.approx(reduced["ratio"], rel=0.05)
    check_detection(reduced["regions"][0], width=1280, height=720)
    assert close_boxes(full["regions"][0]["box"], reduced["regions"][0]["box"], 0.02)
    # The area is counted in frame pixels whatever size the model works at: 301 x 301 changed pixels.
    assert full["regions"][0]["area"] == pytest.approx(301 * 301, rel=0.02)
    assert reduced["regions"][0]["area"] == pytest.approx(301 * 301, rel=0.05)


def test_motion_model_is_rebuilt_at_its_working_size_when_the_frame_size_changes(opencv_plugin, make_context) -> None:
    tool = opencv_plugin.tools()["motion_detect"]
    state: dict[str, Any] = {}
    small = encode(np.full((360, 640, 3), 60, np.uint8))
    large = encode(np.full((2160, 3840, 3), 60, np.uint8))
    assert tool({}, make_context(small, state=state))["motion"]["warming_up"]
    assert not tool({}, make_context(small, state=state))["motion"]["warming_up"]
    assert tool({}, make_context(large, state=state, reduction=4))["motion"]["warming_up"]
    assert not tool({}, make_context(large, state=state, reduction=4))["motion"]["warming_up"]
    assert state["model"].shape == (3840, 2160, 640, 360), "the model is 640 x 360 for a 4K frame"


def test_ocr_of_a_4k_frame_decoded_reduced(ocr_plugin, make_context, check_detection) -> None:
    canvas = np.full((2160, 3840, 3), 255, np.uint8)
    cv2.putText(canvas, "REDUCED DECODE", (1200, 1200), cv2.FONT_HERSHEY_SIMPLEX, 5, (0, 0, 0), 12)
    frame = encode(canvas)
    tool = ocr_plugin.tools()["read_all"]
    # max_side 960 keeps the two OCR passes short; the pipeline's 1920 gives reduction 2 the same way.
    assert jpeg_reduction(read_jpeg_info(frame), 960) == 4
    full = tool({"max_side": 960}, make_context(frame))["text"]
    reduced = tool({"max_side": 960}, make_context(frame, reduction=4))["text"]
    assert [line["text"] for line in full] == [line["text"] for line in reduced]
    assert "REDUCED" in reduced[0]["text"]
    check_detection(reduced[0], width=3840, height=2160)
    assert close_boxes(full[0]["box"], reduced[0]["box"], 0.02), (full[0]["box"], reduced[0]["box"])
    assert reduced[0]["box"]["x1"] == pytest.approx(1200, abs=60)


def test_text_read_crops_boxes_given_in_frame_pixels_from_a_reduced_image(ocr_plugin, make_context) -> None:
    canvas = np.full((2160, 3840, 3), 255, np.uint8)
    cv2.putText(canvas, "CROP ME", (2000, 1500), cv2.FONT_HERSHEY_SIMPLEX, 5, (0, 0, 0), 12)
    frame = encode(canvas)
    context = make_context(frame, reduction=4)
    boxes = ocr_plugin.tools()["text_detect"]({"max_side": 960}, context)["text_boxes"]
    assert len(boxes) == 1 and boxes[0]["box"]["x1"] == pytest.approx(2000, abs=60)
    lines = ocr_plugin.tools()["text_read"]({"text_boxes": boxes, "max_side": 960}, context)["text"]
    assert [line["text"].replace(" ", "") for line in lines] == ["CROPME"]
    assert lines[0]["box"] == boxes[0]["box"]


@pytest.mark.parametrize("size", [(1, 4000), (4000, 1), (1, 1)])
def test_ocr_tools_answer_frames_of_extreme_aspect_ratio(ocr_plugin, make_context, size: tuple[int, int]) -> None:
    """RapidOCR alone fails on these (its resize rounds a side to zero) or blows a tall strip up to tens of megapixels."""
    width, height = size
    frame = encode(np.random.default_rng(1).integers(0, 255, size=(height, width, 3), dtype=np.uint8))
    reduction = jpeg_reduction(read_jpeg_info(frame), 1920)
    tools = ocr_plugin.tools()
    assert isinstance(tools["read_all"]({}, make_context(frame, reduction=reduction))["text"], list)
    whole = [{"box": {"x1": 0.0, "y1": 0.0, "x2": float(width), "y2": float(height)}}]
    assert isinstance(tools["text_read"]({"text_boxes": whole}, make_context(frame, reduction=reduction))["text"], list)


@pytest.mark.parametrize("size", [(1, 4000), (4000, 1)])
def test_opencv_tools_answer_frames_of_extreme_aspect_ratio(opencv_plugin, make_context, size: tuple[int, int]) -> None:
    width, height = size
    frame = encode(np.random.default_rng(2).integers(0, 255, size=(height, width, 3), dtype=np.uint8))
    for tool_id in ("face_detect", "people_detect", "motion_detect", "qr_decode"):
        state: dict[str, Any] = {}
        for _ in range(2):
            result = opencv_plugin.tools()[tool_id]({}, make_context(frame, state=state, reduction=4))
        assert isinstance(result, dict) and result, tool_id


def test_geometry_follows_an_exif_rotation_that_swaps_the_sides(make_context) -> None:
    """A frame whose EXIF orientation rotates it decodes with width and height swapped: boxes follow the decoded image."""

    class Rotated:
        frame_size = (3840, 2160)
        image_reduction = 4

    geometry = frame_geometry(Rotated(), np.zeros((960, 540, 3), np.uint8))
    assert (geometry.width, geometry.height, geometry.scale_x) == (2160, 3840, 4.0)
    assert geometry.box(10, 20, 540, 960) == (40.0, 80.0, 2160.0, 3840.0)
    with pytest.raises(RuntimeError, match="not the frame's"):
        frame_geometry(Rotated(), np.zeros((100, 100, 3), np.uint8))


@pytest.mark.parametrize("reduction", [1, 2, 4, 8])
def test_the_decoder_reduces_as_libjpeg_does_and_charges_what_it_holds(reduction: int) -> None:
    image = np.random.default_rng(3).integers(0, 255, size=(1001, 1499, 3), dtype=np.uint8)
    decoder = OpenCvJpegDecoder(max_pixels=2_000_000)
    for progressive in (False, True):
        ok, data = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_PROGRESSIVE), int(progressive)])
        assert ok
        info = read_jpeg_info(data.tobytes())
        decoded = decoder.decode(data.tobytes(), reduction)
        assert decoded.shape == (-(-1001 // reduction), -(-1499 // reduction), 3)
        output = decoded.nbytes
        # Progressive: every coefficient block, 2 bytes a coefficient; 4:2:0, so Y has 188 x 126 blocks, Cb and Cr 94 x 63.
        assert decoder.memory_needed(info, reduction) == output + ((188 * 126 + 2 * 94 * 63) * 64 * 2 if progressive else 0)


def test_the_decoder_refuses_an_unknown_reduction() -> None:
    with pytest.raises(ValueError, match="reduction must be one of"):
        OpenCvJpegDecoder(max_pixels=100).decode(encode(np.zeros((8, 8, 3), np.uint8)), 3)
