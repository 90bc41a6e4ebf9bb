"""The plugins driven by the real pipeline engine: merged inputs, per-stream state, JSON-safe results."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from adapters.media.codec import OpenCvJpegDecoder
from adapters.plugins.probe import ProbePlugin
from adapters.plugins.yolo import YoloPlugin
from application.pipeline import DagPipelineService
from application.stream_state import StreamStateStore
from domain import PipelineDefinition, PipelineEdge, PipelineNode
from tests.support.catalog import DictCatalog


def _single(pipeline_id: str, plugin_id: str, tool_id: str, **params) -> PipelineDefinition:
    return PipelineDefinition.build(
        id=pipeline_id,
        name=pipeline_id,
        nodes=[PipelineNode("only", plugin_id, tool_id, params)],
        edges=[],
        entry_nodes=["only"],
        output_nodes=["only"],
    )


@pytest.fixture(scope="module")
def service(opencv_plugin, ocr_plugin) -> DagPipelineService:
    text_chain = PipelineDefinition.build(
        id="text",
        name="detect then read",
        nodes=[PipelineNode("detect", "ocr", "text_detect"), PipelineNode("read", "ocr", "text_read")],
        edges=[PipelineEdge("detect", "read")],
        entry_nodes=["detect"],
        output_nodes=["detect", "read"],
    )
    catalog = DictCatalog(
        text_chain,
        _single("motion", "opencv", "motion_detect", min_area=100),
        _single("faces", "opencv", "face_detect"),
        _single("probe", "probe", "frame_info"),
        _single("yolo", "yolo", "detect"),
    )
    plugins = {
        "opencv": opencv_plugin,
        "ocr": ocr_plugin,
        "probe": ProbePlugin(),
        "yolo": YoloPlugin(None, None, confidence=0.25, iou=0.45),
    }
    return DagPipelineService(catalog, plugins, OpenCvJpegDecoder(max_pixels=40_000_000), StreamStateStore())


def test_text_chain_through_the_engine(service, jpeg):
    image = np.full((200, 640, 3), 255, np.uint8)
    cv2.putText(image, "FORGESYTE 2026", (20, 130), cv2.FONT_HERSHEY_SIMPLEX, 2.2, (0, 0, 0), 5, cv2.LINE_AA)
    result = service.run_pipeline("text", {"frame_index": 3, "image_bytes": jpeg(image)})
    assert json.loads(json.dumps(result)) == result
    assert len(result["text_boxes"]) == len(result["text"]) >= 1
    words = "".join(line["text"] for line in sorted(result["text"], key=lambda line: line["box"]["x1"]))
    assert "".join(words.split()).upper() == "FORGESYTE2026"


def test_motion_state_lives_per_stream(service, jpeg):
    background = np.full((120, 160, 3), 40, np.uint8)
    moved = background.copy()
    cv2.rectangle(moved, (40, 30), (90, 80), (255, 255, 255), -1)
    service.open_stream("a")
    first = service.run_pipeline("motion", {"frame_index": 0, "image_bytes": jpeg(background)}, stream_id="a")
    assert first["motion"]["warming_up"] is True
    second = service.run_pipeline("motion", {"frame_index": 1, "image_bytes": jpeg(moved)}, stream_id="a")
    assert second["motion"]["detected"] is True
    # A one-off frame has no stream, so no model to compare against.
    one_off = service.run_pipeline("motion", {"frame_index": 0, "image_bytes": jpeg(moved)})
    assert one_off["motion"]["warming_up"] is True
    service.release_stream("a")
    again = service.run_pipeline("motion", {"frame_index": 2, "image_bytes": jpeg(moved)}, stream_id="a")
    assert again["motion"]["warming_up"] is True
    service.release_stream("a")


def test_faces_and_probe_results_are_plain_json(service, face_jpeg):
    faces = service.run_pipeline("faces", {"frame_index": 0, "image_bytes": face_jpeg})
    assert json.loads(json.dumps(faces)) == faces
    assert len(faces["faces"]) == 1
    probe = service.run_pipeline("probe", {"frame_index": 0, "image_bytes": face_jpeg})
    assert probe == {"width": 512, "height": 512, "bytes": len(face_jpeg), "components": 3}


def test_yolo_without_a_model_makes_its_pipeline_unavailable(service):
    status = service.availability("yolo")
    assert not status.available
    assert "no model configured (set FORGESYTE_STREAM_YOLO_MODEL)" in (status.reason or "")
