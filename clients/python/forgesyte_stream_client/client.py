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
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any


from forgesyte_stream_client.errors import (
    ClientError,
    ConnectError,
    ConnectionLost,
    StreamError,
)
from forgesyte_stream_client.replies import Dropped, FrameFailed, Result, SlowDown
from forgesyte_stream_client.sources import Frame, Source
from forgesyte_stream_client.webrtc import TRANSPORTS, WebRtcOptions, load_aiortc

from forgesyte_stream_client.feed import Feed
from forgesyte_stream_client.pacing import DEFAULT_RECONNECT, Budget, Deadline, Pacing, Reconnect
from forgesyte_stream_client.session import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PAUSE_S,
    DEFAULT_REPLY_TIMEOUT_S,
    AsyncStreamClient,
    check_timeout,
    client_close_code,
)

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
    reconnect: Reconnect = DEFAULT_RECONNECT,
    on_warning: Callable[[SlowDown], None] | None = None,
    on_reconnect: Callable[[ClientError, float], None] | None = None,
    live: bool | None = None,
    prefetch: bool | None = None,
    reply_timeout: float | None = DEFAULT_REPLY_TIMEOUT_S,
    max_pause_s: float = DEFAULT_MAX_PAUSE_S,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    transport: str = "websocket",
    webrtc: WebRtcOptions | None = None,
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

    `transport`: "websocket" (JPEG frames) or "webrtc" (a VP8 or H.264 video
    track published over WHIP, results on a data channel; needs the `webrtc`
    extra; `webrtc` holds its options, forgesyte_stream_client.webrtc). The
    outcomes, their order, pacing, slow_down, errors and reconnects are the
    same over either; `quality` applies to JPEGs only.
    """
    check_timeout("reply_timeout", reply_timeout)
    if not (max_pause_s >= 0 and math.isfinite(max_pause_s)):
        raise ValueError(f"max_pause_s must be a number of seconds, 0 or more, got {max_pause_s}")
    if max_message_bytes < 1:
        raise ValueError(f"max_message_bytes must be at least 1, got {max_message_bytes}")
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if transport == "webrtc":
        load_aiortc()  # before anything starts: a missing extra is one clear error
    is_live = live if live is not None else bool(getattr(frames, "live", False))
    reads_ahead = prefetch if prefetch is not None else bool(getattr(frames, "prefetch", False))
    if pacing is None:
        pacing = Pacing("live", 1) if is_live else Pacing("window", 2)
    source_frames = frames.frames() if isinstance(frames, Source) else frames
    feed = Feed(source_frames, is_live, reads_ahead, quality, asyncio.get_running_loop(), images=transport == "webrtc")
    run = _Run(url, pipeline, quality, api_key, reply_timeout, max_pause_s, max_message_bytes, on_warning)
    budget = Budget(reconnect, on_reconnect)
    if transport == "webrtc":
        from forgesyte_stream_client.webrtc_session import webrtc_outcomes

        options = webrtc or WebRtcOptions()
        fps = pacing.fps or options.frame_rate or getattr(frames, "fps", None) or 30.0
        outcomes = webrtc_outcomes(run, feed, pacing, budget, options, fps)
    elif pacing.mode == "window" and not is_live:
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


async def _connected(client: AsyncStreamClient, reconnecting: bool, budget: Budget) -> bool:
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


async def _window_outcomes(run: _Run, feed: Feed, pacing: Pacing, budget: Budget) -> AsyncIterator[Outcome]:
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
            deadline = Deadline(run.reply_timeout)
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


def _paced_outcomes(run: _Run, feed: Feed, pacing: Pacing, budget: Budget) -> AsyncIterator[Outcome]:
    """Live and fixed-rate streams: a sending task on its own clock, and a receiving one."""
    state = _State()
    return queued_outcomes(state, _run_sessions(run, feed, pacing, budget, state))


async def queued_outcomes(state: _State, sessions: Coroutine[Any, Any, None]) -> AsyncIterator[Outcome]:
    """What a task running `sessions` puts on state.outcomes, in order, until None; an error it puts there is raised.

    The task is cancelled when the consumer stops early, so that no session outlives the run.
    """
    runner = asyncio.create_task(sessions)
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


async def _run_sessions(run: _Run, feed: Feed, pacing: Pacing, budget: Budget, state: _State) -> None:
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


async def _one_session(client: AsyncStreamClient, run: _Run, feed: Feed, pacing: Pacing, state: _State) -> bool:
    """Send until the source ends and every frame is answered (True), or raise the session's StreamError."""
    in_flight: dict[int, _Sent] = {}
    changed = asyncio.Event()
    connection = state.connection
    emit = state.outcomes.put_nowait
    deadline = Deadline(run.reply_timeout)
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
