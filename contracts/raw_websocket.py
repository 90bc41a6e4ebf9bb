"""A WebSocket client on a bare socket, for the cases no well-behaved client library can send.

Protocol violations, floods of fragments or pings, a client that never reads:
these need frames built by hand and a socket whose reading the test controls.
Blocking on purpose: attack cases run it in threads beside the server's other
clients.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True) -> bytes:
    """One WebSocket frame; clients must mask, so `masked=False` is a protocol violation."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    # XOR with the key repeated: one big-integer operation instead of a per-byte loop.
    repeated = (key * (length // 4 + 1))[:length]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big") if length else b""
    return head + key + body


@dataclass
class Closed:
    code: int | None
    reason: str


class RawWebSocket:
    """A handshake, then raw frames out and parsed frames in."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    @classmethod
    def connect(
        cls, url: str, *, headers: dict[str, str] | None = None, timeout_s: float = 10.0, receive_buffer: int | None = None
    ) -> RawWebSocket:
        parts = urlsplit(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            # Set before connecting so the window the client advertises stays small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(timeout_s)
        sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {parts.hostname}:{parts.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        client = cls(sock)
        status = client.read_http_head()
        if not status.startswith("HTTP/1.1 101"):
            sock.close()
            raise ConnectionError(f"upgrade refused: {status}")
        return client

    def read_http_head(self) -> str:
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed during the HTTP head")
            self._buffer += chunk
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        return head.decode("latin-1").split("\r\n", 1)[0]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def receive_frame(self) -> tuple[int, bytes]:
        first, second = self._read_exact(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read_exact(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read_exact(8))[0]
        return first & 0x0F, self._read_exact(length)

    def until_closed(self) -> tuple[list[tuple[int, bytes]], Closed]:
        """Every frame up to the close frame (or the end of the connection: code None)."""
        frames: list[tuple[int, bytes]] = []
        while True:
            try:
                opcode, payload = self.receive_frame()
            except (ConnectionError, OSError):
                return frames, Closed(None, "connection ended without a close frame")
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return frames, Closed(code, payload[2:].decode(errors="replace"))
            frames.append((opcode, payload))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
