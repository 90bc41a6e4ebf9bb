"""The HTTP API against real `forgesyte-stream serve` processes.

Two servers for the module: one with the shipped pipelines and default
limits, one with the fault-injection test pipelines, a 300 ms frame timeout
and a 2 KiB frame limit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from contracts.asyncapi_doc import Contract, load_contract
from contracts.fault_plugin import SECRET
from tests.support.media import FACE_JPEG, jpeg, jpeg_of_size, text_image
from tests.support.server import ROOT, RunningServer, start_server

SHIPPED_PIPELINES = ROOT / "adapters" / "pipelines"
JPEG_HEADERS = {"Content-Type": "image/jpeg"}
SMALL_FRAME_LIMIT = 2048
FRAME_TIMEOUT_MS = 300


@pytest.fixture(scope="module")
def shipped() -> Iterator[RunningServer]:
    server = start_server(env={"FORGESYTE_STREAM_PIPELINES_DIR": str(SHIPPED_PIPELINES)})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def faulty() -> Iterator[RunningServer]:
    server = start_server(
        env={
            "FORGESYTE_STREAM_FRAME_TIMEOUT_MS": str(FRAME_TIMEOUT_MS),
            "FORGESYTE_STREAM_MAX_FRAME_BYTES": str(SMALL_FRAME_LIMIT),
        }
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shipped_client(shipped: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shipped.http, timeout=120, trust_env=False) as client:
        yield client


@pytest.fixture(scope="module")
def faulty_client(faulty: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=faulty.http, timeout=60, trust_env=False) as client:
        yield client


@pytest.fixture(scope="module")
def contract() -> Contract:
    return load_contract()


def assert_error(response: httpx.Response, status: int, code: str, contract: Contract | None = None) -> dict[str, Any]:
    """The one error shape: exactly error and detail, plus frame_index for pipeline_failure."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    expected_keys = {"error", "detail", "frame_index"} if code == "pipeline_failure" else {"error", "detail"}
    assert set(body) == expected_keys, body
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"].strip()
    if code == "pipeline_failure":
        assert body["frame_index"] == 0
    if contract is not None:
        contract.validate_server_message(body)
    return body


