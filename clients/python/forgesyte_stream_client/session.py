"""One WebSocket session with the server: `AsyncStreamClient`, the protocol and nothing more.

It sends a frame (JPEG bytes or a BGR image), receives typed replies, and
turns the server's session-ending error and close into one exception; the
run around it (forgesyte_stream_client.client.stream) adds pacing,
reconnecting and one outcome per source frame. Every wait is bounded: a
reply (reply_timeout) and a reply's size (max_message_bytes).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from forgesyte_stream_client.errors import (
    ClientError,
    ConnectError,
    ProtocolError,
    ReplyTimeout,
    StreamError,
    UnauthorizedError,
    error_from_close,
    error_from_message,
)
from forgesyte_stream_client.replies import ServerMessage, decode_message, parse_message
from forgesyte_stream_client.sources import Frame, encode_jpeg

STREAM_PATH = "/ws/video/stream"
SUBPROTOCOL_PREFIX = "forgesyte.bearer."

DEFAULT_REPLY_TIMEOUT_S = 30.0
DEFAULT_MAX_PAUSE_S = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 2**22

# The close codes this client sends when the server's message breaks the WebSocket rules, and what each means.
_REFUSED_BY_US = {
    1002: "the server broke the WebSocket protocol",
    1007: "the server sent a text message that is not UTF-8",
}
MESSAGE_TOO_BIG_CLOSE = 1009


def stream_url(url: str, pipeline: str) -> str:
    """The stream endpoint for `url` (a server base such as ws://host:8000, or the full endpoint) and `pipeline`."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"expected a ws://HOST:PORT (or wss://, http://, https://) URL, got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(STREAM_PATH):
        path = path + STREAM_PATH
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "pipeline_id"] + [("pipeline_id", pipeline)]
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def check_timeout(name: str, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a number of seconds above 0 (or None for no limit), got {value}")


class AsyncStreamClient:
    """One stream session: `async with AsyncStreamClient(url, "faces") as client: ...`.

    `reply_timeout` bounds each receive() and each send(): a server that sends
    nothing, or takes no frame, for that long ends the session with
    ReplyTimeout (None waits for ever). A reply over `max_message_bytes` ends
    it with ProtocolError.
    """

    def __init__(
        self,
        url: str,
        pipeline: str,
        *,
        api_key: str | None = None,
        quality: int = 80,
        open_timeout: float = 10.0,
        reply_timeout: float | None = DEFAULT_REPLY_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        check_timeout("reply_timeout", reply_timeout)
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be at least 1, got {max_message_bytes}")
        self.url = stream_url(url, pipeline)
        self.pipeline = pipeline
        self.quality = quality
        self.reply_timeout = reply_timeout
        self._api_key = api_key
        self._open_timeout = open_timeout
        self._max_message_bytes = max_message_bytes
        self._ws: ClientConnection | None = None
        self._sent = 0
        self._error: StreamError | None = None
        self._pending: list[ServerMessage] = []  # read while looking for the error behind a failed send

    @property
    def frames_sent(self) -> int:
        """Frames sent on this connection; the next frame's frame_index."""
        return self._sent

    async def connect(self) -> None:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else None
        try:
            self._ws = await connect(
                self.url,
                compression=None,
                max_size=self._max_message_bytes,
                proxy=None,
                open_timeout=self._open_timeout,
                additional_headers=headers,
            )
        except InvalidStatus as refused:
            status = refused.response.status_code
            if status in (401, 403):
                raise UnauthorizedError("unauthorized", f"the server refused the handshake with HTTP {status}", close_code=None) from refused
            raise ConnectError(self.url, f"the server answered the handshake with HTTP {status}", status=status) from refused
        except InvalidURI as bad:
            raise ValueError(str(bad)) from bad
        except (OSError, InvalidHandshake, TimeoutError) as failed:
            raise ConnectError(self.url, str(failed) or type(failed).__name__) from failed
        self._sent = 0
        self._error = None

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def __aenter__(self) -> AsyncStreamClient:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _socket(self) -> ClientConnection:
        if self._ws is None:
            raise ClientError("not connected: call connect() or use `async with`")
        return self._ws

    async def send(self, frame: bytes | np.ndarray | Frame, *, quality: int | None = None) -> int:
        """Send one frame; returns its frame_index (the number of frames sent before it on this connection).

        bytes must be one complete JPEG; an image is encoded at `quality` (the
        client's default when None); a source Frame sends its own JPEG unless a
        quality is given.
        """
        if isinstance(frame, Frame):
            data = frame.to_jpeg(quality)
        elif isinstance(frame, np.ndarray):
            data = encode_jpeg(frame, quality or self.quality)
        else:
            data = bytes(frame)
            if data[:2] != b"\xff\xd8":
                raise ValueError("a frame must be one complete JPEG image (it starts with FF D8)")
        ws = self._socket()
        try:
            async with asyncio.timeout(self.reply_timeout):
                await ws.send(data)
        except ConnectionClosed as closed:
            await self._read_to_close()
            raise self._closed_error(closed) from closed
        except TimeoutError:
            raise self._time_out(f"the server took no frame for {self.reply_timeout:g} s (reply timeout)") from None
        index = self._sent
        self._sent += 1
        return index

    def _closed_error(self, closed: ConnectionClosed) -> StreamError:
        if self._error is not None:
            return self._error
        sent = closed.sent
        if sent is not None and closed.rcvd_then_sent is not True:
            # This client closed first: the server's message broke a rule the WebSocket layer enforces.
            if sent.code == MESSAGE_TOO_BIG_CLOSE:
                return ProtocolError(
                    f"the server sent a message over the client's limit of {self._max_message_bytes} bytes (max_message_bytes)", close_code=sent.code
                )
            if sent.code in _REFUSED_BY_US:
                return ProtocolError(_REFUSED_BY_US[sent.code], close_code=sent.code)
        received = closed.rcvd
        return error_from_close(received.code if received else None, received.reason if received else "")

    def _time_out(self, detail: str) -> ReplyTimeout:
        """End a session whose server stopped answering: drop the connection at once, no closing handshake to wait for."""
        self._error = ReplyTimeout(detail)
        if self._ws is not None:
            self._ws.transport.abort()
        return self._error

    async def _refuse(self, error: ProtocolError) -> ProtocolError:
        """End the session over a message the contract does not allow."""
        self._error = error
        await self._socket().close()
        return error

    async def _read_to_close(self) -> None:
        """After a failed send: read what the server sent before closing, so the error it sent is the one raised."""
        ws = self._socket()
        while self._error is None:
            try:
                data = await ws.recv()
            except ConnectionClosed:
                return
            try:
                reply = parse_message(decode_message(data))
            except ProtocolError as error:
                self._error = error
                return
            if isinstance(reply, dict):
                self._error = error_from_message(reply, ws.close_code)
            else:
                self._pending.append(reply)

    async def receive(self) -> ServerMessage:
        """The next reply or warning. Raises the StreamError that ends the session; StopAsyncIteration after a normal close.

        Nothing from the server for `reply_timeout` seconds raises ReplyTimeout;
        a message outside the contract raises ProtocolError. Either ends the session.
        """
        try:
            return await self._receive(self.reply_timeout)
        except TimeoutError:
            raise self._time_out(f"the server sent nothing for {self.reply_timeout:g} s (reply timeout)") from None

    async def _receive(self, timeout: float | None) -> ServerMessage:
        """receive(), except that nothing within `timeout` seconds raises TimeoutError and leaves the session open."""
        if self._pending:
            return self._pending.pop(0)
        ws = self._socket()
        if self._error is not None:
            raise self._error
        try:
            async with asyncio.timeout(timeout):
                data = await ws.recv()  # cancelling recv() loses nothing: the next call returns the message
        except ConnectionClosed as closed:
            received = closed.rcvd
            if self._error is None and received is not None and received.code == 1000:
                raise StopAsyncIteration from closed
            raise self._closed_error(closed) from closed
        try:
            reply = parse_message(decode_message(data))
        except ProtocolError as error:
            raise await self._refuse(error) from None
        if isinstance(reply, dict):
            # A session-ending error: the close follows; its code completes the exception.
            await self._await_close(ws, reply)
            raise self._error  # type: ignore[misc]
        return reply

    async def _await_close(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(ws.wait_closed(), timeout=5.0)
        except TimeoutError:
            await ws.close()
        code = ws.close_code
        self._error = error_from_message(message, code)

    def __aiter__(self) -> AsyncStreamClient:
        return self

    async def __anext__(self) -> ServerMessage:
        return await self.receive()


def client_close_code(client: AsyncStreamClient) -> int | None:
    return client._ws.close_code if client._ws is not None else None
