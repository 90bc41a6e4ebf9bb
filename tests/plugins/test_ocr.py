"""RapidOCR with its shipped models on text the test renders itself."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

TEXT = "FORGESYTE 2026"


def _normalise(text: str) -> str:
    return "".join(text.split()).upper()


@pytest.fixture(scope="module")
def text_frame(jpeg) -> bytes:
    image = np.full((200, 640, 3), 255, np.uint8)
    cv2.putText(image, TEXT, (20, 130), cv2.FONT_HERSHEY_SIMPLEX, 2.2, (0, 0, 0), 5, cv2.LINE_AA)
    return jpeg(image)


def test_plugin_exposes_its_tools(ocr_plugin):
    assert ocr_plugin.plugin_id == "ocr"
    assert set(ocr_plugin.tools()) == {"read_all", "text_detect", "text_read"}
    assert ocr_plugin.availability().available


def test_read_all_reads_the_rendered_text(ocr_plugin, make_context, text_frame, check_detection):
    lines = ocr_plugin.tools()["read_all"]({"frame_index": 0}, make_context(text_frame))["text"]
    assert lines
    for line in lines:
        check_detection(line, width=640, height=200)
        assert line["label"] == "text"
        assert line["confidence"] >= 0.5
        assert isinstance(line["text"], str)
    ordered = sorted(lines, key=lambda line: line["box"]["x1"])
    assert _normalise("".join(line["text"] for line in ordered)) == _normalise(TEXT)
    # The text sits between y = 130 - 2.2 * 22 and the baseline at 130.
    for line in lines:
        assert line["box"]["y1"] < 90 and line["box"]["y2"] > 125


def test_detect_then_read_gives_the_same_text(ocr_plugin, make_context, text_frame, check_detection):
    tools = ocr_plugin.tools()
    context = make_context(text_frame)
    detected = tools["text_detect"]({"frame_index": 0}, context)
    assert set(detected) == {"text_boxes"}
    assert detected["text_boxes"]
    for box in detected["text_boxes"]:
        check_detection(box, width=640, height=200)
        assert box["label"] == "text"
        assert "text" not in box
    # As the engine runs a chain: the payload merged with the predecessor's output.
    read = tools["text_read"]({"frame_index": 0, "image_bytes": text_frame, **detected}, context)
    assert context.decodes == 1
    assert len(read["text"]) == len(detected["text_boxes"])
    ordered = sorted(read["text"], key=lambda line: line["box"]["x1"])
    assert _normalise("".join(line["text"] for line in ordered)) == _normalise(TEXT)
    for line, box in zip(read["text"], detected["text_boxes"]):
        check_detection(line, width=640, height=200)
        assert line["box"] == box["box"]


def test_text_read_reads_only_the_boxes_it_is_given(ocr_plugin, make_context, text_frame):
    tools = ocr_plugin.tools()
    context = make_context(text_frame)
    boxes = tools["text_detect"]({}, context)["text_boxes"]
    rightmost = max(boxes, key=lambda box: box["box"]["x1"])
    read = tools["text_read"]({"text_boxes": [rightmost]}, context)["text"]
    assert len(read) == 1
    assert _normalise(read[0]["text"]) in _normalise(TEXT)
    assert _normalise(read[0]["text"]) != _normalise(TEXT)


def test_text_read_without_boxes(ocr_plugin, make_context, text_frame):
    context = make_context(text_frame)
    assert ocr_plugin.tools()["text_read"]({"text_boxes": []}, context) == {"text": []}
    assert ocr_plugin.tools()["text_read"]({}, context) == {"text": []}
    assert context.decodes == 0


def test_text_read_clips_boxes_to_the_frame(ocr_plugin, make_context, text_frame, check_detection):
    box = {"label": "text", "confidence": 1.0, "box": {"x1": -50.0, "y1": 40.0, "x2": 900.0, "y2": 170.0}}
    lines = ocr_plugin.tools()["text_read"]({"text_boxes": [box]}, make_context(text_frame))["text"]
    assert len(lines) == 1
    check_detection(lines[0], width=640, height=200)
    assert _normalise(lines[0]["text"]) == _normalise(TEXT)


def test_text_read_refuses_malformed_boxes(ocr_plugin, make_context, text_frame):
    with pytest.raises(ValueError, match="text_boxes"):
        ocr_plugin.tools()["text_read"]({"text_boxes": [{"label": "text"}]}, make_context(text_frame))


def test_blank_frame_has_no_text(ocr_plugin, make_context, jpeg):
    blank = jpeg(np.full((200, 640, 3), 255, np.uint8))
    assert ocr_plugin.tools()["read_all"]({}, make_context(blank)) == {"text": []}
    assert ocr_plugin.tools()["text_detect"]({}, make_context(blank)) == {"text_boxes": []}


def test_modes_do_not_leak_between_concurrent_calls(ocr_plugin, make_context, text_frame):
    # RapidOCR keeps use_det/use_rec on the engine; interleaved calls in different modes must still each get their own.
    tools = ocr_plugin.tools()
    failures: list[str] = []

    def detect() -> None:
        for _ in range(3):
            result = tools["text_detect"]({}, make_context(text_frame))
            if not result["text_boxes"] or "text" in result["text_boxes"][0]:
                failures.append(f"text_detect gave {result}")

    def read() -> None:
        for _ in range(3):
            result = tools["read_all"]({}, make_context(text_frame))
            if _normalise("".join(line["text"] for line in sorted(result["text"], key=lambda found: found["box"]["x1"]))) != _normalise(TEXT):
                failures.append(f"read_all gave {result}")

    threads = [threading.Thread(target=detect), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
