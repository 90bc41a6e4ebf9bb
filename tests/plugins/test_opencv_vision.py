"""The OpenCV plugin on real images: the astronaut photo, a generated QR code, synthetic motion."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest



def test_plugin_exposes_its_tools(opencv_plugin):
    assert opencv_plugin.plugin_id == "opencv"
    assert set(opencv_plugin.tools()) == {"face_detect", "people_detect", "motion_detect", "qr_decode", "change_detect"}
    assert opencv_plugin.availability().available


def test_face_detect_finds_the_one_face(opencv_plugin, make_context, face_jpeg, check_detection):
    result = opencv_plugin.tools()["face_detect"]({"frame_index": 0}, make_context(face_jpeg))
    faces = result["faces"]
    assert len(faces) == 1
    check_detection(faces[0], width=512, height=512)
    assert faces[0]["label"] == "face"
    box = faces[0]["box"]
    assert box["x1"] == pytest.approx(177, abs=10)
    assert box["y1"] == pytest.approx(66, abs=10)
    assert box["x2"] == pytest.approx(272, abs=10)
    assert box["y2"] == pytest.approx(161, abs=10)
    assert faces[0]["confidence"] > 0.5


def test_face_detect_on_a_blank_frame_finds_nothing(opencv_plugin, make_context, jpeg):
    blank = jpeg(np.full((240, 320, 3), 128, np.uint8))
    assert opencv_plugin.tools()["face_detect"]({}, make_context(blank)) == {"faces": []}


def test_face_detect_honours_min_size(opencv_plugin, make_context, face_jpeg):
    result = opencv_plugin.tools()["face_detect"]({"min_size": 150}, make_context(face_jpeg))
    assert result == {"faces": []}


def test_face_detect_rejects_a_bad_parameter(opencv_plugin, make_context, face_jpeg):
    with pytest.raises(ValueError, match="scale_factor"):
        opencv_plugin.tools()["face_detect"]({"scale_factor": "fast"}, make_context(face_jpeg))


def test_face_detect_is_safe_across_threads(opencv_plugin, make_context, face_jpeg):
    results: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(len(opencv_plugin.tools()["face_detect"]({}, make_context(face_jpeg))["faces"]))
        except BaseException as exc:  # collected and re-checked below, so a failure in a thread fails the test
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [1] * 12


def _draw_person(image: np.ndarray, cx: float, top: float, height: float) -> tuple[int, int, int, int]:
    """Draw a dark standing silhouette (head, shoulders, arms, legs); return its x1, y1, x2, y2.

    No photo of a standing person is in the repository; the Dalal-Triggs
    detector responds to this outline's gradients as it does to a person's.
    """
    u = height / 8.0
    colour = (40, 40, 50)
    cv2.ellipse(image, (int(cx), int(top + u * 0.5)), (int(u * 0.38), int(u * 0.5)), 0, 0, 360, colour, -1)
    cv2.rectangle(image, (int(cx - u * 0.15), int(top + u * 0.9)), (int(cx + u * 0.15), int(top + u * 1.2)), colour, -1)
    polygons = [[(cx - u * 0.95, top + u * 1.2), (cx + u * 0.95, top + u * 1.2), (cx + u * 0.75, top + u * 4.1), (cx - u * 0.75, top + u * 4.1)]]
    for side in (-1, 1):
        polygons.append([(cx + side * u * 0.95, top + u * 1.3), (cx + side * u * 1.25, top + u * 1.4), (cx + side * u * 1.15, top + u * 4.2), (cx + side * u * 0.85, top + u * 4.1)])
        polygons.append([(cx + side * u * 0.05, top + u * 4.0), (cx + side * u * 0.75, top + u * 4.0), (cx + side * u * 0.7, top + u * 7.8), (cx + side * u * 0.2, top + u * 7.8)])
    cv2.fillPoly(image, [np.array(polygon, np.int32) for polygon in polygons], colour)
    cv2.ellipse(image, (int(cx), int(top + u * 4.1)), (int(u * 0.75), int(u * 0.3)), 0, 0, 360, colour, -1)
    return int(cx - u * 1.25), int(top), int(cx + u * 1.25), int(top + u * 7.8)


def _scene(width: int, height: int) -> np.ndarray:
    ramp = np.linspace(160, 220, width, dtype=np.float32)
    return np.repeat(np.repeat(ramp[None, :, None], height, axis=0), 3, axis=2).astype(np.uint8)


def _contains(box: dict, x1: int, y1: int, x2: int, y2: int, slack: int) -> bool:
    return box["x1"] <= x1 + slack and box["y1"] <= y1 + slack and box["x2"] >= x2 - slack and box["y2"] >= y2 - slack


def test_people_detect_finds_a_standing_figure(opencv_plugin, make_context, jpeg, check_detection):
    scene = _scene(640, 480)
    figure = _draw_person(scene, 320, 100, 200)
    result = opencv_plugin.tools()["people_detect"]({"frame_index": 0}, make_context(jpeg(scene)))
    assert set(result) == {"people"}
    assert len(result["people"]) == 1
    person = result["people"][0]
    check_detection(person, width=640, height=480)
    assert person["label"] == "person"
    assert person["confidence"] > 0.9
    assert _contains(person["box"], *figure, slack=10)
    assert person["box"]["x2"] - person["box"]["x1"] < 2.5 * (figure[2] - figure[0])


def test_people_detect_keeps_two_people_apart(opencv_plugin, make_context, jpeg, check_detection):
    scene = _scene(640, 480)
    left = _draw_person(scene, 160, 120, 150)
    right = _draw_person(scene, 470, 120, 150)
    people = opencv_plugin.tools()["people_detect"]({}, make_context(jpeg(scene)))["people"]
    assert len(people) == 2
    for person in people:
        check_detection(person, width=640, height=480)
    assert sum(_contains(person["box"], *left, slack=10) for person in people) == 1
    assert sum(_contains(person["box"], *right, slack=10) for person in people) == 1
    assert people[0]["confidence"] >= people[1]["confidence"]


def test_people_detect_maps_boxes_of_a_shrunk_frame_back(opencv_plugin, make_context, jpeg, check_detection):
    scene = _scene(1280, 960)
    figure = _draw_person(scene, 640, 200, 400)
    people = opencv_plugin.tools()["people_detect"]({"max_side": 640}, make_context(jpeg(scene)))["people"]
    assert len(people) == 1
    check_detection(people[0], width=1280, height=960)
    assert _contains(people[0]["box"], *figure, slack=20)


def test_people_detect_on_an_empty_scene(opencv_plugin, make_context, jpeg):
    assert opencv_plugin.tools()["people_detect"]({}, make_context(jpeg(_scene(640, 480)))) == {"people": []}


def test_people_detect_rejects_a_stride_off_the_block_grid(opencv_plugin, make_context, jpeg):
    with pytest.raises(ValueError, match="win_stride"):
        opencv_plugin.tools()["people_detect"]({"win_stride": 12}, make_context(jpeg(_scene(640, 480))))


def test_people_detect_on_a_frame_smaller_than_the_window(opencv_plugin, make_context, jpeg):
    # OpenCV aborts the process on such a frame; the tool must answer instead.
    tiny = jpeg(np.full((50, 40, 3), 200, np.uint8))
    assert opencv_plugin.tools()["people_detect"]({}, make_context(tiny)) == {"people": []}


def _motion_frames() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(0, 80, (240, 320, 3), dtype=np.uint8), (5, 5), 0)
    moved = background.copy()
    cv2.rectangle(moved, (100, 80), (160, 160), (255, 255, 255), -1)
    return background, moved


def test_motion_detect_warms_up_then_sees_the_moved_rectangle(opencv_plugin, make_context, jpeg, check_detection):
    background, moved = _motion_frames()
    tool = opencv_plugin.tools()["motion_detect"]
    state: dict = {}

    first = tool({}, make_context(jpeg(background), frame_index=0, state=state))["motion"]
    assert first == {"detected": False, "ratio": 0.0, "regions": [], "warming_up": True}

    second = tool({}, make_context(jpeg(background), frame_index=1, state=state))["motion"]
    assert second["warming_up"] is False
    assert second["detected"] is False

    third = tool({}, make_context(jpeg(moved), frame_index=2, state=state))["motion"]
    assert third["warming_up"] is False
    assert third["detected"] is True
    assert type(third["ratio"]) is float
    assert third["ratio"] == pytest.approx(61 * 81 / (240 * 320), rel=0.25)
    region = third["regions"][0]
    check_detection(region, width=320, height=240)
    assert region["label"] == "motion"
    assert region["box"]["x1"] == pytest.approx(100, abs=6)
    assert region["box"]["y1"] == pytest.approx(80, abs=6)
    assert region["box"]["x2"] == pytest.approx(161, abs=6)
    assert region["box"]["y2"] == pytest.approx(161, abs=6)

    # The model learns the rectangle as background: a still frame shows less motion.
    fourth = tool({}, make_context(jpeg(moved), frame_index=3, state=state))["motion"]
    assert fourth["ratio"] < third["ratio"]


def test_motion_detect_ignores_regions_below_min_area(opencv_plugin, make_context, jpeg):
    background, moved = _motion_frames()
    tool = opencv_plugin.tools()["motion_detect"]
    state: dict = {}
    tool({}, make_context(jpeg(background), state=state))
    result = tool({"min_area": 61 * 81 + 500}, make_context(jpeg(moved), state=state))["motion"]
    assert result["detected"] is False
    assert result["regions"] == []
    assert result["ratio"] > 0.03


def test_motion_detect_restarts_when_the_frame_size_changes(opencv_plugin, make_context, jpeg):
    background, _ = _motion_frames()
    tool = opencv_plugin.tools()["motion_detect"]
    state: dict = {}
    tool({}, make_context(jpeg(background), state=state))
    resized = tool({}, make_context(jpeg(cv2.resize(background, (160, 120))), state=state))["motion"]
    assert resized["warming_up"] is True


def test_motion_detect_keeps_streams_apart(opencv_plugin, make_context, jpeg):
    background, moved = _motion_frames()
    tool = opencv_plugin.tools()["motion_detect"]
    state_a: dict = {}
    tool({}, make_context(jpeg(background), state=state_a))
    # A different stream's first frame is a warm-up, whatever stream A has seen.
    assert tool({}, make_context(jpeg(moved), state={}))["motion"]["warming_up"] is True
    assert tool({}, make_context(jpeg(moved), state=state_a))["motion"]["detected"] is True


def _qr_frame(text: str) -> np.ndarray:
    code = cv2.QRCodeEncoder.create().encode(text)
    code = cv2.resize(code, None, fx=8, fy=8, interpolation=cv2.INTER_NEAREST)
    code = cv2.copyMakeBorder(code, 40, 40, 60, 60, cv2.BORDER_CONSTANT, value=255)
    return cv2.cvtColor(code, cv2.COLOR_GRAY2BGR)


def test_qr_decode_reads_a_generated_code(opencv_plugin, make_context, jpeg, check_detection):
    frame = _qr_frame("forgesyte-stream")
    height, width = frame.shape[:2]
    result = opencv_plugin.tools()["qr_decode"]({}, make_context(jpeg(frame)))
    assert len(result["qr_codes"]) == 1
    code = result["qr_codes"][0]
    check_detection(code, width=width, height=height)
    assert code["label"] == "qr"
    assert code["confidence"] == 1.0
    assert code["text"] == "forgesyte-stream"
    # The box hugs the code's dark modules (the encoder's own quiet zone is outside it).
    ys, xs = np.nonzero(frame[:, :, 0] < 128)
    assert code["box"]["x1"] == pytest.approx(xs.min(), abs=4)
    assert code["box"]["y1"] == pytest.approx(ys.min(), abs=4)
    assert code["box"]["x2"] == pytest.approx(xs.max() + 1, abs=4)
    assert code["box"]["y2"] == pytest.approx(ys.max() + 1, abs=4)


def test_qr_decode_without_a_code(opencv_plugin, make_context, face_jpeg):
    assert opencv_plugin.tools()["qr_decode"]({}, make_context(face_jpeg)) == {"qr_codes": []}
