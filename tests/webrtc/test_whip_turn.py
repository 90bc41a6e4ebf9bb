"""Through a TURN relay: Debian's coturn on loopback, the publisher forced to relay (iceTransportPolicy relay).

The server is configured with the same TURN server (FORGESYTE_STREAM_WEBRTC_ICE_SERVERS), gathers through it, and
tells the publisher of it in the WHIP answer's Link header (RFC 9725 section 4.6).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from aiortc import RTCIceServer

from tests.support.server import RunningServer, free_port, start_server
from tests.webrtc.whip_support import WEBRTC_ENV, ClipTrack, Publisher, face_frames, loopback_only, publish

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
USER, PASSWORD = "forgesyte", "relay-secret-0123"


def _udp_port_answers(port: int) -> bool:
    """A STUN binding request on 127.0.0.1:port gets an answer: coturn is listening."""
    request = bytes.fromhex("0001000021122442") + bytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        try:
            probe.sendto(request, ("127.0.0.1", port))
            probe.recvfrom(2048)
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def turn_port() -> Iterator[int]:
    port = free_port()
    relay_low = 49160 + (port % 1000) * 10
    process = subprocess.Popen(
        [
            TURNSERVER, "-n", "--no-cli", "--no-tls", "--no-dtls", "--fingerprint", "--lt-cred-mech",
            "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={port}",
            f"--min-port={relay_low}", f"--max-port={relay_low + 9}", "--allow-loopback-peers",
            f"--user={USER}:{PASSWORD}", "--realm=forgesyte.test", "--log-file=stdout", "--simple-log",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not _udp_port_answers(port):
            assert process.poll() is None, f"turnserver exited: {process.stdout.read() if process.stdout else ''}"
            assert time.monotonic() < deadline, "turnserver did not answer on its port"
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(turn_port: int) -> Iterator[RunningServer]:
    ice = json.dumps([{"urls": f"turn:127.0.0.1:{turn_port}?transport=udp", "username": USER, "credential": PASSWORD}])
    running = start_server({**WEBRTC_ENV, "FORGESYTE_STREAM_WEBRTC_ICE_SERVERS": ice})
    yield running
    running.stop()


def test_a_publisher_forced_to_relay_gets_its_results_through_turn(server: RunningServer, turn_port: int) -> None:
    turn = RTCIceServer(urls=f"turn:127.0.0.1:{turn_port}?transport=udp", username=USER, credential=PASSWORD)

    async def scenario() -> tuple[Publisher, str]:
        publisher = await publish(server.http, "faces", ClipTrack(face_frames(21), fps=10), ice_servers=[turn], relay_only=True)
        assert isinstance(publisher, Publisher), publisher.text
        await publisher.wait_for(20, 30)
        transport = publisher.pc.getTransceivers()[0].sender.transport.transport
        pair = transport._connection._nominated.get(1)  # aioice: the selected pair of component 1
        used = pair.local_candidate.type if pair is not None else "none"
        await publisher.delete()
        await publisher.close()
        return publisher, used

    with loopback_only():
        publisher, used = asyncio.run(scenario())
    assert used == "relay", "the publisher's media went through the TURN server"
    replies = publisher.replies()
    assert len(replies) >= 20 and publisher.undeclared == []
    assert sum(1 for m in replies if m.get("result", {}).get("faces")) >= 0.9 * len(replies)
    link = publisher.link or ""
    assert f"<turn:127.0.0.1:{turn_port}?transport=udp>" in link and 'rel="ice-server"' in link
    assert f'username="{USER}"' in link and 'credential-type="password"' in link
