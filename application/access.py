"""Who may talk to the server: the Host and Origin checks, API keys and the per-key session quota.

One policy serves every transport. The adapters (adapters/transports/shared/access.py for the
Litestar app, adapters/transports/websockets/server.py) only read headers off their
library's request and turn the decisions made here into responses, so the
rules cannot drift apart between transports.

The Host check is what defeats DNS rebinding: a page on evil.example whose name
is re-pointed at 127.0.0.1 is same-origin with itself, so the browser sends
its requests and lets it read the answers, but every one of them carries
`Host: evil.example`, which no allowed host matches. The Origin check covers
what the browser does not: it applies no CORS to WebSocket handshakes, so
without it any page open in a browser on this machine could stream to the
server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol
from urllib.parse import urlsplit

from application.ports import ConnectionClosed, StreamObserver, Transport
from application.sessions import SessionSlots
from application.stream import StreamService
from domain import CLOSE_CODE_FOR_ERROR, ErrorCode, StreamError

# Browsers cannot set headers on a WebSocket; they offer the key as this subprotocol, which the server echoes.
BEARER_SUBPROTOCOL_PREFIX = "forgesyte.bearer."
SHA256_PREFIX = "sha256:"
MIN_PLAIN_KEY_LENGTH = 16
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# A key must fit in a header and in a subprotocol token (RFC 9110 tchar).
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# Client-supplied text kept in logs is cut to this many characters.
LOGGED_TEXT_LIMIT = 120


class Refusal(StrEnum):
    """Why a request or connection was refused; the metrics label, never client text."""

    FORBIDDEN_HOST = "forbidden_host"
    FORBIDDEN_ORIGIN = "forbidden_origin"
    UNAUTHORIZED = "unauthorized"
    KEY_QUOTA = "key_quota"


class Channel(StrEnum):
    HTTP = "http"
    WEBSOCKET = "websocket"


class KeyFileError(ValueError):
    """A malformed API key file; the message names the line, never the key on it."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    digest: bytes  # sha256 of the key's UTF-8 bytes; the plain key is never kept


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_api_keys(text: str) -> tuple[ApiKey, ...]:
    """The keys of an API key file: one per line, `[NAME ]KEY` or `[NAME ]sha256:<64 hex>`.

    Blank lines and lines starting with `#` are skipped. A key without a name is
    called `line-N` in logs. Plain keys shorter than MIN_PLAIN_KEY_LENGTH are
    refused: a guessable key is worse than none, because it looks like protection.
    """
    keys: list[ApiKey] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) > 2:
            raise KeyFileError(f"line {number}: expected `[NAME ]KEY`, found {len(parts)} fields")
        name, secret = (parts[0], parts[1]) if len(parts) == 2 else (f"line-{number}", parts[0])
        if not _NAME.match(name):
            raise KeyFileError(f"line {number}: the name must be 1-64 letters, digits, '_', '.' or '-'")
        if secret.lower().startswith(SHA256_PREFIX):
            hexdigest = secret[len(SHA256_PREFIX) :]
            if not _HEX64.match(hexdigest):
                raise KeyFileError(f"line {number}: sha256: must be followed by 64 hexadecimal digits")
            digest = bytes.fromhex(hexdigest)
        else:
            if len(secret) < MIN_PLAIN_KEY_LENGTH or not _TOKEN.match(secret):
                raise KeyFileError(
                    f"line {number}: a plain key must be at least {MIN_PLAIN_KEY_LENGTH} characters "
                    "of letters, digits and !#$%&'*+-.^_`|~ (it travels in a header and a subprotocol)"
                )
            digest = digest_of(secret)
        if name in names:
            raise KeyFileError(f"line {number}: the name {name!r} is used twice")
        if digest in digests:
            raise KeyFileError(f"line {number}: the same key is listed twice")
        names.add(name)
        digests.add(digest)
        keys.append(ApiKey(name, digest))
    if not keys:
        raise KeyFileError("the file lists no key; unset the variable to run without keys")
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class Credential:
    """What a request presented: the matched key's name, and the subprotocol to echo if it came that way."""

    key_name: str | None
    presented: bool
    subprotocol: str | None = None

    @property
    def authorized(self) -> bool:
        return self.key_name is not None

    @property
    def label(self) -> str:
        """How logs name the key: its name, or missing / unknown; never the key."""
        if self.key_name is not None:
            return self.key_name
        return "unknown" if self.presented else "missing"


