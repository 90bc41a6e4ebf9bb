"""The suite's WHIP publisher (also the project's WebRTC test client): a clip as a video track, the offer POSTed,
every message of the results channel validated against asyncapi.yaml and reported to the coverage record.

Everything stays on 127.0.0.1: a self-started server is told FORGESYTE_STREAM_WEBRTC_HOST_ADDRESSES=127.0.0.1, and
this process's aioice gathers on loopback only (`loopback_only`), never on the machine's interface address.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, VideoStreamTrack

from contracts.asyncapi_doc import Contract, UndeclaredMessageError, load_contract
from contracts.client import TrafficObserver

WEBRTC_ENV = {"FORGESYTE_STREAM_WEBRTC_HOST_ADDRESSES": "127.0.0.1"}
VIDEO_CLOCK = 90_000


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """This process's ICE gathers on 127.0.0.1 only (aioice skips loopback unless told)."""
    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


class ClipTrack(VideoStreamTrack):
    """A clip as a video track: paced at `fps` (a camera), or as fast as the encoder takes frames when fps is None.

    Each frame's pts is its number times the frame interval, so a reply's rtp_timestamp
    (the sender's random origin plus pts) tells which frame it answers (Publisher.frame_of).
    """

    def __init__(self, frames: Sequence[np.ndarray[Any, Any]], fps: float | None = 30.0, *, repeat: bool = False) -> None:
        super().__init__()
        self._frames = frames
        self._fps = fps
        self._repeat = repeat
        self.sent = 0
        self.sent_at: dict[int, float] = {}
        self._started: float | None = None
        self._step = round(VIDEO_CLOCK / (fps or 30.0))

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        number = self.sent
        if number >= len(self._frames) and not self._repeat:
            self.stop()
            raise MediaStreamError
        if self._fps is not None:
            if self._started is None:
                self._started = time.monotonic()
            wait = self._started + number / self._fps - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        else:
            await asyncio.sleep(0)
        frame = av.VideoFrame.from_ndarray(self._frames[number % len(self._frames)], format="bgr24")
        frame.pts = number * self._step
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent = number + 1
        self.sent_at[number] = time.monotonic()
        return frame


async def offer_sdp() -> str:
    """A publisher's offer (one sendonly video section, the results channel) from a peer that never connects."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="sendonly")
    pc.createDataChannel("results")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


@dataclass
class Publisher:
    """One published session: its peer, its track, its WHIP resource, and what the results channel brought, in order."""

    pc: RTCPeerConnection
    track: ClipTrack
    location: str
    base_url: str
    link: str | None
    headers: dict[str, str]
    messages: list[dict[str, Any]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    undeclared: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def replies(self) -> list[dict[str, Any]]:
        """Messages answering one frame: results, drops and frame-level errors."""
        return [m for m in self.messages if "frame_index" in m]

    def replies_in_order(self, at_least: int = 0) -> list[dict[str, Any]]:
        """The replies about frames by frame_index, checked as the results channel promises (asyncapi.yaml).

        Every message declared, exactly one reply per decoded frame numbered
        from 0 without gaps, at least `at_least` of them, each with its
        frame's rtp_timestamp.
        """
        assert self.undeclared == [], self.undeclared
        replies = sorted(self.replies(), key=lambda m: m["frame_index"])
        assert [m["frame_index"] for m in replies] == list(range(len(replies))), "each decoded frame answered once, numbered from 0"
        assert len(replies) >= at_least, f"{len(replies)} replies, expected at least {at_least}"
        for reply in replies:
            assert isinstance(reply.get("rtp_timestamp"), int), f"a reply about a frame carries its rtp_timestamp: {reply}"
        return replies

    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if "error" in m]

    async def wait_for(self, count: int, timeout: float) -> None:
        """Until `count` replies arrived, the channel closed, or `timeout` s passed."""
        deadline = time.monotonic() + timeout
        while len(self.replies()) < count and time.monotonic() < deadline and not self.closed.is_set():
            await asyncio.sleep(0.02)

    async def wait_closed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def finish(self, count: int, timeout: float) -> int:
        """Wait for `count` replies (at most `timeout` s), then end the session: DELETE, close; the DELETE's status."""
        await self.wait_for(count, timeout)
        status = (await self.delete()).status_code
        await self.close()
        return status

    async def delete(self) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30.0) as http:
            return await http.delete(self.location, headers=self.headers)

    async def close(self) -> None:
        await self.pc.close()


async def publish(
    base_url: str,
    pipeline_id: str,
    track: ClipTrack,
    *,
    codec: str | None = None,
    api_key: str | None = None,
    headers: dict[str, str] | None = None,
    ice_servers: list[RTCIceServer] | None = None,
    relay_only: bool = False,
    channel: bool = True,
    contract: Contract | None = None,
    observer: TrafficObserver | None = None,
) -> Publisher | httpx.Response:
    """Publish `track` over WHIP; the Publisher once answered (201), else the refusing response.

    Every message on the results channel is validated against the contract
    (`contract`, the repository's asyncapi.yaml by default): an undeclared one is
    kept in `Publisher.undeclared` and reported to `observer`, as the WebSocket client does.
    """
    contract = contract or load_contract()
    configuration = RTCConfiguration(
        iceServers=ice_servers or [], iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
    )
    pc = RTCPeerConnection(configuration)
    transceiver = pc.addTransceiver(track, direction="sendonly")
    if codec is not None:
        codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == f"video/{codec.lower()}"]
        transceiver.setCodecPreferences(codecs)
    auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
    state = Publisher(pc, track, "", base_url, None, auth)
    if channel:
        results = pc.createDataChannel("results")

        @results.on("message")
        def on_message(raw: str | bytes) -> None:
            state.received_at.append(time.monotonic())
            try:
                if isinstance(raw, bytes):
                    raise UndeclaredMessageError(raw, {"(binary)": "every server message is JSON text"})
                message = json.loads(raw)
                name = contract.validate_server_message(message)
            except (UndeclaredMessageError, ValueError) as undeclared:
                state.undeclared.append(f"{str(raw)[:200]}: {undeclared}")
                if observer is not None:
                    observer.undeclared(raw, str(undeclared))
                return
            state.messages.append(message)
            state.names.append(name)
            if observer is not None:
                observer.received(name, message)

        @results.on("close")
        def on_close() -> None:
            state.closed.set()

    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http:
        response = await http.post(
            f"/v1/whip?pipeline_id={pipeline_id}",
            content=pc.localDescription.sdp.encode(),
            headers={"content-type": "application/sdp", **auth, **(headers or {})},
        )
    if response.status_code != 201:
        await pc.close()
        return response
    await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
    state.location = response.headers["location"]
    state.link = response.headers.get("link")
    return state
