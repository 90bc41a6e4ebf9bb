"""WHIP signalling (RFC 9725): one POST publishes a stream, a DELETE on its Location ends it.

The offer is checked as text first (adapters.transports.webrtc.sdp); the
session is then admitted by the same StreamAccess and StreamService as a
WebSocket's (API key quota, MAX_SESSIONS, pipeline checks, their observers),
and only an admitted session gets a peer connection and an answer. The
session runs in its own task, independent of the HTTP request; it ends once
(application.stream decides how) and its peer connection is closed with it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiortc import RTCPeerConnection

from adapters.settings_webrtc import IceServer
from adapters.transports.webrtc.ice import rtc_configuration
from adapters.transports.webrtc.peer import PEER_CLOSED, DiscardCounter, WebRtcTransport, WhipPeer
from adapters.transports.webrtc.sdp import OfferRefused, inspect_offer
from application.access import AccessPolicy, Credential, StreamAccess
from application.connection import ConnectionFacts, connection_facts
from application.ports import Inbound, InboundKind
from domain import ErrorCode

log = structlog.get_logger("forgesyte.webrtc")

SESSIONS_PATH = "/v1/whip/sessions"
# HTTP status of each refusal the application decides (the WebSocket closes with a code instead).
_STATUS_FOR_REFUSAL = {
    ErrorCode.UNAUTHORIZED.value: 401,
    ErrorCode.INVALID_PIPELINE.value: 404,
    ErrorCode.SERVER_BUSY.value: 503,
    ErrorCode.SHUTTING_DOWN.value: 503,
}


@dataclass(frozen=True, slots=True)
class WebRtcOptions:
    ice_servers: tuple[IceServer, ...]
    connect_timeout_s: float
    send_timeout_s: float
    # How long a DELETE waits for the session to finish ending before it answers.
    delete_wait_s: float = 5.0


@dataclass(frozen=True, slots=True)
class WhipAnswer:
    """What the POST answers: a status, headers and a body (the SDP answer, or the unified JSON error)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"


def error_answer(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> WhipAnswer:
    return WhipAnswer(status, {"error": code, "detail": detail}, headers or {})


@dataclass(slots=True)
class _Published:
    transport: WebRtcTransport
    key_name: str
    peer: WhipPeer | None = None
    task: asyncio.Task[None] | None = None


class WhipSessions:
    """The WHIP resources of this process: publish (POST), end (DELETE), and close every peer at shutdown."""

    def __init__(
        self,
        stream_access: StreamAccess,
        access_policy: AccessPolicy,
        options: WebRtcOptions,
        *,
        is_known_pipeline: Any,
        metrics: Any,
    ) -> None:
        self._access = stream_access
        self._policy = access_policy
        self._options = options
        self._is_known_pipeline = is_known_pipeline
        self._metrics = metrics
        self._published: dict[str, _Published] = {}
        self._discards = DiscardCounter(metrics.frames_discarded)

    def link_headers(self) -> list[str]:
        return [link for server in self._options.ice_servers for link in server.link_headers()]

    async def publish(
        self,
        pipeline_id: str | None,
        body: bytes,
        content_type: str | None,
        *,
        authorization: str | None,
        client: str,
        traceparent: str | None = None,
        tracestate: str | None = None,
        path: str = "",
    ) -> WhipAnswer:
        try:
            offer = inspect_offer(body, content_type)
        except OfferRefused as refused:
            self._metrics.offer_refused(refused.code)
            log.info("whip_offer_refused", status=refused.status, error=refused.code, detail=refused.detail, client=client)
            return error_answer(refused.status, refused.code, refused.detail)
        credential: Credential = self._policy.authenticate(authorization)
        options = self._options
        transport = WebRtcTransport(
            client, send_timeout_s=options.send_timeout_s, connect_timeout_s=options.connect_timeout_s, discards=self._discards
        )
        resource_id = secrets.token_urlsafe(18)
        published = _Published(transport, credential.label)
        facts = ConnectionFacts("webrtc", credential.label, traceparent, tracestate)
        with connection_facts(facts):  # the session's task inherits them, as a WebSocket's handler does
            task = asyncio.create_task(self._serve(resource_id, published, pipeline_id, credential, path), name=f"whip-{resource_id[:8]}")
        published.task = task
        await asyncio.wait([transport.admission, task], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if not transport.admission.done():
            await task  # ended without deciding: its error surfaces as a 500
            return error_answer(500, ErrorCode.INTERNAL_ERROR.value, "the session could not start")
        refusal = transport.admission.result()
        if refusal is not None:
            await asyncio.gather(task, return_exceptions=True)
            return self._refusal_answer(refusal, pipeline_id)
        self._published[resource_id] = published
        pc = RTCPeerConnection(rtc_configuration(options.ice_servers))
        peer = published.peer = WhipPeer(pc, transport, connect_timeout_s=options.connect_timeout_s, on_connect_failed=self._metrics.connect_failed)
        try:
            answer = await peer.answer(offer.sdp, has_channel=offer.has_data_channel)
        except asyncio.CancelledError:
            # The POST's client left before its answer: nobody will connect, so the session ends now, not at the idle timeout.
            transport.event(Inbound(InboundKind.DISCONNECT, close_code=PEER_CLOSED))
            raise
        except Exception as error:
            transport.event(Inbound(InboundKind.DISCONNECT, close_code=PEER_CLOSED))
            log.info("whip_negotiation_failed", error=type(error).__name__, detail=str(error)[:200], client=client)
            return error_answer(400, ErrorCode.INVALID_MESSAGE.value, f"the offer could not be answered: {type(error).__name__}: {str(error)[:200]}")
        headers = {"Location": f"{SESSIONS_PATH}/{resource_id}"}
        links = self.link_headers()
        if links:
            headers["Link"] = ", ".join(links)
        return WhipAnswer(201, answer, headers, "application/sdp")

    def _refusal_answer(self, message: Mapping[str, Any], pipeline_id: str | None) -> WhipAnswer:
        code = str(message.get("error", ErrorCode.INTERNAL_ERROR.value))
        status = _STATUS_FOR_REFUSAL.get(code, 500)
        if code == ErrorCode.INVALID_PIPELINE.value and pipeline_id is not None and self._is_known_pipeline(pipeline_id):
            status = 409  # it exists but is unavailable, as POST /v1/pipelines/{id}/frames answers
        headers = {"Retry-After": "1"} if status == 503 else {}
        return error_answer(status, code, str(message.get("detail", "")), headers)

    async def _serve(self, resource_id: str, published: _Published, pipeline_id: str | None, credential: Credential, path: str) -> None:
        try:
            await self._access.serve(published.transport, pipeline_id, credential, path)
        finally:
            self._published.pop(resource_id, None)
            if published.peer is not None:
                await published.peer.close()

    async def end(self, resource_id: str, authorization: str | None) -> bool:
        """DELETE: end the session as its peer leaving would; False when there is no such session (for this key)."""
        published = self._published.get(resource_id)
        if published is None:
            return False
        if self._policy.keys_required and self._policy.authenticate(authorization).label != published.key_name:
            return False  # another key's session: not found, as far as this caller may know
        published.transport.event(Inbound(InboundKind.DISCONNECT, close_code=PEER_CLOSED))
        task = published.task
        if task is not None:
            await asyncio.wait({task}, timeout=self._options.delete_wait_s)
        return True

    async def close_all(self) -> None:
        """At shutdown, after the sessions have drained: close whatever peer is left."""
        for published in list(self._published.values()):
            if published.peer is not None:
                await published.peer.close()

