"""The access policy (application.access) put in front of each transport: refusals as HTTP, logs and metrics.

`AccessGuard` wraps the whole ASGI app served by uvicorn, so every request and
every WebSocket handshake, matched route or not, passes the Host and Origin
checks before Litestar sees it, and every HTTP request but the public ones
needs a key. The WebSocket key check is in the stream route itself, because
its refusal is a message on an accepted connection (close 3000), not an HTTP
status. adapters/transports/websockets/server.py applies the same policy through
`handshake_refusal` and `bearer_subprotocol`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from application.access import (
    BEARER_SUBPROTOCOL_PREFIX,
    AccessPolicy,
    Channel,
    Credential,
    Refusal,
    clipped,
    unauthorized_error,
)

log = structlog.get_logger("forgesyte.access")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
# The app behind the guard may type the ASGI channel its own way (Litestar's scope and messages are TypedDicts);
# the guard hands on exactly what the server gave it.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

BEARER_SCHEME_NAME = "bearerAuth"
WWW_AUTHENTICATE = 'Bearer realm="forgesyte-stream"'


@dataclass(frozen=True, slots=True)
class HandshakeRefusal:
    """An HTTP refusal before any upgrade: status, JSON body, the reason counted, extra headers."""

    status: int
    body: Mapping[str, str]
    refusal: Refusal
    headers: tuple[tuple[str, str], ...] = ()

    def encoded(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


HOST_REFUSAL_STATUS = 400
ORIGIN_REFUSAL_STATUS = 403
UNAUTHORIZED_STATUS = 401


def handshake_refusal(policy: AccessPolicy, host: str | None, origins: Sequence[str], *, secure: bool) -> HandshakeRefusal | None:
    """The Host, then the Origin check, for an HTTP request or a WebSocket handshake; None when both pass."""
    if not policy.host_allowed(host):
        return HandshakeRefusal(
            HOST_REFUSAL_STATUS,
            {"error": "invalid_host", "detail": "the Host header names no host this server answers to"},
            Refusal.FORBIDDEN_HOST,
        )
    if not all(policy.origin_allowed(origin, host, secure=secure) for origin in origins):
        return HandshakeRefusal(
            ORIGIN_REFUSAL_STATUS,
            {"error": "forbidden_origin", "detail": "requests from this Origin are not allowed"},
            Refusal.FORBIDDEN_ORIGIN,
        )
    return None


def unauthorized_refusal(credential: Credential) -> HandshakeRefusal:
    error = unauthorized_error(credential)
    return HandshakeRefusal(
        UNAUTHORIZED_STATUS, error.to_message(), Refusal.UNAUTHORIZED, (("www-authenticate", WWW_AUTHENTICATE),)
    )


def bearer_subprotocol(offered: Iterable[str]) -> str | None:
    """The `forgesyte.bearer.` subprotocol a client offered: echoed, valid key or not, so browsers keep the connection.

    A browser that offered subprotocols fails the handshake when none comes
    back; echoing the one it offered lets it read the unauthorized message.
    """
    return next((p for p in offered if p.startswith(BEARER_SUBPROTOCOL_PREFIX)), None)


class AccessEvents:
    """Implements the AccessObserver port: a warning log line and a counter per refusal.

    WebSocket refusals count in stream_sessions_rejected_total{reason}, HTTP
    ones in stream_http_requests_refused_total{reason}; the reason is a
    Refusal value, never client text, and keys appear by name only.
    """

    def __init__(self, metrics: Any) -> None:
        self._metrics = metrics

    def access_refused(self, refusal: Refusal, *, channel: Channel, key: str, client: str, path: str) -> None:
        log.warning("access_refused", reason=refusal.value, channel=channel.value, key=key, client=client, path=clipped(path))
        self._metrics.access_refused(refusal, channel)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


def _header_values(scope: Scope, name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in scope.get("headers", ()) if key.lower() == name]


# The server's own receive and send of an accepted WebSocket, for the stream's transport adapter: the
# stream's messages then go straight between uvicorn and the application, one frame after another,
# without the framework's per-message wrappers (which only track a connection state the adapter does not use).
RAW_CHANNEL = "forgesyte.raw_channel"


class AccessGuard:
    """Pure ASGI middleware in front of the Litestar app: Host, Origin and, for HTTP, the API key."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy, events: AccessEvents) -> None:
        self.app = app
        self._policy = policy
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        channel = Channel.WEBSOCKET if kind == "websocket" else Channel.HTTP
        hosts = _header_values(scope, b"host")
        refusal = handshake_refusal(
            self._policy,
            hosts[0] if len(hosts) == 1 else None,
            _header_values(scope, b"origin"),
            secure=scope.get("scheme") in ("https", "wss"),
        )
        key = "-"
        if refusal is None and channel is Channel.HTTP and self._policy.keys_required and not self._policy.is_public(scope["path"]):
            authorization = _header_values(scope, b"authorization")
            credential = self._policy.authenticate(authorization[0] if authorization else None)
            key = credential.label
            if not credential.authorized:
                refusal = unauthorized_refusal(credential)
        if refusal is None:
            if channel is Channel.WEBSOCKET:
                scope[RAW_CHANNEL] = (receive, send)
            if key == "-":
                await self.app(scope, receive, send)
                return
            with structlog.contextvars.bound_contextvars(api_key=key):
                await self.app(scope, receive, send)
            return
        self._events.access_refused(refusal.refusal, channel=channel, key=key, client=_client(scope), path=scope.get("path", ""))
        await _send_refusal(scope, receive, send, refusal)