def post_frame(client: httpx.Client, pipeline_id: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post(f"/v1/pipelines/{pipeline_id}/frames", content=body, headers=JPEG_HEADERS if headers is None else headers)


def bomb_jpeg(width: int = 60000, height: int = 60000) -> bytes:
    """A small, well-formed JPEG whose header declares a huge image."""
    data = bytearray(jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


# Health and the catalogue ------------------------------------------------------------


def test_health(shipped_client: httpx.Client) -> None:
    response = shipped_client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "sessions_active", "sessions_active_server", "pipelines", "busy_workers", "executor"}
    assert body["status"] == "ok"
    assert body["sessions_active"] == 0 and body["sessions_active_server"] == 0
    assert body["pipelines"] == len(list(SHIPPED_PIPELINES.glob("*.json")))
    assert isinstance(body["busy_workers"], int) and body["busy_workers"] >= 0
    assert body["executor"]["kind"] == "threads" and body["executor"]["workers"] >= 1


def test_list_pipelines_shows_the_shipped_catalogue(shipped_client: httpx.Client) -> None:
    response = shipped_client.get("/v1/pipelines")
    assert response.status_code == 200
    listed = {item["id"]: item for item in response.json()}
    assert {"faces", "people", "motion", "qr", "ocr_only", "text_detect_read", "yolo", "probe"} <= set(listed)
    for pipeline_id, item in listed.items():
        assert set(item) == {
            "id",
            "name",
            "description",
            "nodes",
            "edges",
            "entry_nodes",
            "output_nodes",
            "available",
            "reason",
        }, pipeline_id
        assert item["nodes"], pipeline_id
        for node in item["nodes"]:
            assert set(node) == {"id", "plugin_id", "tool_id", "params"}
            assert isinstance(node["params"], dict)
        node_ids = {node["id"] for node in item["nodes"]}
        assert set(item["entry_nodes"]) <= node_ids and set(item["output_nodes"]) <= node_ids
        for edge in item["edges"]:
            assert set(edge) == {"from_node", "to_node"}
            assert {edge["from_node"], edge["to_node"]} <= node_ids
    for pipeline_id in ("faces", "people", "motion", "qr", "ocr_only", "text_detect_read", "probe"):
        assert listed[pipeline_id]["available"] is True, listed[pipeline_id]
        assert listed[pipeline_id]["reason"] is None
    assert listed["yolo"]["available"] is False
    assert "FORGESYTE_STREAM_YOLO_MODEL" in listed["yolo"]["reason"]
    text = listed["text_detect_read"]
    assert text["edges"] == [{"from_node": "detect", "to_node": "read"}]
    assert [(n["plugin_id"], n["tool_id"]) for n in text["nodes"]] == [("ocr", "text_detect"), ("ocr", "text_read")]


def test_get_one_pipeline(shipped_client: httpx.Client) -> None:
    response = shipped_client.get("/v1/pipelines/faces")
    assert response.status_code == 200
    body = response.json()
    listed = {item["id"]: item for item in shipped_client.get("/v1/pipelines").json()}
    assert body == listed["faces"]
    assert body["id"] == "faces"
    assert [(n["id"], n["plugin_id"], n["tool_id"]) for n in body["nodes"]] == [("faces", "opencv", "face_detect")]
    assert body["entry_nodes"] == ["faces"] and body["output_nodes"] == ["faces"]
    assert body["available"] is True


def test_get_unavailable_pipeline_gives_its_reason(shipped_client: httpx.Client) -> None:
    body = shipped_client.get("/v1/pipelines/yolo").json()
    assert body["available"] is False
    assert "FORGESYTE_STREAM_YOLO_MODEL" in body["reason"]


def test_unknown_pipeline_is_404_invalid_pipeline(shipped_client: httpx.Client, contract: Contract) -> None:
    body = assert_error(shipped_client.get("/v1/pipelines/no-such-pipeline"), 404, "invalid_pipeline", contract)
    assert "no-such-pipeline" in body["detail"]
    assert "faces" in body["detail"]  # the detail lists the known ids


def test_unknown_route_and_wrong_method_keep_the_error_shape(shipped_client: httpx.Client) -> None:
    assert_error(shipped_client.get("/v2/nothing-here"), 404, "not_found")
    assert_error(shipped_client.get("/v1/pipelines/probe/frames"), 405, "method_not_allowed")


# Running frames ------------------------------------------------------------------------


def test_faces_finds_the_astronauts_face(shipped_client: httpx.Client, contract: Contract) -> None:
    response = post_frame(shipped_client, "faces", FACE_JPEG.read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"frame_index", "result"}
    assert body["frame_index"] == 0
    contract.validate_server_message(body)
    faces = body["result"]["faces"]
    assert len(faces) == 1, faces
    box = faces[0]["box"]
    for key, expected in (("x1", 177), ("y1", 66), ("x2", 272), ("y2", 161)):
        assert abs(box[key] - expected) <= 10, box
    assert faces[0]["label"] == "face"
    assert 0.0 <= faces[0]["confidence"] <= 1.0


def test_ocr_reads_the_text(shipped_client: httpx.Client) -> None:
    response = post_frame(shipped_client, "ocr_only", text_image("FORGESYTE 2026"))
    assert response.status_code == 200, response.text
    lines = response.json()["result"]["text"]
    assert lines, "no text read"
    read = "".join(line["text"] for line in sorted(lines, key=lambda line: line["box"]["x1"]))
    assert read.upper().replace(" ", "") == "FORGESYTE2026"


def test_probe_returns_the_frame_size(shipped_client: httpx.Client) -> None:
    frame = jpeg(64, 48)
    response = post_frame(shipped_client, "probe", frame)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["frame_index"] == 0
    assert body["result"]["width"] == 64
    assert body["result"]["height"] == 48
    assert body["result"]["bytes"] == len(frame)


def test_content_type_is_matched_without_case_or_parameters(shipped_client: httpx.Client) -> None:
    response = post_frame(shipped_client, "probe", jpeg(32, 24), {"Content-Type": "Image/JPEG; charset=binary"})
    assert response.status_code == 200, response.text
    assert response.json()["result"]["width"] == 32


def test_one_off_frames_do_not_share_stream_state(faulty_client: httpx.Client) -> None:
    frame = jpeg(16, 16)
    counts = [post_frame(faulty_client, "counter", frame).json()["result"]["count"] for _ in range(3)]
    assert counts == [1, 1, 1]


# Rejected frames -------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"definitely not a jpeg", b"", b"\xff\xd8\xff\xe0 truncated"])
def test_invalid_jpeg_is_400_invalid_frame(shipped_client: httpx.Client, contract: Contract, body: bytes) -> None:
    assert_error(post_frame(shipped_client, "probe", body), 400, "invalid_frame", contract)


def test_jpeg_markers_that_do_not_decode_are_400_invalid_frame(shipped_client: httpx.Client, contract: Contract) -> None:
    assert_error(post_frame(shipped_client, "faces", b"\xff\xd8garbage\xff\xd9"), 400, "invalid_frame", contract)


def test_decompression_bomb_is_413_before_decoding(shipped_client: httpx.Client, contract: Contract) -> None:
    body = assert_error(post_frame(shipped_client, "faces", bomb_jpeg()), 413, "frame_too_large", contract)
    assert "60000x60000" in body["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", "image/png"])
