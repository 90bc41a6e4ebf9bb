"""The asynchronous client: one WebSocket session, and `stream()`, which runs a whole source through it.

`AsyncStreamClient` is the protocol and nothing more: send a frame (JPEG bytes
or a BGR image), receive typed replies, and turn the server's session-ending
error and close into one exception. `stream()` adds what every real client
needs on top: sending and receiving overlapped, pacing from what the server
says, exactly one outcome per source frame, and reconnecting on 1012/1013.

Every wait is bounded: a reply (reply_timeout), the pause a slow_down asks
for (max_pause_s), a reply's size (max_message_bytes), and the reconnects of
a run (Reconnect.attempts).
"""

from __future__ import annotations

import asyncio
import collections
import math
import queue
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from forgesyte_stream_client.errors import (
    BUSY_CLOSE,
    RESTART_CLOSE,
    ClientError,
    ConnectError,
    ConnectionLost,
    ProtocolError,
    ReplyTimeout,
    StreamError,
    UnauthorizedError,
    error_from_close,
    error_from_message,
)
from forgesyte_stream_client.replies import Dropped, FrameFailed, Result, ServerMessage, SlowDown, decode_message, parse_message
from forgesyte_stream_client.sources import Frame, Source, encode_jpeg

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


def _check_timeout(name: str, value: float | None) -> None:
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
        _check_timeout("reply_timeout", reply_timeout)
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


# stream(): a whole source through one (reconnecting) session -----------------------------------


@dataclass(frozen=True)
class Skipped:
    """A live source's frame that the client did not send because a newer one was taken instead."""

    reason: str = "newer_frame"


Reply = Result | Dropped | FrameFailed | StreamError | Skipped


@dataclass
class Outcome:
    """One source frame and the one reply it got: a result, a drop, a pipeline failure, the error that ended the session, or skipped."""

    frame: Frame
    reply: Reply
    sent_at: float | None = None  # wall-clock time of the send (time.time())
    latency_s: float | None = None  # send -> reply
    connection: int = 0  # which connection carried it (increments on reconnect)
    frame_index: int | None = None  # the server's frame_index on that connection

    @property
    def index(self) -> int:
        return self.frame.index


@dataclass(frozen=True)
class Pacing:
    """How fast `stream()` sends.

    window: at most `window` frames unanswered (files: every frame, as fast
    as the server keeps up, none dropped). live: the newest frame whenever
    fewer than `window` are unanswered, no faster than the server's
    `suggested_fps`. fixed: `fps` frames per second whatever the server says.
    """

    mode: Literal["window", "live", "fixed"] = "window"
    window: int = 2
    fps: float | None = None

    @classmethod
    def for_source(cls, source: Source) -> Pacing:
        return cls("live", 1) if source.live else cls("window", 2)

    @classmethod
    def fixed(cls, fps: float) -> Pacing:
        if not fps > 0:
            raise ValueError(f"fps must be above 0, got {fps}")
        return cls("fixed", 0, fps)


@dataclass(frozen=True)
class Reconnect:
    """Reconnect with exponential backoff and jitter when the server restarts (1012) or is busy (1013).

    `attempts` is the budget of a whole run: at most that many connection
    attempts after the first one (refused attempts while a server restarts
    count too), so a run opens at most 1 + attempts connections. The budget
    is refilled only by a connection that stayed open for `reset_after_s`
    seconds (None: never), so that a stream that runs for days rides out
    each restart, while a server that closes after every frame is not
    reconnected to for ever.
    """

    close_codes: frozenset[int] = frozenset({RESTART_CLOSE, BUSY_CLOSE})
    attempts: int = 5
    initial_delay_s: float = 0.5
    max_delay_s: float = 30.0
    reset_after_s: float | None = 300.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.initial_delay_s * 2**attempt) * (0.5 + random.random() / 2)

    def retries(self, error: StreamError, attempt: int) -> bool:
        """Whether a session that ended with `error` is followed by another, with `attempt` attempts of the budget spent."""
        return error.close_code in self.close_codes and attempt < self.attempts


