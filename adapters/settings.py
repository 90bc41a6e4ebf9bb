"""Every setting, read once from the environment at start-up into one frozen object.

A bad value stops start-up with a message naming the variable, the accepted
range and what was given: a server that silently falls back to a default is
harder to operate than one that refuses to start.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import msgspec
from msgspec import Meta

from adapters.settings_errors import SettingsError as SettingsError
from adapters.settings_webrtc import IceServer, PortRange, parse_host_addresses, parse_ice_servers, parse_port_range
from application.access import LOOPBACK_NAMES, AccessPolicy, ApiKey, KeyFileError, parse_api_keys
from application.stream import DEFAULT_FRAME_TIMEOUT_S, DEFAULT_IDLE_TIMEOUT_S
from domain import DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_FRAME_PIXELS, BackpressurePolicy
from domain.sampling import DEFAULT_KEEP_EVERY

PREFIX = "FORGESYTE_STREAM_"
# Served without an API key: the health probe, and the page at / with its assets.
PUBLIC_PATHS: tuple[str, ...] = ("/health", "/")
PUBLIC_PREFIXES: tuple[str, ...] = ("/client/",)
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
DEFAULT_PIPELINES_DIR = Path(__file__).resolve().parent / "pipelines"
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# The most a frame's decode may hold per declared pixel: 3 bytes of BGR output and,
# for a progressive four-component JPEG, 2 bytes per DCT coefficient of each component
# (adapters/media/codec.py charges exactly this; a test keeps the two equal).
DECODE_BYTES_PER_PIXEL = 3 + 4 * 2
# The domain owns the defaults; the table below only reads them.
_POLICY = BackpressurePolicy()


def _number(variable: str, raw: str, kind: type[int] | type[float], meta: Meta) -> int | float:
    """Integers and numbers parsed from text and checked against the field's own ge/le."""
    low, high = meta.ge, meta.le
    noun = "an integer" if kind is int else "a number"
    try:
        value = kind(raw.strip())
    except ValueError:
        raise SettingsError(f"{variable}={raw!r} is not {noun}; expected {noun} in [{low}, {high}]") from None
    if math.isnan(value) or not low <= value <= high:  # type: ignore[operator]
        shown = value if kind is int else raw.strip()
        raise SettingsError(f"{variable}={shown} is out of range; expected {noun} in [{low}, {high}]")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(variable: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise SettingsError(f"{variable}={raw!r} is not accepted; expected one of {', '.join(options)}")
        return value

    return parse


def _existing_dir(variable: str, raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise SettingsError(f"{variable}={raw!r} is not a directory; expected a directory of pipeline JSON files")
    return path


def _optional_file(variable: str, raw: str) -> Path | None:
    if not raw.strip():
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise SettingsError(f"{variable}={raw!r} does not name a readable file")
    return path


@dataclass(frozen=True, slots=True)
class KeyFile:
    """An API key file as read at start-up: where it is and the keys' names and digests (never the keys)."""

    path: Path
    keys: tuple[ApiKey, ...]

    def __str__(self) -> str:
        return str(self.path)


def _api_keys_file(variable: str, raw: str) -> KeyFile | None:
    path = _optional_file(variable, raw)
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"{variable}={raw!r} cannot be read as UTF-8 text: {type(error).__name__}") from None
    try:
        return KeyFile(path, parse_api_keys(text))
    except KeyFileError as error:
        raise SettingsError(f"{variable}={raw!r}: {error}; expected one key per line, `[NAME ]KEY` or `[NAME ]sha256:<hex>`") from None


def _list_or_any(check: Callable[[str], bool], expected: str) -> Callable[[str, str], tuple[str, ...] | None]:
    """Comma-separated entries added to the defaults; `*` alone switches the check off (None)."""

    def parse(variable: str, raw: str) -> tuple[str, ...] | None:
        entries = tuple(part.strip() for part in raw.split(",") if part.strip())
        if entries == ("*",):
            return None
        for entry in entries:
            if entry == "*" or not check(entry):
                raise SettingsError(f"{variable} entry {entry!r} is not accepted; expected {expected}, or `*` alone for any")
        return entries

    return parse


def _is_origin(entry: str) -> bool:
    try:
        AccessPolicy(allowed_hosts=None, allowed_origins=[entry])
    except ValueError:
        return False
    return True


def _is_host(entry: str) -> bool:
    return _HOST_NAME.match(entry) is not None or _is_ip(entry)


def _is_ip(entry: str) -> bool:
    try:
        ipaddress.ip_address(entry.strip("[]"))
    except ValueError:
        return False
    return True


def _plugin_refs(variable: str, raw: str) -> tuple[str, ...]:
    refs = tuple(part.strip() for part in raw.split(",") if part.strip())
    for ref in refs:
        module, _, attribute = ref.partition(":")
        if not module or not attribute:
            raise SettingsError(f"{variable} entry {ref!r} is malformed; expected comma-separated module:factory references")
    return refs


def _ray_address(variable: str, raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    host, separator, port = value.rpartition(":")
    if not separator or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SettingsError(
            f"{variable}={raw!r} is not a Ray cluster address; expected host:port of the head node's GCS "
            "(what `ray start --head --port PORT` prints), or unset for a local cluster started in-process"
        )
    return value


def _onnx_providers(variable: str, raw: str) -> tuple[str, ...]:
    """ONNX Runtime execution providers, in priority order; each must be available in the installed build.

    Short names (CPU, CUDA, TensorRT) or ONNX Runtime's own (CUDAExecutionProvider)
    are accepted, in any case. A provider that this onnxruntime build lacks stops
    start-up: running on the CPU instead of the GPU the operator asked for would
    be a silent, large slowdown.
    """
    import onnxruntime

    known = {name.lower(): name for name in onnxruntime.get_all_providers()}
    available = onnxruntime.get_available_providers()
    names = [part.strip() for part in raw.split(",") if part.strip()]
    if not names:
        raise SettingsError(f"{variable} is empty; expected comma-separated ONNX Runtime providers, such as CUDA,CPU")
    providers: list[str] = []
    for name in names:
        full = name if name.lower().endswith("executionprovider") else name + "ExecutionProvider"
        provider = known.get(full.lower())
        if provider is None:
            raise SettingsError(f"{variable}: {name!r} is not an ONNX Runtime execution provider; known: {', '.join(sorted(known.values()))}")
        if provider not in available:
            raise SettingsError(
                f"{variable}: provider {provider} is not available in this onnxruntime build "
                f"(available: {', '.join(available)}); install the matching onnxruntime package or remove it"
            )
        if provider in providers:
            raise SettingsError(f"{variable} names {provider} twice")
        providers.append(provider)
    return tuple(providers)


def _text(variable: str, raw: str) -> str:
    if not raw.strip():
        raise SettingsError(f"{variable} is empty; expected a host name or address")
    return raw.strip()


class Settings(msgspec.Struct, frozen=True):
    """The one declaration of every FORGESYTE_STREAM_* variable: type, default, range and meaning."""

    host: Annotated[str, Meta(description="address `serve` binds to", extra={"parse": _text})] = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535, description="TCP port `serve` listens on, 1-65535")] = 8000
    pipelines_dir: Annotated[Path, Meta(description="directory of pipeline definition JSON files", extra={"parse": _existing_dir})] = (
        DEFAULT_PIPELINES_DIR
    )
    max_frame_bytes: Annotated[int, Meta(ge=1024, le=64 * 1024 * 1024, description="largest accepted JPEG frame in bytes, 1 KiB-64 MiB")] = (
        DEFAULT_MAX_FRAME_BYTES
    )
    max_frame_pixels: Annotated[
        int,
        Meta(ge=1, le=400_000_000, description="largest image a frame may declare, width x height (the default is 4K UHD, 3840x2160), 1-400000000"),
    ] = DEFAULT_MAX_FRAME_PIXELS
    decode_budget_bytes: Annotated[
        int,
        Meta(
            ge=1024 * 1024,
            le=64 * 1024 * 1024 * 1024,
            description="bytes all decoded frames may hold at once, across worker threads; a frame that does not fit waits, "
            "1 MiB-64 GiB, at least MAX_FRAME_PIXELS x 11",
        ),
    ] = 128 * 1024 * 1024
    max_sessions: Annotated[int, Meta(ge=1, le=10_000, description="concurrent sessions (WebSocket and WebRTC) before server_busy, 1-10000")] = 32
    buffer_frames: Annotated[int, Meta(ge=1, le=64, description="frames a session keeps waiting behind the one in flight, 1-64")] = (
        _POLICY.buffer_capacity
    )
    drop_threshold: Annotated[float, Meta(ge=0.0, le=1.0, description="lag fraction above which waiting frames are dropped, 0-1")] = (
        _POLICY.drop_threshold
    )
    slowdown_threshold: Annotated[float, Meta(ge=0.0, le=1.0, description="recent drop rate above which slow_down is sent, 0-1")] = (
        _POLICY.slowdown_threshold
    )
    slowdown_repeat_ms: Annotated[
        int, Meta(ge=100, le=600_000, description="repeat interval of slow_down while the rate stays high, 100-600000 ms")
    ] = round(_POLICY.slowdown_repeat_ms)
    drop_policy: Annotated[
        str,
        Meta(
            description="which waiting frames are dropped under overload: latest (the newest frame wins) or every_nth (frames whose index is a multiple of KEEP_EVERY are kept last, a steady sample)",
            extra={"parse": _choice(("latest", "every_nth"))},
        ),
    ] = "latest"
    keep_every: Annotated[int, Meta(ge=2, le=1000, description="the sample interval N of drop_policy=every_nth, 2-1000")] = DEFAULT_KEEP_EVERY
    frame_timeout_ms: Annotated[int, Meta(ge=10, le=600_000, description="per-frame pipeline deadline in ms, 10-600000")] = round(
        DEFAULT_FRAME_TIMEOUT_S * 1000
    )
    inference_workers: Annotated[int, Meta(ge=1, le=256, description="worker threads running pipelines, 1-256")] = 4
    executor: Annotated[
        str,
        Meta(
            description="where pipelines run: threads (worker threads in this process) or ray (actors on a Ray cluster, see docs/deployment.md)",
            extra={"parse": _choice(("threads", "ray"))},
        ),
    ] = "threads"
    ray_address: Annotated[
        str | None,
        Meta(
            description="with EXECUTOR=ray: host:port of a running Ray cluster's head; unset starts a local Ray instance in-process",
            extra={"parse": _ray_address},
        ),
    ] = None
    ray_actors: Annotated[int, Meta(ge=1, le=1024, description="with EXECUTOR=ray: pipeline actors this front end starts on the cluster, 1-1024")] = 2
    ray_actor_cpus: Annotated[
        float, Meta(ge=0.01, le=256.0, description="with EXECUTOR=ray: CPUs each actor reserves in the cluster's scheduler, 0.01-256")
    ] = 1.0
    ray_reconnect_s: Annotated[
        float,
        Meta(
            ge=0.5,
            le=300.0,
            description="with EXECUTOR=ray and RAY_ADDRESS: most seconds between attempts to rejoin a lost cluster (the first after 0.5 s, then doubling), 0.5-300",
        ),
    ] = 5.0
    event_loop: Annotated[
        str,
        Meta(
            description="event loop of the server: uvloop (libuv, faster) or asyncio (the standard library's)",
            extra={"parse": _choice(("uvloop", "asyncio"))},
        ),
    ] = "uvloop"
    idle_timeout_s: Annotated[
        float, Meta(ge=1.0, le=86_400.0, description="seconds a session may go without a frame before it is closed with idle_timeout (3008), 1-86400")
    ] = DEFAULT_IDLE_TIMEOUT_S
    send_timeout_s: Annotated[
        float, Meta(ge=0.1, le=600.0, description="seconds a reply may wait for a client that does not read before its connection is cut, 0.1-600")
    ] = 5.0
    header_timeout_s: Annotated[
        float, Meta(ge=0.1, le=300.0, description="seconds an HTTP request head (an upgrade included) may take to arrive before 408, 0.1-300")
    ] = 5.0
    body_timeout_s: Annotated[float, Meta(ge=0.1, le=3600.0, description="seconds an HTTP request body may take to arrive before 408, 0.1-3600")] = (
        30.0
    )
    ws_max_fragments: Annotated[
        int,
        Meta(ge=1, le=1_000_000, description="fragments one WebSocket message may arrive in before the connection is closed with 1008, 1-1000000"),
    ] = 4096
    ws_max_control_frames_per_s: Annotated[
        int, Meta(ge=1, le=10_000, description="pings and pongs a client may send per second (burst of the same size) before close 1008, 1-10000")
    ] = 20
    shutdown_timeout_s: Annotated[
        float, Meta(ge=0.0, le=600.0, description="seconds sessions get to finish at shutdown (keep above the frame timeout), 0-600")
    ] = 15.0
    webrtc_ice_servers: Annotated[
        tuple[IceServer, ...],
        Meta(description="STUN/TURN servers for WebRTC, used by the server and sent to clients in WHIP Link headers: a JSON list "
             'like [{"urls": "turn:HOST:3478", "username": "U", "credential": "C"}] or comma-separated stun: URLs', extra={"parse": parse_ice_servers}),
    ] = ()
    webrtc_host_addresses: Annotated[
        tuple[str, ...] | None,
        Meta(description="comma-separated IP addresses WebRTC gathers and announces (loopback only when named); unset: every non-loopback interface",
             extra={"parse": parse_host_addresses}),
    ] = None
    webrtc_port_range: Annotated[
        PortRange | None, Meta(description="UDP ports WebRTC media binds, LOW-HIGH within 1024-65535 (one per session); unset: any", extra={"parse": parse_port_range})
    ] = None
    webrtc_connect_timeout_s: Annotated[
        float, Meta(ge=1.0, le=300.0, description="seconds a WHIP session may take to connect (ICE, DTLS, its results channel) before its slot is freed, 1-300")
    ] = 15.0
    plugins: Annotated[
        tuple[str, ...],
        Meta(description="extra plugins, comma-separated module:factory references, each returning a plugin", extra={"parse": _plugin_refs}),
    ] = ()
    yolo_model: Annotated[
        Path | None,
        Meta(description="path of a YOLOv8-style ONNX model; unset leaves the yolo pipeline unavailable", extra={"parse": _optional_file}),
    ] = None
    yolo_labels: Annotated[Path | None, Meta(description="optional labels file, one class name per line", extra={"parse": _optional_file})] = None
    yolo_confidence: Annotated[float, Meta(ge=0.0, le=1.0, description="YOLO confidence threshold, 0-1")] = 0.25
    yolo_iou: Annotated[float, Meta(ge=0.0, le=1.0, description="YOLO NMS IoU threshold, 0-1")] = 0.45
    api_keys_file: Annotated[
        KeyFile | None,
        Meta(
            description="file of API keys, one per line (`[NAME ]KEY` or `[NAME ]sha256:<hex>`); set, every endpoint but /health and the page at / needs one",
            extra={"parse": _api_keys_file},
        ),
    ] = None
    max_sessions_per_key: Annotated[
        int,
        Meta(ge=0, le=10_000, description="concurrent sessions one API key may hold in the whole server, 0 (no limit besides MAX_SESSIONS)-10000"),
    ] = 0
    allowed_origins: Annotated[
        tuple[str, ...] | None,
        Meta(
            description="browser origins (scheme://host[:port], comma-separated) allowed besides no Origin, loopback origins and the server's own; `*` for any",
            extra={"parse": _list_or_any(_is_origin, "scheme://host[:port] with http or https")},
        ),
    ] = ()
    allowed_hosts: Annotated[
        tuple[str, ...] | None,
        Meta(
            description="Host header names (comma-separated) accepted besides loopback names and the bind address; `*` for any",
            extra={"parse": _list_or_any(_is_host, "a host name or IP address without port")},
        ),
    ] = ()
    tls_cert_file: Annotated[
        Path | None, Meta(description="PEM certificate chain; with TLS_KEY_FILE the server speaks https/wss only", extra={"parse": _optional_file})
    ] = None
    tls_key_file: Annotated[Path | None, Meta(description="PEM private key of TLS_CERT_FILE (unencrypted)", extra={"parse": _optional_file})] = None
    onnx_providers: Annotated[
        tuple[str, ...],
        Meta(
            description="ONNX Runtime execution providers of the YOLO model, comma-separated in priority order "
            "(CPU, CUDA, TensorRT, ...); each must be available in the installed onnxruntime",
            extra={"parse": _onnx_providers},
        ),
    ] = ("CPUExecutionProvider",)
    log_level: Annotated[str, Meta(description="log level: debug, info, warning, error, critical", extra={"parse": _choice(_LOG_LEVELS)})] = "info"

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    def access_policy(self) -> AccessPolicy:
        """The Host, Origin and key rules these settings ask for (application.access)."""
        hosts: tuple[str, ...] | None = None
        if self.allowed_hosts is not None:
            hosts = (*LOOPBACK_NAMES, *self.allowed_hosts)
            if self.host not in ("0.0.0.0", "::", ""):
                hosts = (*hosts, self.host)
        return AccessPolicy(
            keys=self.api_keys_file.keys if self.api_keys_file is not None else (),
            allowed_hosts=hosts,
            allowed_origins=self.allowed_origins,
            public_paths=PUBLIC_PATHS,
            public_prefixes=PUBLIC_PREFIXES,
        )

    @property
    def ws_max_size(self) -> int:
        """The WebSocket layer's own limit, above the frame limit so that clients get the JSON error.

        Messages between the two limits are read and answered with frame_too_large;
        anything larger is refused by the WebSocket layer before it is buffered.
        """
        return self.max_frame_bytes + max(1024 * 1024, self.max_frame_bytes // 4)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        given: set[str] = set()
        for name, kind, meta in _declared():
            variable = PREFIX + name.upper()
            raw = env.get(variable)
            if raw is None:
                continue
            parse = (meta.extra or {}).get("parse")
            values[name] = parse(variable, raw) if parse is not None else _number(variable, raw, kind, meta)
            given.add(name)
        values.update(overrides)
        settings = cls(**values)
        settings._check_relations()
        ray_only = sorted(name for name in given if name.startswith("ray_"))
        if ray_only and settings.executor != "ray":
            # A cluster address with the thread executor is a deployment that believes it scales out and does not.
            raise SettingsError(
                f"{PREFIX}{ray_only[0].upper()} is set but {PREFIX}EXECUTOR={settings.executor}; "
                f"set {PREFIX}EXECUTOR=ray to run pipelines on Ray, or unset the Ray variables"
            )
        return settings

    def _check_relations(self) -> None:
        if self.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise SettingsError(
                f"{PREFIX}EVENT_LOOP=uvloop but the uvloop package is not installed (it has no Windows build); "
                "install it or set the variable to asyncio"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = ("TLS_CERT_FILE", "TLS_KEY_FILE") if self.tls_key_file is None else ("TLS_KEY_FILE", "TLS_CERT_FILE")
            raise SettingsError(f"{PREFIX}{given} is set but {PREFIX}{missing} is not; expected both (https/wss) or neither")
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            _check_tls_files(self.tls_cert_file, self.tls_key_file)
        if self.decode_budget_bytes < self.max_frame_pixels * DECODE_BYTES_PER_PIXEL:
            raise SettingsError(
                f"{PREFIX}DECODE_BUDGET_BYTES={self.decode_budget_bytes} is below what one frame of "
                f"{PREFIX}MAX_FRAME_PIXELS={self.max_frame_pixels} pixels may need to decode "
                f"({self.max_frame_pixels * DECODE_BYTES_PER_PIXEL} bytes, {DECODE_BYTES_PER_PIXEL} per pixel); "
                "raise the budget or lower the pixel limit"
            )
        if self.slowdown_threshold <= self.drop_threshold:
            raise SettingsError(
                f"{PREFIX}SLOWDOWN_THRESHOLD={self.slowdown_threshold} must be above "
                f"{PREFIX}DROP_THRESHOLD={self.drop_threshold}; expected drop_threshold < slowdown_threshold <= 1"
            )

    @staticmethod
    def documentation() -> list[tuple[str, str, str]]:
        """(variable, default, meaning) for every setting: the README table is generated from this."""
        defaults = {field.name: field.default for field in msgspec.structs.fields(Settings)}
        return [(PREFIX + name.upper(), _describe_default(defaults[name]), meta.description or "") for name, _, meta in _declared()]


def _declared() -> list[tuple[str, Any, Meta]]:
    """(field, base type, Meta) of every setting, read from the Settings annotations."""
    hints = get_type_hints(Settings, include_extras=True)
    return [(name, hints[name].__origin__, hints[name].__metadata__[0]) for name in Settings.__struct_fields__]


def _check_tls_files(cert: Path, key: Path) -> None:
    """Load the pair once at start-up, so a wrong file stops the server naming its variable, not the first client."""
    cert_text = cert.read_text(encoding="utf-8", errors="replace")
    key_text = key.read_text(encoding="utf-8", errors="replace")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise SettingsError(f"{PREFIX}TLS_CERT_FILE={str(cert)!r} holds no PEM certificate; expected a PEM certificate chain")
    if "PRIVATE KEY-----" not in key_text or "ENCRYPTED" in key_text:
        raise SettingsError(f"{PREFIX}TLS_KEY_FILE={str(key)!r} holds no unencrypted PEM private key; expected one")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise SettingsError(
            f"{PREFIX}TLS_CERT_FILE={str(cert)!r} and {PREFIX}TLS_KEY_FILE={str(key)!r} cannot be loaded together "
            f"({error.reason or error}); expected a certificate chain and its own private key"
        ) from None


def _describe_default(default: Any) -> str:
    if default is None or default == ():
        return "unset"
    if default == DEFAULT_PIPELINES_DIR:
        return "adapters/pipelines (shipped)"
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)
