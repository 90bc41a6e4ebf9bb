"""One WHIP session of `stream(transport="webrtc")`: an aiortc peer connection, its video track fed from the
source, the `results` data channel, and the outcomes they make. Imported only for a WebRTC run (it needs aiortc).

The outcome rules are the WebSocket path's (forgesyte_stream_client.client):
one Outcome per source frame, built from the same reply types (replies.py)
and counted by the same Stats; pacing (window, live, fixed) and slow_down
are applied where aiortc asks the track for its next frame, exactly as the
WebSocket path applies them before a send; a session-ending error answers
every frame still waiting and is raised, or retried under the run's
reconnect budget when its (WebSocket-equivalent) close code is 1012 or 1013.

Matching a reply to its frame: the server's `frame_index` counts the frames
it DECODED, so it shifts after a lost frame; every reply also carries the
frame's RTP timestamp, which is aiortc's random 32-bit origin plus the
frame's pts (90 kHz clock). aiortc's sender encodes and sends one frame
completely before it asks the track for the next, and keeps the timestamp
of the last packet it sent (RTCRtpSender's private `__rtp_timestamp`,
aiortc 1.16 as pinned): so each recv() reads the exact wire timestamp of
the frame sent before it, and a reply is matched by an exact look-up. The
origin learned from the first frame also predicts the timestamp of a frame
not yet read back (origin + pts, within 2 ticks: aiortc's VP8 path can
round a pts down by one). Without the private attribute (another aiortc),
the origin is taken from the reply with frame_index 0, which names the
first frame sent unless that one was lost, and replies are matched by
prediction alone.

A frame the server never decoded (lost in transit): decoding is in send
order, so once the replies for frame_index 0..n have all come, any frame
sent before the one frame_index n names is answered as
`Dropped(cause="lost")`, a client-side drop with frame_index -1 (the
server never numbered it); Stats counts it as dropped.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import AsyncIterator
from typing import Any

import av
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from forgesyte_stream_client.client import Outcome, Reply, Skipped, _Run, _Sent, _State, queued_outcomes
from forgesyte_stream_client.errors import ConnectError, ConnectionLost, ProtocolError, ReplyTimeout, StreamError, error_from_message
from forgesyte_stream_client.feed import Feed
from forgesyte_stream_client.pacing import Budget, Deadline, Pacing
from forgesyte_stream_client.replies import Dropped, SlowDown, decode_message, parse_message
from forgesyte_stream_client.sources import Frame
from forgesyte_stream_client.webrtc import (
    CLOSE_CODE_FOR_ERROR,
    IceServer,
    WebRtcOptions,
    delete_session,
    post_offer,
    use_host_addresses,
    whip_url,
)

VIDEO_CLOCK = 90_000
_RTP_MASK = 0xFFFFFFFF
RTP_SLACK = 2  # ticks a predicted timestamp may be off (aiortc's VP8 path rounds some pts down by one)
_SENDER_TIMESTAMP = "_RTCRtpSender__rtp_timestamp"
# Where the ICE servers named by a server's Link headers are remembered, by WHIP URL, for the sessions after the first.
_LEARNED_ICE: dict[str, tuple[IceServer, ...]] = {}


class _End(Exception):
    """The session ended (its error is in WhipSession.error); the track stops asking the source."""


class FeedTrack(MediaStreamTrack):
    """The video track aiortc's sender pulls frames from: each recv() is one send of the WebSocket path."""

    kind = "video"

    def __init__(self, session: WhipSession) -> None:
        super().__init__()
        self._session = session

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            return await self._session.next_video_frame()
        except _End:
            self.stop()
            raise MediaStreamError from None
        except BaseException as error:  # noqa: BLE001 - aiortc's sender would only log it: the run raises it instead
            if isinstance(error, asyncio.CancelledError):
                raise
            self._session.fail(error)
            self.stop()
            raise MediaStreamError from None