def test_wrong_content_type_is_415_invalid_message(shipped_client: httpx.Client, contract: Contract, content_type: str) -> None:
    body = assert_error(
        post_frame(shipped_client, "probe", jpeg(), {"Content-Type": content_type}), 415, "invalid_message", contract
    )
    assert content_type in body["detail"]


def test_missing_content_type_is_415_invalid_message(shipped_client: httpx.Client) -> None:
    request = shipped_client.build_request("POST", "/v1/pipelines/probe/frames", content=jpeg())
    assert "content-type" not in request.headers  # httpx sets none for raw bytes
    body = assert_error(shipped_client.send(request), 415, "invalid_message")
    assert "none" in body["detail"]


def test_frame_over_the_limit_is_413_frame_too_large(faulty_client: httpx.Client, contract: Contract) -> None:
    body = assert_error(post_frame(faulty_client, "probe", jpeg_of_size(3000)), 413, "frame_too_large", contract)
    assert "3000" in body["detail"] and str(SMALL_FRAME_LIMIT) in body["detail"]


def test_frame_at_the_limit_is_accepted(faulty_client: httpx.Client) -> None:
    response = post_frame(faulty_client, "probe", jpeg_of_size(SMALL_FRAME_LIMIT))
    assert response.status_code == 200, response.text
    assert response.json()["result"]["bytes"] == SMALL_FRAME_LIMIT


def test_body_over_the_transport_limit_is_413_frame_too_large(faulty_client: httpx.Client, contract: Contract) -> None:
    # ws_max_size for a 2 KiB frame limit is 2 KiB + 1 MiB; Litestar refuses the body itself.
    oversized = jpeg_of_size(SMALL_FRAME_LIMIT + 2 * 1024 * 1024)
    assert_error(post_frame(faulty_client, "probe", oversized), 413, "frame_too_large", contract)


def test_body_over_the_transport_limit_with_shipped_limits(shipped_client: httpx.Client) -> None:
    oversized = jpeg_of_size(5 * 1024 * 1024 + 2 * 1024 * 1024)
    assert_error(post_frame(shipped_client, "probe", oversized), 413, "frame_too_large")


# Pipeline failures ----------------------------------------------------------------------


