"""The Litestar transport adapter alone: ASGI messages in, Inbound values out; replies and closes out.

Real Litestar WebSocket objects over a scripted ASGI receive/send; the protocol
itself is tested over real sockets in tests/stream and contracts/.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from litestar.connection import WebSocket

from adapters.transports.litestar.app import LitestarWebSocketTransport
from application.ports import ConnectionClosed, InboundKind
from domain import Session


def socket(incoming: list[dict[str, Any]], sent: list[dict[str, Any]], *, fail_send: Exception | None = None) -> WebSocket[Any, Any, Any]:
    scope = {
        "type": "websocket",
        "path": "/ws/video/stream",
        "query_string": b"pipeline_id=probe",
        "headers": [],
        "client": ("203.0.113.7", 50123),
        "state": {},
        "app": None,
        "litestar_app": None,
    }
    queue = list(incoming)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    async def send(message: dict[str, Any]) -> None:
        if fail_send is not None and message["type"] != "websocket.accept":
            raise fail_send  # the peer went away after the handshake
        sent.append(message)

    return WebSocket(scope, receive, send)  # type: ignore[arg-type]


def test_the_session_is_stored_in_websocket_state() -> None:
    ws = socket([], [])
    session = Session(pipeline_id="probe")
    LitestarWebSocketTransport(ws).attach_session(session)
    assert ws.state.session is session


def test_the_client_address_names_host_and_port() -> None:
    assert LitestarWebSocketTransport(socket([], [])).client == "203.0.113.7:50123"


def test_binary_text_and_disconnect_messages_become_inbound_values() -> None:
    incoming = [
        {"type": "websocket.receive", "bytes": b"\xff\xd8jpeg\xff\xd9"},
        {"type": "websocket.receive", "text": "hello"},
        {"type": "websocket.disconnect", "code": 1001},
    ]
    transport = LitestarWebSocketTransport(socket(incoming, []))

    async def scenario() -> list[Any]:
        return [await transport.receive() for _ in range(3)]

    binary, text, gone = asyncio.run(scenario())
    assert (binary.kind, binary.data) == (InboundKind.BINARY, b"\xff\xd8jpeg\xff\xd9")
    assert (text.kind, text.data) == (InboundKind.TEXT, "hello")
    assert (gone.kind, gone.close_code) == (InboundKind.DISCONNECT, 1001)


def accepted(ws: WebSocket[Any, Any, Any]) -> WebSocket[Any, Any, Any]:
    asyncio.run(ws.accept())
    return ws


def test_a_reply_is_one_compact_json_text_message() -> None:
    sent: list[dict[str, Any]] = []
    transport = LitestarWebSocketTransport(accepted(socket([{"type": "websocket.connect"}], sent)))
    asyncio.run(transport.send_json({"frame_index": 3, "result": {"width": 640}}))
    accept, message = sent
    assert accept["type"] == "websocket.accept"
    assert message["type"] == "websocket.send" and message.get("bytes") is None
    assert json.loads(message["text"]) == {"frame_index": 3, "result": {"width": 640}}


@pytest.mark.parametrize("failure", [OSError("client disconnected"), ConnectionResetError()])
def test_a_send_to_a_gone_peer_is_connection_closed(failure: Exception) -> None:
    transport = LitestarWebSocketTransport(accepted(socket([{"type": "websocket.connect"}], [], fail_send=failure)))
    with pytest.raises(ConnectionClosed):
        asyncio.run(transport.send_json({"frame_index": 0, "dropped": True}))
