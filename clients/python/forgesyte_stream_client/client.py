"""The asynchronous client: one WebSocket session, and `stream()`, which runs a whole source through it.

`AsyncStreamClient` is the protocol and nothing more: send a frame (JPEG bytes
or a BGR image), receive typed replies, and turn the server's session-ending
error and close into one exception. `stream()` adds what every real client
needs on top: sending and receiving overlapped, pacing from what the server
says, exactly one outcome per source frame, and reconnecting on 1012/1013.
"""

from __future__ import annotations

import asyncio
import collections
import json
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
    StreamError,
    UnauthorizedError,
    error_from_close,
    error_from_message,
)
from forgesyte_stream_client.replies import Dropped, FrameFailed, Result, ServerMessage, SlowDown, parse_message
from forgesyte_stream_client.sources import Frame, Source, encode_jpeg

STREAM_PATH = "/ws/video/stream"
SUBPROTOCOL_PREFIX = "forgesyte.bearer."


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


class AsyncStreamClient:
    """One stream session: `async with AsyncStreamClient(url, "faces") as client: ...`."""

    def __init__(
        self,
        url: str,
        pipeline: str,
        *,
        api_key: str | None = None,
        quality: int = 80,
        open_timeout: float = 10.0,
        max_message_bytes: int = 2**22,
    ) -> None:
        self.url = stream_url(url, pipeline)
        self.pipeline = pipeline
        self.quality = quality
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
        try:
            await self._socket().send(data)
        except ConnectionClosed as closed:
            await self._read_to_close()
            raise self._closed_error(closed) from closed
        index = self._sent
        self._sent += 1
        return index

    def _closed_error(self, closed: ConnectionClosed) -> StreamError:
        if self._error is not None:
            return self._error
        received = closed.rcvd
        return error_from_close(received.code if received else None, received.reason if received else "")

    async def _read_to_close(self) -> None:
        """After a failed send: read what the server sent before closing, so the error it sent is the one raised."""
        ws = self._socket()
        while self._error is None:
            try:
                message = json.loads(await ws.recv())
            except ConnectionClosed:
                return
            reply = parse_message(message)
            if isinstance(reply, dict):
                self._error = error_from_message(reply, ws.close_code)
            else:
                self._pending.append(reply)

    async def receive(self) -> ServerMessage:
        """The next reply or warning. Raises the StreamError that ends the session; StopAsyncIteration after a normal close."""
        if self._pending:
            return self._pending.pop(0)
        ws = self._socket()
        if self._error is not None:
            raise self._error
        while True:
            try:
                text = await ws.recv()
            except ConnectionClosed as closed:
                received = closed.rcvd
                if self._error is None and received is not None and received.code == 1000:
                    raise StopAsyncIteration from closed
                raise self._closed_error(closed) from closed
            message = json.loads(text)
            reply = parse_message(message)
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
    """Reconnect with exponential backoff and jitter when the server restarts (1012) or is busy (1013)."""

    close_codes: frozenset[int] = frozenset({RESTART_CLOSE, BUSY_CLOSE})
    attempts: int = 5
    initial_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.initial_delay_s * 2**attempt) * (0.5 + random.random() / 2)

    def retries(self, error: StreamError, attempt: int) -> bool:
        """Whether a session that ended with `error` is followed by another, after `attempt` failed attempts."""
        return error.close_code in self.close_codes and attempt < self.attempts


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
    will_retry: Callable[[StreamError], bool] = lambda _: False
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
) -> AsyncIterator[Outcome]:
    """Run every frame through the server and yield one Outcome per source frame, in source order.

    Sending and receiving overlap. A session-ending error answers every frame
    still waiting for a reply and is then raised, unless its close code is one
    `reconnect` retries (1012, 1013), in which case the stream goes on over a
    new connection after a backoff; frames are numbered from 0 again there.

    `live` (default: the Source's own flag) reads the source in a thread and
    sends only the newest frame; `prefetch` (default: the Source's flag, else
    False) reads a costly non-live source in a thread ahead of the sender.
    """
    is_live = live if live is not None else bool(getattr(frames, "live", False))
    reads_ahead = prefetch if prefetch is not None else bool(getattr(frames, "prefetch", False))
    if pacing is None:
        pacing = Pacing("live", 1) if is_live else Pacing("window", 2)
    source_frames = frames.frames() if isinstance(frames, Source) else frames
    feed = _Feed(source_frames, is_live, reads_ahead, quality, asyncio.get_running_loop())
    if pacing.mode == "window" and not is_live:
        outcomes = _window_outcomes(url, pipeline, feed, pacing, quality, api_key, reconnect, on_warning, on_reconnect)
    else:
        outcomes = _paced_outcomes(url, pipeline, feed, pacing, quality, api_key, reconnect, on_warning, on_reconnect)
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


