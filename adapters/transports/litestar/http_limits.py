"""uvicorn's HTTP connection with the limits a server exposed to hostile clients needs.

uvicorn bounds sizes but not time: a client can hold a connection open by
sending its head or its body a byte at a time. This subclass adds, at the
socket: a deadline for the request head (408), a deadline for the body (408),
and 431 for a header line or head over its limit, instead of silence.
Everything else stays in the application.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import ClassVar

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger("forgesyte.connections")

# A close that waits on the peer (our close frame behind a full buffer, a 408 to a client that does
# not read) is turned into an abort after this long.
CLOSE_GRACE_S = 2.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per-connection bounds, from the settings (see docs/security.md)."""

    header_timeout_s: float
    body_timeout_s: float
    max_header_line_bytes: int
    max_head_bytes: int
    send_timeout_s: float
    max_fragments: int
    max_control_frames_per_s: int


def raw_response(status: int, phrase: str, error: str, detail: str) -> bytes:
    body = json.dumps({"error": error, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode("ascii")
    return head + body


def close_then_abort(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
    """Close after the buffer is flushed, or abort when the peer does not read it within the grace."""
    transport.close()
    loop.call_later(CLOSE_GRACE_S, transport.abort)


def client_of(address: tuple[str, int] | None) -> str:
    return f"{address[0]}:{address[1]}" if address else "unknown"


class LimitedHttpConnection(H11Protocol):
    """uvicorn's h11 protocol with head and body deadlines and a prompt 431 for oversized heads."""

    limits: ClassVar[ConnectionLimits]
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            self._refuse(431, "Request Header Fields Too Large", "request_header_too_large",
                         f"a request header line is limited to {self.limits.max_header_line_bytes} bytes and "
                         f"the request head to {self.limits.max_head_bytes} bytes")
            return
        scope_before = self.scope
        super().data_received(data)
        if self.transport.get_protocol() is not self:  # upgraded to WebSocket: that protocol takes over
            self._cancel_timers()
            return
        if self.scope is not scope_before:  # a request head arrived
            self._cancel(self._head_timer)
            self._head_timer = None
            if self.conn.their_state is h11.SEND_BODY and self._body_timer is None:
                self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)
        if self._body_timer is not None and self.conn.their_state is not h11.SEND_BODY:
            self._cancel(self._body_timer)
            self._body_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def _head_too_large(self, data: bytes) -> bool:
        buffered = self.conn.trailing_data[0] + data
        end = buffered.find(b"\r\n\r\n")
        head = buffered if end < 0 else buffered[:end]
        if len(head) > self.limits.max_head_bytes:
            return True
        return any(len(line) > self.limits.max_header_line_bytes for line in head.split(b"\n"))

    def _arm_head_timer(self) -> None:
        self._cancel(self._head_timer)
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if not self.conn.trailing_data[0]:
            # An idle keep-alive connection: nothing was started, so nothing is owed a response.
            self.transport.close()
            return
        log.info("request_head_timeout", client=client_of(self.client))
        self._refuse(408, "Request Timeout", "request_timeout",
                     f"the request head was not complete within {self.limits.header_timeout_s:g} s")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        log.info("request_body_timeout", client=client_of(self.client))
        cycle = self.cycle
        response_started = cycle is not None and cycle.response_started
        if cycle is not None:
            # The application's receive() now returns http.disconnect; it stops waiting for the body.
            cycle.disconnected = True
            cycle.message_event.set()
        if response_started:
            close_then_abort(self.loop, self.transport)
        else:
            self._refuse(408, "Request Timeout", "request_timeout",
                         f"the request body was not complete within {self.limits.body_timeout_s:g} s")

    def _refuse(self, status: int, phrase: str, error: str, detail: str) -> None:
        self._cancel_timers()
        self.transport.write(raw_response(status, phrase, error, detail))
        close_then_abort(self.loop, self.transport)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            self._cancel(timer)
        self._head_timer = self._body_timer = None

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()


