"""What a WHIP offer must be before any WebRTC machinery touches it: bounded, parsed once, one video stream we decode.

The checks are on the text, so that a hostile offer (megabytes, hundreds of
media sections, no video, codecs we cannot decode) is refused at the cost of
reading it, before a session slot, a peer connection or a socket is spent.
"""

from __future__ import annotations

from typing import NamedTuple

from aiortc.sdp import SessionDescription

# A browser's offer with one video and one data-channel section is 3-8 KB; a camera's is smaller.
MAX_OFFER_BYTES = 64 * 1024
# One video section and one data channel are what a publisher needs; a few more (an audio track,
# which is answered inactive) are tolerated, hundreds are an attack on the parser and the answer.
MAX_MEDIA_SECTIONS = 4
DECODED_CODECS = ("H264", "VP8")


class OfferRefused(Exception):
    """The offer cannot be answered: the HTTP status, the error code of the unified body and why."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class Offer(NamedTuple):
    sdp: str
    video_codecs: tuple[str, ...]
    has_data_channel: bool


def inspect_offer(body: bytes, content_type: str | None) -> Offer:
    """The offer, checked: raises OfferRefused with the status and error code the WHIP response carries."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/sdp":
        raise OfferRefused(415, "invalid_message", f"expected Content-Type application/sdp (an SDP offer, RFC 9725), got {media_type or 'none'!r}")
    if len(body) > MAX_OFFER_BYTES:
        raise OfferRefused(413, "frame_too_large", f"the SDP offer is {len(body)} bytes; the limit is {MAX_OFFER_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise OfferRefused(400, "invalid_message", "the SDP offer is not UTF-8 text") from None
    sections = sum(1 for line in text.splitlines() if line.startswith("m="))
    if sections > MAX_MEDIA_SECTIONS:
        raise OfferRefused(
            400, "invalid_message", f"the SDP offer has {sections} media sections; at most {MAX_MEDIA_SECTIONS} are accepted (one video, one data channel)"
        )
    if not text.startswith("v=0"):
        raise OfferRefused(400, "invalid_message", "the body is not an SDP offer: it must start with 'v=0'")
    try:
        parsed = SessionDescription.parse(text)
    except Exception as error:  # the parser raises whatever the malformed line makes it raise
        raise OfferRefused(400, "invalid_message", f"the SDP offer does not parse: {type(error).__name__}") from None
    videos = [media for media in parsed.media if media.kind == "video"]
    if len(videos) != 1:
        raise OfferRefused(400, "invalid_message", f"the SDP offer has {len(videos)} video sections; expected exactly one")
    video = videos[0]
    if video.direction not in (None, "sendonly", "sendrecv"):
        raise OfferRefused(400, "invalid_message", f"the video section is {video.direction}; the publisher must send (sendonly)")
    offered = tuple(dict.fromkeys(codec.name for codec in video.rtp.codecs if codec.name.upper() != "RTX"))
    decodable = tuple(name for name in offered if name.upper() in DECODED_CODECS)
    if not decodable:
        raise OfferRefused(
            415, "invalid_message", f"the video section offers {list(offered)}; the server decodes {list(DECODED_CODECS)}"
        )
    if video.ice is None or not video.ice.usernameFragment or not video.ice.password:
        raise OfferRefused(400, "invalid_message", "the SDP offer has no ICE credentials (a=ice-ufrag, a=ice-pwd)")
    if video.dtls is None or not video.dtls.fingerprints:
        raise OfferRefused(400, "invalid_message", "the SDP offer has no DTLS fingerprint (a=fingerprint)")
    has_channel = any(media.kind == "application" for media in parsed.media)
    return Offer(text, decodable, has_channel)
