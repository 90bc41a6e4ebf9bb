"""A tiny websockets server standing in for an access-controlled ForgeSyte server, to see what a client sends.

It records the request's Authorization header and offered subprotocols,
echoes a `forgesyte.bearer.*` subprotocol as the access-controlled server
does, and answers the first frame as that server answers a bad key:
`{"error": "unauthorized", ...}` then close 3000.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve


@dataclass
class Seen:
    authorization: list[str | None] = field(default_factory=list)
    subprotocols: list[list[str]] = field(default_factory=list)


class RefusingServer:
    def __init__(self) -> None:
        self.seen = Seen()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _handler(self, ws: ServerConnection) -> None:
        self.seen.authorization.append(ws.request.headers.get("Authorization"))
        async for _ in ws:
            await ws.send(json.dumps({"error": "unauthorized", "detail": "unknown API key"}))
            await ws.close(3000, "unauthorized")
            return

    def _select(self, ws: ServerConnection, offered: Any) -> str | None:
        self.seen.subprotocols.append(list(offered))
        return next((p for p in offered if p.startswith("forgesyte.bearer.")), None)

    async def _main(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._handler, "127.0.0.1", 0, select_subprotocol=self._select, compression=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    def __enter__(self) -> RefusingServer:
        self._thread.start()
        assert self._ready.wait(10), "the refusing server did not start"
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)
