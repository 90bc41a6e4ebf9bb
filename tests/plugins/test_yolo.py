"""The YOLO plugin on ONNX models built by the test, with the YOLOv8 output layout and known answers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from adapters.plugins.yolo import NO_MODEL_REASON, ModelLoadError, YoloPlugin, letterbox

# Candidates in model-input pixels (64 x 64): cx, cy, w, h, score of cat, score of dog.
CANDIDATES = [
    (32, 32, 20, 10, 0.10, 0.90),  # a dog
    (33, 32, 20, 10, 0.05, 0.80),  # the same dog again, a little to the right: NMS removes it
    (32, 32, 20, 10, 0.70, 0.10),  # a cat in the same place: another class, so NMS keeps it
    (10, 20, 8, 8, 0.20, 0.10),  # a cat below the 0.25 threshold
    (60, 20, 10, 10, 0.60, 0.00),  # a cat reaching past the image, into the letterbox padding
]
# A 128 x 64 frame is scaled by 0.5 into the 64 x 64 input, with 16 rows of padding above and below.
FRAME_W, FRAME_H = 128, 64
DOG_BOX = {"x1": 44.0, "y1": 22.0, "x2": 84.0, "y2": 42.0}
EDGE_CAT_BOX = {"x1": 110.0, "y1": 0.0, "x2": 128.0, "y2": 18.0}


def _build_model(path, *, names: str | None = "{0: 'cat', 1: 'dog'}", input_dims=(1, 3, 64, 64)) -> str:
    """A model whose output is the constant CANDIDATES table plus 0 x mean(input), so the input is consumed."""
    table = np.array(CANDIDATES, dtype=np.float32).T[None]  # (1, 4 + 2 classes, boxes)
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["table"], value=numpy_helper.from_array(table, "table")),
            helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros(1, np.float32), "zero")),
            helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Add", ["table", "nothing"], ["output0"]),
        ],
        "constant_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(input_dims))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, len(CANDIDATES)])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if names is not None:
        helper.set_model_props(model, {"names": names})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return _build_model(tmp_path_factory.mktemp("yolo") / "constant.onnx")


@pytest.fixture(scope="module")
def frame(jpeg) -> bytes:
    return jpeg(np.full((FRAME_H, FRAME_W, 3), 80, np.uint8))


def _detect(plugin: YoloPlugin, context, **params):
    return plugin.tools()["detect"]({"frame_index": 0, **params}, context)["detections"]


def test_detect_decodes_classes_scores_and_letterboxed_boxes(model_path, frame, make_context, check_detection):
    plugin = YoloPlugin(model_path, None, confidence=0.25, iou=0.45)
    assert plugin.availability().available
    assert plugin.input_size == (64, 64)
    assert plugin.class_names == {0: "cat", 1: "dog"}
    detections = _detect(plugin, make_context(frame))
    for item in detections:
        check_detection(item, width=FRAME_W, height=FRAME_H)
    assert [(d["label"], d["confidence"]) for d in detections] == [("dog", 0.9), ("cat", 0.7), ("cat", 0.6)]
    assert detections[0]["box"] == DOG_BOX
    assert detections[1]["box"] == DOG_BOX
    assert detections[2]["box"] == EDGE_CAT_BOX


def test_nms_overlap_threshold_decides_whether_the_duplicate_stays(model_path, frame, make_context):
    plugin = YoloPlugin(model_path, None, confidence=0.25, iou=0.99)
    labels = [d["label"] for d in _detect(plugin, make_context(frame))]
    assert labels == ["dog", "dog", "cat", "cat"]


def test_node_parameters_override_the_thresholds(model_path, frame, make_context):
    plugin = YoloPlugin(model_path, None, confidence=0.25, iou=0.45)
    assert [d["label"] for d in _detect(plugin, make_context(frame), confidence=0.75)] == ["dog"]
    assert len(_detect(plugin, make_context(frame), confidence=0.15)) == 4
    assert len(_detect(plugin, make_context(frame), max_detections=1)) == 1
    with pytest.raises(ValueError, match="confidence"):
        _detect(plugin, make_context(frame), confidence=1.5)


def test_labels_file_overrides_model_metadata(model_path, frame, make_context, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("alpha\nbeta\n")
    plugin = YoloPlugin(model_path, str(labels), confidence=0.25, iou=0.45)
    assert [d["label"] for d in _detect(plugin, make_context(frame))] == ["beta", "alpha", "alpha"]


def test_without_names_classes_are_numbered(tmp_path, frame, make_context):
    plugin = YoloPlugin(_build_model(tmp_path / "nameless.onnx", names=None), None, confidence=0.25, iou=0.45)
    assert [d["label"] for d in _detect(plugin, make_context(frame))] == ["class_1", "class_0", "class_0"]


def test_dynamic_input_size_defaults_to_640(tmp_path, jpeg, make_context):
    path = _build_model(tmp_path / "dynamic.onnx", input_dims=("batch", 3, "height", "width"))
    plugin = YoloPlugin(path, None, confidence=0.25, iou=0.45)
    assert plugin.input_size == (640, 640)
    # A 640 x 640 frame fills the input exactly, so the table's boxes come back unchanged.
    dog = _detect(plugin, make_context(jpeg(np.zeros((640, 640, 3), np.uint8))))[0]
    assert (dog["label"], dog["box"]) == ("dog", {"x1": 22.0, "y1": 27.0, "x2": 42.0, "y2": 37.0})


def test_boxes_wholly_in_the_letterbox_padding_are_dropped(tmp_path, frame, make_context):
    # Into a 640 x 640 input the 128 x 64 frame is scaled by 5 with 160 rows of padding above it,
    # and every candidate of the table lies within those rows.
    path = _build_model(tmp_path / "dynamic.onnx", input_dims=("batch", 3, "height", "width"))
    plugin = YoloPlugin(path, None, confidence=0.25, iou=0.45)
    assert _detect(plugin, make_context(frame)) == []


def test_no_model_is_unavailable_with_its_reason(frame, make_context):
    plugin = YoloPlugin(None, None, confidence=0.25, iou=0.45)
    status = plugin.availability()
    assert not status.available
    assert status.reason == NO_MODEL_REASON == "no model configured (set FORGESYTE_STREAM_YOLO_MODEL)"
    assert set(plugin.tools()) == {"detect"}
    with pytest.raises(RuntimeError, match="no model configured"):
        plugin.tools()["detect"]({}, make_context(frame))


def test_missing_model_file_fails_construction_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "yolov8n.onnx"
    with pytest.raises(ModelLoadError, match="nowhere/yolov8n.onnx"):
        YoloPlugin(str(missing), None, confidence=0.25, iou=0.45)


def test_broken_model_file_fails_construction_naming_the_path(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelLoadError, match="broken.onnx"):
        YoloPlugin(str(broken), None, confidence=0.25, iou=0.45)


def test_missing_labels_file_fails_construction_naming_the_path(model_path, tmp_path):
    with pytest.raises(ModelLoadError, match="labels.txt"):
        YoloPlugin(model_path, str(tmp_path / "labels.txt"), confidence=0.25, iou=0.45)


def test_malformed_names_metadata_fails_construction(tmp_path):
    path = _build_model(tmp_path / "odd.onnx", names="person, bicycle")
    with pytest.raises(ModelLoadError, match="odd.onnx"):
        YoloPlugin(path, None, confidence=0.25, iou=0.45)


def test_class_count_disagreeing_with_the_output_fails_construction(tmp_path, model_path):
    path = _build_model(tmp_path / "three.onnx", names="{0: 'cat', 1: 'dog', 2: 'cow'}")
    with pytest.raises(ModelLoadError, match="three.onnx.*2 class rows.*3 classes"):
        YoloPlugin(path, None, confidence=0.25, iou=0.45)
    labels = tmp_path / "coco.names"
    labels.write_text("person\nbicycle\ncar\n")
    with pytest.raises(ModelLoadError, match="coco.names"):
        YoloPlugin(model_path, str(labels), confidence=0.25, iou=0.45)


def test_letterbox_pads_evenly_with_grey():
    padded, fit = letterbox(np.zeros((64, 128, 3), np.uint8), 64, 64)
    assert padded.shape == (64, 64, 3)
    assert (fit.scale, fit.pad_x, fit.pad_y) == (0.5, 0.0, 16.0)
    assert (padded[:16] == 114).all() and (padded[48:] == 114).all()
    assert (padded[16:48] == 0).all()


def test_detect_declares_the_model_input_side_as_its_need(model_path):
    from application.ports import max_input_side

    plugin = YoloPlugin(model_path, None, confidence=0.25, iou=0.45)
    assert max_input_side(plugin.tools()["detect"], {}) == 64


def test_boxes_of_a_reduced_decode_are_the_full_decode_boxes_in_frame_pixels(model_path, jpeg, make_context, check_detection):
    # A 1024 x 512 frame: the model's 64 pixels need only 1/8 (128 x 64), where the letterbox maps exactly as above, x8.
    plugin = YoloPlugin(model_path, None, confidence=0.25, iou=0.45)
    frame = jpeg(np.full((512, 1024, 3), 80, np.uint8))
    full = _detect(plugin, make_context(frame))
    reduced = _detect(plugin, make_context(frame, reduction=8))
    assert [d["label"] for d in full] == [d["label"] for d in reduced] == ["dog", "cat", "cat"]
    for item in reduced:
        check_detection(item, width=1024, height=512)
    assert reduced[0]["box"] == {key: value * 8 for key, value in DOG_BOX.items()} == full[0]["box"]


@pytest.mark.parametrize("size", [(1, 4000), (4000, 1)])
def test_detect_answers_frames_of_extreme_aspect_ratio(model_path, jpeg, make_context, check_detection, size):
    width, height = size
    plugin = YoloPlugin(model_path, None, confidence=0.25, iou=0.45)
    frame = jpeg(np.full((height, width, 3), 80, np.uint8))
    for item in _detect(plugin, make_context(frame, reduction=8)):
        check_detection(item, width=width, height=height)
