"""The connection limits of adapters/transports/litestar/websocket_limits.py and http_limits.py, on the `websockets` library's asyncio server.

The library bounds message sizes but not work or memory per connection: it
parses every byte of a socket read at once (a read of tiny frames holds the
event loop for as long as they take), answers every ping with a pong that
waits in the write buffer of a client that does not read, buffers a refused
client's message while waiting for its close frame, and queues up to 16
messages of any size for the application. `LimitedServerConnection` adds, at
the socket, what the main transport enforces (docs/security.md):

- control frames per second and fragments per message bounded (close 1008);
- pongs coalesced while the client does not read (only its latest ping is
  answered, once it reads again);
- input parsed in slices with a time budget per turn of the event loop;
- complete messages read ahead of the application bounded in bytes;
- a close of ours discards what the client sends after it, instead of
  buffering a message nobody will read, and a close that waits on a peer
  that does not read becomes an abort.

Written against websockets 17.4 (asyncio implementation): it replaces
`Connection.data_received`, swaps the Assembler's frame queue, and reads
`Protocol.writes`, all internals of that version.

`CredentialFilter` keeps API keys out of the library's debug lines of
handshake headers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog
from websockets.asyncio.messages import SimpleQueue
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

from adapters.observability.logs import CREDENTIAL_HEADERS, REDACTED, redact_secrets
from adapters.transports.shared.websocket_frames import (
    DENSE_SLICE_BYTES as _DENSE_SLICE_BYTES,
    SPARSE_SLICE_BYTES as _SPARSE_SLICE_BYTES,
    DENSE_FRAMES as _DENSE_FRAMES,
    TURN_BUDGET_S as _TURN_BUDGET_S,
    READ_AHEAD_BYTES as _READ_AHEAD_BYTES,
    PONG_START as _PONG_START,
    FrameBoundaries,
)
log = structlog.get_logger("forgesyte.connections")

# Input is parsed in slices, checked between them, as the main transport does (adapters/transports/litestar/websocket_limits.py and http_limits.py):
# slices end where frames end, whole frames up to 8 KiB (a masked frame takes at least 6 bytes, so at most
# ~1,400 frames, ~10-15 ms) or one larger frame (up to 64 KiB of it). Boundaries are read from the frame
# headers, from the end of the upgrade request on; should the parser ever disagree with them, the connection
# falls back to plain byte slices, 32 KiB while the input holds few frames and 8 KiB as soon as it holds many.
_HEAD_END = b"\r\n\r\n"
# Parsing time one connection may take in one turn of the event loop before it yields to the others.
# A close that waits on the peer is turned into an abort after this long; a connection failed for abuse sooner.
CLOSE_TIMEOUT_S = 4.0
_ABUSE_GRACE_S = 2.0
# After our close, reading pauses this long after each read (at most 256 KiB each) until the client's end of stream.
_DISCARD_PAUSE_S = 0.01
# Frames the application has not taken yet may total this much before reading pauses (the main transport's bound).




@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Per-connection bounds, from the settings (see docs/security.md)."""

    max_fragments: int
    max_control_frames_per_s: int


class _SizedFrames(SimpleQueue[Frame]):
    """The Assembler's frame queue, whose length is the bytes it holds, so that its flow control counts bytes.

    The Assembler compares `len(self.frames)` with its high and low marks
    and uses the length for nothing else; each frame weighs its payload plus
    one, so a flood of empty frames weighs something too.
    """

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def put(self, item: Frame) -> None:
        self.size += len(item.data) + 1
        super().put(item)

    async def get(self, block: bool = True) -> Frame:
        item = await super().get(block)
        self.size -= len(item.data) + 1
        return item

    def put_back(self, items: Sequence[Frame]) -> None:
        self.size += sum(len(item.data) + 1 for item in items)
        super().put_back(items)