async def _send_refusal(scope: Scope, receive: Receive, send: Send, refusal: HandshakeRefusal) -> None:
    body = refusal.encoded()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.encode(), value.encode()) for name, value in refusal.headers),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})  # servers answer a close before accept with 403


def declare_security(openapi: Any, policy: AccessPolicy) -> None:
    """Declare the bearer scheme in the app's OpenAPI document, and, when keys are on, require it where it is.

    Litestar cannot vary a handler's security with configuration, so the
    document it generated is completed here, once, before it is first served.
    Every operation also declares the Host (400) and Origin (403) refusals.
    """
    from litestar.openapi.spec import Components, OpenAPIMediaType, OpenAPIResponse, Reference, SecurityScheme

    components = openapi.components or Components()
    components.security_schemes = {
        **(components.security_schemes or {}),
        BEARER_SCHEME_NAME: SecurityScheme(
            type="http",
            scheme="bearer",
            description=(
                "An API key from FORGESYTE_STREAM_API_KEYS_FILE, as `Authorization: Bearer <key>`. "
                "Required on every path but /health and the page at / when that variable is set."
            ),
        ),
    }
    openapi.components = components
    error_body = _error_body_schema(components)

    def response(description: str) -> OpenAPIResponse:
        return OpenAPIResponse(description=description, content={"application/json": OpenAPIMediaType(schema=error_body)})

    for path, item in (openapi.paths or {}).items():
        for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            responses = operation.responses if operation.responses is not None else {}
            for status, description in (
                (str(HOST_REFUSAL_STATUS), "invalid_host: the Host header is not one of the allowed hosts"),
                (str(ORIGIN_REFUSAL_STATUS), "forbidden_origin: a browser Origin that is not allowed"),
            ):
                existing = responses.get(status)
                if existing is None:
                    responses[status] = response(description)
                elif not isinstance(existing, Reference):
                    existing.description = f"{existing.description}; or {description}"
            if policy.keys_required and not policy.is_public(path):
                operation.security = [{BEARER_SCHEME_NAME: []}]
                responses[str(UNAUTHORIZED_STATUS)] = response("unauthorized: no valid API key (WWW-Authenticate: Bearer)")
            operation.responses = responses


def _error_body_schema(components: Any) -> Any:
    from litestar.openapi.spec import OpenAPIType, Reference, Schema

    schemas = components.schemas or {}
    for name in schemas:
        if name.endswith("ErrorBody"):
            return Reference(ref=f"#/components/schemas/{name}")
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["error", "detail"],
        properties={"error": Schema(type=OpenAPIType.STRING), "detail": Schema(type=OpenAPIType.STRING)},
    )
