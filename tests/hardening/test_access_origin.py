"""Access control against the real server: the Host and Origin checks (cross-site pages, DNS rebinding, listed hosts and origins).

Each attack is performed over a real socket on a server started in a
subprocess (tests/support/server.py); the pure policy has a direct case at the
top, for the rules the attacks do not reach. API keys, the per-key quota, TLS
and --workers balance are in test_access_keys_tls.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from application.access import AccessPolicy
from tests.support.server import RunningServer, start_server
from tests.hardening.access_support import FRAME, access_records, metrics, run


def raw_exchange(port: int, request: str, *, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as written on a plain TCP socket; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body


def upgrade_request(port: int, *, host: str | None = None, origin: str | None = None, extra: str = "") -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /ws/video/stream?pipeline_id=probe HTTP/1.1",
        f"Host: {host or f'127.0.0.1:{port}'}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return "\r\n".join(lines) + "\r\n" + extra + "\r\n"


def get_request(path: str, *, host: str, origin: str | None = None, authorization: str | None = None) -> str:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    return "\r\n".join(lines) + "\r\n\r\n"


# The pure policy ----------------------------------------------------------------


def test_origin_and_host_rules() -> None:
    policy = AccessPolicy(allowed_hosts=["localhost", "127.0.0.1", "::1"], allowed_origins=["https://app.example"])
    own = "127.0.0.1:8000"
    assert policy.origin_allowed(None, own, secure=False)
    assert policy.origin_allowed("http://127.0.0.1:8000", own, secure=False)
    assert policy.origin_allowed("http://localhost:5173", own, secure=False)
    assert policy.origin_allowed("http://[::1]:3000", own, secure=False)
    assert policy.origin_allowed("https://app.example", own, secure=False)
    assert policy.origin_allowed("https://app.example:443", own, secure=False)
    assert not policy.origin_allowed("https://evil.example", own, secure=False)
    assert not policy.origin_allowed("null", own, secure=False)
    assert policy.origin_allowed("http://stream.example:8000", "stream.example:8000", secure=False)
    assert not policy.origin_allowed("https://stream.example:8000", "stream.example:8000", secure=False)  # another scheme
    assert not policy.origin_allowed("http://stream.example:9000", "stream.example:8000", secure=False)  # another port
    assert policy.origin_allowed("https://stream.example", "stream.example", secure=True)
    assert not policy.origin_allowed("http://localhost.evil.example", own, secure=False)
    assert policy.host_allowed("localhost:8000") and policy.host_allowed("[::1]:8000") and policy.host_allowed("LOCALHOST.")
    assert not policy.host_allowed("evil.example:8000")
    assert not policy.host_allowed(None)
    assert not policy.host_allowed("127.0.0.1@evil.example")


# Origin and Host on the real server ----------------------------------------------


@pytest.fixture(scope="module")
def open_server() -> Iterator[RunningServer]:
    """No keys: the Host and Origin checks are on by default."""
    running = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "info"})
    yield running
    running.stop()


def test_a_foreign_page_cannot_open_a_stream_403_before_the_upgrade(open_server: RunningServer) -> None:
    port = open_server.port
    status, headers, body = raw_exchange(port, upgrade_request(port, origin="https://evil.example"))
    assert status == 403
    assert json.loads(body)["error"] == "forbidden_origin"
    assert "sec-websocket-accept" not in headers
    status, _, _ = raw_exchange(port, upgrade_request(port, origin="null"))
    assert status == 403

    async def allowed() -> list[str]:
        results = []
        for origin in (None, f"http://127.0.0.1:{port}", "http://localhost:5173"):
            async with connect(open_server.ws("probe"), origin=origin, proxy=None, open_timeout=10) as connection:  # type: ignore[arg-type]
                await connection.send(FRAME)
                results.append(json.loads(await asyncio.wait_for(connection.recv(), 10))["result"]["width"])
        return results

    assert run(allowed()) == [64] * 3
    # A cross-origin (CORS) read is refused the same way.
    status, _, body = raw_exchange(port, get_request("/v1/pipelines", host=f"127.0.0.1:{port}", origin="https://evil.example"))
    assert status == 403 and json.loads(body)["error"] == "forbidden_origin"
    refused = access_records(open_server)
    assert {r["reason"] for r in refused} >= {"forbidden_origin"}
    assert all("evil.example" not in json.dumps(r.get("reason")) for r in refused)
    scrape = metrics(open_server)
    assert scrape.value("stream_sessions_rejected_total", reason="forbidden_origin") == 2
    assert scrape.value("stream_http_requests_refused_total", reason="forbidden_origin") == 1
    assert open_server.health()["sessions_active"] == 0


def test_dns_rebinding_is_refused_by_the_host_check(open_server: RunningServer) -> None:
    """A page on evil.example re-pointed at 127.0.0.1 is same-origin with itself: only its Host gives it away."""
    port = open_server.port
    rebound = f"evil.example:{port}"
    for path in ("/metrics", "/v1/pipelines", "/health"):
        status, _, body = raw_exchange(port, get_request(path, host=rebound, origin=f"http://{rebound}"))
        assert status == 400, path
        assert json.loads(body)["error"] == "invalid_host"
        status, _, _ = raw_exchange(port, get_request(path, host=rebound))  # a simple GET carries no Origin
        assert status == 400, path
    status, headers, body = raw_exchange(port, upgrade_request(port, host=rebound, origin=f"http://{rebound}"))
    assert status == 400 and "sec-websocket-accept" not in headers
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        status, _, _ = raw_exchange(port, get_request("/v1/pipelines", host=host))
        assert status == 200, host
    assert metrics(open_server).value("stream_http_requests_refused_total", reason="forbidden_host") >= 6


def test_listed_hosts_and_origins_are_added_and_star_switches_the_check_off() -> None:
    server = start_server({"FORGESYTE_STREAM_ALLOWED_HOSTS": "stream.example", "FORGESYTE_STREAM_ALLOWED_ORIGINS": "https://app.example"})
    try:
        port = server.port
        assert raw_exchange(port, get_request("/v1/pipelines", host=f"stream.example:{port}"))[0] == 200
        assert raw_exchange(port, get_request("/v1/pipelines", host=f"localhost:{port}"))[0] == 200
        assert raw_exchange(port, get_request("/v1/pipelines", host=f"other.example:{port}"))[0] == 400
        assert raw_exchange(port, upgrade_request(port, origin="https://app.example"))[0] == 101
        assert raw_exchange(port, upgrade_request(port, origin="https://evil.example"))[0] == 403
    finally:
        server.stop()
    server = start_server({"FORGESYTE_STREAM_ALLOWED_HOSTS": "*", "FORGESYTE_STREAM_ALLOWED_ORIGINS": "*"})
    try:
        port = server.port
        assert raw_exchange(port, get_request("/v1/pipelines", host=f"other.example:{port}"))[0] == 200
        assert raw_exchange(port, upgrade_request(port, origin="https://evil.example"))[0] == 101
    finally:
        server.stop()