class _Budget:
    """The reconnects a run has spent, and the backoff before the next one."""

    def __init__(self, policy: Reconnect, on_reconnect: Callable[[ClientError, float], None] | None) -> None:
        self.policy = policy
        self.spent = 0
        self._on_reconnect = on_reconnect
        self._connected_at: float | None = None

    def connected(self) -> None:
        self._connected_at = time.monotonic()

    def _session_ended(self) -> None:
        if self._connected_at is None:
            return
        lasted = time.monotonic() - self._connected_at
        self._connected_at = None
        if self.policy.reset_after_s is not None and lasted >= self.policy.reset_after_s:
            self.spent = 0

    def retries(self, error: StreamError) -> bool:
        """Whether the session that ended with `error` is followed by another."""
        self._session_ended()
        return self.policy.retries(error, self.spent)

    def left(self) -> bool:
        return self.spent < self.policy.attempts

    async def wait(self, error: ClientError) -> None:
        """Spend one attempt: wait out its backoff, telling on_reconnect first."""
        delay = self.policy.delay(self.spent)
        self.spent += 1
        if self._on_reconnect is not None:
            self._on_reconnect(error, delay)
        await asyncio.sleep(delay)


@dataclass(frozen=True)
class _Run:
    """What every session of one stream() call is opened and paced with."""

    url: str
    pipeline: str
    quality: int | None
    api_key: str | None
    reply_timeout: float | None
    max_pause_s: float
    max_message_bytes: int
    on_warning: Callable[[SlowDown], None] | None

    def client(self) -> AsyncStreamClient:
        return AsyncStreamClient(
            self.url,
            self.pipeline,
            api_key=self.api_key,
            quality=self.quality or 80,
            reply_timeout=self.reply_timeout,
            max_message_bytes=self.max_message_bytes,
        )

    def slowed(self, warning: SlowDown, interval_s: float) -> float:
        """The least time between sends after `warning`: 1 / suggested_fps (twice the last when it has none), at most max_pause_s."""
        fps = warning.suggested_fps
        wanted = 1.0 / fps if fps else max(0.1, interval_s * 2)
        if self.on_warning is not None:
            self.on_warning(warning)
        return min(wanted, self.max_pause_s)


