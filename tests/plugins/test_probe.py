"""The probe answers from the JPEG header and never decodes."""

from __future__ import annotations

import numpy as np

from adapters.plugins.probe import ProbePlugin


def test_frame_info_reads_the_header_only(make_context, jpeg):
    data = jpeg(np.zeros((480, 640, 3), np.uint8))
    context = make_context(data)
    result = ProbePlugin().tools()["frame_info"]({"frame_index": 0, "image_bytes": data}, context)
    assert result == {"width": 640, "height": 480, "bytes": len(data), "components": 3}
    assert context.decodes == 0


def test_frame_info_on_a_greyscale_jpeg(make_context, jpeg):
    data = jpeg(np.zeros((48, 64), np.uint8))
    result = ProbePlugin().tools()["frame_info"]({}, make_context(data))
    assert result["components"] == 1
    assert (result["width"], result["height"]) == (64, 48)


def test_probe_is_always_available():
    plugin = ProbePlugin()
    assert plugin.plugin_id == "probe"
    assert plugin.availability().available
    assert set(plugin.tools()) == {"frame_info"}


def test_only_the_header_reading_probe_runs_inline() -> None:
    from adapters.plugins.ocr import OcrPlugin
    from adapters.plugins.opencv_vision import OpenCvVisionPlugin
    from adapters.plugins.probe import ProbePlugin
    from adapters.plugins.yolo import YoloPlugin
    from application.ports import runs_inline

    assert [runs_inline(tool) for tool in ProbePlugin().tools().values()] == [True]
    for plugin in (OpenCvVisionPlugin(), OcrPlugin(), YoloPlugin(model_path=None)):
        assert plugin.tools(), plugin.plugin_id
        assert not any(runs_inline(tool) for tool in plugin.tools().values()), plugin.plugin_id