ANONYMOUS = Credential(key_name="anonymous", presented=False)


def _split_host(value: str) -> tuple[str, str | None] | None:
    """(host, port) of a Host header or an origin's authority, the host lower-cased without brackets."""
    value = value.strip().lower()
    if not value or any(c in value for c in "/\\@?# "):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    else:
        host, colon, port_text = value.partition(":")
        if ":" in port_text:
            return None  # an IPv6 address must be bracketed
        port = port_text if colon else None
    if port is not None and not port.isdigit():
        return None
    return host.rstrip("."), port


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _normal_origin(origin: str) -> tuple[str, str, str] | None:
    """(scheme, host, port) of a serialized origin, default ports filled in; None for "null" or garbage."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query or parts.username:
        return None
    split = _split_host(parts.netloc)
    if split is None or not split[0]:
        return None
    host, port = split
    return parts.scheme, host, port or ("443" if parts.scheme == "https" else "80")


class AccessPolicy:
    """The pure rules: which Host names, which Origins, which keys and which paths need none.

    `allowed_hosts=None` or `allowed_origins=None` switch that check off (the
    operator wrote `*`).
    """

    def __init__(
        self,
        *,
        keys: Iterable[ApiKey] = (),
        allowed_hosts: Iterable[str] | None,
        allowed_origins: Iterable[str] | None,
        public_paths: Iterable[str] = ("/health", "/"),
        public_prefixes: Iterable[str] = (),
    ) -> None:
        self._keys = tuple(keys)
        self._hosts = None if allowed_hosts is None else frozenset(h.strip().lower().strip("[]").rstrip(".") for h in allowed_hosts)
        origins = None if allowed_origins is None else [_normal_origin(o) for o in allowed_origins]
        if origins is not None and None in origins:
            raise ValueError("every allowed origin must be scheme://host[:port] with http or https")
        self._origins = None if origins is None else frozenset(o for o in origins if o is not None)
        self._public_paths = frozenset(public_paths)
        self._public_prefixes = tuple(public_prefixes)

    @property
    def keys_required(self) -> bool:
        return bool(self._keys)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(key.name for key in self._keys)

    def is_public(self, path: str) -> bool:
        """Paths served without a key: /health for probes, and the page at / with its assets."""
        return path in self._public_paths or any(path.startswith(prefix) for prefix in self._public_prefixes)

    def host_allowed(self, host_header: str | None) -> bool:
        if self._hosts is None:
            return True
        if host_header is None:
            return False
        split = _split_host(host_header)
        return split is not None and split[0] in self._hosts

    def origin_allowed(self, origin: str | None, host_header: str | None, *, secure: bool) -> bool:
        """No Origin (not a browser), a loopback origin, the server's own origin, or a listed one.

        The server's own origin is the scheme it is reached with plus the Host
        header, so it is only trustworthy after host_allowed: that is what a
        rebinding page cannot pass.
        """
        if origin is None or self._origins is None:
            return True
        parsed = _normal_origin(origin)
        if parsed is None:
            return False  # "null" (sandboxed frames, file: pages) and anything unparsable
        scheme, host, port = parsed
        if _is_loopback(host) or parsed in self._origins:
            return True
        own = _split_host(host_header or "")
        if own is None:
            return False
        own_scheme = "https" if secure else "http"
        return (scheme, host, port) == (own_scheme, own[0], own[1] or ("443" if secure else "80"))

    def authenticate(self, authorization: str | None, subprotocols: Sequence[str] = ()) -> Credential:
        """The key presented in `Authorization: Bearer` or as a `forgesyte.bearer.` subprotocol.

        Every stored digest is compared, each with hmac.compare_digest over
        fixed-length sha256 digests, so the time taken says nothing about
        which key, or how much of one, matched.
        """
        if not self._keys:
            return ANONYMOUS
        offered = next((p for p in subprotocols if p.startswith(BEARER_SUBPROTOCOL_PREFIX)), None)
        presented: str | None = None
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                presented = value.strip()
            else:
                return Credential(None, presented=True, subprotocol=offered)
        elif offered is not None:
            presented = offered[len(BEARER_SUBPROTOCOL_PREFIX) :]
        if presented is None:
            return Credential(None, presented=False)
        digest = digest_of(presented)
        matched: str | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                matched = key.name
        return Credential(matched, presented=True, subprotocol=offered)


def clipped(text: str | None) -> str | None:
    """Client text as logs keep it: bounded, so a several-KiB header cannot flood them."""
    if text is None or len(text) <= LOGGED_TEXT_LIMIT:
        return text
    return text[:LOGGED_TEXT_LIMIT] + "..."


class AccessObserver(Protocol):
    """Refusals as logs and metrics see them; must not raise."""

    def access_refused(self, refusal: Refusal, *, channel: Channel, key: str, client: str, path: str) -> None: ...


UNAUTHORIZED_DETAIL = {
    False: "an API key is required: send `Authorization: Bearer <key>` or the WebSocket subprotocol `forgesyte.bearer.<key>`",
    True: "the API key presented is not valid",
}


def unauthorized_error(credential: Credential) -> StreamError:
    return StreamError(ErrorCode.UNAUTHORIZED, UNAUTHORIZED_DETAIL[credential.presented])


class StreamAccess:
    """The stream entry point behind the keys: refuses without a session slot, counts sessions per key.

    Both checks come before StreamService.serve, so a refused connection never
    holds one of the server's MAX_SESSIONS slots, however many arrive. The
    key's slots come from the same SessionSlots as the server's, so the quota
    holds for the whole server however many processes serve it.
    """

    def __init__(
        self,
        service: StreamService,
        observer: AccessObserver,
        stream_observer: StreamObserver,
        *,
        slots: SessionSlots,
    ) -> None:
        self._service = service
        self._observer = observer
        self._stream_observer = stream_observer
        self._slots = slots
        self._per_key_limit = slots.max_per_key

    def sessions_of(self, key_name: str) -> int:
        """Sessions the key holds across the server; 0 where keys have no quota (they are not counted then)."""
        return self._slots.in_use(key_name) if self._per_key_limit > 0 else 0

    async def serve(self, transport: Transport, pipeline_id: str | None, credential: Credential, path: str = "") -> None:
        """Serve one accepted connection, or refuse it with a JSON error and a close code."""
        if not credential.authorized:
            self._observer.access_refused(
                Refusal.UNAUTHORIZED, channel=Channel.WEBSOCKET, key=credential.label, client=transport.client, path=path
            )
            await self._refuse(transport, unauthorized_error(credential))
            return
        name = credential.label
        limited = credential is not ANONYMOUS and self._per_key_limit > 0
        slot = self._slots.acquire(name) if limited else None
        if limited and slot is None:
            self._observer.access_refused(Refusal.KEY_QUOTA, channel=Channel.WEBSOCKET, key=name, client=transport.client, path=path)
            await self._refuse(
                transport,
                StreamError(
                    ErrorCode.SERVER_BUSY,
                    f"this API key is at its limit of {self._per_key_limit} concurrent sessions; retry later",
                ),
            )
            return
        try:
            await self._service.serve(transport, pipeline_id)
        finally:
            if slot is not None:
                self._slots.release(slot)

    async def _refuse(self, transport: Transport, error: StreamError) -> None:
        try:
            await transport.send_json(error.to_message())
            self._stream_observer.error_sent(None, error.code)
            await transport.close(int(CLOSE_CODE_FOR_ERROR[error.code]), error.code.value)
        except ConnectionClosed:
            return  # the peer left before its refusal arrived