class LimitedServerConnection(ServerConnection):
    """websockets' server connection with bounded work, bounded buffers and bounded waits."""

    limits: ClassVar[StreamLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._backlog: list[bytes] = []
        self._drain_scheduled = False
        self._eof_pending = False
        self._queue_paused = False
        self._sparse = False
        # Frame-aligned slicing: off until the upgrade request has been fed, alone.
        self._aligned = False
        self._request_fed = False
        self._head_seen = b""  # the request head's last bytes fed so far, to find its end across reads
        self._frames = FrameBoundaries()  # where the input's frames end, as fed to the parser
        self._fragments = 0
        self._control_tokens = float(self.limits.max_control_frames_per_s)
        self._control_checked = time.monotonic()
        self._pong_owed: bytes | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._discarding = False  # after we failed or closed the connection: input is dropped, not parsed
        self._abused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        messages = self.recv_messages
        messages.frames = _SizedFrames()
        messages.high, messages.low = _READ_AHEAD_BYTES, _READ_AHEAD_BYTES // 4
        messages.pause, messages.resume = self._pause_for_queue, self._resume_for_queue

    def connection_lost(self, exc: Exception | None) -> None:
        self._backlog.clear()
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        super().connection_lost(exc)

    # Reading: slices, a time budget per turn, and the backlog kept in order --------------------

    def data_received(self, data: bytes) -> None:
        if self._backlog:
            self._backlog.append(data)  # read before the transport saw our pause: parsed after the backlog
            return
        self._feed(data)
        if self._discarding and not self.transport.is_closing():
            # Past our close the input is only waited through, to the client's end of stream: one read per
            # pause, so that a client that goes on sending does not keep a core busy until the close times out.
            self.transport.pause_reading()
            self.loop.call_later(_DISCARD_PAUSE_S, self._resume_discarding)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol allows True
        if self._backlog:
            # The end of the stream comes after what is still to be parsed: the transport stays open until then.
            self._eof_pending = True
            return True
        super().eof_received()
        return None  # asyncio closes the transport, as for the library's own connection

    def _feed(self, data: bytes) -> None:
        deadline = time.perf_counter() + _TURN_BUDGET_S
        position = 0
        size = len(data)
        while position < size:
            if self.transport.is_closing():
                return
            frames_ending = -1
            if self._discarding:
                end = size  # the parser drops it all in one call
            elif not self._request_fed:
                end = self._request_end(data, position, size)
            elif self._aligned:
                end, frames_ending = self._frames.aligned_slice(data, position, size)
            else:
                end = min(size, position + (_SPARSE_SLICE_BYTES if self._sparse else _DENSE_SLICE_BYTES))
            parsed = self._receive(data if position == 0 and end == size else data[position:end])
            self._sparse = parsed < _DENSE_FRAMES
            if frames_ending >= 0 and parsed != frames_ending:
                self._aligned = False  # the boundaries read here are not the parser's: plain slices from now on
            position = end
            if position < size and (self._queue_paused or time.perf_counter() > deadline):
                self._backlog.append(data[position:])
                self.transport.pause_reading()
                if not self._queue_paused:
                    self._schedule_drain()
                return

    def _request_end(self, data: bytes, start: int, size: int) -> int:
        """Where the upgrade request ends in `data` (frames begin there); `size` while the request goes on."""
        carried = len(self._head_seen)
        found = (self._head_seen + data[start : start + len(_HEAD_END) - 1]).find(_HEAD_END) if carried else -1
        if found >= 0:
            end = start + found + len(_HEAD_END) - carried
        else:
            found = data.find(_HEAD_END, start)
            if found < 0:
                # The end may straddle two reads: keep the last bytes to look across.
                self._head_seen = (self._head_seen + data[max(start, size - len(_HEAD_END) + 1) :])[1 - len(_HEAD_END) :]
                return size
            end = found + len(_HEAD_END)
        self._request_fed = self._aligned = True
        self._head_seen = b""
        return end

    def _receive(self, data: bytes) -> int:
        """Connection.data_received for one slice, with the limits applied before any event is acted on.

        Returns how many frames the slice completed, whether or not a limit let them through.
        """
        protocol = self.protocol
        protocol.receive_data(data)
        received = protocol.events_received()
        events = self._within_limits(received)
        if self.paused:
            self._coalesce_pongs()
        try:
            self.send_data()
        except Exception as exc:  # as Connection.data_received: the error ends the connection, reported on close
            self.set_connection_exc(exc)
        if self._abused:
            # Reading stops now (the abuser would be read at full speed until its end otherwise); the close
            # frame goes out first, and the abort of _abuse follows if the client does not read it.
            self.transport.close()
        if protocol.close_expected() and self.close_deadline is None and self.close_timeout is not None:
            self.close_deadline = self.loop.time() + self.close_timeout
        for event in events:
            self.process_event(event)
        return sum(1 for event in received if isinstance(event, Frame))

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self.transport.is_closing():
            self._backlog.clear()
            return
        if self._queue_paused or not self._backlog:
            return
        data = self._backlog[0] if len(self._backlog) == 1 else b"".join(self._backlog)
        self._backlog.clear()
        self._feed(data)
        if self._backlog or self.transport.is_closing():
            return
        if self._eof_pending:
            self._eof_pending = False
            super().eof_received()
            self.transport.close()
        elif not self._queue_paused:
            self.transport.resume_reading()

    def _resume_discarding(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def _pause_for_queue(self) -> None:
        self._queue_paused = True
        self.transport.pause_reading()

    def _resume_for_queue(self) -> None:
        self._queue_paused = False
        if self._backlog:
            self._schedule_drain()
        elif not self.transport.is_closing():
            self.transport.resume_reading()

    # Frames: fragments per message and control frames per second --------------------------------

    def _within_limits(self, events: list[Event]) -> list[Event]:
        """The events up to the first that breaks a limit; that one fails the connection with 1008."""
        for index, event in enumerate(events):
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is Opcode.PING or opcode is Opcode.PONG:
                if not self._control_frame_allowed():
                    self._abuse(f"control frames are limited to {self.limits.max_control_frames_per_s} per second")
                    return events[:index]
            elif opcode is Opcode.CONT:
                self._fragments += 1
                if self._fragments > self.limits.max_fragments:
                    self._abuse(f"a message is limited to {self.limits.max_fragments} fragments")
                    return events[:index]
            elif opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                self._fragments = 1
        return events

    def _control_frame_allowed(self) -> bool:
        rate = self.limits.max_control_frames_per_s
        now = time.monotonic()
        self._control_tokens = min(float(rate), self._control_tokens + (now - self._control_checked) * rate)
        self._control_checked = now
        if self._control_tokens < 1.0:
            return False
        self._control_tokens -= 1.0
        return True

    def _abuse(self, reason: str) -> None:
        """Fail the connection with 1008: the client gets a close frame, nothing more of its input is parsed."""
        protocol = self.protocol
        # The pongs the parser queued for this slice's pings go unanswered: the connection is failing.
        protocol.writes = [chunk for chunk in protocol.writes if not chunk.startswith(_PONG_START)]
        self._pong_owed = None
        log.info("websocket_abuse", client=_client(self.remote_address), reason=reason)
        protocol.fail(1008, reason)
        self._discarding = self._abused = True
        self._backlog.clear()
        self._abort_later(_ABUSE_GRACE_S)

    # Writing: coalesced pongs, and aborts where a close would wait forever ------------------------

    def _coalesce_pongs(self) -> None:
        """While the client does not read, only its latest ping is answered, once it reads again (RFC 6455 5.5.3)."""
        writes = self.protocol.writes
        pongs = [chunk for chunk in writes if chunk.startswith(_PONG_START)]
        if pongs:
            self._pong_owed = pongs[-1]
            self.protocol.writes = [chunk for chunk in writes if not chunk.startswith(_PONG_START)]

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._pong_owed is not None and not self.transport.is_closing():
            self.transport.write(self._pong_owed)
        self._pong_owed = None

    async def close_discarding(self, code: int, reason: str = "") -> None:
        """Close with `code`, discarding whatever the client sends after it, and abort if it never reads our close.

        The library's close() keeps parsing until the client's close frame
        arrives, so a refused client's 6 MB message would be read into memory
        first; the application reads nothing after its close, so nothing
        after it is kept.
        """
        self._abort_later(self.close_timeout or CLOSE_TIMEOUT_S)
        try:
            async with self.send_context():
                self.protocol.fail(code, reason)
                self._discarding = True
        except ConnectionClosed:
            pass  # closed, which was the goal

    def _abort_later(self, delay: float) -> None:
        if self._abort_timer is None:
            self._abort_timer = self.loop.call_later(delay, self.transport.abort)


def limited_connection(limits: StreamLimits) -> type[LimitedServerConnection]:
    """A connection class bound to these limits, for serve's `create_connection`."""
    return type("BoundLimitedServerConnection", (LimitedServerConnection,), {"limits": limits})


def _client(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if address else "unknown"


# Credentials out of the library's logs ------------------------------------------------------------

# The library's parse errors quote the offending header line or value, whichever header it was.
_QUOTED_HEADER = re.compile(r"(?im)(invalid (?:HTTP header (?:line|name|value)|[A-Za-z0-9-]+ header)\s*:\s*).*$")
_HEADER_FORMATS = frozenset({"< %s: %s", "> %s: %s"})


def redact(text: str) -> str:
    """`text` under the server's credential rules (redact_secrets), and header values the library's errors quote."""
    return redact_secrets(_QUOTED_HEADER.sub(rf"\1{REDACTED}", text))


def redact_header(name: str, value: str) -> str:
    if name.lower() in CREDENTIAL_HEADERS:
        return REDACTED
    return redact_secrets(value)


class CredentialFilter(logging.Filter):
    """Rewrites websockets' records so that no API key, cookie or Authorization value reaches a handler.

    At debug the library logs every handshake header, both ways (the bearer
    subprotocol is echoed back), and its handshake errors quote header values.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in _HEADER_FORMATS and isinstance(record.args, tuple) and len(record.args) == 2:
            name, value = record.args
            record.args = (name, redact_header(str(name), str(value)))
            return True
        message = record.getMessage()
        clean = redact(message)
        if record.exc_info is not None:
            trace = logging.Formatter().formatException(record.exc_info)
            clean_trace = redact(trace)
            if clean_trace != trace:
                # The exception's text quotes a credential: the record carries the redacted trace instead.
                record.exc_info, record.exc_text = None, None
                clean = f"{clean}\n{clean_trace}"
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def library_logger() -> logging.Logger:
    """The logger the websockets server writes to, with the credential filter on it (once)."""
    logger = logging.getLogger("websockets.server")
    if not any(isinstance(existing, CredentialFilter) for existing in logger.filters):
        logger.addFilter(CredentialFilter())
    return logger
