"""The test kit's client must catch a server that breaks the document, in its dict view as in its typed one.

tests/ rely on the dict view (`recv`, `recv_until_closed`) to check every
message; these cases point it at a scripted peer on loopback that breaks one
rule each, so a client that stopped checking would fail here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from contracts.client import ContractViolation, StreamClient, kind_of

INVALID_MESSAGE = json.dumps({"error": "invalid_message", "detail": "expected a binary message"})
DROPPED_0 = json.dumps({"frame_index": 0, "dropped": True, "cause": "lagging"})


async def _against(peer: Callable[[ServerConnection], Awaitable[None]], client_does: Callable[[StreamClient], Awaitable[Any]]) -> Any:
    async with serve(peer, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        client = await StreamClient.connect(f"ws://127.0.0.1:{port}/ws/video/stream?pipeline_id=probe", reply_timeout_s=5)
        try:
            return await client_does(client)
        finally:
            await client.close()


def _run(peer: Callable[[ServerConnection], Awaitable[None]], client_does: Callable[[StreamClient], Awaitable[Any]]) -> Any:
    return asyncio.run(_against(peer, client_does))


async def _frame_then_drain(client: StreamClient) -> Any:
    await client.send_raw(b"\xff\xd8\xff\xd9")
    return await client.recv_until_closed(timeout=5)


def test_the_dict_view_records_a_well_behaved_exchange() -> None:
    async def peer(connection: ServerConnection) -> None:
        await connection.recv()
        await connection.send(DROPPED_0)
        await connection.send(INVALID_MESSAGE)
        await connection.close(1003)

    received = _run(peer, _frame_then_drain)
    assert [kind_of(m) for m in received.messages] == ["dropped", "error"]
    assert received.replies() == {0: [json.loads(DROPPED_0)]}
    assert received.close_code == 1003


@pytest.mark.parametrize(
    ("script", "complaint"),
    [
        ([INVALID_MESSAGE, DROPPED_0], "after invalid_message"),
        ([INVALID_MESSAGE], "must be followed by close 1003"),
        ([DROPPED_0, DROPPED_0], "second reply"),
        ([json.dumps({"frame_index": 1, "dropped": True, "cause": "lagging"})], "only 1 frames were sent"),
        ([b"\x00binary"], "binary message"),
        (["not json"], "not JSON"),
    ],
    ids=["message-after-closing-error", "wrong-close-code", "second-reply", "reply-to-unsent-frame", "binary", "not-json"],
)
def test_the_dict_view_rejects_a_server_that_breaks_the_document(script: list[str | bytes], complaint: str) -> None:
    async def peer(connection: ServerConnection) -> None:
        await connection.recv()
        for message in script:
            await connection.send(message)
        await connection.close(1000)

    with pytest.raises(ContractViolation, match=complaint):
        _run(peer, _frame_then_drain)
