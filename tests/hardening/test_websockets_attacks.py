"""The attacks of test_connection_attacks.py and the access attacks, against the alternate transport.

`forgesyte-stream serve --transport websockets` serves the same stream on the
`websockets` library's own server; docs/security.md promises the same limits
on it. Every test starts that server in a subprocess (start_server with
transport="websockets") and attacks it over real sockets: floods of pings and
fragments, clients that never read, refused clients sending 6 MB each,
duplicate headers, and credentials in headers logged at debug. Memory is read
from /proc/PID/status of the server process, /health latency from a second
client while the attack runs.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.transports.websockets.connection_limits import CLOSE_TIMEOUT_S
from contracts.raw_websocket import OP_BINARY, OP_PING, OP_TEXT, RawWebSocket, frame
from tests.hardening.attack_support import (
    HealthProbe,
    error_records,
    flood_of_empty_continuations,
    megabyte_in_one_byte_fragments,
    ping_flood,
    process_status,
    reset_peak,
    rss_kib,
)
from tests.observability.support import settled
from tests.support.media import jpeg
from tests.support.server import RunningServer, start_server

SEND_TIMEOUT_S = 1.0
MAX_SESSIONS = 4
CONTROL_FRAMES_PER_S = 20
KEY = "ws-attack-key-5d1f0a9c7e3b42"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_server(
        {
            "FORGESYTE_STREAM_SEND_TIMEOUT_S": str(SEND_TIMEOUT_S),
            "FORGESYTE_STREAM_MAX_SESSIONS": str(MAX_SESSIONS),
            "FORGESYTE_STREAM_LOG_LEVEL": "info",
        },
        transport="websockets",
    )
    yield running
    running.stop()


# One connection must not hold the event loop ----------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(ping_flood, id="ping-flood-pongs-read"),
        pytest.param(flood_of_empty_continuations, id="empty-continuation-flood"),
        pytest.param(megabyte_in_one_byte_fragments, id="one-byte-fragments"),
    ],
)
def test_health_stays_fast_while_one_connection_floods(server: RunningServer, payload: object) -> None:
    settled(server)
    data = payload()  # type: ignore[operator]
    closes: list[int | None] = []
    deadline = time.monotonic() + 2.0
    with HealthProbe(server) as probe:
        while time.monotonic() < deadline:
            attacker = RawWebSocket.connect(server.ws("probe"))
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
    print(f"websockets transport: {len(closes)} flooding connections, each closed with 1008; {summary}")
    server.wait_for(lambda health: health["sessions_active"] == 0, timeout=5)


def test_ping_floods_from_clients_that_never_read_are_cut_without_growing_memory(server: RunningServer) -> None:
    """Four clients flood pings and never read a pong, reconnecting for 3 s: each is cut, memory stays flat."""
    settled(server)
    pid = server.process.pid
    rss_before = rss_kib(server)
    reset_peak(pid)
    pings = frame(OP_PING, b"abcd") * 20_000
    cut_after: list[float] = []
    started = time.monotonic()

    def flood() -> None:
        while time.monotonic() - started < 3.0:  # bounded by the clock; each connection by its cut
            attacker = RawWebSocket.connect(server.ws("probe"), receive_buffer=4096)
            attacker.sock.settimeout(1.0)
            opened = time.monotonic()
            try:
                while time.monotonic() - opened < 10.0:
                    try:
                        attacker.send(pings)
                    except TimeoutError:
                        continue  # not read for a second: try again until the server ends the connection
                    except OSError:
                        break
                cut_after.append(time.monotonic() - opened)
            finally:
                attacker.close()

    with HealthProbe(server) as probe:
        threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        server.wait_for(lambda health: health["sessions_active"] == 0, timeout=10)
        summary = probe.check()
    growth_mib = (rss_kib(server) - rss_before) / 1024
    peak_mib = (process_status(pid)["VmHWM"] // 1024 - rss_before) / 1024
    print(f"4 non-reading ping floods for 3 s: {len(cut_after)} connections, each cut within {max(cut_after):.2f} s; "
          f"RSS growth {growth_mib:.1f} MiB, peak +{peak_mib:.1f} MiB; {summary}")
    # Cut at once when over the control-frame rate (the abort 2 s later if the close frame is not read); a
    # connection refused server_busy while the slots were still held floods discarded input until its close
    # times out: 4 s.
    assert cut_after and max(cut_after) < CLOSE_TIMEOUT_S + 1.0, sorted(cut_after)[-3:]
    assert peak_mib < 20, f"the server's peak grew by {peak_mib:.1f} MiB under ping floods"


def test_clients_that_stop_reading_lose_their_sessions_within_the_send_timeout(server: RunningServer) -> None:
    before = settled(server)
    attackers = [RawWebSocket.connect(server.ws("bulky"), receive_buffer=4096) for _ in range(MAX_SESSIONS)]
    try:
        frame_bytes = frame(OP_BINARY, jpeg(32, 32))
        blocked: set[int] = set()
        for attacker in attackers:
            attacker.sock.settimeout(0.2)
        for _ in range(40):  # each reply is 256 KiB: far more than the socket buffers between us hold
            for number, attacker in enumerate(attackers):
                if number in blocked:
                    continue
                try:
                    attacker.send(frame_bytes)
                except TimeoutError:
                    blocked.add(number)
            time.sleep(0.03)
        filled_at = time.monotonic()
        reclaimed = server.wait_for(lambda health: health["sessions_active"] == 0, timeout=SEND_TIMEOUT_S + 8)
        reclaim_s = time.monotonic() - filled_at
    finally:
        for attacker in attackers:
            attacker.close()
    after = settled(server)
    closed = after.total("stream_sessions_closed_total", reason="send_timeout") - before.total(
        "stream_sessions_closed_total", reason="send_timeout"
    )
    print(f"websockets transport: {MAX_SESSIONS} non-reading sessions reclaimed {reclaim_s:.2f} s after their last frame")
    assert closed == MAX_SESSIONS and reclaimed["sessions_active"] == 0, f"{closed} sessions closed as send_timeout"
    assert reclaim_s < SEND_TIMEOUT_S + 3


# Refused connections do not buffer what they are sent ---------------------------------------


def test_refused_clients_sending_6_mb_each_do_not_grow_memory(tmp_path: Path) -> None:
    """Both slots held; 60 clients without a key and 60 over the session limit each send a 6 MB message."""
    keys = tmp_path / "keys.txt"
    keys.write_text(f"ops {KEY}\n", encoding="utf-8")
    running = start_server(
        {
            "FORGESYTE_STREAM_API_KEYS_FILE": str(keys),
            "FORGESYTE_STREAM_MAX_SESSIONS": "2",
            "FORGESYTE_STREAM_LOG_LEVEL": "info",
        },
        transport="websockets",
    )
    authorized = {"Authorization": f"Bearer {KEY}"}
    message = frame(OP_BINARY, b"\xff\xd8" + b"\x00" * (6_000_000 - 2))
    try:
        holders = [RawWebSocket.connect(running.ws("probe"), headers=authorized) for _ in range(2)]
        running.wait_for(lambda health: health["sessions_active"] == 2)
        pid = running.process.pid
        rss_before = process_status(pid)["VmRSS"] // 1024
        reset_peak(pid)
        outcomes: list[tuple[str, int | None]] = []

        def refused(headers: dict[str, str]) -> None:
            client = RawWebSocket.connect(running.ws("probe"), headers=headers)
            client.sock.settimeout(10)
            try:
                client.send(message)
            except OSError:
                pass  # the server closed before all of it went out
            frames, closed = client.until_closed()
            client.close()
            outcomes.append((",".join(json.loads(p)["error"] for op, p in frames if op == OP_TEXT), closed.code))

        threads = [threading.Thread(target=refused, args=({} if n % 2 else authorized,), daemon=True) for n in range(120)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        elapsed = time.monotonic() - started
        peak_mib = (process_status(pid)["VmHWM"] // 1024 - rss_before) / 1024
        time.sleep(1.0)
        after_mib = (process_status(pid)["VmRSS"] // 1024 - rss_before) / 1024
        for holder in holders:
            holder.close()
    finally:
        running.stop()
    print(f"120 refused clients x 6 MB in {elapsed:.1f} s: peak RSS +{peak_mib:.1f} MiB, after +{after_mib:.1f} MiB")
    assert sorted(set(outcomes)) == [("server_busy", 1013), ("unauthorized", 3000)], set(outcomes)
    assert len(outcomes) == 120
    assert peak_mib < 64, f"refused clients raised the peak RSS by {peak_mib:.0f} MiB"
    assert after_mib < 16, f"RSS still {after_mib:.0f} MiB up after the refused clients left"


# Duplicate headers --------------------------------------------------------------------------


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _status_line(answer: bytes) -> str:
    return answer.split(b"\r\n", 1)[0].decode("latin-1")


@pytest.fixture(scope="module")
def keyed_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, RunningServer]]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"ops {KEY}\n", encoding="utf-8")
    env = {"FORGESYTE_STREAM_API_KEYS_FILE": str(keys), "FORGESYTE_STREAM_LOG_LEVEL": "debug"}
    main = start_server(env)
    alternate = start_server(env, transport="websockets")
    yield main, alternate
    alternate.stop()
    main.stop()


_UPGRADE = (
    "GET /ws/video/stream?pipeline_id=probe HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.mark.parametrize(
    ("request_text", "what"),
    [
        pytest.param(
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
            "Authorization: Bearer {key}\r\nConnection: close\r\n\r\n",
            "two Authorization headers on /metrics",
            id="metrics-two-authorization",
        ),
        pytest.param(
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\nAccept: text/plain\r\n"
            "Accept: application/openmetrics-text\r\nConnection: close\r\n\r\n",
            "two Accept headers on /metrics",
            id="metrics-two-accept",
        ),
        pytest.param(
            _UPGRADE + "Authorization: Bearer {key}\r\nAuthorization: Bearer {key}\r\n\r\n",
            "two Authorization headers on the upgrade",
            id="upgrade-two-authorization",
        ),
        pytest.param(
            _UPGRADE + "Authorization: Bearer wrong-key-0123456789abcdef\r\nAuthorization: Bearer {key}\r\n\r\n",
            "a wrong and a right Authorization on the upgrade",
            id="upgrade-wrong-then-right-authorization",
        ),
    ],
)
def test_duplicate_headers_are_answered_as_the_main_transport_answers_them(
    keyed_pair: tuple[RunningServer, RunningServer], request_text: str, what: str
) -> None:
    main, alternate = keyed_pair
    answers = {}
    for name, running in (("main", main), ("websockets", alternate)):
        answer = _exchange(running.port, request_text.format(port=running.port, key=KEY).encode())
        answers[name] = _status_line(answer)
    assert answers["websockets"] == answers["main"], (what, answers)
    assert not answers["websockets"].startswith("HTTP/1.1 5"), (what, answers)
    time.sleep(0.3)
    assert not error_records(alternate), error_records(alternate)[:2]


def test_a_duplicate_authorization_on_a_stream_is_no_internal_error(keyed_pair: tuple[RunningServer, RunningServer]) -> None:
    _, alternate = keyed_pair
    raw = _UPGRADE.format(port=alternate.port) + f"Authorization: Bearer {KEY}\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", alternate.port), timeout=10) as sock:
        sock.sendall(raw.encode())
        client = RawWebSocket(sock)
        assert client.read_http_head().startswith("HTTP/1.1 101")
        client.send(frame(OP_BINARY, jpeg()))
        opcode, payload = client.receive_frame()
    assert opcode == OP_TEXT and "result" in json.loads(payload), payload[:200]
    time.sleep(0.3)
    assert not error_records(alternate), error_records(alternate)[:2]


# Credentials never reach the log ------------------------------------------------------------


def test_no_credential_reaches_the_log_at_debug(keyed_pair: tuple[RunningServer, RunningServer]) -> None:
    _, alternate = keyed_pair
    attempts = [
        {"Sec-WebSocket-Protocol": f"FORGESYTE.BEARER.{KEY}"},
        {"Sec-WebSocket-Protocol": f"forgesyte.v1, forgesyte.bearer.{KEY}"},
        {"Authorization": KEY},
        {"Authorization": f"Bearer {KEY}"},
        {"AUTHORIZATION": f"bearer {KEY}"},
        {"X-API-Key": KEY},
        {"Cookie": f"session={KEY}; other=1"},
        {"Proxy-Authorization": f"Basic {KEY}"},
    ]
    for headers in attempts:
        client = RawWebSocket.connect(alternate.ws("probe"), headers=headers)
        try:
            client.send(frame(OP_BINARY, jpeg()))
            client.receive_frame()  # a result, or the unauthorized error before close 3000
        finally:
            client.close()
    # A header value the library refuses to parse: its error quotes the value, whatever the header.
    _exchange(alternate.port, (_UPGRADE.format(port=alternate.port) + f"X-Token: bad \x01{KEY}\r\n\r\n").encode())
    time.sleep(0.5)
    logs = alternate.log_text()
    assert '"level": "debug"' in logs, "the server runs at debug, where the handshake headers are logged"
    assert "Sec-WebSocket-Protocol" in logs and "<redacted>" in logs
    leaked = [line for line in alternate.lines if KEY in line or KEY.upper() in line]
    assert not leaked, leaked[:3]
