"""The WebRTC transport's pure parts: offer checks, the bounds on aiortc's queues, keyframe detection, the settings' parsers."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.settings import Settings, SettingsError
from adapters.settings_webrtc import IceServer, PortRange
from adapters.transports.webrtc.receive_bounds import Control, EncodedBacklog, FrameInbox, is_keyframe
from adapters.transports.webrtc.sdp import MAX_MEDIA_SECTIONS, MAX_OFFER_BYTES, OfferRefused, inspect_offer

# A browser-like offer: one sendonly video section (VP8, H.264, their RTX) and one data channel.
OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 3905000000 3905000000 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic:WMS *",
        "m=video 9 UDP/TLS/RTP/SAVPF 97 98 99 100",
        "c=IN IP4 0.0.0.0",
        "a=sendonly",
        "a=mid:0",
        "a=rtcp-mux",
        "a=rtpmap:97 VP8/90000",
        "a=rtpmap:98 rtx/90000",
        "a=fmtp:98 apt=97",
        "a=rtpmap:99 H264/90000",
        "a=fmtp:99 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        "a=rtpmap:100 rtx/90000",
        "a=fmtp:100 apt=99",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuv",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
        "a=sctp-port:5000",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuv",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "",
    ]
)


def refusal(body: bytes | str, content_type: str | None = "application/sdp") -> OfferRefused:
    with pytest.raises(OfferRefused) as refused:
        inspect_offer(body.encode() if isinstance(body, str) else body, content_type)
    return refused.value


def test_a_browser_offer_passes_with_its_decodable_codecs_and_its_channel() -> None:
    offer = inspect_offer(OFFER.encode(), "application/sdp; charset=utf-8")
    assert offer.video_codecs == ("VP8", "H264") and offer.has_data_channel


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        (OFFER, "text/plain", 415, "application/sdp"),
        (OFFER, None, 415, "none"),
        ("x" * (MAX_OFFER_BYTES + 1), "application/sdp", 413, "limit"),
        (b"v=0\r\n\xff\xfe", "application/sdp", 400, "UTF-8"),
        ("hello", "application/sdp", 400, "v=0"),
        (OFFER.replace("m=video", "m=audio"), "application/sdp", 400, "0 video sections"),
        (OFFER.replace("a=sendonly", "a=recvonly"), "application/sdp", 400, "recvonly"),
        (OFFER.replace("VP8/90000", "VP9/90000").replace("H264/90000", "AV1/90000"), "application/sdp", 415, "VP9"),
        (OFFER.replace("a=ice-ufrag:abcd\r\n", ""), "application/sdp", 400, "ICE"),
        (OFFER.replace("a=fingerprint", "a=x-fingerprint"), "application/sdp", 400, "fingerprint"),
        (OFFER + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n" * MAX_MEDIA_SECTIONS, "application/sdp", 400, "media sections"),
    ],
)
def test_what_is_refused_and_how(body: str | bytes, content_type: str | None, status: int, says: str) -> None:
    refused = refusal(body, content_type)
    assert refused.status == status and says in refused.detail
    assert refused.code == ("frame_too_large" if status == 413 else "invalid_message")


def test_two_video_sections_are_refused() -> None:
    video = OFFER[OFFER.index("m=video") : OFFER.index("m=application")]
    assert "2 video sections" in refusal(OFFER.replace("m=application", video.replace("a=mid:0", "a=mid:2") + "m=application")).detail


def test_keyframes_are_told_from_the_bitstream() -> None:
    assert is_keyframe("VP8", b"\x10\x02\x00\x9d\x01\x2a") and not is_keyframe("VP8", b"\x11\x02\x00")
    idr = b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x00\x01\x68\xce" + b"\x00\x00\x01\x65\x88"
    assert is_keyframe("H264", idr) and is_keyframe("h264", b"\x00\x00\x01\x65")
    assert not is_keyframe("H264", b"\x00\x00\x00\x01\x41\x9a") and not is_keyframe("H264", b"")


def encoded(timestamp: int, key: bool) -> tuple[SimpleNamespace, SimpleNamespace]:
    return SimpleNamespace(name="VP8"), SimpleNamespace(timestamp=timestamp, data=(b"\x10" if key else b"\x11") + b"\x00" * 99)


def test_the_decoder_backlog_is_bounded_and_resumes_at_a_keyframe_after_asking_for_one() -> None:
    discarded: list[int] = []
    keyframes_asked: list[bool] = []
    backlog = EncodedBacklog(3, discarded.append, lambda: keyframes_asked.append(True))
    for timestamp in range(3):
        backlog.put(encoded(timestamp, key=timestamp == 0))
    assert backlog.qsize() == 3
    backlog.put(encoded(3, key=False))  # a fourth while the decoder is behind: the backlog goes
    assert backlog.qsize() == 0 and discarded == [4] and keyframes_asked == [True]
    backlog.put(encoded(4, key=False))  # not decodable without its references
    assert backlog.qsize() == 0 and discarded == [4, 1]
    backlog.put(encoded(5, key=True))
    assert backlog.qsize() == 1 and backlog.encoded_size(5) == 100 and backlog.encoded_size(5) == 0
    backlog.put(None)  # the receiver stopping always gets through
    assert backlog.qsize() == 2


def test_a_keyframe_arriving_over_the_limit_replaces_the_backlog_without_waiting() -> None:
    discarded: list[int] = []
    backlog = EncodedBacklog(2, discarded.append, lambda: None)
    backlog.put(encoded(0, key=True))
    backlog.put(encoded(1, key=False))
    backlog.put(encoded(2, key=True))
    assert backlog.qsize() == 1 and discarded == [2]


def test_the_inbox_keeps_the_newest_frames_and_every_control_event_in_order() -> None:
    async def scenario() -> tuple[list[object], list[int]]:
        discarded: list[int] = []
        inbox = FrameInbox(2, discarded.append)
        gone = Control("peer left")
        for number in range(4):
            await inbox.put(number)
        inbox.put_nowait(gone)
        await inbox.put(4)
        taken = []
        while not inbox.empty():
            taken.append(await inbox.get())
        return taken, discarded

    taken, discarded = asyncio.run(scenario())
    assert [item if isinstance(item, int) else "control" for item in taken] == [3, "control", 4]
    assert sum(discarded) == 3


def test_the_webrtc_settings_parse_and_refuse_naming_the_variable() -> None:
    settings = Settings.from_env(
        {
            "FORGESYTE_STREAM_WEBRTC_ICE_SERVERS": '[{"urls": ["turn:t.example:3478?transport=udp"], "username": "u", "credential": "c"}, {"urls": "stun:s.example"}]',
            "FORGESYTE_STREAM_WEBRTC_HOST_ADDRESSES": "127.0.0.1, ::1",
            "FORGESYTE_STREAM_WEBRTC_PORT_RANGE": "40000-40099",
        }
    )
    assert settings.webrtc_ice_servers == (IceServer(("turn:t.example:3478?transport=udp",), "u", "c"), IceServer(("stun:s.example",)))
    assert settings.webrtc_host_addresses == ("127.0.0.1", "::1")
    assert settings.webrtc_port_range == PortRange(40000, 40099)
    assert Settings.from_env({"FORGESYTE_STREAM_WEBRTC_ICE_SERVERS": "stun:a:3478,stun:b"}).webrtc_ice_servers == (
        IceServer(("stun:a:3478",)),
        IceServer(("stun:b",)),
    )
    for variable, value, says in [
        ("ICE_SERVERS", "[{", "not valid JSON"),
        ("ICE_SERVERS", '[{"urls": "http://x"}]', "not a STUN or TURN URL"),
        ("ICE_SERVERS", '[{"urls": "turn:x"}]', "username"),
        ("ICE_SERVERS", '[{"urls": "stun:x", "password": "p"}]', "unknown fields"),
        ("HOST_ADDRESSES", "localhost", "not an IP address"),
        ("PORT_RANGE", "99-5000", "out of range"),
        ("PORT_RANGE", "6000-5000", "out of range"),
        ("PORT_RANGE", "a-b", "not a port range"),
        ("CONNECT_TIMEOUT_S", "0.5", "out of range"),
    ]:
        with pytest.raises(SettingsError) as error:
            Settings.from_env({f"FORGESYTE_STREAM_WEBRTC_{variable}": value})
        assert f"FORGESYTE_STREAM_WEBRTC_{variable}" in str(error.value) and says in str(error.value), str(error.value)


def test_ice_servers_become_link_headers_with_their_credentials() -> None:
    turn = IceServer(("turn:t.example:3478?transport=udp", "turns:t.example:5349"), "u", 'c"q')
    assert turn.link_headers() == [
        '<turn:t.example:3478?transport=udp>; rel="ice-server"; username="u"; credential="c\\"q"; credential-type="password"',
        '<turns:t.example:5349>; rel="ice-server"; username="u"; credential="c\\"q"; credential-type="password"',
    ]
    assert IceServer(("stun:s.example",)).link_headers() == ['<stun:s.example>; rel="ice-server"']


def rtp(sequence: int, timestamp: int, marker: bool, data: bytes) -> Any:
    from aiortc.rtp import RtpPacket

    packet = RtpPacket(payload_type=96, marker=int(marker), sequence_number=sequence, timestamp=timestamp)
    packet._data = data  # type: ignore[attr-defined]  # what aiortc's depayloader leaves on a packet
    return packet


def test_the_jitter_buffer_releases_a_frame_at_its_marked_packet_not_at_the_next_frame() -> None:
    from adapters.transports.webrtc.receive_bounds import MarkerJitterBuffer

    buffer = MarkerJitterBuffer(capacity=16)
    assert buffer.add(rtp(100, 3000, False, b"a"))[1] is None
    assert buffer.add(rtp(102, 3000, True, b"c"))[1] is None, "a packet of the frame is still missing"
    frame = buffer.add(rtp(101, 3000, False, b"b"))[1]
    assert frame is not None and frame.data == b"abc" and frame.timestamp == 3000
    frame = buffer.add(rtp(103, 6000, True, b"d"))[1]
    assert frame is not None and frame.data == b"d", "a one-packet frame goes at once"


def test_a_frame_whose_sender_sets_no_marker_goes_when_the_next_one_starts_as_aiortc_does() -> None:
    from adapters.transports.webrtc.receive_bounds import MarkerJitterBuffer

    buffer = MarkerJitterBuffer(capacity=16)
    assert buffer.add(rtp(10, 90, False, b"x"))[1] is None
    assert buffer.add(rtp(11, 90, False, b"y"))[1] is None  # a sender that never marks a frame's end...
    frame = buffer.add(rtp(12, 180, False, b"z"))[1]  # ...has it ended by the next frame's first packet
    assert frame is not None and frame.data == b"xy" and frame.timestamp == 90