class WhipSession:
    """One peer connection and its bookkeeping: frames in flight by send number, their RTP timestamps, the replies."""

    def __init__(self, run: _Run, feed: Feed, pacing: Pacing, state: _State, options: WebRtcOptions, fps: float) -> None:
        self.run, self.feed, self.pacing, self.state, self.options = run, feed, pacing, state, options
        self.step = max(1, round(VIDEO_CLOCK / fps))
        self.connection = state.connection
        self.in_flight: dict[int, _Sent] = {}  # send number -> the frame
        self.slot_of: dict[int, int] = {}  # pts / step -> send number
        self.by_wire: dict[int, int] = {}  # exact wire RTP timestamp -> send number
        self.decoded: dict[int, int] = {}  # server frame_index -> send number
        self.contiguous = 0  # replies for frame_index 0..contiguous-1 have all come
        self.origin: int | None = None
        self.sender: Any = None
        self.sent_count = 0
        self.first_index: int | None = None
        self.last_number: int | None = None
        self.last_wire: int | None = None
        self.source_done = False
        self.error: BaseException | None = None
        self.changed = asyncio.Event()
        self.connected = asyncio.Event()
        self.deadline = Deadline(run.reply_timeout)
        self.location: str | None = None
        self.pc: Any = None
        self.channel: Any = None
        self._started = 0.0
        self._last_send = 0.0

    # -- failure and progress -------------------------------------------------------------------------

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.changed.set()

    def _check(self) -> None:
        if self.error is not None:
            raise _End

    async def _wait_changed(self, timeout: float | None = None) -> None:
        self.changed.clear()
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except TimeoutError:
            pass

    # -- sending: called by aiortc's sender through FeedTrack.recv() --------------------------------------

    def _observe_sent(self) -> None:
        """Read back the wire timestamp of the frame sent last (see the module's docstring)."""
        if self.sender is None or self.last_number is None:
            return
        wire = getattr(self.sender, _SENDER_TIMESTAMP, None)
        if not isinstance(wire, int) or wire == self.last_wire:
            return  # another aiortc, or the encoder gave nothing for that frame
        self.last_wire = wire
        self.by_wire[wire] = self.last_number
        if self.origin is None and self.last_number == 0:
            self.origin = wire  # the first frame's pts is 0

    async def next_video_frame(self) -> av.VideoFrame:
        self._observe_sent()
        self._check()
        pacing, state = self.pacing, self.state
        if pacing.mode == "fixed":
            assert pacing.fps is not None
            if not self._started:
                self._started = time.perf_counter()
            delay = self._started + self.sent_count / pacing.fps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            while len(self.in_flight) >= pacing.window:
                await self._wait_changed()
                self._check()
            wait = self._last_send + state.min_interval_s - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
        self._check()
        frame: Frame | None = state.resend.pop(0) if state.resend else await self.feed.next()
        for skipped in self.feed.take_skipped():
            state.outcomes.put_nowait(Outcome(skipped, Skipped(), connection=self.connection))
        if frame is None:
            self.source_done = True
            self.changed.set()
            raise _End
        image = await asyncio.to_thread(frame.bgr) if frame.image is None else frame.image
        if self.error is not None:
            if pacing.mode != "live":
                state.resend.insert(0, frame)  # taken but never sent: the next session (if any) sends it
            raise _End
        if self.first_index is None:
            self.first_index = frame.index
        slot = frame.index - self.first_index
        video = av.VideoFrame.from_ndarray(image, format="bgr24")
        video.pts = slot * self.step
        video.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        number = self.sent_count
        self.sent_count += 1
        now = time.perf_counter()
        if not self.in_flight:
            self.deadline.progress()
        self.in_flight[number] = _Sent(frame, time.time(), now)
        self.slot_of[slot] = number
        self.last_number = number
        self._last_send = now
        return video

    # -- receiving: the results channel ----------------------------------------------------------------

    def on_message(self, data: str | bytes) -> None:
        try:
            reply = parse_message(decode_message(data))
        except ProtocolError as error:
            self.fail(error)
            return
        if isinstance(reply, dict):
            code = str(reply.get("error"))
            self.fail(error_from_message(reply, CLOSE_CODE_FOR_ERROR.get(code)))
            return
        if isinstance(reply, SlowDown):
            interval_s = self.run.slowed(reply, self.state.min_interval_s)
            if self.pacing.mode != "fixed":
                self.state.min_interval_s = interval_s
            return
        stamp = reply.raw.get("rtp_timestamp")
        number = self._frame_of(stamp if isinstance(stamp, int) else None, reply.frame_index)
        if number is None:
            return  # names no frame of ours
        self.decoded[reply.frame_index] = number
        self._answer(number, reply, reply.frame_index)
        self._find_lost()

    def _frame_of(self, stamp: int | None, frame_index: int) -> int | None:
        if stamp is not None:
            if stamp in self.by_wire:
                return self.by_wire[stamp]
            if self.origin is None and frame_index == 0 and self.sender is not None and not hasattr(self.sender, _SENDER_TIMESTAMP):
                self.origin = stamp  # the fallback of the module's docstring
            if self.origin is not None:
                offset = (stamp - self.origin) & _RTP_MASK
                slot = (offset + self.step // 2) // self.step
                if abs(offset - slot * self.step) <= RTP_SLACK:
                    return self.slot_of.get(slot)
            return None
        # No timestamp: the decoded frame after a known one is the next frame sent (true unless one was lost).
        previous = self.decoded.get(frame_index - 1)
        return previous + 1 if previous is not None else (frame_index if frame_index < self.sent_count else None)

    def _answer(self, number: int, reply: Reply, frame_index: int | None) -> None:
        sent = self.in_flight.pop(number, None)
        if sent is None:
            return
        self.deadline.progress()
        latency = time.perf_counter() - sent.started
        self.state.outcomes.put_nowait(Outcome(sent.frame, reply, sent.sent_at, latency, self.connection, frame_index))
        self.changed.set()

    def _find_lost(self) -> None:
        while self.contiguous in self.decoded:
            self.contiguous += 1
        if not self.contiguous:
            return
        newest = self.decoded[self.contiguous - 1]
        for number in sorted(n for n in self.in_flight if n < newest):
            raw = {"dropped": True, "cause": "lost", "detail": "the server never decoded this frame (lost in transit)"}
            self._answer(number, Dropped(-1, "lost", raw), None)

    # -- the session ----------------------------------------------------------------------------------

    async def open(self, api_key: str | None) -> None:
        """Offer, POST, answer; ConnectError or the server's StreamError when refused."""
        options = self.options
        url = whip_url(self.run.url, self.run.pipeline)
        servers = options.ice_servers + (_LEARNED_ICE.get(url, ()) if options.use_server_ice_servers else ())
        use_host_addresses(options.ice_host_addresses)
        answer = await self._offer(url, servers, api_key)
        learned = tuple(s for s in answer.ice_servers if s not in servers)
        if learned and options.use_server_ice_servers:
            _LEARNED_ICE[url] = tuple(answer.ice_servers)
            if options.ice_transport_policy == "relay" and not any(_is_turn(s) for s in servers):
                # Relay-only with no TURN server: this offer has no candidate. Offer again, with the server's.
                await delete_session(answer.location, api_key=api_key, options=options)
                abandoned, self.pc, self.channel = self.pc, None, None  # its closing is no failure of this session
                await abandoned.close()
                answer = await self._offer(url, servers + learned, api_key)
        self.location = answer.location
        await self.pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))

    async def _offer(self, url: str, servers: tuple[IceServer, ...], api_key: str | None) -> Any:
        options = self.options
        configuration = RTCConfiguration(
            iceServers=[RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in servers],
            iceTransportPolicy=RTCIceTransportPolicy(options.ice_transport_policy),
        )
        pc = self.pc = RTCPeerConnection(configuration)
        transceiver = pc.addTransceiver(FeedTrack(self), direction="sendonly")
        wanted = f"video/{options.codec.lower()}"
        transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == wanted])
        self.sender = transceiver.sender
        # Created before the offer, so that the offer has its m=application section (the spec's `results`).
        channel = self.channel = pc.createDataChannel("results", ordered=True)
        channel.on("message", self.on_message)

        @channel.on("close")
        def on_close() -> None:
            if channel is self.channel and not (self.source_done and not self.in_flight):
                self.fail(ConnectionLost("connection_lost", "the server closed the results channel before answering every frame", close_code=1000))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                self.connected.set()
            elif pc.connectionState in ("failed", "closed") and pc is self.pc:
                self.fail(ConnectionLost("connection_lost", f"the peer connection {pc.connectionState}", close_code=1006))

        await pc.setLocalDescription(await pc.createOffer())  # aiortc returns once ICE gathering is complete
        try:
            return await post_offer(url, pc.localDescription.sdp, api_key=api_key, options=options)
        except BaseException:
            await pc.close()
            raise

    async def run_to_end(self) -> None:
        """Until the source ended and every frame is answered; raises the session's error."""
        connect_by = time.monotonic() + self.options.connect_timeout_s
        while True:
            if self.error is not None:
                raise self.error
            if not self.connected.is_set():
                left = connect_by - time.monotonic()
                if left <= 0:
                    raise ConnectError(self.location or self.run.url, f"ICE and DTLS did not connect within {self.options.connect_timeout_s:g} s")
                await self._wait_changed(min(left, 0.2))
                continue
            if self.source_done and not self.in_flight:
                return
            left = self.deadline.left() if self.in_flight else None
            if left is not None and left <= 0:
                raise ReplyTimeout(f"the server answered no frame for {self.run.reply_timeout:g} s (reply timeout)")
            await self._wait_changed(min(left, 1.0) if left is not None else 1.0)

    async def close(self, api_key: str | None) -> None:
        """DELETE the resource and close the peer; a second call does nothing."""
        location, self.location = self.location, None
        if location is not None:
            await delete_session(location, api_key=api_key, options=self.options)
        if self.pc is not None:
            await self.pc.close()
            # The server's end of the session closes DTLS, on which aiortc starts a close() task of its own: awaited
            # here, so that asyncio.run does not end with it pending (and print "Task was destroyed" on stderr).
            own_close = getattr(self.pc, "_RTCPeerConnection__closeTask", None)
            if isinstance(own_close, asyncio.Future):
                await asyncio.gather(own_close, return_exceptions=True)


