"""POST /v1/whip and DELETE /v1/whip/sessions/{id}: the WHIP endpoint (RFC 9725), translating only.

adapters.transports.webrtc.whip decides; these handlers read the request
(the offer read in bounded chunks: nothing past MAX_OFFER_BYTES is buffered)
and write its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request, Response, delete, post
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, RequestBody, Schema
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from adapters.transports.webrtc.sdp import MAX_OFFER_BYTES
from adapters.transports.webrtc.whip import WhipAnswer, WhipSessions, error_answer


@dataclass
class _SdpOfferOperation(Operation):
    """Litestar has no raw-text body parameter; this declares the SDP offer and answer in the OpenAPI schema."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            content={"application/sdp": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))},
            required=True,
            description=(
                f"the publisher's complete SDP offer (RFC 9725; no trickle ICE), at most {MAX_OFFER_BYTES} bytes: exactly one "
                "video section (H.264 or VP8, sendonly) and, for results, a data channel labelled `results`"
            ),
        )
        responses = dict(self.responses or {})
        responses["201"] = OpenAPIResponse(
            description=(
                "the session is admitted: the body is the SDP answer with all of the server's candidates; Location names the "
                "session (DELETE it to end); Link carries the ICE servers (rel=\"ice-server\") when the server has any"
            ),
            content={"application/sdp": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))},
        )
        self.responses = responses


def _response(answer: WhipAnswer) -> Response[Any]:
    return Response(answer.body, status_code=answer.status, media_type=answer.media_type, headers=answer.headers)


async def _bounded_body(request: Request[Any, Any, Any]) -> bytes | None:
    """The body, or None once it passes MAX_OFFER_BYTES (the rest is never read into memory)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_OFFER_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def whip_routes(sessions: WhipSessions, error_body: type[Any]) -> list[Any]:
    """The two handlers over `sessions`; their errors declared with the unified error body (`error_body`, the app's)."""

    def spec(description: str) -> ResponseSpec:
        return ResponseSpec(data_container=error_body, description=description)

    @post(
        "/v1/whip",
        status_code=HTTP_201_CREATED,
        summary="Publish a video stream over WebRTC (WHIP, RFC 9725)",
        description=(
            "Results come back on the client's `results` data channel as the server messages of asyncapi.yaml, with "
            "`rtp_timestamp` on results and dropped notices. The session counts toward MAX_SESSIONS and the API key's quota."
        ),
        operation_class=_SdpOfferOperation,
        responses={
            400: spec("invalid_message: the offer is not SDP, does not parse, has no (or several) video sections, or cannot be answered"),
            401: spec("unauthorized: an API key is required or was not valid"),
            404: spec("invalid_pipeline: unknown pipeline id"),
            409: spec("invalid_pipeline: the pipeline exists but is unavailable (reason in detail)"),
            413: spec(f"frame_too_large: the offer is over {MAX_OFFER_BYTES} bytes"),
            415: spec("invalid_message: Content-Type is not application/sdp, or no codec the server decodes (H.264, VP8) is offered"),
            503: spec("server_busy (MAX_SESSIONS or the key's quota reached) or shutting_down; Retry-After says when to retry"),
        },
    )
    async def publish(request: Request[Any, Any, Any]) -> Response[Any]:
        body = await _bounded_body(request)
        if body is None:
            return _response(error_answer(413, "frame_too_large", f"the SDP offer is over {MAX_OFFER_BYTES} bytes; the limit is {MAX_OFFER_BYTES} bytes"))
        client = request.client
        headers = request.headers
        answer = await sessions.publish(
            request.query_params.get("pipeline_id"),
            body,
            headers.get("content-type"),
            authorization=headers.get("authorization"),
            client=f"{client.host}:{client.port}" if client else "unknown",
            traceparent=headers.get("traceparent"),
            tracestate=headers.get("tracestate"),
            path=request.url.path,
        )
        return _response(answer)

    @delete(
        "/v1/whip/sessions/{resource_id:str}",
        status_code=HTTP_200_OK,
        summary="End a WHIP session",
        responses={404: spec("not_found: no open WHIP session with this id (for this API key)")},
    )
    async def end(resource_id: str, request: Request[Any, Any, Any]) -> Response[Any]:
        if not await sessions.end(resource_id, request.headers.get("authorization")):
            return _response(error_answer(404, "not_found", f"no open WHIP session {resource_id[:64]!r}"))
        return Response(None, status_code=HTTP_200_OK)

    return [publish, end]
