"""Attacks on the connection layer, each performed against a real server over a real socket.

Every limit docs/security.md promises for connections is attacked here:
clients that stop reading, ping floods, fragment and control-frame floods,
slowloris heads, stalled bodies, oversized header lines, invalid UTF-8 and
oversized pipeline ids. Memory is read from /proc/PID/status of the server
process, and /health latency is measured from a second client while the
attack runs.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from contracts.raw_websocket import OP_BINARY, OP_PING, OP_TEXT, RawWebSocket, frame
from tests.observability.support import scrape, settled
from tests.support.media import jpeg
from tests.hardening.attack_support import (
    HealthProbe,
    error_records,
    flood_of_empty_continuations,
    large_frame_then_empty_continuations,
    megabyte_in_one_byte_fragments,
    ping_flood,
    rss_kib,
)
from tests.support.server import RunningServer, start_server

SEND_TIMEOUT_S = 1.0
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_SESSIONS = 4


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_server(
        {
            "FORGESYTE_STREAM_SEND_TIMEOUT_S": str(SEND_TIMEOUT_S),
            "FORGESYTE_STREAM_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "FORGESYTE_STREAM_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "FORGESYTE_STREAM_MAX_SESSIONS": str(MAX_SESSIONS),
            "FORGESYTE_STREAM_LOG_LEVEL": "info",
        }
    )
    yield running
    running.stop()


def ws_url(server: RunningServer, pipeline_id: str) -> str:
    return server.ws(pipeline_id)


# A client that stops reading ----------------------------------------------------------------


def test_clients_that_stop_reading_lose_their_sessions_within_the_send_timeout(server: RunningServer) -> None:
    before = settled(server)
    rss_before = rss_kib(server)
    attackers = [RawWebSocket.connect(ws_url(server, "bulky"), receive_buffer=4096) for _ in range(MAX_SESSIONS)]
    try:
        frame_bytes = frame(OP_BINARY, jpeg(32, 32))
        blocked: set[int] = set()
        for attacker in attackers:
            attacker.sock.settimeout(0.2)
        # Each reply is 256 KiB; 40 of them are far more than the socket buffers between us hold.
        # Paced, so that frames run instead of being dropped as lagging.
        for _ in range(40):
            for number, attacker in enumerate(attackers):
                if number in blocked:
                    continue
                try:
                    attacker.send(frame_bytes)
                except TimeoutError:
                    blocked.add(number)  # the server stopped reading us: its session waits on a reply
            time.sleep(0.03)
        filled_at = time.monotonic()
        server.wait_for(lambda health: health["sessions_active"] == MAX_SESSIONS, timeout=5)
        reclaimed = server.wait_for(lambda health: health["sessions_active"] == 0, timeout=SEND_TIMEOUT_S + 8)
        reclaim_s = time.monotonic() - filled_at
    finally:
        for attacker in attackers:
            attacker.close()
    after = settled(server)
    closed = after.total("stream_sessions_closed_total", reason="send_timeout") - before.total(
        "stream_sessions_closed_total", reason="send_timeout"
    )
    assert closed == MAX_SESSIONS, f"{closed} sessions closed as send_timeout"
    assert reclaimed["sessions_active"] == 0
    print(f"{MAX_SESSIONS} non-reading sessions reclaimed {reclaim_s:.2f} s after their last frame; "
          f"RSS {rss_before} -> {rss_kib(server)} KiB")
    # The slots are free again: a well-behaved client is served.
    client = RawWebSocket.connect(ws_url(server, "probe"))
    try:
        client.send(frame(OP_BINARY, jpeg()))
        opcode, payload = client.receive_frame()
        assert opcode == OP_TEXT and "result" in json.loads(payload)
    finally:
        client.close()


def test_a_ping_flood_from_a_client_that_does_not_read_is_closed_without_growing_memory(server: RunningServer) -> None:
    settled(server)
    rss_before = rss_kib(server)
    attacker = RawWebSocket.connect(ws_url(server, "probe"), receive_buffer=4096)
    pings = frame(OP_PING, b"abcd") * 20_000
    started = time.monotonic()
    try:
        attacker.sock.settimeout(2.0)
        for _ in range(50):  # up to 10 MB of pings, until the server stops taking them
            try:
                attacker.send(pings)
            except OSError:
                break
        server.wait_for(lambda health: health["sessions_active"] == 0, timeout=5)
        ended_s = time.monotonic() - started
    finally:
        attacker.close()
    growth_mib = (rss_kib(server) - rss_before) / 1024
    assert growth_mib < 20, f"the server grew by {growth_mib:.1f} MiB under a ping flood"
    print(f"ping flood: session closed after {ended_s:.2f} s, RSS growth {growth_mib:.1f} MiB")


# One connection must not hold the event loop ----------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(flood_of_empty_continuations, id="empty-continuation-flood"),
        pytest.param(ping_flood, id="ping-flood-pongs-read"),
        pytest.param(megabyte_in_one_byte_fragments, id="one-byte-fragments"),
        pytest.param(large_frame_then_empty_continuations, id="large-frame-then-flood"),
    ],
)
def test_health_stays_fast_while_one_connection_floods(server: RunningServer, payload: object) -> None:
    settled(server)
    data = payload()  # type: ignore[operator]
    closes: list[int | None] = []
    deadline = time.monotonic() + 2.0
    with HealthProbe(server) as probe:
        # One misbehaving connection at a time, again and again for two seconds.
        while time.monotonic() < deadline:
            attacker = RawWebSocket.connect(ws_url(server, "probe"))
            attacker.sock.settimeout(5.0)
            reader = threading.Thread(target=lambda attacker=attacker: closes.append(attacker.until_closed()[1].code), daemon=True)
            reader.start()  # reads everything, pongs included
            try:
                attacker.send(data)
            except OSError:
                pass  # closed by the server before all of it went out
            reader.join(timeout=10)
            attacker.close()
        summary = probe.check()
    assert closes and set(closes) == {1008}, closes
    print(f"{len(closes)} flooding connections, each closed with 1008; {summary}")
    server.wait_for(lambda health: health["sessions_active"] == 0, timeout=5)


# HTTP heads and bodies ---------------------------------------------------------------------


def _connect(server: RunningServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return data
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize("path", ["/health", "/ws/video/stream?pipeline_id=probe"])
def test_a_head_sent_a_byte_at_a_time_is_cut_off_with_408(server: RunningServer, path: str) -> None:
    sockets = [_connect(server) for _ in range(50)]
    started = time.monotonic()
    try:
        for sock in sockets:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n".encode())
        # Slowloris: one more header byte every 200 ms, never the blank line that ends the head.
        ended: dict[int, float] = {}
        while len(ended) < len(sockets) and time.monotonic() - started < HEADER_TIMEOUT_S + 5:
            for number, sock in enumerate(sockets):
                if number in ended:
                    continue
                try:
                    sock.sendall(b"X")
                except OSError:
                    ended[number] = time.monotonic() - started
            time.sleep(0.2)
        answers = [_read_all(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert len(ended) == len(sockets), f"{len(sockets) - len(ended)} slow heads still open after {HEADER_TIMEOUT_S + 5} s"
    assert max(ended.values()) < HEADER_TIMEOUT_S + 2.5, sorted(ended.values())[-3:]
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), {answer[:40] for answer in answers}
    print(f"50 slow heads to {path} cut off within {max(ended.values()):.2f} s")


def test_stalled_bodies_are_cut_off_with_408_and_their_memory_released(server: RunningServer) -> None:
    rss_before = rss_kib(server)
    sockets = [_connect(server) for _ in range(50)]
    started = time.monotonic()
    try:
        for sock in sockets:
            sock.sendall(
                b"POST /v1/pipelines/probe/frames HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 5000000\r\n\r\n" + b"\xff\xd8" + b"\x00" * 1_000_000
            )
        answers = [_read_all(sock) for sock in sockets]
        elapsed = time.monotonic() - started
    finally:
        for sock in sockets:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), {answer[:40] for answer in answers}
    assert elapsed < BODY_TIMEOUT_S + 5, f"stalled bodies held for {elapsed:.1f} s"
    time.sleep(0.5)
    growth_mib = (rss_kib(server) - rss_before) / 1024
    # 50 MB of bodies were held for a second; what remains is allocator slack, not the bodies.
    assert growth_mib < 40, f"RSS grew by {growth_mib:.1f} MiB"
    assert not error_records(server), error_records(server)[:2]
    print(f"50 stalled 5 MB bodies answered 408 within {elapsed:.2f} s; RSS growth {growth_mib:.1f} MiB")


@pytest.mark.parametrize(
    ("headers", "what"),
    [
        pytest.param("X-Big: " + "a" * 9000 + "\r\n", "one 9000-byte header line", id="long-line"),
        pytest.param("".join(f"X-H{i}: {'b' * 200}\r\n" for i in range(100)), "a 20 KiB head", id="large-head"),
    ],
)
def test_an_oversized_upgrade_head_gets_a_prompt_431(server: RunningServer, headers: str, what: str) -> None:
    sock = _connect(server)
    started = time.monotonic()
    try:
        sock.sendall(
            (
                "GET /ws/video/stream?pipeline_id=probe HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                + headers
                + "\r\n"
            ).encode()
        )
        answer = _read_all(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 431"), (what, answer[:80])
    assert time.monotonic() - started < 1.0


def test_an_aborted_upload_is_no_server_error(server: RunningServer) -> None:
    sock = _connect(server)
    sock.sendall(
        b"POST /v1/pipelines/probe/frames HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 100000\r\n\r\n" + b"\xff\xd8" + b"\x00" * 1000
    )
    time.sleep(0.2)
    sock.close()
    time.sleep(0.5)
    assert not error_records(server), error_records(server)[:2]
    assert httpx.get(f"{server.http}/health", trust_env=False).status_code == 200


# Messages no real client sends -------------------------------------------------------------


def test_a_text_message_with_invalid_utf8_is_invalid_message(server: RunningServer) -> None:
    client = RawWebSocket.connect(ws_url(server, "probe"))
    try:
        client.send(frame(OP_TEXT, b"\xff\xfe not utf-8 \xc3"))
        frames, closed = client.until_closed()
    finally:
        client.close()
    assert [json.loads(payload)["error"] for _, payload in frames] == ["invalid_message"]
    assert closed.code == 1003
    assert not error_records(server), error_records(server)[:2]


def test_a_long_unknown_pipeline_id_is_neither_echoed_nor_logged_in_full(server: RunningServer) -> None:
    long_id = "p" * 6_000  # under the 8 KiB request-line limit, so the session layer sees it
    client = RawWebSocket.connect(ws_url(server, long_id))
    try:
        frames, closed = client.until_closed()
    finally:
        client.close()
    (_, payload), = frames
    reply = json.loads(payload)
    assert reply["error"] == "invalid_pipeline" and closed.code == 1008
    assert len(reply["detail"]) < 400 and "6000 characters" in reply["detail"]
    time.sleep(0.2)
    rejected = [line for line in server.lines if "session_rejected" in line]
    assert rejected and all(len(line) < 2000 for line in rejected), max(map(len, rejected))
    assert scrape(server).total("stream_sessions_rejected_total") >= 1