class _Deadline:
    """The reply timeout of a stream: the server must answer some frame within it while any is unanswered."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._since = time.monotonic()

    def progress(self) -> None:
        """A frame was answered, or one was sent while none waited: the wait starts again."""
        self._since = time.monotonic()

    def left(self) -> float | None:
        return None if self.timeout is None else self._since + self.timeout - time.monotonic()

    def error(self, client: AsyncStreamClient) -> ReplyTimeout:
        return client._time_out(f"the server answered no frame for {self.timeout:g} s (reply timeout)")


NO_RECONNECT = Reconnect(attempts=0)


class _Feed:
    """Frames from the source, in one of three ways.

    live: a thread reads the source and keeps only the newest frame; frames
    overwritten before they were taken are reported as skipped. prefetch: a
    thread reads (decodes, encodes, splits a file) ahead, so that reading
    overlaps the network and the server's work. Its frames are handed over in
    batches (one as soon as the sender waits, else up to _BATCH at a time):
    a hand-off per frame would wake the reader, and contend for the GIL, once
    per frame. inline: frames that cost nothing to read (frames already in
    memory) are taken on the event loop.
    """

    _BATCH = 16

    _END = object()

    def __init__(self, frames: Iterable[Frame], live: bool, prefetch: bool, quality: int | None, loop: asyncio.AbstractEventLoop) -> None:
        self._live = live
        self._quality = quality
        self._loop = loop
        self._iterator = iter(frames)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=4)  # batches
        self._taken: collections.deque[Frame] = collections.deque()  # the current batch
        self._latest: Frame | None = None
        self._skipped: list[Frame] = []
        self._ended = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if live or prefetch:
            self._thread = threading.Thread(target=self._run, name="forgesyte-feed", daemon=True)
            self._thread.start()

    def _needs_encoding(self, frame: Frame) -> bool:
        return frame.jpeg is None or self._quality is not None

    def _prepare(self, frame: Frame) -> Frame:
        frame.jpeg = frame.to_jpeg(self._quality)
        return frame

    def _run(self) -> None:
        batch: list[Frame] = []
        try:
            for frame in self._iterator:
                if self._stop.is_set():
                    return
                if self._live:
                    with self._lock:
                        if self._latest is not None:
                            self._skipped.append(self._latest)
                        self._latest = frame
                    self._loop.call_soon_threadsafe(self._ready.set)
                else:
                    if self._needs_encoding(frame):
                        self._prepare(frame)  # encode here, off the event loop
                    batch.append(frame)
                    if len(batch) >= self._BATCH or self._queue.empty():
                        self._put(batch)
                        batch = []
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            self._error = error
        finally:
            self._ended = True
            if self._live:
                self._loop.call_soon_threadsafe(self._ready.set)
            else:
                if batch:
                    self._put(batch)
                self._put(self._END)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def take_skipped(self) -> list[Frame]:
        if not self._live:
            return []
        with self._lock:
            skipped, self._skipped = self._skipped, []
        return skipped

    async def next(self) -> Frame | None:
        """The next frame to send (live: the newest), None at the end of the source."""
        if self._live:
            return await self._next_live()
        if self._thread is None:
            frame = next(self._iterator, None)
            if frame is not None and self._needs_encoding(frame):
                frame = await asyncio.to_thread(self._prepare, frame)
            return frame
        if self._taken:
            return self._taken.popleft()
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            item = await asyncio.to_thread(self._queue.get)
        if item is self._END:
            self._queue.put_nowait(self._END)  # the end stays the answer to every later call
            self._raise_error()
            return None
        self._taken.extend(item)
        return self._taken.popleft()

    async def _next_live(self) -> Frame | None:
        while True:
            with self._lock:
                frame, self._latest = self._latest, None
                if frame is None and not self._ended:
                    self._ready.clear()
            if frame is not None:
                return await asyncio.to_thread(self._prepare, frame) if self._needs_encoding(frame) else frame
            if self._ended:
                self._raise_error()
                return None
            await self._ready.wait()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        """Stop reading and wait for the reading thread, so that the source is never closed under it."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)


@dataclass
class _Sent:
    frame: Frame
    sent_at: float
    started: float


@dataclass
class _State:
    min_interval_s: float = 0.0
    connection: int = 0
    will_retry: Callable[[StreamError], bool] = lambda _: False  # the run's reconnect budget decides
    resend: list[Frame] = field(default_factory=list)  # frames the server never read before a retried close
    outcomes: asyncio.Queue[Outcome | BaseException | None] = field(default_factory=asyncio.Queue)


