"""A WebSocket test client that checks every server message against asyncapi.yaml."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from contracts.asyncapi_doc import load_contract

CONTRACT = load_contract()


@dataclass
class Received:
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None

    def replies(self) -> dict[int, list[dict[str, Any]]]:
        by_index: dict[int, list[dict[str, Any]]] = {}
        for message in self.messages:
            if "frame_index" in message:
                by_index.setdefault(message["frame_index"], []).append(message)
        return by_index

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if kind_of(m) == kind]


def kind_of(message: dict[str, Any]) -> str:
    if "result" in message:
        return "result"
    if message.get("dropped") is True:
        return "dropped"
    if "warning" in message:
        return "warning"
    return "error"


class StreamClient:
    """Thin wrapper over a real websockets connection; decoding and contract checks only."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.received = Received()

    @classmethod
    async def open(cls, url: str) -> StreamClient:
        connection = await connect(url, compression=None, max_size=None, open_timeout=10, close_timeout=5, proxy=None)
        return cls(connection)

    async def send(self, data: bytes | str) -> None:
        await self.connection.send(data)

    async def send_paced(self, data: bytes | Sequence[bytes], count: int, interval_s: float) -> None:
        """Send `count` frames on an absolute schedule, so the rate holds even when the loop is busy.

        `data` is one frame sent `count` times, or a clip whose i-th frame is sent i-th.
        """
        start = time.monotonic()
        for i in range(count):
            delay = start + i * interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.send(data if isinstance(data, bytes) else data[i])

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.connection.recv(), timeout)
        assert isinstance(raw, str), f"server sent a binary message: {raw[:40]!r}"
        message = json.loads(raw)
        CONTRACT.validate_server_message(message)
        self.received.messages.append(message)
        return message

    async def recv_until_closed(self, timeout: float = 15.0) -> Received:
        """Read every message until the server closes; fail if it does not close in time."""
        async def drain() -> None:
            try:
                while True:
                    await self.recv(timeout)
            except ConnectionClosed:
                return

        await asyncio.wait_for(drain(), timeout)
        self.received.close_code = self.connection.close_code
        self.received.close_reason = self.connection.close_reason
        return self.received

    async def recv_replies(self, indices: set[int], timeout: float = 20.0) -> Received:
        """Read until every frame index in `indices` has a reply."""
        async def drain() -> None:
            while not indices <= set(self.received.replies()):
                await self.recv(timeout)

        await asyncio.wait_for(drain(), timeout)
        return self.received

    async def close(self) -> None:
        await self.connection.close()
