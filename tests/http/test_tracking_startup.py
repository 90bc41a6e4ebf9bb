"""Start-up refusals for the YOLO layouts, the ONNX providers and tracking nodes, and yolo_counting end to end."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import httpx
import numpy as np

from tests.http.test_cli import SHIPPED_PIPELINES, assert_refused, serve
from tests.plugins.test_yolo import _build_model
from tests.support.client import StreamClient
from tests.support.media import jpeg
from tests.support.server import start_server


def test_a_yolo_model_of_unknown_layout_stops_start_up(tmp_path: Path) -> None:
    model = _build_model(tmp_path / "odd-layout.onnx", names=None, table=np.zeros((1, 3, 64), np.float32))
    result = serve(FORGESYTE_STREAM_YOLO_MODEL=model)
    assert_refused(result, "model configuration error", "odd-layout.onnx", "fits no known YOLO layout")


def test_an_unavailable_onnx_provider_stops_start_up_naming_it() -> None:
    assert_refused(
        serve(FORGESYTE_STREAM_ONNX_PROVIDERS="CUDA,CPU"),
        "FORGESYTE_STREAM_ONNX_PROVIDERS",
        "CUDAExecutionProvider is not available",
    )
    assert_refused(serve(FORGESYTE_STREAM_ONNX_PROVIDERS="Warp"), "'Warp' is not an ONNX Runtime execution provider")


def test_a_bad_line_in_a_pipeline_file_stops_start_up_naming_file_and_node(tmp_path: Path) -> None:
    directory = tmp_path / "pipelines"
    directory.mkdir()
    definition = json.loads((SHIPPED_PIPELINES / "faces_tracked.json").read_text())
    definition["nodes"][2]["params"]["lines"][0]["end"] = [0.5, 2.0]
    (directory / "faces_tracked.json").write_text(json.dumps(definition))
    result = serve(FORGESYTE_STREAM_PIPELINES_DIR=str(directory))
    assert_refused(result, "pipeline configuration error", "faces_tracked.json", "node 'lines'", "outside 0..1")


def test_yolo_counting_tracks_counts_the_zone_and_releases_its_occupancy(tmp_path: Path) -> None:
    # The end-to-end layout model answers the same three boxes for every frame (tests/plugins/test_yolo.py).
    model = _build_model(tmp_path / "e2e.onnx", layout="e2e")
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    shutil.copy(SHIPPED_PIPELINES / "yolo_counting.json", pipelines)
    server = start_server(
        {
            "FORGESYTE_STREAM_PIPELINES_DIR": str(pipelines),
            "FORGESYTE_STREAM_PLUGINS": "",
            "FORGESYTE_STREAM_YOLO_MODEL": model,
        }
    )
    frame = jpeg(128, 64)

    def occupancy() -> float:
        body = httpx.get(f"{server.http}/metrics", timeout=5, trust_env=False).text
        match = re.search(r'^stream_zone_occupancy\{pipeline_id="yolo_counting",zone="middle"\} (\S+)$', body, re.MULTILINE)
        assert match, body
        return float(match.group(1))

    async def scenario() -> list[dict]:
        client = await StreamClient.open(server.ws("yolo_counting"))
        results = []
        for _ in range(3):
            await client.send(frame)
            results.append((await client.recv())["result"])
        assert occupancy() == 2.0, "while the stream is open its objects in the zone are on the gauge"
        await client.close()
        return results

    try:
        assert occupancy() == 0.0
        results = asyncio.run(scenario())
        # dog (44..84, 22..42) and the two cats: the edge cat's feet (119, 18) lie outside the middle zone.
        assert [[d["tracker_id"] for d in r["detections"]] for r in results] == [[1, 2, 3]] * 3
        assert results[-1]["zone_counts"] == {"middle": {"occupancy": 2, "entered": 2}}
        assert results[-1]["line_counts"] == {"centre": {"in": 0, "out": 0}}
        server.wait_for(lambda health: health["sessions_active"] == 0)
        assert occupancy() == 0.0, "the stream's share leaves the gauge when it ends"
    finally:
        server.stop()
