"""One WHIP session: an aiortc peer connection adapted to the application's Transport port.

The stream's rules stay in application.protocol: this module only turns the
peer's events into Inbound events (a decoded frame of the video track, the
peer leaving, a message on the results channel) and sends what the protocol
decides on the `results` data channel. The pump (application.stream) drives
it exactly as it drives a WebSocket.

Before the session is admitted (StreamAccess and StreamService decide, with
their observers, exactly as for a WebSocket) the transport holds the refusal
the application would have sent, so that the WHIP POST can answer it as an
HTTP error instead; once admitted, the POST answers the offer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from adapters.media.pictures import VideoFramePicture
from adapters.transports.webrtc.receive_bounds import (
    ENCODED_BACKLOG_FRAMES,
    INBOX_FRAMES,
    Control,
    EncodedBacklog,
    FrameInbox,
    MarkerJitterBuffer,
)
from application.ports import ConnectionClosed, Inbound, InboundKind, SendTimedOut

logger = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()
RESULTS_LABEL = "results"
# Replies the results channel may hold unsent before a send waits for it to drain (the WebSocket's
# equivalent is the socket's buffer): a client that does not read is cut off after SEND_TIMEOUT_S.
CHANNEL_HIGH_WATER_BYTES = 1024 * 1024
# Close codes the session ends with when the peer goes (as a WebSocket's peer_gone would).
PEER_CLOSED = 1000
PEER_LOST = 1001
_RTP_MASK = 0xFFFFFFFF


class DiscardCounter:
    """Where the transport reports frames it discarded before the session saw them, by cause (metrics and logs)."""

    def __init__(self, report: Callable[[str, int], None]) -> None:
        self._report = report

    def __call__(self, cause: str) -> Callable[[int], None]:
        def count(frames: int) -> None:
            if frames:
                self._report(cause, frames)

        return count


class WebRtcTransport:
    """The Transport port over one peer connection (see the module docstring)."""

    def __init__(self, client: str, *, send_timeout_s: float, connect_timeout_s: float, discards: DiscardCounter) -> None:
        self.client = client
        self._send_timeout_s = send_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._discards = discards
        self.inbox = FrameInbox(INBOX_FRAMES, discards("receive_backlog"))
        loop = asyncio.get_running_loop()
        # None once admitted; the refusal message when the application refused the session.
        self.admission: asyncio.Future[Mapping[str, Any] | None] = loop.create_future()
        self.channel: RTCDataChannel | None = None
        self.expects_channel = True
        self.channel_ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._backlog: EncodedBacklog | None = None
        self._receiver: Any = None
        self.session: Any = None

    # Wiring the peer's events ---------------------------------------------------

    def bind_track(self, track: MediaStreamTrack, receiver: Any) -> None:
        """Bound the video track's queues before its receiver starts (receive_bounds) and read its frames from the inbox."""
        self._receiver = receiver
        receiver._RTCRtpReceiver__jitter_buffer = MarkerJitterBuffer()
        self._backlog = EncodedBacklog(ENCODED_BACKLOG_FRAMES, self._discards("decode_backlog"), receiver._RTCRtpReceiver__decoder_error.set)
        receiver._RTCRtpReceiver__decoder_queue = self._backlog
        track._queue = self.inbox  # type: ignore[attr-defined]

    def bind_channel(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        channel.bufferedAmountLowThreshold = CHANNEL_HIGH_WATER_BYTES // 2

        @channel.on("open")
        def opened() -> None:
            self.channel_ready.set()

        @channel.on("message")
        def message(data: str | bytes) -> None:
            # The channel carries the server's replies only: anything the client writes is a protocol error.
            text = data if isinstance(data, str) else f"<{len(data)} bytes>"
            self.event(Inbound(InboundKind.TEXT, text))

        @channel.on("close")
        def closed() -> None:
            self.event(Inbound(InboundKind.DISCONNECT, close_code=PEER_CLOSED))

        @channel.on("bufferedamountlow")
        def drained() -> None:
            self._drained.set()

        if channel.readyState == "open":
            self.channel_ready.set()

    def event(self, inbound: Inbound) -> None:
        """A transport event for the session, in order with the frames."""
        self.inbox.put_nowait(Control(inbound))

    # The Transport port -----------------------------------------------------------

    async def receive(self) -> Inbound:
        item = await self.inbox.get()
        if type(item) is Control:
            inbound: Inbound = item.event
            return inbound
        if item is None:  # the track ended: the receiver stopped
            return Inbound(InboundKind.DISCONNECT, close_code=PEER_LOST)
        return Inbound(InboundKind.PICTURE, VideoFramePicture(item, self._rtp_timestamp(item.pts), self._encoded_size(item.pts)))

    def _rtp_timestamp(self, pts: int | None) -> int | None:
        """The sender's RTP timestamp: aiortc rebases timestamps on the first one it saw, which it keeps."""
        if pts is None or self._receiver is None:
            return None
        origin = self._receiver._RTCRtpReceiver__timestamp_mapper._origin
        return None if origin is None else (pts + origin) & _RTP_MASK

    def _encoded_size(self, pts: int | None) -> int:
        return 0 if pts is None or self._backlog is None else self._backlog.encoded_size(pts)

    async def send_json(self, message: Mapping[str, Any]) -> None:
        if not self.admission.done():
            self.admission.set_result(message)  # the refusal: the WHIP POST answers it
            return
        if not self.expects_channel:
            return  # a publisher without a results channel reads nothing; the observers still count every reply
        channel = self.channel
        if channel is None or not self.channel_ready.is_set():
            try:
                await asyncio.wait_for(self.channel_ready.wait(), self._connect_timeout_s)
            except TimeoutError:
                raise ConnectionClosed() from None
            channel = self.channel
        if channel is None or channel.readyState != "open":
            raise ConnectionClosed()
        if channel.bufferedAmount > CHANNEL_HIGH_WATER_BYTES:
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), self._send_timeout_s)
            except TimeoutError:
                raise SendTimedOut() from None
            if channel.readyState != "open":
                raise ConnectionClosed()
        try:
            channel.send(_encoder.encode(message).decode())
        except Exception as error:  # aiortc raises InvalidStateError once the channel is closing
            raise ConnectionClosed() from error

    async def close(self, code: int, reason: str = "") -> None:
        """The session ends: what was sent reaches the client first (bounded), then the owner closes the peer."""
        if not self.admission.done():
            return  # a refusal: the POST answers it, there is no peer yet
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            await self._drain(channel)

    async def _drain(self, channel: RTCDataChannel) -> None:
        """Wait until the channel's messages are acknowledged by the peer, at most SEND_TIMEOUT_S."""
        sctp = channel.transport
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._send_timeout_s
        while loop.time() < deadline and channel.readyState == "open":
            pending = channel.bufferedAmount or sctp._outbound_queue or sctp._sent_queue or sctp._data_channel_queue
            if not pending:
                return
            await asyncio.sleep(0.01)

    def attach_session(self, session: Any) -> None:
        self.session = session
        if not self.admission.done():
            self.admission.set_result(None)


