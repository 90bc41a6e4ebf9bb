"""The queue between a WebSocket connection and the application, sized in bytes so that read-ahead is bounded."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class ReceiveQueue:
    """What uvicorn uses of asyncio.Queue for a connection's incoming messages, bound to its loop at creation.

    asyncio.Queue finds its loop again on every wait, which costs a getpid
    system call per message; one reader at a time, as ASGI's receive has.
    `size` is what the messages waiting hold (their payloads' lengths), for
    the read-ahead bound.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[tuple[Any, int]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.size = 0

    def put_nowait(self, item: Any, size: int = 0) -> None:
        self._items.append((item, size))
        self.size += size
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def waiter(self) -> asyncio.Future[None] | None:
        """None when a message is ready; otherwise a future done when one is put (await it, then call waited)."""
        if self._items:
            return None
        if self._waiter is not None:
            raise RuntimeError("receive() is already being awaited on this connection")
        self._waiter = waiter = self._loop.create_future()
        return waiter

    def waited(self) -> None:
        self._waiter = None

    def get_nowait(self) -> Any:
        item, size = self._items.popleft()
        self.size -= size
        return item

    def empty(self) -> bool:
        return not self._items

    def drop_messages(self) -> None:
        """Drop the messages not yet taken, keeping disconnects: what a closed application will never read."""
        self._items = deque(item for item in self._items if item[0].get("type") != "websocket.receive")
        self.size = sum(size for _, size in self._items)
