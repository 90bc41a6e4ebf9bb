"""uvicorn's WebSocket connection with the limits a server exposed to hostile clients needs.

uvicorn bounds message sizes but not time or work: a client can hold a
connection open by sending its headers or its body a byte at a time, keep a
session forever by not reading its replies (the write buffer fills, the
reply waits, and closing waits for a flush that never comes), grow the write
buffer without bound with pings whose pongs it never reads, and stall the
event loop for seconds with floods of tiny frames, since every frame in a
256 KiB read is parsed before any other connection runs. These subclasses
add, at the socket, where the abuse happens:

- HTTP: a deadline for the request head (408), a deadline for the body
  (408), 431 for a header line or head over its limit, instead of silence.
- WebSocket: a bound on the time a reply may wait for a client that does not
  read (then the connection is aborted and the application is told why);
  fragments per message and control frames per second bounded (close 1008);
  pongs coalesced while the client does not read; parsing done in slices
  with a time budget per turn of the event loop, so one connection cannot
  hold the loop; every close that waits on the peer falls back to an abort;
  after a close of ours, input is skipped by its frame headers and dropped,
  so a refused client's message is never read into memory.

Everything else, the protocol decisions included, stays in the application.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import structlog
from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.exceptions import InvalidState
from websockets.frames import Opcode

from adapters.transports.shared.websocket_frames import (
    DENSE_SLICE_BYTES as _DENSE_SLICE_BYTES,
    SPARSE_SLICE_BYTES as _SPARSE_SLICE_BYTES,
    DENSE_FRAMES as _DENSE_FRAMES,
    MAX_HEADER_BYTES as _MAX_HEADER_BYTES,
    TURN_BUDGET_S as _TURN_BUDGET_S,
    READ_AHEAD_BYTES as _READ_AHEAD_BYTES,
    PONG_START as _PONG_START,
    FrameBoundaries,
    frame_size,
)
from adapters.transports.litestar.receive_queue import ReceiveQueue
from adapters.transports.litestar.http_limits import (
    CLOSE_GRACE_S,
    ConnectionLimits,
    LimitedHttpConnection,
    client_of,
    close_then_abort,
)

log = structlog.get_logger("forgesyte.connections")

# Input is parsed in slices, checked between them. A masked frame takes at least 6 bytes and ~7-11 us to
# parse, so a slice of 8 KiB holds at most ~1,400 frames (~10-15 ms). Slices end where frames end: they
# take whole frames up to 8 KiB, or one larger frame (up to 64 KiB of it), since a large frame costs
# one parser call and a copy, not a call per frame. Boundaries are known from the frame headers, read
# here; should the parser ever disagree with them, the connection falls back to plain byte slices,
# 32 KiB while the input holds few frames (at most ~55 ms) and 8 KiB as soon as it holds many.
# Parsing time one connection may take in one turn of the event loop before it yields to the others.
# Complete messages the application has not taken yet may total this much before reading pauses.




class ReplyTimeout(ClientDisconnected):
    """A message to the client waited longer than the send timeout: the client stopped reading."""


class LimitedWebSocketConnection(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol with bounded work, bounded buffers and bounded waits."""

    limits: ClassVar[ConnectionLimits]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.queue = ReceiveQueue(self.loop)  # type: ignore[assignment]
        self._backlog: list[bytes] = []
        self._drain_scheduled = False
        self._fragments = 0
        self._control_tokens = float(self.limits.max_control_frames_per_s)
        self._control_checked = time.monotonic()
        self._pong_owed: bytes | None = None
        self._frames_seen = 0
        self._sparse = False
        # Frame-aligned slicing: off until the upgrade request (the first data uvicorn hands over) is parsed.
        self._aligned = False
        self._request_fed = False
        self._frames = FrameBoundaries()  # where the input's frames end, as fed to the parser
        # After our close frame: input is walked frame by frame and dropped, never parsed into messages.
        self._discarding = False
        self._peer_close_left = -1  # bytes of the peer's close frame still to come; -1 until its header is seen
        self.close_timeout = CLOSE_GRACE_S

    # Reading: slices, a time budget per turn, and the backlog kept in order --------------------

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            self._discard(data)
            return
        if self._backlog:
            # Read before the transport saw our pause; parsed, in order, after the backlog.
            self._backlog.append(data)
            return
        self._feed(data)
        if not self._request_fed:
            # uvicorn hands over the upgrade request alone, rebuilt from its parse, so frames start right after it.
            self._request_fed = True
            self._aligned = not self._backlog

    def _feed(self, data: bytes) -> None:
        deadline = time.perf_counter() + _TURN_BUDGET_S
        view = memoryview(data)
        position = 0
        size = len(data)
        while position < size:
            if self.transport.is_closing():
                return
            frames_before = self._frames_seen
            if self._aligned:
                end, frames_ending = self._frames.aligned_slice(view, position, size)
            else:
                end, frames_ending = min(size, position + (_SPARSE_SLICE_BYTES if self._sparse else _DENSE_SLICE_BYTES)), -1
            # websockets feeds this into a bytearray, which takes any buffer; its annotation names only bytes/bytearray,
            # and a bytes() copy of every slice is what the memoryview is here to avoid.
            self.conn.receive_data(data if position == 0 and end == size else view[position:end])  # type: ignore[arg-type]
            position = end
            if self.conn.parser_exc is not None:
                self.handle_parser_exception()
                return
            self.handle_events()
            parsed = self._frames_seen - frames_before
            self._sparse = parsed < _DENSE_FRAMES
            if frames_ending >= 0 and parsed != frames_ending:
                self._aligned = False  # the boundaries read here are not the parser's: plain slices from now on
            if not self.handshake_initiated and self.conn.handshake_exc is not None:
                self._refuse_handshake()
                return
            if position < size and (self.read_paused or time.perf_counter() > deadline):
                self._backlog.append(bytes(view[position:]))
                self.transport.pause_reading()
                if not self.read_paused:
                    self._schedule_drain()
                return

    def _start_discarding(self) -> None:
        """Our close frame is out: nothing the peer sends from now on is read into memory.

        A connection refused after the upgrade (unauthorized, server_busy, the
        key quota) is closed by the application at once, and a hostile client
        sends its largest message anyway; parsing it would hold a whole message
        per refused connection, however many there are. From here input is
        walked by its frame headers and dropped as it arrives, messages
        already read and not taken are dropped, and the connection is closed as
        soon as the peer's close frame has arrived (or aborted after the grace).
        Reading goes on rather than stopping, so that the peer's close frame is
        seen and closing the socket does not meet unread data (a reset that
        could destroy our close frame before the peer reads it).
        """
        self._discarding = True
        self._release_parser()
        queue: ReceiveQueue = self.queue  # type: ignore[assignment]
        queue.drop_messages()
        pending = b"".join(self._backlog)
        self._backlog.clear()
        if self.read_paused:
            self.read_paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()
        if pending:
            self._discard(pending)

    def _discard(self, data: bytes) -> None:
        """Skip whole frames by their headers; close once the peer's close frame is complete."""
        if self.transport.is_closing():
            return
        size = len(data)
        position = 0
        while position < size:
            if not self._frames.left:
                if not self._aligned:
                    return  # no frame boundaries known: everything is dropped until the grace runs out
                head = self._frames.head + data[position : position + _MAX_HEADER_BYTES - len(self._frames.head)]
                whole = frame_size(head)
                if whole is None:  # the data ends inside the header
                    self._frames.head = head
                    return
                self._frames.left = whole - len(self._frames.head)
                self._frames.head = b""
                if head[0] & 0x0F == Opcode.CLOSE.value:
                    self._peer_close_left = self._frames.left
            take = min(self._frames.left, size - position)
            position += take
            self._frames.left -= take
            if self._peer_close_left > 0:
                self._peer_close_left = self._frames.left
                if not self._peer_close_left:
                    # The closing handshake is complete: RFC 6455 has the server close the TCP connection first.
                    if self.close_timer is not None:
                        self.close_timer.cancel()
                        self.close_timer = None
                    close_then_abort(self.loop, self.transport)
                    return

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self.transport.is_closing() or self.disconnected:
            self._backlog.clear()
            return
        if self.read_paused or not self._backlog:
            return
        data = b"".join(self._backlog)
        self._backlog.clear()
        self._feed(data)
        if not self._backlog and not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()

    async def receive(self) -> Any:
        queue: ReceiveQueue = self.queue  # type: ignore[assignment]
        # The queue's wait inline rather than in a coroutine of its own: one frame fewer to resume per message.
        while (waiter := queue.waiter()) is not None:
            try:
                await waiter
            finally:
                queue.waited()
        message = queue.get_nowait()
        if self.read_paused and queue.empty():
            self.read_paused = False
            if self._backlog:
                self._schedule_drain()
            elif not self.transport.is_closing():
                self.transport.resume_reading()
        return message

    def connection_lost(self, exc: Exception | None) -> None:
        self._backlog.clear()
        self._release_parser()
        super().connection_lost(exc)
        queue: ReceiveQueue = self.queue  # type: ignore[assignment]
        queue.drop_messages()

    def _release_parser(self) -> None:
        """Let go of what the parser holds: the message it was reading, and the last one it read.

        websockets' parser keeps the last frame it parsed in a local of its
        generator until the next one is complete, and a closed connection's
        protocol sits in reference cycles (transport, timers) until the cyclic
        collector runs, which an idle server may not do for minutes: 4 closed
        sessions of 5 MiB frames kept 30-45 MB that way. Nothing is fed to the
        parser after this.
        """
        self.frames = []
        self.conn.reader.buffer.clear()
        self.conn.parser.close()

    # Frames: fragments per message and control frames per second --------------------------------

    def handle_text(self, event: Any) -> None:
        self._frames_seen += 1
        self._fragments = 1
        super().handle_text(event)

    def handle_bytes(self, event: Any) -> None:
        self._frames_seen += 1
        self._fragments = 1
        super().handle_bytes(event)

    def handle_cont(self, event: Any) -> None:
        self._frames_seen += 1
        self._fragments += 1
        if self._fragments > self.limits.max_fragments:
            self._abuse(f"a message is limited to {self.limits.max_fragments} fragments")
            return
        super().handle_cont(event)

    def handle_close(self, event: Any) -> None:
        self._frames_seen += 1
        super().handle_close(event)

    def handle_ping(self) -> None:
        if not self._control_frame_allowed():
            return
        output = self.conn.data_to_send()
        if not self.writable.is_set():
            # The client is not reading: answer only its latest ping, once it reads again (RFC 6455 5.5.3).
            pongs = [chunk for chunk in output if chunk.startswith(_PONG_START)]
            if pongs:
                self._pong_owed = pongs[-1]
            output = [chunk for chunk in output if not chunk.startswith(_PONG_START)]
        if output:
            self.transport.write(b"".join(output))

    def handle_pong(self, event: Any) -> None:
        if self._control_frame_allowed():
            super().handle_pong(event)

    def _control_frame_allowed(self) -> bool:
        self._frames_seen += 1
        rate = self.limits.max_control_frames_per_s
        now = time.monotonic()
        self._control_tokens = min(float(rate), self._control_tokens + (now - self._control_checked) * rate)
        self._control_checked = now
        if self._control_tokens < 1.0:
            self._abuse(f"control frames are limited to {rate} per second")
            return False
        self._control_tokens -= 1.0
        return True

    def _abuse(self, reason: str) -> None:
        """Fail the connection with 1008: the application hears a disconnect, the client a close frame."""
        if self.close_sent or self.transport.is_closing():
            return
        log.info("websocket_abuse", client=client_of(self.client), reason=reason)
        self.conn.fail(1008, reason)
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1008, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._backlog.clear()
        close_then_abort(self.loop, self.transport)

    def send_receive_event_to_app(self) -> None:
        """Queue a complete message for the application; reading pauses only once enough waits unread.

        uvicorn pauses reading after every message and resumes when the
        application takes it: two changes of the event loop's interest in the
        socket per message, a tenth of the server's time per frame. Reading
        now goes on while the messages not yet taken total under
        `_READ_AHEAD_BYTES`, so at most that plus one message waits here.
        """
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            # Past our close: discard, so that reading goes on until the peer's close arrives.
            return
        queue: ReceiveQueue = self.queue  # type: ignore[assignment]
        if self.curr_msg_data_type == "text":
            # Not an error of the server: the application answers any text message with
            # invalid_message (close 1003), so it gets the text, undecodable bytes replaced.
            queue.put_nowait({"type": "websocket.receive", "text": data.decode(errors="replace")}, len(data))
        else:
            queue.put_nowait({"type": "websocket.receive", "bytes": data}, len(data))
        if queue.size >= _READ_AHEAD_BYTES and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    # Writing: bounded waits, coalesced pongs, aborts where a close would wait forever ------------

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._pong_owed is not None and not self.transport.is_closing():
            self.transport.write(self._pong_owed)
        self._pong_owed = None

    async def send(self, message: Any) -> None:
        if not self.writable.is_set() and not self.disconnected:
            try:
                await asyncio.wait_for(self.writable.wait(), self.limits.send_timeout_s)
            except TimeoutError:
                log.info("websocket_send_timeout", client=client_of(self.client))
                self.transport.abort()
                raise ReplyTimeout() from None
        if (
            message["type"] == "websocket.send"
            and self.handshake_complete
            and not self.close_sent
            and self.initial_response is None
            and not self.disconnected
        ):
            # A message of the open connection, the one sent for every frame: what uvicorn's send does for
            # it, written here without its dispatch (two coroutine layers and a chain of state checks).
            data = message.get("bytes")
            try:
                if data is not None:
                    self.conn.send_binary(data)
                else:
                    self.conn.send_text(message["text"].encode())
            except InvalidState:
                raise ClientDisconnected() from None
            self.transport.write(b"".join(self.conn.data_to_send()))
        else:
            await super().send(message)
        if self.close_timer is not None:
            # uvicorn's close timer only closes, which waits for a flush the peer may never allow.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)
            if not self._discarding:
                self._start_discarding()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self.loop.call_later(CLOSE_GRACE_S, self.transport.abort)

    def shutdown(self) -> None:
        super().shutdown()
        self.loop.call_later(CLOSE_GRACE_S, self.transport.abort)

    def handle_parser_exception(self) -> None:
        super().handle_parser_exception()
        self.loop.call_later(CLOSE_GRACE_S, self.transport.abort)

    def _refuse_handshake(self) -> None:
        """The upgrade request did not parse: send the 400 websockets prepared, then close."""
        self.handshake_initiated = self.handshake_complete = self.close_sent = True
        self.transport.write(b"".join(self.conn.data_to_send()))
        close_then_abort(self.loop, self.transport)


def limited_connection_classes(limits: ConnectionLimits) -> tuple[type[LimitedHttpConnection], type[LimitedWebSocketConnection]]:
    """Protocol classes bound to these limits, for uvicorn's `http` and `ws` options."""
    http = type("BoundLimitedHttpConnection", (LimitedHttpConnection,), {"limits": limits})
    ws = type("BoundLimitedWebSocketConnection", (LimitedWebSocketConnection,), {"limits": limits})
    return http, ws
