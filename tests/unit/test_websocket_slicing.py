"""Frame-aligned slicing in the guarded WebSocket protocol, fed bytes in process: no sockets, no sleeps.

The protocol reads frame headers to cut its input where frames end, so that a
large frame costs one parser call while floods of small frames are still
parsed a bounded slice at a time. The parser stays the authority: these tests
check that every message arrives intact whatever the chunking, that the
boundaries stay aligned in normal use, and that a disagreement with the parser
only switches the connection to plain byte slices.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from adapters.transports.shared.websocket_frames import READ_AHEAD_BYTES, frame_size
from adapters.transports.litestar.http_limits import ConnectionLimits
from adapters.transports.litestar.websocket_limits import limited_connection_classes

LIMITS = ConnectionLimits(
    header_timeout_s=5, body_timeout_s=30, max_header_line_bytes=8192, max_head_bytes=16384,
    send_timeout_s=5, max_fragments=4096, max_control_frames_per_s=20,
)


class MemoryTransport(asyncio.Transport):
    """Collects what the protocol writes and records pauses."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


async def _open(received: list[bytes], *, reads: bool = True) -> tuple[Any, MemoryTransport, ClientProtocol]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        if not reads:
            await asyncio.Event().wait()  # an application busy elsewhere: nothing is taken
        while (message := await receive())["type"] == "websocket.receive":
            received.append(message["bytes"])

    config = Config(app=app, ws="websockets-sansio", lifespan="off", log_level="warning", ws_max_size=1 << 20)
    config.load()
    protocol = limited_connection_classes(LIMITS)[1](config=config, server_state=ServerState(), app_state={})
    transport = MemoryTransport()
    protocol.connection_made(transport)
    client = ClientProtocol(parse_uri("ws://127.0.0.1:8000/ws"))
    client.send_request(client.connect())
    protocol.data_received(b"".join(client.data_to_send()))  # uvicorn hands over the upgrade request alone
    for _ in range(100):
        if transport.written:
            break
        await asyncio.sleep(0)
    client.receive_data(b"".join(transport.written))
    transport.written.clear()
    return protocol, transport, client


async def _deliver(protocol: Any, transport: MemoryTransport, wire: bytes, chunks: random.Random) -> None:
    position = 0
    while position < len(wire):
        size = chunks.choice([1, 2, 3, 7, 13, 100, 4096, 65536, 300_000])
        protocol.data_received(wire[position : position + size])
        position += size
        while protocol._backlog or transport.paused:  # the application catches up, as the event loop would let it
            await asyncio.sleep(0)


def _messages(seed: int) -> list[bytes]:
    sizes = random.Random(seed).choices([0, 1, 125, 126, 127, 5000, 65535, 65536, 200_000], k=80)
    return [bytes([index % 256]) * size for index, size in enumerate(sizes)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_messages_arrive_intact_and_aligned_whatever_the_chunking(seed: int) -> None:
    async def run() -> None:
        received: list[bytes] = []
        protocol, transport, client = await _open(received)
        messages = _messages(seed)
        for message in messages:
            client.send_binary(message)
        await _deliver(protocol, transport, b"".join(client.data_to_send()), random.Random(seed))
        for _ in range(1000):
            if len(received) == len(messages):
                break
            await asyncio.sleep(0)
        assert received == messages
        assert protocol._aligned, "slices lost the frame boundaries in normal use"
        protocol.connection_lost(None)

    asyncio.run(run())


def test_a_disagreement_with_the_parser_falls_back_to_plain_slices() -> None:
    async def run() -> None:
        received: list[bytes] = []
        protocol, transport, client = await _open(received)
        messages = _messages(4)
        for message in messages[:10]:
            client.send_binary(message)
        await _deliver(protocol, transport, b"".join(client.data_to_send()), random.Random(4))
        protocol._frames.left = 3  # a wrong belief about where the current frame ends
        for message in messages[10:]:
            client.send_binary(message)
        await _deliver(protocol, transport, b"".join(client.data_to_send()), random.Random(5))
        for _ in range(1000):
            if len(received) == len(messages):
                break
            await asyncio.sleep(0)
        assert received == messages
        assert not protocol._aligned
        protocol.connection_lost(None)

    asyncio.run(run())


@pytest.mark.parametrize("payload", [0, 1, 125, 126, 127, 65535, 65536, 1 << 20])
def test_frame_size_reads_every_length_encoding(payload: int) -> None:
    client = ClientProtocol(parse_uri("ws://127.0.0.1:8000/ws"))
    client.state = client.state.__class__.OPEN
    client.send_binary(b"x" * payload)
    wire = b"".join(client.data_to_send())
    for cut in range(15):
        assert frame_size(wire[:cut]) in (None, len(wire))
    assert frame_size(wire[:14]) == len(wire)


def test_reading_pauses_once_the_messages_not_taken_reach_the_read_ahead_bound() -> None:
    async def run() -> None:
        protocol, transport, client = await _open([], reads=False)
        message = b"x" * 50_000
        for _ in range(8):
            client.send_binary(message)
        wire = b"".join(client.data_to_send())
        framed = len(wire) // 8
        fed = 0
        while not transport.paused and fed < len(wire):
            protocol.data_received(wire[fed : fed + framed])
            fed += framed
        assert transport.paused, "reading never paused for an application that takes nothing"
        assert READ_AHEAD_BYTES <= protocol.queue.size < READ_AHEAD_BYTES + len(message)
        assert fed == 6 * framed  # six 50 KB messages: the sixth crossed 256 KiB
        protocol.connection_lost(None)

    asyncio.run(run())