class WhipPeer:
    """The peer connection of one WHIP session: negotiation, the connect deadline, teardown."""

    def __init__(self, pc: RTCPeerConnection, transport: WebRtcTransport, *, connect_timeout_s: float, on_connect_failed: Callable[[str], None]) -> None:
        self.pc = pc
        self.transport = transport
        self._connect_timeout_s = connect_timeout_s
        self._on_connect_failed = on_connect_failed
        self._watchdog: asyncio.TimerHandle | None = None
        self._connected = False

        @pc.on("track")
        def track_arrived(track: MediaStreamTrack) -> None:
            if track.kind != "video":
                return
            receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
            transport.bind_track(track, receiver)

        @pc.on("datachannel")
        def channel_arrived(channel: RTCDataChannel) -> None:
            if channel.label == RESULTS_LABEL and transport.channel is None:
                transport.bind_channel(channel)
            else:
                channel.close()  # only the results channel is served

        @pc.on("connectionstatechange")
        def state_changed() -> None:
            state = pc.connectionState
            if state == "connected":
                self._connected = True
            elif state in ("failed", "closed"):
                transport.event(Inbound(InboundKind.DISCONNECT, close_code=PEER_LOST))

    async def answer(self, offer_sdp: str, *, has_channel: bool) -> str:
        """Answer the offer with every candidate gathered (no trickle); audio and extra sections are declined."""
        pc = self.pc
        self.transport.expects_channel = has_channel
        await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        for transceiver in pc.getTransceivers():
            transceiver.direction = "recvonly" if transceiver.kind == "video" else "inactive"
        await pc.setLocalDescription(await pc.createAnswer())
        self._watchdog = asyncio.get_running_loop().call_later(self._connect_timeout_s, self._check_connected)
        return pc.localDescription.sdp

    def _check_connected(self) -> None:
        """At the connect deadline: a session whose ICE, DTLS or results channel never came up ends, freeing its slot."""
        transport = self.transport
        if self._connected and (transport.channel_ready.is_set() or not transport.expects_channel):
            return
        reason = "ice_dtls" if not self._connected else "results_channel"
        self._on_connect_failed(reason)
        transport.event(Inbound(InboundKind.DISCONNECT, close_code=PEER_LOST))

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        try:
            await self.pc.close()
        except Exception:  # a half-built connection may fail to close cleanly; its sockets are gone either way
            logger.debug("peer connection close failed", exc_info=True)
