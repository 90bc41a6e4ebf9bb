"""WebRTC transport of `stream()`: its options, WHIP signalling over HTTP, and the errors it maps.

Why a second transport: a WebSocket carries one JPEG per frame; WebRTC carries
the frames as a compressed video (VP8 or H.264) over UDP, with the results on
a data channel, so a camera's stream costs a fraction of the bytes. The
server's wire protocol is WHIP (RFC 9725): one POST of the SDP offer, a DELETE
of the returned Location to end (docs/client-guide.md, "WebRTC").

This module imports nothing of aiortc, so that the WebSocket client works
without the `webrtc` extra; the peer connection itself lives in
forgesyte_stream_client.webrtc_session, imported only when a run asks for
`transport="webrtc"` (`load_aiortc` names the extra when it is missing).

HTTP errors of the WHIP endpoint (`{"error", "detail"}`) become the same
exceptions the WebSocket path raises for those codes, with the close code the
WebSocket would have closed with (the contract's x-close-code), so that
`retryable`, the reconnect policy, the CLI's one error line and its exit
status are the same over either transport.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from forgesyte_stream_client.errors import ClientError, ConnectError, error_from_message

WHIP_PATH = "/v1/whip"
EXTRA_HINT = "pip install 'forgesyte-stream-client[webrtc]'"
CODECS = ("VP8", "H264")
TRANSPORTS = ("websocket", "webrtc")

# The close code the WebSocket closes with after each session-ending error (asyncapi.yaml x-close-code):
# a WebRTC session has no close code, but its errors keep the WebSocket's, so that every rule keyed on it
# (StreamError.retryable, Reconnect.close_codes, the CLI's error line) holds over either transport.
CLOSE_CODE_FOR_ERROR = {
    "invalid_message": 1003,
    "invalid_frame": 1007,
    "frame_too_large": 1009,
    "internal_error": 1011,
    "invalid_pipeline": 1008,
    "server_busy": 1013,
    "shutting_down": 1012,
    "idle_timeout": 3008,
    "unauthorized": 3000,
}

_MAX_ANSWER_BYTES = 1 << 20
# Loopback and private servers are reached directly, whatever proxy the environment names (as live.py).
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class IceServer:
    """One STUN or TURN server (RTCIceServer's fields), given by the caller or by the server's Link headers."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class WebRtcOptions:
    """How a `transport="webrtc"` run connects.

    codec: the video codec offered first ("VP8" or "H264"), the only one
    offered so that the server cannot pick the other. frame_rate: the
    rate the frames' timestamps (pts, 90 kHz clock) advance at; None: the
    source's rate, else 30. ice_host_addresses: the local addresses ICE
    gathers host candidates on; aioice skips 127.0.0.1 unless told, so a
    client on the server's machine gives ("127.0.0.1",). It is applied by
    replacing `aioice.ice.get_host_addresses` for the whole client process
    (aiortc has no per-connection setting). ice_servers: STUN/TURN servers
    of the caller's, used with those the server names in its Link headers
    (use_server_ice_servers). ice_transport_policy: "relay" forces every
    packet through TURN (with no TURN server given, the client offers once,
    learns the server's from its Link headers, and offers again with them).
    connect_timeout_s: how long ICE and DTLS may take to connect before the
    run fails with ConnectError. After the last frame the run waits for the
    results still owed as the WebSocket path does: while any frame is
    unanswered the server must answer one within reply_timeout, else
    ReplyTimeout.
    """

    codec: Literal["VP8", "H264"] = "VP8"
    frame_rate: float | None = None
    ice_host_addresses: tuple[str, ...] | None = None
    ice_servers: tuple[IceServer, ...] = ()
    use_server_ice_servers: bool = True
    ice_transport_policy: Literal["all", "relay"] = "all"
    connect_timeout_s: float = 15.0
    request_timeout_s: float = 30.0
    extra_headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if self.ice_transport_policy not in ("all", "relay"):
            raise ValueError(f"ice_transport_policy must be 'all' or 'relay', got {self.ice_transport_policy!r}")
        if self.frame_rate is not None and not self.frame_rate > 0:
            raise ValueError(f"frame_rate must be above 0, got {self.frame_rate}")
        if not self.connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be above 0, got {self.connect_timeout_s}")


def load_aiortc() -> Any:
    """aiortc, or a ClientError that names the extra to install."""
    try:
        import aiortc  # noqa: PLC0415 - lazily: the WebSocket client needs none of it
    except ImportError as missing:
        raise ClientError(f"the webrtc transport needs aiortc ({missing}): {EXTRA_HINT}") from None
    return aiortc


def use_host_addresses(addresses: Sequence[str] | None) -> None:
    """Make this process's ICE gather on `addresses` only (None: leave aioice's own choice).

    aioice's `get_host_addresses` lists every interface address but
    loopback; it is replaced for the whole process, so a later run with
    other addresses replaces it again.
    """
    if addresses is None:
        return
    import aioice.ice  # noqa: PLC0415

    chosen = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


def whip_url(url: str, pipeline: str) -> str:
    """The WHIP endpoint for a server URL given as ws://, wss://, http:// or https:// (a path is replaced)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected a ws://HOST:PORT (or wss://, http://, https://) URL, got {url!r}")
    return urlunsplit((scheme, parts.netloc, WHIP_PATH, urlencode({"pipeline_id": pipeline}), ""))


_LINK = re.compile(r"<([^>]*)>((?:\s*;\s*[^,;=]+(?:=(?:\"[^\"]*\"|[^,;]*))?)*)")
_PARAM = re.compile(r";\s*([^=;,\s]+)\s*(?:=\s*(\"[^\"]*\"|[^,;]*))?")


def ice_servers_from_links(values: Sequence[str]) -> list[IceServer]:
    """The `rel="ice-server"` entries of Link headers (RFC 9725 4.4) as IceServers; other links are ignored."""
    servers = []
    for value in values:
        for match in _LINK.finditer(value):
            params = {name.lower(): (raw or "").strip().strip('"') for name, raw in _PARAM.findall(match.group(2))}
            if params.get("rel", "").lower() != "ice-server":
                continue
            servers.append(IceServer((match.group(1).strip(),), params.get("username"), params.get("credential")))
    return servers


def error_from_http(status: int, body: bytes, url: str) -> ClientError:
    """The exception for a refused POST or DELETE: the WebSocket's for the same error code, else ConnectError."""
    try:
        message = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        message = None
    if isinstance(message, dict) and isinstance(message.get("error"), str):
        code = message["error"]
        return error_from_message(message, CLOSE_CODE_FOR_ERROR.get(code))
    text = body[:300].decode("utf-8", "replace")
    return ConnectError(url, f"the server answered the WHIP request with HTTP {status}: {text}", status=status)


@dataclass(frozen=True)
class WhipAnswer:
    sdp: str
    location: str  # absolute
    ice_servers: list[IceServer]


def _request(method: str, url: str, body: bytes | None, headers: dict[str, str], timeout_s: float) -> tuple[int, bytes, Any]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with _DIRECT.open(request, timeout=timeout_s) as response:
            return response.status, response.read(_MAX_ANSWER_BYTES), response.headers
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read(_MAX_ANSWER_BYTES), refused.headers
    except (urllib.error.URLError, OSError, TimeoutError) as failed:
        reason = getattr(failed, "reason", None) or failed
        raise ConnectError(url, str(reason) or type(failed).__name__) from failed


def _auth(api_key: str | None, extra: dict[str, str]) -> dict[str, str]:
    return {**extra, **({"Authorization": f"Bearer {api_key}"} if api_key else {})}


async def post_offer(url: str, sdp: str, *, api_key: str | None, options: WebRtcOptions) -> WhipAnswer:
    """POST the complete offer; the answer, the session's absolute Location and the server's ICE servers."""
    headers = _auth(api_key, {**options.extra_headers, "Content-Type": "application/sdp", "Accept": "application/sdp"})
    status, body, response_headers = await asyncio.to_thread(_request, "POST", url, sdp.encode(), headers, options.request_timeout_s)
    if status != 201:
        raise error_from_http(status, body, url)
    location = response_headers.get("Location")
    if not location:
        raise ConnectError(url, "the server's 201 answer has no Location header")
    links = ice_servers_from_links(response_headers.get_all("Link") or [])
    return WhipAnswer(body.decode("utf-8", "replace"), urljoin(url, location), links)


async def delete_session(location: str, *, api_key: str | None, options: WebRtcOptions) -> int | None:
    """DELETE the session's resource; its status (200, or 404 once the server ended it), None when unreachable."""
    try:
        status, _, _ = await asyncio.to_thread(_request, "DELETE", location, None, _auth(api_key, dict(options.extra_headers)), options.request_timeout_s)
    except ConnectError:
        return None
    return status
