"""What an operator sees of a real server: GET /v1/streams while streams run, and their OpenTelemetry traces.

One server behind an API key exports its traces over OTLP/HTTP to a receiver
this test runs on 127.0.0.1; the spans are decoded from the protobuf requests
the server's exporter posts, as a collector would.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from contracts.client import StreamClient, kind_of
from contracts.targets import free_port
from tests.observability.support import FRAME, client_address
from tests.support.server import TEST_PIPELINES, RunningServer, start_server

KEY = "live-streams-test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
TWO_STEP = {
    "id": "two_step",
    "name": "decode, then wait 30 ms",
    "nodes": [
        {"id": "decode", "plugin_id": "fault", "tool_id": "decode"},
        {"id": "wait", "plugin_id": "fault", "tool_id": "sleep", "params": {"ms": 30}},
    ],
    "edges": [{"from_node": "decode", "to_node": "wait"}],
    "entry_nodes": ["decode"],
    "output_nodes": ["wait"],
}


class _Receiver(BaseHTTPRequestHandler):
    spans: list[Any] = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def traced_server(tmp_path_factory: pytest.TempPathFactory, receiver: ThreadingHTTPServer) -> Iterator[RunningServer]:
    directory = tmp_path_factory.mktemp("pipelines")
    for source in TEST_PIPELINES.glob("*.json"):
        shutil.copy(source, directory)
    (directory / "two_step.json").write_text(json.dumps(TWO_STEP), encoding="utf-8")
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"operator-alice {KEY}\n", encoding="utf-8")
    running = start_server(
        {
            "FORGESYTE_STREAM_LOG_LEVEL": "info",
            "FORGESYTE_STREAM_PIPELINES_DIR": str(directory),
            "FORGESYTE_STREAM_API_KEYS_FILE": str(keys),
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
    )
    yield running
    running.stop()


def _get(server: RunningServer, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(f"{server.http}{path}", headers=AUTH if headers is None else headers, timeout=5, trust_env=False)


def _spans_of(session_id: str, count: int, timeout: float = 10.0) -> list[Any]:
    """The spans received so far of the frames of this session and their children, once `count` frame spans came."""
    deadline = time.monotonic() + timeout
    while True:
        with _Receiver.lock:
            spans = list(_Receiver.spans)
        frames = [s for s in spans if s.name == "frame" and _attributes(s).get("forgesyte.session_id") == session_id]
        if len(frames) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(frames) >= count, f"{len(frames)} of {count} frame spans of session {session_id} were exported"
    trace_ids = {s.trace_id for s in frames}
    return [s for s in spans if s.trace_id in trace_ids]


def _attributes(span: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        values[attribute.key] = getattr(value, value.WhichOneof("value"))
    return values


def test_the_streams_api_is_behind_the_api_keys(traced_server: RunningServer) -> None:
    for path in ("/v1/streams", "/v1/streams/anything"):
        response = _get(traced_server, path, headers={})
        assert response.status_code == 401, (path, response.status_code, response.text)


def test_an_unknown_stream_is_a_404_with_the_unified_error_body(traced_server: RunningServer) -> None:
    response = _get(traced_server, "/v1/streams/no-such-session")
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "not_found" and "no-such-session" in body["detail"], body


def test_a_running_stream_is_listed_with_its_counts_rates_latency_and_nodes_and_traced_per_frame(traced_server: RunningServer) -> None:
    async def scenario() -> tuple[str, dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        headers = {**AUTH, "traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"}
        client = await StreamClient.connect(traced_server.ws("two_step"), headers=headers)
        for _ in range(8):
            await client.send_raw(FRAME)
            assert kind_of(await client.recv()) == "result"
        listed = await asyncio.to_thread(lambda: _get(traced_server, "/v1/streams").json())
        mine = [s for s in listed if s["remote_address"] == client_address(client)]
        assert len(mine) == 1, listed
        one = await asyncio.to_thread(lambda: _get(traced_server, f"/v1/streams/{mine[0]['session_id']}"))
        assert one.status_code == 200, one.text
        address = client_address(client)
        await client.close()
        return address, mine[0], one.json(), listed

    address, stream, alone, listed = asyncio.run(scenario())
    assert KEY not in json.dumps(listed)
    assert stream["pipeline_id"] == "two_step" and stream["transport"] == "litestar"
    assert stream["key_name"] == "operator-alice" and stream["remote_address"] == address
    assert stream["frames_received"] == 8 and stream["frames_answered"] == 8 and stream["frames_failed"] == 0
    assert stream["frames_dropped"] == {"lagging": 0, "buffer_full": 0, "shutdown": 0, "closing": 0}
    assert 0 < stream["age_s"] < 30
    assert stream["fps_in"] > 0 and stream["fps_out"] > 0
    # Each frame waits at least 30 ms in the `wait` node: the end-to-end latency cannot be less.
    assert 30 <= stream["latency"]["p50_ms"] <= stream["latency"]["p95_ms"] and stream["latency"]["samples"] == 8
    nodes = {node["node_id"]: node["duration"] for node in stream["nodes"]}
    assert set(nodes) == {"decode", "wait"} and nodes["wait"]["p50_ms"] >= 30 and nodes["wait"]["samples"] == 8
    assert alone["session_id"] == stream["session_id"] and alone["frames_answered"] == 8
    # Gone from the list once closed.
    deadline = time.monotonic() + 5
    while _get(traced_server, f"/v1/streams/{stream['session_id']}").status_code != 404:
        assert time.monotonic() < deadline, "the closed stream is still listed"
        time.sleep(0.05)

    spans = _spans_of(stream["session_id"], 8)
    frames = sorted((s for s in spans if s.name == "frame"), key=lambda s: _attributes(s)["forgesyte.frame_index"])
    assert [_attributes(s)["forgesyte.frame_index"] for s in frames] == list(range(8))
    by_id = {s.span_id: s for s in spans}
    for frame in frames:
        attributes = _attributes(frame)
        assert attributes["forgesyte.pipeline_id"] == "two_step" and attributes["forgesyte.outcome"] == "processed"
        # The client's trace context from the handshake is every frame span's parent.
        assert frame.trace_id.hex() == CLIENT_TRACE_ID and frame.parent_span_id.hex() == CLIENT_SPAN_ID
        children = {s.name: s for s in spans if s.parent_span_id == frame.span_id}
        assert sorted(children) == ["decode", "node decode", "node wait", "receive", "reply"], sorted(children)
        receive, decode, node_decode, wait, reply = (children[name] for name in ("receive", "decode", "node decode", "node wait", "reply"))
        assert wait.end_time_unix_nano - wait.start_time_unix_nano >= 30_000_000
        # One after the other inside the frame's span (1 ms of slack: the times come from two clocks);
        # the image is decoded inside the node that first read it.
        slack = 1_000_000
        assert frame.start_time_unix_nano <= receive.start_time_unix_nano
        assert receive.end_time_unix_nano <= node_decode.start_time_unix_nano + slack
        assert node_decode.start_time_unix_nano <= decode.start_time_unix_nano + slack and decode.end_time_unix_nano <= node_decode.end_time_unix_nano + slack
        assert decode.end_time_unix_nano > decode.start_time_unix_nano
        assert node_decode.end_time_unix_nano <= wait.start_time_unix_nano + slack
        assert wait.end_time_unix_nano <= reply.start_time_unix_nano + slack
        assert reply.end_time_unix_nano <= frame.end_time_unix_nano
        assert all(s.trace_id == frame.trace_id for s in children.values()) and by_id[frame.span_id] is frame

def test_dropped_frames_are_counted_by_cause_and_traced_with_their_cause(traced_server: RunningServer) -> None:
    async def scenario() -> tuple[dict[str, Any], int]:
        client = await StreamClient.connect(traced_server.ws("slow"), headers=AUTH)
        replies = asyncio.create_task(client.recv_replies(set(range(20)), timeout=30))
        await client.send_paced(FRAME, 20, 0.01)
        received = await replies
        dropped = sum(1 for m in received.messages if kind_of(m) == "dropped")
        listed = await asyncio.to_thread(lambda: _get(traced_server, "/v1/streams").json())
        mine = next(s for s in listed if s["remote_address"] == client_address(client))
        await client.close()
        return mine, dropped

    stream, dropped = asyncio.run(scenario())
    assert dropped > 0
    assert sum(stream["frames_dropped"].values()) == dropped and stream["frames_dropped"]["lagging"] > 0
    assert stream["frames_received"] == 20 and stream["frames_answered"] + dropped == 20
    spans = _spans_of(stream["session_id"], 20)
    drops = [_attributes(s) for s in spans if s.name == "frame" and _attributes(s)["forgesyte.outcome"] == "dropped"]
    assert len(drops) == dropped and {d["forgesyte.drop_cause"] for d in drops} <= {"lagging", "buffer_full"}


def test_the_streams_endpoints_are_declared_in_the_openapi_document(traced_server: RunningServer) -> None:
    document = _get(traced_server, "/schema/openapi.json").json()
    assert {"/v1/streams", "/v1/streams/{stream_id}"} <= set(document["paths"])
    assert "404" in document["paths"]["/v1/streams/{stream_id}"]["get"]["responses"]



def test_the_websockets_transport_traces_its_frames_as_its_own_with_the_clients_parent(receiver: ThreadingHTTPServer) -> None:
    running = start_server(
        {
            "FORGESYTE_STREAM_LOG_LEVEL": "warning",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
        transport="websockets",
    )
    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    try:

        async def scenario() -> None:
            headers = {"traceparent": f"00-{trace_id}-{span_id}-01"}
            client = await StreamClient.connect(running.ws("probe"), headers=headers)
            for _ in range(3):
                await client.send_raw(FRAME)
                assert kind_of(await client.recv()) == "result"
            await client.close()

        asyncio.run(scenario())
        deadline = time.monotonic() + 10
        frames: list[Any] = []
        while len(frames) < 3 and time.monotonic() < deadline:
            with _Receiver.lock:
                frames = [s for s in _Receiver.spans if s.name == "frame" and s.trace_id.hex() == trace_id]
            time.sleep(0.05)
    finally:
        running.stop()
    assert len(frames) == 3, f"{len(frames)} of 3 frame spans exported"
    for frame in frames:
        attributes = _attributes(frame)
        assert attributes["forgesyte.transport"] == "websockets" and attributes["forgesyte.pipeline_id"] == "probe"
        assert frame.parent_span_id.hex() == span_id
