"""The YOLO plugin on ONNX models built by the test, in each output layout, with known answers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from adapters.plugins.yolo import NO_MODEL_REASON, Layout, ModelLoadError, YoloPlugin, detect_layout, letterbox

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


# The same answers in the other layouts. YOLOv5: objectness times the class score, so 0.9 x (0.9 / 0.9) is the dog's 0.9.
V5_CANDIDATES = [(cx, cy, w, h, 0.9, cat / 0.9, dog / 0.9) for cx, cy, w, h, cat, dog in CANDIDATES]
# End-to-end (NMS-free): x1, y1, x2, y2, score, class id, duplicates already removed by the model.
E2E_ROWS = [
    (22, 27, 42, 37, 0.90, 1),
    (22, 27, 42, 37, 0.70, 0),
    (6, 16, 14, 24, 0.20, 0),
    (55, 15, 65, 25, 0.60, 0),
]
# Real exports propose thousands of boxes; padding the tables with empty candidates keeps boxes > classes.
BOXES = 64


def _table(layout: str) -> np.ndarray:
    if layout == "v8":
        rows = np.zeros((BOXES, 6), np.float32)
        rows[: len(CANDIDATES)] = CANDIDATES
        return rows.T[None]  # (1, 4 + 2 classes, boxes)
    if layout == "v5":
        rows = np.zeros((BOXES, 7), np.float32)
        rows[: len(V5_CANDIDATES)] = V5_CANDIDATES
        return rows[None]  # (1, boxes, 5 + 2 classes)
    rows = np.zeros((300, 6), np.float32)
    rows[: len(E2E_ROWS)] = E2E_ROWS
    return rows[None]  # (1, 300, 6)


def _build_model(
    path,
    *,
    names: str | None = "{0: 'cat', 1: 'dog'}",
    input_dims=(1, 3, 64, 64),
    layout: str = "v8",
    table: np.ndarray | None = None,
    output_dims: list | None = None,
) -> str:
    """A model whose output is a constant table plus 0 x mean(input), so the input is consumed."""
    table = _table(layout) if table is None else table
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
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, output_dims or list(table.shape))],
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
    with pytest.raises(ModelLoadError, match=r"three.onnx.*names.*\[1, 6, 64\] fits no known YOLO layout with the 3 classes"):
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
# Output layouts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "expected"), [("v8", Layout.V8), ("v5", Layout.V5), ("e2e", Layout.END_TO_END)]
)
@pytest.mark.parametrize("names", ["{0: 'cat', 1: 'dog'}", None])
def test_each_layout_is_told_from_the_output_shape_and_decoded_alike(
    tmp_path, frame, make_context, check_detection, layout, expected, names
):
    plugin = YoloPlugin(_build_model(tmp_path / f"{layout}.onnx", layout=layout, names=names), None)
    assert plugin.layout is expected
    assert plugin.providers == ["CPUExecutionProvider"]
    detections = _detect(plugin, make_context(frame))
    for item in detections:
        check_detection(item, width=FRAME_W, height=FRAME_H)
    cat, dog = ("cat", "dog") if names else ("class_0", "class_1")
    assert [(d["label"], d["confidence"]) for d in detections] == [(dog, 0.9), (cat, 0.7), (cat, 0.6)]
    assert [d["box"] for d in detections] == [DOG_BOX, DOG_BOX, EDGE_CAT_BOX]


def test_end_to_end_output_is_not_suppressed_again(tmp_path, frame, make_context):
    # Two overlapping dogs: the model kept both, so the server must not run NMS over them.
    table = _table("e2e")
    table[0, 4] = (23, 27, 43, 37, 0.8, 1)
    plugin = YoloPlugin(_build_model(tmp_path / "e2e.onnx", table=table), None, iou=0.1)
    assert [d["label"] for d in _detect(plugin, make_context(frame))] == ["dog", "dog", "cat", "cat"]
    assert len(_detect(plugin, make_context(frame), max_detections=2)) == 2


def test_end_to_end_class_ids_must_be_whole_numbers(tmp_path, frame, make_context):
    table = _table("e2e")
    table[0, 0, 5] = 0.5
    plugin = YoloPlugin(_build_model(tmp_path / "e2e.onnx", table=table), None)
    with pytest.raises(ValueError, match="class id"):
        _detect(plugin, make_context(frame))


@pytest.mark.parametrize(
    ("shape", "classes", "expected"),
    [
        ([1, 84, 8400], 80, Layout.V8),
        ([1, 84, 8400], None, Layout.V8),
        (["batch", 84, "anchors"], None, Layout.V8),
        ([1, 5, 8400], None, Layout.V8),  # one class, v8
        ([1, 25200, 85], 80, Layout.V5),
        ([1, 25200, 85], None, Layout.V5),
        (["batch", "anchors", 85], None, Layout.V5),
        ([1, 300, 6], 80, Layout.END_TO_END),
        ([1, 300, 6], None, Layout.END_TO_END),
        ([1, 300, 6], 1, Layout.END_TO_END),
        ([1, 25200, 6], 1, Layout.V5),  # one class, v5: the anchor grid of a 640 x 640 input
        ([1, 25200, 6], None, Layout.V5),
        ([1, 102000, 6], None, Layout.V5),  # a P6 model (strides 8-64) at 1280 x 1280
    ],
)
def test_layout_rules(shape, classes, expected):
    size = (1280, 1280) if 102000 in shape else (640, 640)
    assert detect_layout(shape, classes, size) is expected


@pytest.mark.parametrize(
    ("shape", "classes", "why"),
    [
        ([1, 8400], None, "not 3-D"),
        ([4, 84, 8400], None, "batch of 4"),
        ([1, 84, 8400], 3, "fits no known YOLO layout with the 3 classes"),
        ([1, 3, 8400], None, "fits no known YOLO layout"),
        (["batch", "rows", "cols"], None, "fits no known YOLO layout"),
        ([1, 100, 100], None, "fits no known YOLO layout"),
    ],
)
def test_shapes_that_fit_no_layout_are_refused(shape, classes, why):
    with pytest.raises(ValueError, match=why):
        detect_layout(shape, classes, (640, 640))


def test_a_model_of_unknown_layout_fails_construction_naming_the_file(tmp_path):
    path = _build_model(tmp_path / "odd-layout.onnx", names=None, table=np.zeros((1, 3, 64), np.float32))
    with pytest.raises(ModelLoadError, match=r"odd-layout.onnx.*\[1, 3, 64\] fits no known YOLO layout"):
        YoloPlugin(path, None)


# Execution providers ------------------------------------------------------------------------


def test_providers_must_name_one(model_path):
    with pytest.raises(ValueError, match="at least one"):
        YoloPlugin(model_path, None, providers=())


def test_a_provider_that_does_not_initialise_is_refused_not_silently_replaced(model_path, monkeypatch):
    # When CUDA is requested but the driver or device is missing, ONNX Runtime builds the session on
    # the CPU with a log line only. Without a GPU here, that answer is injected: the session reports
    # only the CPU provider although two were requested.
    import onnxruntime

    monkeypatch.setattr(onnxruntime.InferenceSession, "get_providers", lambda self: ["CPUExecutionProvider"])
    with pytest.raises(ModelLoadError, match="could not initialise AzureExecutionProvider.*only CPUExecutionProvider"):
        YoloPlugin(model_path, None, providers=("AzureExecutionProvider", "CPUExecutionProvider"))
