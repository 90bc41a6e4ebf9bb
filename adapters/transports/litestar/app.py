"""The Litestar adapter: HTTP routes and the WebSocket route, translating only.

Handlers turn requests and ASGI messages into calls on the application
services and their results into responses; no decision about frames,
sessions or errors is made here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgspec
import structlog
from litestar import Litestar, Request, Response, get, post, websocket
from litestar.connection import WebSocket
from litestar.di import Provide
from litestar.exceptions import HTTPException, WebSocketDisconnect
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.types import Send as AsgiSend
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_404_NOT_FOUND,
    HTTP_408_REQUEST_TIMEOUT,
    HTTP_409_CONFLICT,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
    HTTP_504_GATEWAY_TIMEOUT,
)

from adapters.transports.shared import endpoints as serving
from adapters.transports.shared.access import RAW_CHANNEL, AccessEvents, AccessGuard, bearer_subprotocol, declare_security
from adapters.observability.metrics import MetricsExporter
from adapters.transports.shared.endpoints import Health
from application.access import AccessPolicy, StreamAccess
from application.connection import ConnectionFacts, connection_facts
from application.live_streams import LiveStreams
from application.errors import FrameTimeoutError, PipelineUnavailableError
from application.pipeline import DagPipelineService
from adapters.transports.litestar.streams_api import streams_routes
from adapters.transports.litestar.whip_routes import whip_routes
from adapters.transports.webrtc.whip import WhipSessions
from adapters.transports.litestar.websocket_limits import ReplyTimeout
from application.ports import ConnectionClosed, Inbound, InboundKind, SendTimedOut
from application.single_frame import SingleFrameService
from application.stream import StreamService
from domain import ErrorCode, StreamError
from domain.errors import GENERIC_INTERNAL_DETAIL

_encoder = msgspec.json.Encoder()
log = structlog.get_logger("forgesyte.http")


# WebSocket transport ----------------------------------------------------------


# Messages read as plain mappings: the server's own receive and Litestar's give the same keys.
_Receive = Callable[[], Awaitable[Mapping[str, Any]]]


class LitestarWebSocketTransport:
    """Adapts a Litestar WebSocket to the application's Transport port.

    Litestar routes, authenticates and accepts the connection; the stream's
    messages then use the server's own receive and send (AccessGuard hands
    them over), as Litestar's wrappers around them only track a connection
    state nothing here reads.
    """

    def __init__(self, socket: WebSocket[Any, Any, Any]) -> None:
        self._socket = socket
        client = socket.client
        self.client = f"{client.host}:{client.port}" if client else "unknown"
        # Behind AccessGuard (as create_app serves it), the server's own channel; else Litestar's.
        raw = cast("tuple[_Receive, AsgiSend] | None", socket.scope.get(RAW_CHANNEL))
        self._receive: _Receive
        self._send: AsgiSend
        self._receive, self._send = raw if raw is not None else (socket.receive, socket.send)

    async def receive(self) -> Inbound:
        try:
            message = await self._receive()
        except WebSocketDisconnect as disconnect:
            return Inbound(InboundKind.DISCONNECT, close_code=disconnect.code)
        if message["type"] == "websocket.disconnect":
            return Inbound(InboundKind.DISCONNECT, close_code=message.get("code"))
        if message.get("bytes") is not None:
            return Inbound(InboundKind.BINARY, message["bytes"])
        return Inbound(InboundKind.TEXT, message.get("text") or "")

    async def send_json(self, message: Mapping[str, Any]) -> None:
        try:
            await self._send({"type": "websocket.send", "bytes": None, "text": _encoder.encode(message).decode()})
        except ReplyTimeout as timed_out:
            raise SendTimedOut() from timed_out
        except (WebSocketDisconnect, OSError) as gone:
            # uvicorn raises ClientDisconnected, an OSError, once the peer has gone.
            raise ConnectionClosed() from gone

    async def close(self, code: int, reason: str = "") -> None:
        try:
            await self._socket.close(code=code, reason=reason)
        except ReplyTimeout as timed_out:
            raise SendTimedOut() from timed_out
        except (WebSocketDisconnect, OSError) as gone:
            raise ConnectionClosed() from gone

    def attach_session(self, session: Any) -> None:
        self._socket.state.session = session


@websocket("/ws/video/stream", name="video_stream")
async def video_stream(socket: WebSocket[Any, Any, Any], stream_access: StreamAccess, access_policy: AccessPolicy) -> None:
    """Stream JPEG frames in, receive one JSON reply per frame; asyncapi.yaml is the contract.

    Host and Origin were checked before the upgrade (AccessGuard); the key is
    checked after it, so that a refused client reads why (close 3000).
    """
    offered = socket.scope.get("subprotocols", [])
    credential = access_policy.authenticate(socket.headers.get("authorization"), offered)
    await socket.accept(subprotocols=bearer_subprotocol(offered))
    try:
        facts = ConnectionFacts("litestar", credential.label, socket.headers.get("traceparent"), socket.headers.get("tracestate"))
        with structlog.contextvars.bound_contextvars(api_key=credential.label) if access_policy.keys_required else nullcontext(), connection_facts(facts):
            await stream_access.serve(LitestarWebSocketTransport(socket), socket.query_params.get("pipeline_id"), credential, socket.url.path)
    finally:
        # The connection's scope sits in reference cycles that only the cyclic collector frees, which an idle
        # server may not run for minutes; the ended session (and the frames it last held) must not wait with it.
        socket.state.pop("session", None)


# HTTP -----------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorBody:
    error: str
    detail: str
    frame_index: int | None = None


@dataclass(frozen=True)
class NodeView:
    id: str
    plugin_id: str
    tool_id: str
    params: dict[str, Any]


@dataclass(frozen=True)
class EdgeView:
    from_node: str
    to_node: str


@dataclass(frozen=True)
class PipelineView:
    id: str
    name: str
    description: str
    nodes: list[NodeView]
    edges: list[EdgeView]
    entry_nodes: list[str]
    output_nodes: list[str]
    available: bool
    reason: str | None


@dataclass(frozen=True)
class FrameResultBody:
    frame_index: int
    result: dict[str, Any]


_STATUS_FOR_CODE: dict[ErrorCode, int] = {
    ErrorCode.INVALID_MESSAGE: HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    ErrorCode.INVALID_FRAME: HTTP_400_BAD_REQUEST,
    ErrorCode.FRAME_TOO_LARGE: HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.PIPELINE_FAILURE: HTTP_422_UNPROCESSABLE_ENTITY,
    ErrorCode.INTERNAL_ERROR: HTTP_500_INTERNAL_SERVER_ERROR,
    ErrorCode.INVALID_PIPELINE: HTTP_404_NOT_FOUND,
    ErrorCode.SERVER_BUSY: HTTP_503_SERVICE_UNAVAILABLE,
    ErrorCode.SHUTTING_DOWN: HTTP_503_SERVICE_UNAVAILABLE,
    ErrorCode.IDLE_TIMEOUT: HTTP_408_REQUEST_TIMEOUT,
    ErrorCode.UNAUTHORIZED: HTTP_401_UNAUTHORIZED,
}


def _error_response(code: str, detail: str, status: int, frame_index: int | None = None) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"error": code, "detail": detail}
    if frame_index is not None:
        body["frame_index"] = frame_index
    return Response(body, status_code=status)


def _stream_error_handler(_: Request[Any, Any, Any], error: StreamError) -> Response[dict[str, Any]]:
    status = _STATUS_FOR_CODE[error.code]
    if isinstance(error, PipelineUnavailableError):
        status = HTTP_409_CONFLICT
    elif isinstance(error, FrameTimeoutError):
        status = HTTP_504_GATEWAY_TIMEOUT
    return _error_response(error.code.value, error.detail, status, 0 if error.code is ErrorCode.PIPELINE_FAILURE else None)


def _unexpected_error_handler(request: Request[Any, Any, Any], error: Exception) -> Response[dict[str, Any]]:
    log.error("unhandled_error", path=request.url.path, exc_info=error)
    return _error_response(ErrorCode.INTERNAL_ERROR.value, GENERIC_INTERNAL_DETAIL, HTTP_500_INTERNAL_SERVER_ERROR)


# Litestar's text when the client went away (or its body timed out) before the body was read.
_CLIENT_DISCONNECTED = "client disconnected prematurely"


def _http_error_handler(request: Request[Any, Any, Any], error: HTTPException) -> Response[dict[str, Any]]:
    status = error.status_code
    if error.detail == _CLIENT_DISCONNECTED:
        # The client's doing, not a server fault: no error record, no traceback. The response
        # reaches nobody; 400 keeps it out of 5xx statistics.
        log.info("request_aborted", path=request.url.path)
        return _error_response("invalid_request", "the request body was not received completely", HTTP_400_BAD_REQUEST)
    if status == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        return _error_response(ErrorCode.FRAME_TOO_LARGE.value, "request body exceeds the server's size limit", status)
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
    if status >= 500:
        log.error("http_error", status=status, detail=str(error.detail), exc_info=error)
        return _error_response(ErrorCode.INTERNAL_ERROR.value, GENERIC_INTERNAL_DETAIL, status)
    response = _error_response(code, str(error.detail), status)
    # Litestar puts headers the client needs on the exception: Allow on a 405 (RFC 9110).
    response.headers.update(error.headers or {})
    return response


def _pipeline_view(pipelines: DagPipelineService, pipeline_id: str) -> PipelineView:
    definition = pipelines.definition(pipeline_id)
    status = pipelines.availability(pipeline_id)
    return PipelineView(
        id=definition.id,
        name=definition.name,
        description=definition.description,
        nodes=[NodeView(n.id, n.plugin_id, n.tool_id, dict(n.params)) for n in definition.nodes],
        edges=[EdgeView(e.from_node, e.to_node) for e in definition.edges],
        entry_nodes=list(definition.entry_nodes),
        output_nodes=list(definition.output_nodes),
        available=status.available,
        reason=status.reason,
    )


_ERROR_RESPONSES = {
    status: ResponseSpec(data_container=ErrorBody, description=description)
    for status, description in (
        (HTTP_400_BAD_REQUEST, "invalid_frame: the body is not a decodable JPEG"),
        (HTTP_404_NOT_FOUND, "invalid_pipeline: unknown pipeline id"),
        (HTTP_409_CONFLICT, "invalid_pipeline: the pipeline exists but is unavailable (reason in detail)"),
        (HTTP_413_REQUEST_ENTITY_TOO_LARGE, "frame_too_large: over FORGESYTE_STREAM_MAX_FRAME_BYTES"),
        (HTTP_415_UNSUPPORTED_MEDIA_TYPE, "invalid_message: Content-Type is not image/jpeg"),
        (HTTP_422_UNPROCESSABLE_ENTITY, "pipeline_failure: a tool failed on this frame"),
        (HTTP_504_GATEWAY_TIMEOUT, "pipeline_failure: the frame ran past FORGESYTE_STREAM_FRAME_TIMEOUT_MS"),
    )
}


@get("/health", sync_to_thread=False)
def health(stream_service: StreamService, pipelines: DagPipelineService) -> Health:
    return serving.health(stream_service, pipelines)


@get(
    "/metrics",
    sync_to_thread=False,
    summary="Prometheus metrics",
    description="Prometheus text exposition (OpenMetrics when the Accept header asks for it), summed over worker processes.",
    media_type="text/plain",
)
def metrics_route(request: Request[Any, Any, Any], metrics_exporter: MetricsExporter) -> Response[bytes]:
    body, content_type = metrics_exporter.render(request.headers.get("accept"))
    # The exposition's content type already names its charset; Litestar would append a second one.
    return Response(body, media_type=content_type, headers={"content-type": content_type})


@get("/v1/pipelines", sync_to_thread=False)
def list_pipelines(pipelines: DagPipelineService) -> list[PipelineView]:
    return [_pipeline_view(pipelines, pipeline_id) for pipeline_id in pipelines.pipeline_ids()]


@get(
    "/v1/pipelines/{pipeline_id:str}",
    sync_to_thread=False,
    responses={HTTP_404_NOT_FOUND: _ERROR_RESPONSES[HTTP_404_NOT_FOUND]},
)
def get_pipeline(pipeline_id: str, pipelines: DagPipelineService) -> PipelineView:
    return _pipeline_view(pipelines, pipeline_id)


@dataclass
class _JpegBodyOperation(Operation):
    """Litestar has no raw-bytes body parameter; this declares the JPEG body in the OpenAPI schema."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            content={"image/jpeg": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY))},
            required=True,
            description="one complete JPEG image, at most FORGESYTE_STREAM_MAX_FRAME_BYTES bytes",
        )


