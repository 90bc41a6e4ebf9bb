"""Connection and session memory attacks, performed against a real server, with its memory read from /proc.

Each test measures the server process's resident memory (VmRSS) and its peak
(VmHWM, reset through /proc/PID/clear_refs before each attack) while hostile
clients do their worst, and fails when growth passes the bound that
docs/security.md documents:

- a connection refused after the upgrade (server_busy, unauthorized, the key
  quota) reads none of the large message its client sends anyway;
- after a burst (stalled request bodies, sessions that do not read their
  replies) RSS returns to within a documented margin of its level before, and
  a session never holds more than the documented per-session worst case.

The frame attacks (pixel bombs, 4K frames, header walks, odd aspect ratios,
the decode budget) are in test_memory_frame_attacks.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from functools import cache

import httpx
import pytest

from contracts.client import StreamClient
from contracts.raw_websocket import OP_BINARY, OP_CLOSE, OP_TEXT, RawWebSocket, frame
from tests.hardening.attack_support import MB, HealthProbe, MiB, process_status, reset_peak
from tests.support.media import jpeg_header, jpeg_of_size
from tests.support.server import ROOT, RunningServer, start_server


# Refused connections: a refusal reads no message body ----------------------------------------------------

ALICE_KEY = "alice-5d0e3b1f7c9a2468ace0"
BOB_KEY = "bob-9f8e7d6c5b4a39281706"
CAROL_KEY = "carol-0f1e2d3c4b5a69788796"
# A message just under the WebSocket layer's limit (ws_max_size, 6 553 600 bytes at the default frame limit).
REFUSED_MESSAGE_BYTES = 6_000_000
REFUSED_CLIENTS = 100
# What refusing REFUSED_CLIENTS connections, each sending one such message, may add to the server's peak RSS
# (docs/security.md): a socket read at a time per connection, discarded; no message of them is kept.
REFUSED_PEAK_BOUND = 48 * MiB


@cache
def _large_masked_message() -> bytes:
    return frame(OP_BINARY, b"\xff\xd8" + bytes(REFUSED_MESSAGE_BYTES - 2))


async def _refused_attacker(port: int, headers: dict[str, str], timeout_s: float = 30.0) -> tuple[list[dict], int | None]:
    """Upgrade, send one large message at once, never answer the close: what the server refused it with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [
            "GET /ws/video/stream?pipeline_id=probe HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
        assert status.startswith(b"HTTP/1.1 101"), status[:80]
        writer.write(_large_masked_message())
        received = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
            except (ConnectionError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
        messages: list[dict] = []
        close_code: int | None = None
        position = 0
        while position + 2 <= len(received):
            opcode, length = received[position] & 0x0F, received[position + 1] & 0x7F
            position += 2
            if length == 126:
                length = struct.unpack("!H", received[position : position + 2])[0]
                position += 2
            payload = received[position : position + length]
            position += length
            if opcode == OP_TEXT:
                messages.append(json.loads(payload))
            elif opcode == OP_CLOSE and len(payload) >= 2:
                close_code = struct.unpack("!H", payload[:2])[0]
        return messages, close_code
    finally:
        writer.transport.abort()


@pytest.fixture(scope="module")
def keyed_two_slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Two session slots, one per key, three keys: so every refusal (busy, unauthorized, quota) can be provoked."""
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"alice {ALICE_KEY}\nbob {BOB_KEY}\ncarol {CAROL_KEY}\n", encoding="utf-8")
    server = start_server(
        {
            "FORGESYTE_STREAM_PIPELINES_DIR": str(ROOT / "adapters" / "pipelines"),
            "FORGESYTE_STREAM_PLUGINS": "",
            "FORGESYTE_STREAM_LOG_LEVEL": "info",
            "FORGESYTE_STREAM_API_KEYS_FILE": str(keys),
            "FORGESYTE_STREAM_MAX_SESSIONS": "2",
            "FORGESYTE_STREAM_MAX_SESSIONS_PER_KEY": "1",
        }
    )
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("headers", "error", "close_code"),
    [
        pytest.param({"Authorization": f"Bearer {CAROL_KEY}"}, "server_busy", 1013, id="server_busy"),
        pytest.param({}, "unauthorized", 3000, id="unauthorized"),
        pytest.param({"Authorization": f"Bearer {ALICE_KEY}"}, "server_busy", 1013, id="key_quota"),
    ],
)
def test_refused_connections_read_no_message_into_memory(
    keyed_two_slots: RunningServer, headers: dict[str, str], error: str, close_code: int
) -> None:
    server = keyed_two_slots
    pid = server.process.pid
    small = jpeg_header(64, 48)

    async def attack() -> tuple[list[tuple[list[dict], int | None]], float]:
        # Both slots held, one per key: carol is then busy, alice at her quota, and a keyless client unauthorized.
        holders = [await StreamClient.connect(server.ws("probe"), headers={"Authorization": f"Bearer {key}"}) for key in (ALICE_KEY, BOB_KEY)]
        for holder in holders:
            await holder.send_raw(small)
            await holder.recv_replies({0}, timeout=10)
        started = time.monotonic()
        outcomes = await asyncio.gather(*(_refused_attacker(server.port, headers) for _ in range(REFUSED_CLIENTS)))
        elapsed = time.monotonic() - started
        for holder in holders:
            await holder.close()
        return outcomes, elapsed

    before = reset_peak(pid)
    with HealthProbe(server) as probe:
        outcomes, elapsed = asyncio.run(attack())
        peak = process_status(pid)["VmHWM"]
    server.wait_for(lambda h: h["sessions_active"] == 0)
    time.sleep(1.0)
    after = process_status(pid)["VmRSS"]
    for messages, code in outcomes:
        assert [m["error"] for m in messages] == [error], messages
        assert code == close_code
    print(
        f"{REFUSED_CLIENTS} refused ({error}) clients each sending {REFUSED_MESSAGE_BYTES / MB:.0f} MB, over {elapsed:.1f} s: "
        f"peak RSS +{(peak - before) / MB:.1f} MB, after close {(after - before) / MB:+.1f} MB; /health p95 "
        f"{probe.percentile(0.95) * 1000:.0f} ms, max {max(probe.latencies) * 1000:.0f} ms"
    )
    assert peak - before < REFUSED_PEAK_BOUND, f"refused connections raised peak RSS by {(peak - before) / MB:.0f} MB"
    assert after - before < 16 * MiB, f"RSS stayed {(after - before) / MB:.0f} MB above its level before the refusals"
    # The median, not the p95 of docs/security.md's one-connection promise: the 100 handshakes arrive at once,
    # and on two shared cores answering them holds the loop for a few hundred ms whatever the messages cost.
    assert not probe.failures and len(probe.latencies) >= 20, (probe.failures[:3], len(probe.latencies))
    assert probe.percentile(0.5) < 0.100, f"/health median {probe.percentile(0.5) * 1000:.0f} ms during the refusals"


# Memory given back after a burst, and the per-session worst case -------------------------------------------

# The per-session worst case of docs/security.md at the defaults: the frames a session holds,
# (BUFFER_FRAMES + 1) x MAX_FRAME_BYTES, plus up to three messages in the WebSocket layer (the one the parser
# last read, the one it is reading and that one's copy while it completes), plus 584 KiB of read-ahead,
# slices, a held socket read and the stream's last JPEG header.
WS_MAX_SIZE = 5 * MiB + 5 * MiB // 4
PER_SESSION_WORST = (4 + 1) * 5 * MiB + 3 * WS_MAX_SIZE + 584 * 1024
# How far above its level before a burst the server's RSS may stay once the burst is over (docs/security.md).
AFTER_BURST_MARGIN = 32 * MiB
# How long the server may take to give the memory back once the burst is over.
GIVE_BACK_S = 5.0


def _settles_to(pid: int, target: int, within_s: float) -> int:
    """The RSS once it is at or under `target`, or the last reading when `within_s` passes first."""
    deadline = time.monotonic() + within_s
    rss = process_status(pid)["VmRSS"]
    while rss > target and time.monotonic() < deadline:
        time.sleep(0.1)
        rss = process_status(pid)["VmRSS"]
    return rss


@pytest.fixture(scope="module")
def bodies_server() -> Iterator[RunningServer]:
    server = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "info", "FORGESYTE_STREAM_BODY_TIMEOUT_S": "3"})
    yield server
    server.stop()


async def _stalled_body(port: int, declared: int, sent: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST /v1/pipelines/probe/frames HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {declared}\r\n\r\n".encode()
            + b"\xff\xd8"
            + bytes(sent - 2)
        )
        try:
            await writer.drain()
            return await asyncio.wait_for(reader.read(), 30)
        except ConnectionResetError:
            # Cut while part of the body was still on its way: the server's close met unread data, and the
            # reset it sent then destroyed its 408 before it was read.
            return b"reset"
    finally:
        writer.transport.abort()


def test_a_burst_of_stalled_bodies_gives_its_memory_back(bodies_server: RunningServer) -> None:
    server = bodies_server
    pid = server.process.pid
    declared = 6_500_000  # under the request body limit (ws_max_size, 6 553 600 bytes)
    httpx.post(f"{server.http}/v1/pipelines/probe/frames", content=jpeg_header(64, 48), headers={"content-type": "image/jpeg"}, trust_env=False)
    before = reset_peak(pid)

    async def burst() -> list[bytes]:
        return await asyncio.gather(*(_stalled_body(server.port, declared, declared - 1000) for _ in range(100)))

    started = time.monotonic()
    answers = asyncio.run(burst())
    elapsed = time.monotonic() - started
    peak = process_status(pid)["VmHWM"]
    after = _settles_to(pid, before + AFTER_BURST_MARGIN, GIVE_BACK_S)
    assert all(answer.startswith(b"HTTP/1.1 408") or answer == b"reset" for answer in answers), {answer[:40] for answer in answers}
    print(
        f"{sum(answer != b'reset' for answer in answers)} answered 408; 100 stalled {declared / MB:.1f} MB bodies cut within {elapsed:.1f} s: RSS {before / MB:.0f} MB before, "
        f"peak +{(peak - before) / MB:.0f} MB, {(after - before) / MB:+.1f} MB after"
    )
    assert peak - before > 300 * MB, "the burst did not hold the bodies together; it measures nothing"
    assert after - before < AFTER_BURST_MARGIN, f"RSS stayed {(after - before) / MB:.0f} MB above its level before the burst"


@pytest.fixture(scope="module")
def four_slots() -> Iterator[RunningServer]:
    server = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "info", "FORGESYTE_STREAM_MAX_SESSIONS": "4"})
    yield server
    server.stop()


@pytest.mark.parametrize("pipeline_id", ["slow", "hang"])
def test_sessions_that_do_not_read_hold_no_more_than_the_documented_worst_case(four_slots: RunningServer, pipeline_id: str) -> None:
    server = four_slots
    pid = server.process.pid
    sessions = 4
    max_frame = 5 * MiB
    message = frame(OP_BINARY, jpeg_of_size(max_frame))
    # The 100 ms pipeline keeps a frame in flight while the buffer fills and overflows.
    attackers = [RawWebSocket.connect(server.ws(pipeline_id), receive_buffer=4096) for _ in range(sessions)]
    time.sleep(0.5)
    before = reset_peak(pid)
    sent = [0] * sessions

    def flood(number: int, attacker: RawWebSocket) -> None:
        deadline = time.monotonic() + 4.0
        attacker.sock.settimeout(5.0)
        while time.monotonic() < deadline:
            try:
                attacker.send(message)
            except OSError:
                return
            sent[number] += 1

    threads = [threading.Thread(target=flood, args=(number, attacker)) for number, attacker in enumerate(attackers)]
    for thread in threads:
        thread.start()
    held = 0
    for thread in threads:
        while thread.is_alive():
            held = max(held, process_status(pid)["VmRSS"] - before)
            thread.join(timeout=0.1)
    peak = process_status(pid)["VmHWM"] - before
    for attacker in attackers:
        attacker.close()
    server.wait_for(lambda health: health["sessions_active"] == 0)
    after = _settles_to(pid, before + AFTER_BURST_MARGIN, GIVE_BACK_S)
    print(
        f"{sessions} non-reading sessions sending {sum(sent)} frames of 5 MiB: held {held / sessions / MiB:.1f} MiB "
        f"a session at most, peak {peak / sessions / MiB:.1f} MiB a session; {(after - before) / MB:+.1f} MB after"
    )
    assert min(sent) >= 6, f"frames sent per session: {sent}"
    assert peak / sessions < PER_SESSION_WORST, f"{peak / sessions / MiB:.1f} MiB a session; documented {PER_SESSION_WORST / MiB:.1f}"
    assert after - before < AFTER_BURST_MARGIN, f"RSS stayed {(after - before) / MB:.0f} MB above its level before the sessions"
