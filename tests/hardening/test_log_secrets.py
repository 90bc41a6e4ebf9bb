"""No API key reaches a log line, at any level, whichever way a client presents it.

The server is started at debug, where uvicorn logs every accepted WebSocket
with its query string and the websockets library logs every handshake header,
request and response. Each vector gets a key of its own, so a failure names
the vector that leaked. The whole of the server's stdout and stderr (merged
by the test kit) is searched for every key, in plain and in percent-encoded
form; the redacted forms are checked to be there too, so that the test cannot
pass because nothing was logged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from contracts.raw_websocket import OP_BINARY, OP_TEXT, RawWebSocket, frame
from tests.support.media import jpeg
from tests.support.server import RunningServer, start_server

KEYS = {
    "query": "q-3c9e1f7a5b2d8046",
    "query_token": "t-8a6b4c2d0e1f3957",
    "bearer": "b-5e7d9c1b3a2f4860",
    "bare_authorization": "a-1f3e5d7c9b0a2468",
    "x_api_key": "x-7b9d1f3e5c2a4068",
    "cookie": "c-2d4f6b8a0c1e3579",
    "upper_subprotocol": "U-9c7e5a3b1d2f4680",
    "subprotocol": "s-4a6c8e0b2d1f3579",
    "http_bearer": "h-6e8a0c2d4f1b3579",
    "http_query": "g-0b2d4f6a8c1e3579",
}


@pytest.fixture(scope="module")
def debug_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text("".join(f"{name.replace('_', '-')} {key}\n" for name, key in KEYS.items()), encoding="utf-8")
    server = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "debug", "FORGESYTE_STREAM_API_KEYS_FILE": str(keys)})
    yield server
    server.stop()


def _stream(url: str, headers: dict[str, str]) -> list[dict]:
    """Upgrade with these headers and send a frame: the first message, and for a refusal what follows up to the close."""
    client = RawWebSocket.connect(url, headers=headers)
    try:
        client.send(frame(OP_BINARY, jpeg()))
        opcode, payload = client.receive_frame()
        messages = [json.loads(payload)] if opcode == OP_TEXT else []
        if messages and "error" in messages[0]:
            later, _ = client.until_closed()
            messages += [json.loads(data) for code, data in later if code == OP_TEXT]
    finally:
        client.close()
    return messages


def test_no_key_reaches_the_logs_at_debug(debug_server: RunningServer) -> None:
    server = debug_server
    base = server.ws("probe")
    refused = {
        "query": _stream(f"{base}&api_key={KEYS['query']}", {}),
        "query_token": _stream(f"{base}&token={KEYS['query_token']}&access_token={KEYS['query_token']}", {}),
        "bare_authorization": _stream(base, {"Authorization": KEYS["bare_authorization"]}),
        "x_api_key": _stream(base, {"X-API-Key": KEYS["x_api_key"]}),
        "cookie": _stream(base, {"Cookie": f"session={KEYS['cookie']}; theme=dark"}),
        "upper_subprotocol": _stream(base, {"Sec-WebSocket-Protocol": f"forgesyte.v1, FORGESYTE.BEARER.{KEYS['upper_subprotocol']}"}),
    }
    for vector, messages in refused.items():
        assert [m["error"] for m in messages] == ["unauthorized"], (vector, messages)
    # Accepted ones: the key authorizes the stream, and the subprotocol is echoed in the 101 (logged at debug too).
    for headers in ({"Authorization": f"Bearer {KEYS['bearer']}"}, {"Sec-WebSocket-Protocol": f"forgesyte.bearer.{KEYS['subprotocol']}"}):
        (reply,) = _stream(base, headers)
        assert reply["frame_index"] == 0 and "result" in reply, reply
    with httpx.Client(trust_env=False, timeout=5) as http:
        assert http.get(f"{server.http}/v1/pipelines", headers={"Authorization": f"Bearer {KEYS['http_bearer']}"}).status_code == 200
        assert http.get(f"{server.http}/v1/pipelines?api_key={KEYS['http_query']}").status_code == 401
        assert http.get(f"{server.http}/v1/pipelines", headers={"X-API-Key": KEYS["x_api_key"], "Cookie": f"k={KEYS['cookie']}"}).status_code == 401
    time.sleep(0.5)  # the test kit reads the server's output on a thread of its own
    logs = server.log_text()
    leaked = {vector: key for vector, key in KEYS.items() if key in logs or key.lower() in logs.lower()}
    assert not leaked, f"keys in the logs: {sorted(leaked)}; e.g. {[line[:300] for line in logs.splitlines() if any(k in line for k in leaked.values())][:3]}"
    # The lines that carried them are there, redacted.
    assert "pipeline_id=probe&api_key=<redacted>" in logs
    assert "forgesyte.bearer.<redacted>" in logs and "FORGESYTE.BEARER.<redacted>" in logs
    lowered = logs.lower()
    for header in ("authorization: <redacted>", "x-api-key: <redacted>", "cookie: <redacted>"):
        assert header in lowered, header


def test_the_redaction_rule_names_what_it_hides() -> None:
    from adapters.observability.logs import redact_secrets

    assert redact_secrets('1.2.3.4:5 - "WebSocket /ws/video/stream?pipeline_id=probe&api_key=abc&x=1" [accepted]') == (
        '1.2.3.4:5 - "WebSocket /ws/video/stream?pipeline_id=probe&api_key=<redacted>&x=<redacted>" [accepted]'
    )
    assert redact_secrets("< Authorization: Bearer abc") == "< Authorization: <redacted>"
    assert redact_secrets("< authorization: abc") == "< authorization: <redacted>"
    assert redact_secrets("< X-Api-Key: abc def") == "< X-Api-Key: <redacted>"
    assert redact_secrets("< Cookie: a=1; b=2") == "< Cookie: <redacted>"
    assert redact_secrets("> Sec-WebSocket-Protocol: FORGESYTE.BEARER.abc, v1") == "> Sec-WebSocket-Protocol: FORGESYTE.BEARER.<redacted>, v1"
    assert redact_secrets("token Bearer abc") == "token Bearer <redacted>"
    # Text without a secret is left as it was, question marks and all.
    assert redact_secrets("what? a ?b c") == "what? a ?b c"
    assert redact_secrets("GET /health") == "GET /health"