@post(
    "/v1/pipelines/{pipeline_id:str}/frames",
    status_code=HTTP_200_OK,
    responses=_ERROR_RESPONSES,
    summary="Run one JPEG frame through a pipeline",
    operation_class=_JpegBodyOperation,
)
async def post_frame(pipeline_id: str, request: Request[Any, Any, Any], single_frames: SingleFrameService) -> FrameResultBody:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    single_frames.check_pipeline(pipeline_id)
    if content_type != "image/jpeg":
        raise StreamError(ErrorCode.INVALID_MESSAGE, f"expected Content-Type image/jpeg, got {content_type or 'none'!r}")
    reply = await single_frames.run(pipeline_id, await request.body())
    return FrameResultBody(frame_index=reply.frame_index, result=reply.result)


# The browser client and the OpenAPI viewer ------------------------------------------


def _web_client_dir() -> Path:
    """The page's files: inside the package where it is installed (pyproject.toml ships clients/web as adapters/web), else the checkout's."""
    adapters_dir = Path(__file__).resolve().parents[2]
    installed = adapters_dir / "web"
    return installed if (installed / "index.html").is_file() else adapters_dir.parent / "clients" / "web"


WEB_CLIENT_DIR = _web_client_dir()
OPENAPI_ASSETS_PATH = "/static/openapi"