def test_failing_tool_is_422_without_leaking_the_exception(faulty: RunningServer, faulty_client: httpx.Client, contract: Contract) -> None:
    response = post_frame(faulty_client, "failing", jpeg(16, 16))
    body = assert_error(response, 422, "pipeline_failure", contract)
    assert "failing" in body["detail"] and "boom" in body["detail"] and "fault.fail" in body["detail"]
    for leaked in (SECRET, "Traceback", "RuntimeError", "injected failure", "credentials"):
        assert leaked not in response.text
    # The operator still gets the cause in the server's log.
    deadline = time.monotonic() + 10
    while SECRET not in faulty.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    (record,) = [json.loads(line) for line in faulty.lines if '"pipeline_error"' in line and SECRET in line]
    assert (record["node"], record["plugin"], record["tool"]) == ("boom", "fault", "fail")
    assert "Traceback" in record["exception"] and SECRET in record["exception"]


def test_tool_output_with_raw_bytes_is_422(faulty_client: httpx.Client, contract: Contract) -> None:
    response = post_frame(faulty_client, "leaky", jpeg(16, 16))
    body = assert_error(response, 422, "pipeline_failure", contract)
    assert "leak" in body["detail"]
    assert "raw bytes" not in response.text and "JsonSafetyError" not in response.text


def test_frame_past_the_timeout_is_504(faulty_client: httpx.Client, contract: Contract) -> None:
    body = assert_error(post_frame(faulty_client, "hang", jpeg(16, 16)), 504, "pipeline_failure", contract)
    assert "hang" in body["detail"] and str(FRAME_TIMEOUT_MS) in body["detail"]


def test_server_answers_after_a_timeout(faulty_client: httpx.Client) -> None:
    assert post_frame(faulty_client, "hang", jpeg(16, 16)).status_code == 504
    response = post_frame(faulty_client, "probe", jpeg(16, 16))
    assert response.status_code == 200, response.text


def test_unavailable_pipeline_is_409(faulty_client: httpx.Client, contract: Contract) -> None:
    body = assert_error(post_frame(faulty_client, "offline", jpeg(16, 16)), 409, "invalid_pipeline", contract)
    assert "offline" in body["detail"] and "never available" in body["detail"]


def test_yolo_without_a_model_is_409(shipped_client: httpx.Client, contract: Contract) -> None:
    body = assert_error(post_frame(shipped_client, "yolo", jpeg()), 409, "invalid_pipeline", contract)
    assert "FORGESYTE_STREAM_YOLO_MODEL" in body["detail"]


def test_posting_to_an_unknown_pipeline_is_404(shipped_client: httpx.Client, contract: Contract) -> None:
    body = assert_error(post_frame(shipped_client, "no-such-pipeline", jpeg()), 404, "invalid_pipeline", contract)
    assert "no-such-pipeline" in body["detail"]


def test_server_stays_healthy_after_the_errors(faulty_client: httpx.Client) -> None:
    post_frame(faulty_client, "failing", jpeg(16, 16))
    post_frame(faulty_client, "probe", b"garbage")
    response = faulty_client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


# OpenAPI ------------------------------------------------------------------------------------


def test_openapi_lists_the_paths_and_declares_the_jpeg_body(shipped_client: httpx.Client) -> None:
    response = shipped_client.get("/schema/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path in ("/health", "/v1/pipelines", "/v1/pipelines/{pipeline_id}", "/v1/pipelines/{pipeline_id}/frames"):
        assert path in paths, sorted(paths)
    assert "get" in paths["/health"] and "get" in paths["/v1/pipelines"] and "get" in paths["/v1/pipelines/{pipeline_id}"]
    post = paths["/v1/pipelines/{pipeline_id}/frames"]["post"]
    content = post["requestBody"]["content"]
    assert "image/jpeg" in content
    assert content["image/jpeg"]["schema"]["type"] == "string"
    assert post["requestBody"]["required"] is True
    for status in ("200", "400", "404", "409", "413", "415", "422", "504"):
        assert status in post["responses"], sorted(post["responses"])
