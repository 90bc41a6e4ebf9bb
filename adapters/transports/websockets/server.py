"""A second inbound adapter: the stream endpoint on the `websockets` library's asyncio server.

It exists to prove the hexagon: the same StreamService, wired by the same
container, serves `/ws/video/stream` without Litestar or uvicorn, and the
contract suite (contracts/) runs unchanged against it. So this module holds
only what the library cannot know: turning its messages into `Inbound`
values and JSON replies into text messages, routing its paths, and
starting and draining the server. Every protocol decision stays in
application.protocol.

    forgesyte-stream serve --transport websockets --host 127.0.0.1 --port 8001

Besides the WebSocket it answers GET /health and GET /metrics as the Litestar
app does (adapters.transports.shared.endpoints); the rest of the HTTP API (/v1/pipelines) is not here.
The connection limits of the main transport hold here too (adapters.transports.websockets.connection_limits).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import ssl
from contextlib import nullcontext
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, urlsplit

import structlog
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed as WebsocketsConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from adapters.transports.shared.access import AccessEvents, bearer_subprotocol, handshake_refusal, unauthorized_refusal
from adapters.observability.metrics import MetricsExporter
from adapters.transports.shared.endpoints import HEALTH_PATH, METRICS_PATH, drain_sessions, health
from adapters.settings import Settings
from adapters.transports.websockets.connection_limits import CLOSE_TIMEOUT_S, LimitedServerConnection, StreamLimits, library_logger, limited_connection
from adapters.observability.tracing import TracingObserver
from application.access import AccessPolicy, Channel, StreamAccess
from application.connection import ConnectionFacts, connection_facts
from application.ports import ConnectionClosed, FrameExecutor, Inbound, InboundKind, SendTimedOut
from application.pipeline import DagPipelineService
from application.sessions import SessionManager
from application.stream import StreamService
from domain import CloseCode

class Services(Protocol):
    """What `run` takes from the container, named here so a transport never imports the container that wires it."""

    def access_policy(self) -> AccessPolicy: ...
    def access_events(self) -> AccessEvents: ...
    def session_manager(self) -> SessionManager: ...
    def frame_executor(self) -> FrameExecutor: ...
    def stream_access(self) -> StreamAccess: ...
    def stream_service(self) -> StreamService: ...
    def pipelines(self) -> DagPipelineService: ...
    def metrics_exporter(self) -> MetricsExporter: ...
    def tracing(self) -> TracingObserver | None: ...

STREAM_PATH = "/ws/video/stream"

log = structlog.get_logger("forgesyte.websockets")


class WebsocketsTransport:
    """Adapts one `websockets` server connection to the application's Transport port."""

    def __init__(self, connection: LimitedServerConnection, send_timeout_s: float) -> None:
        self._connection = connection
        self._send_timeout_s = send_timeout_s
        self.session: Any = None
        address = connection.remote_address
        self.client = f"{address[0]}:{address[1]}" if address else "unknown"

    async def receive(self) -> Inbound:
        try:
            data = await self._connection.recv()
        except WebsocketsConnectionClosed as closed:
            return Inbound(InboundKind.DISCONNECT, close_code=closed.rcvd.code if closed.rcvd is not None else None)
        if isinstance(data, bytes):
            return Inbound(InboundKind.BINARY, data)
        return Inbound(InboundKind.TEXT, data)

    async def send_json(self, message: Mapping[str, Any]) -> None:
        # allow_nan=False: NaN is not JSON; the application never hands one over, and a bug that did
        # must fail loudly rather than reach clients as an unparsable message.
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        try:
            async with asyncio.timeout(self._send_timeout_s):
                await self._connection.send(text)
        except WebsocketsConnectionClosed as gone:
            raise ConnectionClosed() from gone
        except TimeoutError:
            # The client stopped reading; a close handshake would wait on it too.
            self._connection.transport.abort()
            raise SendTimedOut() from None

    async def close(self, code: int, reason: str = "") -> None:
        # Nothing the client sends after our close is read into memory (a refused client's message
        # included); closing twice is a no-op.
        await self._connection.close_discarding(code, reason)

    def attach_session(self, session: Any) -> None:
        self.session = session


def pipeline_id_of(path: str) -> str | None:
    """The pipeline_id query parameter of a request path, None when absent (the service rejects it)."""
    values = parse_qs(urlsplit(path).query, keep_blank_values=True).get("pipeline_id")
    return values[0] if values else None


def first_header(headers: Headers, name: str) -> str | None:
    """The first value of a header, as Litestar's headers.get gives it; Headers.get raises on a repeated header."""
    values = headers.get_all(name)
    return values[0] if values else None


def _response(status: HTTPStatus, body: bytes, content_type: str, extra: Sequence[tuple[str, str]] = ()) -> Response:
    # The library closes the connection after any answer but the upgrade; saying so keeps clients from reusing it.
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), ("Connection", "close"), *extra])
    return Response(status.value, status.phrase, headers, body)