def browser_routes(web_dir: Path = WEB_CLIENT_DIR) -> tuple[list[Any], OpenAPIConfig]:
    """The page at / with its files under /client/, and an OpenAPI viewer at /schema whose assets are served here too.

    Nothing the page or the viewer loads comes from a CDN, so both work on a
    machine without internet access. The viewer's Swagger UI bundle is the one
    shipped in the litestar-offline-docs package.
    """
    import litestar_offline_docs
    from litestar.static_files import create_static_files_router

    index = web_dir / "index.html"

    @get("/", include_in_schema=False, sync_to_thread=False, name="browser_client")
    def page() -> Response[bytes]:
        if not index.is_file():
            return _error_response("not_found", f"the browser client is not installed ({web_dir} is missing)", HTTP_404_NOT_FOUND)  # type: ignore[return-value]
        return Response(index.read_bytes(), media_type="text/html")

    assets = Path(litestar_offline_docs.__file__).resolve().parent / "static"
    viewer = SwaggerRenderPlugin(
        path=["/", "/swagger"],
        js_url=f"{OPENAPI_ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{OPENAPI_ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{OPENAPI_ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon="",
    )
    routes = [
        page,
        create_static_files_router(path="/client", directories=[web_dir], name="browser_client_files"),
        create_static_files_router(path=OPENAPI_ASSETS_PATH, directories=[assets], name="openapi_assets"),
    ]
    return routes, OpenAPIConfig(title="ForgeSyte Stream", version="0.1.0", path="/schema", render_plugins=[viewer, YamlRenderPlugin()])