async def _connect_or_wait(
    client: AsyncStreamClient,
    reconnecting: bool,
    attempt: int,
    reconnect: Reconnect,
    on_reconnect: Callable[[ClientError, float], None] | None,
) -> int | None:
    """Connect; None once connected, else the next attempt's number after waiting out its backoff.

    While the server restarts after a 1012 it refuses connections: that is part
    of the wait, not a failure, as long as attempts are left.
    """
    try:
        await client.connect()
    except ConnectError as refused:
        if not (reconnecting and attempt < reconnect.attempts):
            raise
        return await _wait_before_reconnecting(refused, attempt, reconnect, on_reconnect)
    return None


async def _wait_before_reconnecting(
    error: ClientError, attempt: int, reconnect: Reconnect, on_reconnect: Callable[[ClientError, float], None] | None
) -> int:
    """Wait out the backoff of failed attempt number `attempt` (telling on_reconnect first); the next attempt's number."""
    delay = reconnect.delay(attempt)
    if on_reconnect is not None:
        on_reconnect(error, delay)
    await asyncio.sleep(delay)
    return attempt + 1


async def _window_outcomes(
    url: str,
    pipeline: str,
    feed: _Feed,
    pacing: Pacing,
    quality: int | None,
    api_key: str | None,
    reconnect: Reconnect,
    on_warning: Callable[[SlowDown], None] | None,
    on_reconnect: Callable[[ClientError, float], None] | None,
) -> AsyncIterator[Outcome]:
    """A file at the rate the server keeps up with: at most `pacing.window` frames unanswered.

    One task does both: it tops the window up, then reads one reply. With no
    hand-off between a sending and a receiving task per frame, the client
    costs little more than a bare send-and-receive loop.
    """
    attempt = 0
    connection = 0
    resend: list[Frame] = []
    reconnecting = False
    while True:
        client = AsyncStreamClient(url, pipeline, api_key=api_key, quality=quality or 80)
        in_flight: dict[int, _Sent] = {}
        # Frames dropped because the server is shutting down: sent again on the next connection when
        # there is one (a file loses no frame to a restart), else answered with that drop.
        held: dict[int, tuple[_Sent, Dropped]] = {}
        try:
            waited = await _connect_or_wait(client, reconnecting, attempt, reconnect, on_reconnect)
            if waited is not None:
                attempt = waited
                continue
            source_done = False
            min_interval_s = 0.0
            last_send = 0.0
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
                    in_flight[client.frames_sent] = _Sent(frame, time.time(), last_send)
                    await client.send(frame.jpeg if frame.jpeg is not None else frame.to_jpeg(quality))
                if not in_flight:
                    break
                try:
                    reply = await client.receive()
                except StopAsyncIteration:
                    raise ConnectionLost("connection_lost", "the server closed the stream before answering every frame", close_code=1000) from None
                if isinstance(reply, SlowDown):
                    # Not expected while the window holds, but obeyed: no faster than the server keeps up.
                    min_interval_s = 1.0 / reply.suggested_fps if reply.suggested_fps else max(0.1, min_interval_s * 2)
                    if on_warning is not None:
                        on_warning(reply)
                    continue
                sent = in_flight.pop(reply.frame_index, None)
                if sent is None:
                    continue
                if isinstance(reply, Dropped) and reply.cause == "shutdown":
                    held[reply.frame_index] = (sent, reply)
                    continue
                yield Outcome(sent.frame, reply, sent.sent_at, time.perf_counter() - sent.started, connection, reply.frame_index)
            for index, (sent, dropped) in sorted(held.items()):
                yield Outcome(sent.frame, dropped, sent.sent_at, time.perf_counter() - sent.started, connection, index)
            await client.close()
            return
        except StreamError as error:
            retry = reconnect.retries(error, attempt)
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
            # A session that ran starts a fresh backoff.
            attempt = await _wait_before_reconnecting(error, 0 if client.frames_sent else attempt, reconnect, on_reconnect)
            connection += 1
        finally:
            await client.close()