def request_router(
    stream_service: StreamService, pipelines: DagPipelineService, metrics: MetricsExporter
) -> Callable[[ServerConnection, Request], Response | None]:
    """Upgrades on the stream path; /health and /metrics answered over plain HTTP; 404 elsewhere."""

    def route(connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == STREAM_PATH:
            return None
        if path == HEALTH_PATH:
            body = json.dumps(dataclasses.asdict(health(stream_service, pipelines)), separators=(",", ":")).encode()
            return _response(HTTPStatus.OK, body, "application/json")
        if path == METRICS_PATH:
            exposition, content_type = metrics.render(first_header(request.headers, "Accept"))
            return _response(HTTPStatus.OK, exposition, content_type)
        text = f"no endpoint at {path}; the stream is at {STREAM_PATH}, besides {HEALTH_PATH} and {METRICS_PATH}\n"
        return _response(HTTPStatus.NOT_FOUND, text.encode(), "text/plain; charset=utf-8")

    return route


def request_checks(
    policy: AccessPolicy,
    events: AccessEvents,
    route: Callable[[ServerConnection, Request], Response | None],
    *,
    secure: bool,
) -> Callable[[ServerConnection, Request], Response | None]:
    """The checks of AccessGuard under Litestar: Host and Origin, and the API key for HTTP paths that are not public; then `route`."""

    def check(connection: ServerConnection, request: Request) -> Response | None:
        hosts = request.headers.get_all("Host")
        refusal = handshake_refusal(
            policy, hosts[0] if len(hosts) == 1 else None, request.headers.get_all("Origin"), secure=secure
        )
        path = urlsplit(request.path).path
        channel = Channel.WEBSOCKET if path == STREAM_PATH else Channel.HTTP
        key = "-"
        if refusal is None and channel is Channel.HTTP and policy.keys_required and not policy.is_public(path):
            credential = policy.authenticate(first_header(request.headers, "Authorization"))
            key = credential.label
            if not credential.authorized:
                refusal = unauthorized_refusal(credential)
        if refusal is None:
            return route(connection, request)
        address = connection.remote_address
        events.access_refused(
            refusal.refusal,
            channel=channel,
            key=key,
            client=f"{address[0]}:{address[1]}" if address else "unknown",
            path=path,
        )
        return _response(HTTPStatus(refusal.status), refusal.encoded(), "application/json", refusal.headers)

    return check


def _select_bearer(connection: ServerConnection, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
    return cast(Subprotocol | None, bearer_subprotocol(subprotocols))


def handler_for(
    access: StreamAccess, policy: AccessPolicy, send_timeout_s: float
) -> Callable[[ServerConnection], Awaitable[None]]:
    async def handle(connection: ServerConnection) -> None:
        # The library calls this only after a completed handshake, so the request is there.
        request = connection.request
        path = request.path if request is not None else ""
        headers = request.headers if request is not None else Headers()
        offered = [p.strip() for value in headers.get_all("Sec-WebSocket-Protocol") for p in value.split(",")]
        credential = policy.authenticate(first_header(headers, "Authorization"), offered)
        facts = ConnectionFacts("websockets", credential.label, first_header(headers, "traceparent"), first_header(headers, "tracestate"))
        with structlog.contextvars.bound_contextvars(api_key=credential.label) if policy.keys_required else nullcontext(), connection_facts(facts):
            transport = WebsocketsTransport(cast(LimitedServerConnection, connection), send_timeout_s)
            await access.serve(transport, pipeline_id_of(path), credential, urlsplit(path).path)

    return handle


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


async def run(settings: Settings, container: Services, *, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain sessions the way adapters.entrypoints.serve does for uvicorn.

    Listening stops first, so no new session starts; every open session is
    asked to answer its frames and close with 1012 (SessionManager.shutdown:
    a frame still running at FORGESYTE_STREAM_SHUTDOWN_TIMEOUT_S is answered
    as failed); what is still open 2 s after that is cancelled and closed with
    1012 too (the library's default would be 1001).
    """
    policy = container.access_policy()
    sessions = container.session_manager()
    executor = container.frame_executor()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with serve(
            handler_for(container.stream_access(), policy, settings.send_timeout_s),
            settings.host,
            settings.port,
            process_request=request_checks(
                policy,
                container.access_events(),
                request_router(container.stream_service(), container.pipelines(), container.metrics_exporter()),
                secure=settings.tls,
            ),
            select_subprotocol=_select_bearer,
            compression=None,
            max_size=settings.ws_max_size,
            ssl=_tls_context(settings),
            create_connection=limited_connection(
                StreamLimits(settings.ws_max_fragments, settings.ws_max_control_frames_per_s)
            ),
            open_timeout=settings.header_timeout_s,
            close_timeout=CLOSE_TIMEOUT_S,
            logger=library_logger(),
        ) as server:
            log.info("websockets_server_started", host=settings.host, port=settings.port, path=STREAM_PATH)
            if ready is not None:
                ready.set()
            await stop.wait()
            server.close(close_connections=False)
            await drain_sessions(sessions, settings.shutdown_timeout_s)
            # What the deadline cut off closes with 1012, as under uvicorn, not the library's 1001.
            await asyncio.gather(
                *(connection.close(int(CloseCode.SERVICE_RESTART), "shutting_down") for connection in list(server.connections)),
                return_exceptions=True,
            )
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        executor.shutdown()
        tracing = container.tracing()
        if tracing is not None:
            tracing.shutdown()