def _is_turn(server: IceServer) -> bool:
    return any(url.lower().startswith(("turn:", "turns:")) for url in server.urls)


def webrtc_outcomes(run: _Run, feed: Feed, pacing: Pacing, budget: Budget, options: WebRtcOptions, fps: float) -> AsyncIterator[Outcome]:
    """The WebRTC counterpart of client._paced_outcomes: the sessions run in a task, their outcomes come through a queue."""
    state = _State()
    return queued_outcomes(state, _run_sessions(run, feed, pacing, budget, state, options, fps))


async def _run_sessions(run: _Run, feed: Feed, pacing: Pacing, budget: Budget, state: _State, options: WebRtcOptions, fps: float) -> None:
    """Sessions until the source is done; reconnects as the WebSocket path does (1012/1013 under the budget)."""
    reconnecting = False
    try:
        while True:
            session = WhipSession(run, feed, pacing, state, options, fps)
            try:
                try:
                    await session.open(run.api_key)
                except ConnectError as refused:
                    if not (reconnecting and budget.left()):
                        raise
                    await budget.wait(refused)
                    continue
                budget.connected()
                await session.run_to_end()
                # Ended (DELETE, peer closed) before the consumer hears of the end: it cancels this task then.
                session.fail(_Closed())
                await session.close(run.api_key)
                state.outcomes.put_nowait(None)
                return
            except StreamError as error:
                retry = budget.retries(error)
                if retry and pacing.mode != "live":
                    state.resend[:0] = [session.in_flight.pop(n).frame for n in sorted(session.in_flight)]
                now = time.perf_counter()
                for number in sorted(session.in_flight):
                    sent = session.in_flight[number]
                    state.outcomes.put_nowait(Outcome(sent.frame, error, sent.sent_at, now - sent.started, session.connection, None))
                session.in_flight.clear()
                if not retry:
                    raise
                reconnecting = True
                await budget.wait(error)
                state.connection += 1
            finally:
                session.fail(_Closed())
                await session.close(run.api_key)
    except asyncio.CancelledError:
        raise
    except BaseException as error:  # noqa: BLE001 - delivered to the consumer, which raises it
        state.outcomes.put_nowait(error)


class _Closed(Exception):
    """Set as a finished session's error, so that its track stops asking the source."""