async def _paced_outcomes(
    url: str,
    pipeline: str,
    feed: _Feed,
    pacing: Pacing,
    quality: int | None,
    api_key: str | None,
    reconnect: Reconnect,
    on_warning: Callable[[SlowDown], None] | None,
    on_reconnect: Callable[[ClientError, float], None] | None,
) -> AsyncIterator[Outcome]:
    """Live and fixed-rate streams: a sending task on its own clock, and a receiving one."""
    state = _State()
    runner = asyncio.create_task(_run_sessions(url, pipeline, feed, pacing, quality, api_key, reconnect, on_warning, on_reconnect, state))
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


async def _run_sessions(
    url: str,
    pipeline: str,
    feed: _Feed,
    pacing: Pacing,
    quality: int | None,
    api_key: str | None,
    reconnect: Reconnect,
    on_warning: Callable[[SlowDown], None] | None,
    on_reconnect: Callable[[ClientError, float], None] | None,
    state: _State,
) -> None:
    attempt = 0

    def will_retry(error: StreamError) -> bool:
        return reconnect.retries(error, attempt)

    state.will_retry = will_retry
    reconnecting = False
    try:
        while True:
            client = AsyncStreamClient(url, pipeline, api_key=api_key, quality=quality or 80)
            try:
                waited = await _connect_or_wait(client, reconnecting, attempt, reconnect, on_reconnect)
                if waited is not None:
                    attempt = waited
                    continue
                done = await _one_session(client, feed, pacing, quality, on_warning, state)
                if done:
                    state.outcomes.put_nowait(None)
                    return
            except StreamError as error:
                if not will_retry(error):
                    raise
                reconnecting = True
                # A session that ran starts a fresh backoff.
                attempt = await _wait_before_reconnecting(error, 0 if client.frames_sent else attempt, reconnect, on_reconnect)
                state.connection += 1
            finally:
                await client.close()
    except asyncio.CancelledError:
        raise
    except BaseException as error:  # noqa: BLE001 - delivered to the consumer, which raises it
        state.outcomes.put_nowait(error)


async def _one_session(
    client: AsyncStreamClient,
    feed: _Feed,
    pacing: Pacing,
    quality: int | None,
    on_warning: Callable[[SlowDown], None] | None,
    state: _State,
) -> bool:
    """Send until the source ends and every frame is answered (True), or raise the session's StreamError."""
    in_flight: dict[int, _Sent] = {}
    changed = asyncio.Event()
    connection = state.connection
    emit = state.outcomes.put_nowait

    def answer(index: int, reply: Reply) -> None:
        sent = in_flight.pop(index, None)
        if sent is None:
            return  # not ours (a server that answers twice is a contract breach the contract suite catches)
        emit(Outcome(sent.frame, reply, sent.sent_at, time.perf_counter() - sent.started, connection, index))
        changed.set()

    async def receive() -> None:
        while True:
            try:
                reply = await client.receive()
            except StopAsyncIteration:
                return
            if isinstance(reply, SlowDown):
                if pacing.mode != "fixed":
                    fps = reply.suggested_fps
                    state.min_interval_s = 1.0 / fps if fps else max(0.1, state.min_interval_s * 2)
                if on_warning is not None:
                    on_warning(reply)
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
            in_flight[index] = _Sent(frame, time.time(), now)
            last_send = now
            sent_count += 1
            await client.send(frame.jpeg if frame.jpeg is not None else frame.to_jpeg(quality))
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