async def stream(
    url: str,
    pipeline: str,
    frames: Iterable[Frame] | Source,
    *,
    pacing: Pacing | None = None,
    quality: int | None = None,
    api_key: str | None = None,
    reconnect: Reconnect = Reconnect(),
    on_warning: Callable[[SlowDown], None] | None = None,
    on_reconnect: Callable[[ClientError, float], None] | None = None,
    live: bool | None = None,
    prefetch: bool | None = None,
    reply_timeout: float | None = DEFAULT_REPLY_TIMEOUT_S,
    max_pause_s: float = DEFAULT_MAX_PAUSE_S,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> AsyncIterator[Outcome]:
    """Run every frame through the server and yield one Outcome per source frame, in source order.

    Sending and receiving overlap. A session-ending error answers every frame
    still waiting for a reply and is then raised, unless its close code is one
    `reconnect` retries (1012, 1013) and its budget has attempts left, in which
    case the stream goes on over a new connection after a backoff; frames are
    numbered from 0 again there.

    `reply_timeout`: while a frame is unanswered, the server must answer some
    frame within this many seconds (or take a frame it is sent), else the
    session ends with ReplyTimeout (None: wait for ever). `max_pause_s`: the
    longest pause between two sends that a slow_down can cause, whatever
    suggested_fps says. `max_message_bytes`: the largest reply accepted.

    `live` (default: the Source's own flag) reads the source in a thread and
    sends only the newest frame; `prefetch` (default: the Source's flag, else
    False) reads a costly non-live source in a thread ahead of the sender.
    """
    _check_timeout("reply_timeout", reply_timeout)
    if not (max_pause_s >= 0 and math.isfinite(max_pause_s)):
        raise ValueError(f"max_pause_s must be a number of seconds, 0 or more, got {max_pause_s}")
    if max_message_bytes < 1:
        raise ValueError(f"max_message_bytes must be at least 1, got {max_message_bytes}")
    is_live = live if live is not None else bool(getattr(frames, "live", False))
    reads_ahead = prefetch if prefetch is not None else bool(getattr(frames, "prefetch", False))
    if pacing is None:
        pacing = Pacing("live", 1) if is_live else Pacing("window", 2)
    source_frames = frames.frames() if isinstance(frames, Source) else frames
    feed = _Feed(source_frames, is_live, reads_ahead, quality, asyncio.get_running_loop())
    run = _Run(url, pipeline, quality, api_key, reply_timeout, max_pause_s, max_message_bytes, on_warning)
    budget = _Budget(reconnect, on_reconnect)
    if pacing.mode == "window" and not is_live:
        outcomes = _window_outcomes(run, feed, pacing, budget)
    else:
        outcomes = _paced_outcomes(run, feed, pacing, budget)
    reorder: dict[int, Outcome] = {}
    next_index = 0
    try:
        async for item in outcomes:
            if item.index == next_index and not reorder:  # the usual case: in order, nothing held
                next_index += 1
                yield item
                continue
            reorder[item.index] = item
            while next_index in reorder:
                yield reorder.pop(next_index)
                next_index += 1
    except BaseException:
        # Whatever is still held for reordering is answered already; hand it over before the error.
        for index in sorted(reorder):
            yield reorder.pop(index)
        raise
    finally:
        await outcomes.aclose()
        await feed.close()
        if isinstance(frames, Source):
            frames.close()
    for index in sorted(reorder):
        yield reorder.pop(index)


async def _connected(client: AsyncStreamClient, reconnecting: bool, budget: _Budget) -> bool:
    """Connect; False when the attempt was refused and its backoff waited out (the caller tries again).

    While the server restarts after a 1012 it refuses connections: that is part
    of the wait, not a failure, as long as the budget has attempts left.
    """
    try:
        await client.connect()
    except ConnectError as refused:
        if not (reconnecting and budget.left()):
            raise
        await budget.wait(refused)
        return False
    budget.connected()
    return True


async def _window_outcomes(run: _Run, feed: _Feed, pacing: Pacing, budget: _Budget) -> AsyncIterator[Outcome]:
    """A file at the rate the server keeps up with: at most `pacing.window` frames unanswered.

    One task does both: it tops the window up, then reads one reply. With no
    hand-off between a sending and a receiving task per frame, the client
    costs little more than a bare send-and-receive loop.
    """
    connection = 0
    resend: list[Frame] = []
    reconnecting = False
    while True:
        client = run.client()
        in_flight: dict[int, _Sent] = {}
        # Frames dropped because the server is shutting down: sent again on the next connection when
        # there is one (a file loses no frame to a restart), else answered with that drop.
        held: dict[int, tuple[_Sent, Dropped]] = {}
        try:
            if not await _connected(client, reconnecting, budget):
                continue
            source_done = False
            min_interval_s = 0.0
            last_send = 0.0
            deadline = _Deadline(run.reply_timeout)
            while True:
                while not source_done and len(in_flight) < pacing.window:
                    frame = resend.pop(0) if resend else await feed.next()
                    if frame is None:
                        source_done = True
                        break
                    if min_interval_s:
                        wait = last_send + min_interval_s - time.perf_counter()
                        if wait > 0:
                            await asyncio.sleep(wait)
                    last_send = time.perf_counter()
                    if not in_flight:
                        deadline.progress()
                    in_flight[client.frames_sent] = _Sent(frame, time.time(), last_send)
                    await client.send(frame.jpeg if frame.jpeg is not None else frame.to_jpeg(run.quality))
                if not in_flight:
                    break
                try:
                    reply = await client._receive(deadline.left())
                except StopAsyncIteration:
                    raise ConnectionLost("connection_lost", "the server closed the stream before answering every frame", close_code=1000) from None
                except TimeoutError:
                    raise deadline.error(client) from None
                if isinstance(reply, SlowDown):
                    # Not expected while the window holds, but obeyed: no faster than the server keeps up.
                    min_interval_s = run.slowed(reply, min_interval_s)
                    continue
                sent = in_flight.pop(reply.frame_index, None)
                if sent is None:
                    continue
                deadline.progress()
                if isinstance(reply, Dropped) and reply.cause == "shutdown":
                    held[reply.frame_index] = (sent, reply)
                    continue
                yield Outcome(sent.frame, reply, sent.sent_at, time.perf_counter() - sent.started, connection, reply.frame_index)
            for index, (sent, dropped) in sorted(held.items()):
                yield Outcome(sent.frame, dropped, sent.sent_at, time.perf_counter() - sent.started, connection, index)
            await client.close()
            return
        except StreamError as error:
            retry = budget.retries(error)
            now = time.perf_counter()
            if retry:
                # 1012 and 1013 come after every frame the server read was answered: the rest were never
                # read, and those dropped for the shutdown never ran. All go again, in source order.
                again = {**{index: sent for index, (sent, _) in held.items()}, **in_flight}
                resend[:0] = [again[index].frame for index in sorted(again)]
                in_flight.clear()
            else:
                for index, (sent, dropped) in sorted(held.items()):
                    yield Outcome(sent.frame, dropped, sent.sent_at, now - sent.started, connection, index)
            for index in sorted(in_flight):
                sent = in_flight[index]
                yield Outcome(sent.frame, error, sent.sent_at, now - sent.started, connection, index)
            if not retry:
                raise
            reconnecting = True
            await budget.wait(error)
            connection += 1
        finally:
            await client.close()


async def _paced_outcomes(run: _Run, feed: _Feed, pacing: Pacing, budget: _Budget) -> AsyncIterator[Outcome]:
    """Live and fixed-rate streams: a sending task on its own clock, and a receiving one."""
    state = _State()
    runner = asyncio.create_task(_run_sessions(run, feed, pacing, budget, state))
    try:
        while True:
            item = await state.outcomes.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if not runner.done():
            runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def _run_sessions(run: _Run, feed: _Feed, pacing: Pacing, budget: _Budget, state: _State) -> None:
    state.will_retry = budget.retries
    reconnecting = False
    try:
        while True:
            client = run.client()
            try:
                if not await _connected(client, reconnecting, budget):
                    continue
                done = await _one_session(client, run, feed, pacing, state)
                if done:
                    state.outcomes.put_nowait(None)
                    return
            except StreamError as error:
                if not budget.retries(error):
                    raise
                reconnecting = True
                await budget.wait(error)
                state.connection += 1
            finally:
                await client.close()
    except asyncio.CancelledError:
        raise
    except BaseException as error:  # noqa: BLE001 - delivered to the consumer, which raises it
        state.outcomes.put_nowait(error)


async def _one_session(client: AsyncStreamClient, run: _Run, feed: _Feed, pacing: Pacing, state: _State) -> bool:
    """Send until the source ends and every frame is answered (True), or raise the session's StreamError."""
    in_flight: dict[int, _Sent] = {}
    changed = asyncio.Event()
    connection = state.connection
    emit = state.outcomes.put_nowait
    deadline = _Deadline(run.reply_timeout)
    # While no frame waits the receiver still wakes this often, so that the deadline of a frame sent
    # meanwhile is kept.
    idle_wait_s = None if run.reply_timeout is None else min(1.0, run.reply_timeout)

    def answer(index: int, reply: Reply) -> None:
        sent = in_flight.pop(index, None)
        if sent is None:
            return  # not ours (a server that answers twice is a contract breach the contract suite catches)
        deadline.progress()
        emit(Outcome(sent.frame, reply, sent.sent_at, time.perf_counter() - sent.started, connection, index))
        changed.set()

    async def receive() -> None:
        while True:
            try:
                reply = await client._receive(deadline.left() if in_flight else idle_wait_s)
            except StopAsyncIteration:
                return
            except TimeoutError:
                left = deadline.left()
                if in_flight and left is not None and left <= 0:
                    raise deadline.error(client) from None
                continue
            if isinstance(reply, SlowDown):
                interval_s = run.slowed(reply, state.min_interval_s)
                if pacing.mode != "fixed":
                    state.min_interval_s = interval_s
                continue
            answer(reply.frame_index, reply)

    receiver = asyncio.create_task(receive())
    started = time.perf_counter()
    last_send = 0.0
    sent_count = 0
    try:
        while True:
            if pacing.mode == "fixed":
                assert pacing.fps is not None
                delay = started + sent_count / pacing.fps - time.perf_counter()
                if delay > 0:
                    await _sleep_or_fail(delay, receiver)
            else:
                while len(in_flight) >= pacing.window:
                    changed.clear()
                    await _wait_or_fail(changed, receiver)
                wait = last_send + state.min_interval_s - time.perf_counter()
                if wait > 0:
                    await _sleep_or_fail(wait, receiver)
            if state.resend:
                frame: Frame | None = state.resend.pop(0)
            else:
                frame = await feed.next()
            for skipped in feed.take_skipped():
                emit(Outcome(skipped, Skipped(), connection=connection))
            if frame is None:
                break
            if receiver.done():
                receiver.result()  # raises the session's error
                raise ConnectionLost("connection_lost", "the server closed the stream", close_code=client_close_code(client))
            index = client.frames_sent
            now = time.perf_counter()
            if not in_flight:
                deadline.progress()
            in_flight[index] = _Sent(frame, time.time(), now)
            last_send = now
            sent_count += 1
            await client.send(frame.jpeg if frame.jpeg is not None else frame.to_jpeg(run.quality))
        while in_flight:
            changed.clear()
            await _wait_or_fail(changed, receiver)
        await client.close()
        await receiver
        return True
    except StreamError as error:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        if state.will_retry(error) and pacing.mode != "live":
            # 1012 and 1013 come after every frame the server read was answered: the rest were never read.
            # (A live source's unanswered frames are stale by the time a new connection is up: not resent.)
            state.resend[:0] = [in_flight.pop(index).frame for index in sorted(in_flight)]
        for index in sorted(in_flight):
            answer(index, error)
        raise
    finally:
        if not receiver.done():
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)


def client_close_code(client: AsyncStreamClient) -> int | None:
    return client._ws.close_code if client._ws is not None else None


async def _wait_or_fail(event: asyncio.Event, receiver: asyncio.Task[None]) -> None:
    """Wait for `event`; if the receiver ends first (the session ended), raise its error."""
    waiter = asyncio.ensure_future(event.wait())
    done, _ = await asyncio.wait({waiter, receiver}, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
    if receiver in done:
        receiver.result()
        if not event.is_set():
            raise ConnectionLost("connection_lost", "the server closed the stream before answering every frame", close_code=1000)


async def _sleep_or_fail(seconds: float, receiver: asyncio.Task[None]) -> None:
    sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
    done, _ = await asyncio.wait({sleeper, receiver}, return_when=asyncio.FIRST_COMPLETED)
    if sleeper not in done:
        sleeper.cancel()
        receiver.result()