def create_app(
    *,
    stream_service: StreamService,
    single_frames: SingleFrameService,
    stream_access: StreamAccess,
    access_policy: AccessPolicy,
    access_events: AccessEvents,
    pipelines: DagPipelineService,
    metrics: MetricsExporter,
    max_body_bytes: int,
    live_streams: LiveStreams | None = None,
    whip_sessions: WhipSessions | None = None,
    extra_route_handlers: list[Any] | None = None,
    on_shutdown: list[Any] | None = None,
) -> AccessGuard:
    """Build the Litestar app from already-wired services (the container calls this), behind the access checks."""

    def provide(value: Any) -> Provide:
        def provider() -> Any:
            return value

        return Provide(provider, sync_to_thread=False)

    page_routes, openapi_config = browser_routes()
    app = Litestar(
        route_handlers=[
            health,
            metrics_route,
            list_pipelines,
            get_pipeline,
            post_frame,
            video_stream,
            *streams_routes(ErrorBody),
            *(whip_routes(whip_sessions, ErrorBody) if whip_sessions is not None else []),
            *page_routes,
            *(extra_route_handlers or []),
        ],
        dependencies={
            "stream_service": provide(stream_service),
            "single_frames": provide(single_frames),
            "pipelines": provide(pipelines),
            "metrics_exporter": provide(metrics),
            "stream_access": provide(stream_access),
            "access_policy": provide(access_policy),
            "live_streams": provide(live_streams if live_streams is not None else LiveStreams()),
        },
        exception_handlers={
            StreamError: _stream_error_handler,
            HTTPException: _http_error_handler,
            Exception: _unexpected_error_handler,
        },
        request_max_body_size=max_body_bytes,
        openapi_config=openapi_config,
        logging_config=None,
        on_shutdown=on_shutdown or [],
        debug=False,
    )
    declare_security(app.openapi_schema, access_policy)
    return AccessGuard(app, access_policy, access_events)
