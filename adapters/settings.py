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
from typing import Any

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


class SettingsError(ValueError):
    """A configuration value outside its accepted range; the message names the variable."""


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    default: Any
    doc: str
    parse: Callable[[str, str], Any]


def _int(low: int, high: int) -> Callable[[str, str], int]:
    def parse(variable: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise SettingsError(f"{variable}={raw!r} is not an integer; expected an integer in [{low}, {high}]") from None
        if not low <= value <= high:
            raise SettingsError(f"{variable}={value} is out of range; expected an integer in [{low}, {high}]")
        return value

    return parse


def _float(low: float, high: float) -> Callable[[str, str], float]:
    def parse(variable: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise SettingsError(f"{variable}={raw!r} is not a number; expected a number in [{low}, {high}]") from None
        if math.isnan(value) or not low <= value <= high:
            raise SettingsError(f"{variable}={raw.strip()} is out of range; expected a number in [{low}, {high}]")
        return value

    return parse


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
            raise SettingsError(
                f"{variable}: {name!r} is not an ONNX Runtime execution provider; known: {', '.join(sorted(known.values()))}"
            )
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


_SPECS: tuple[_Spec, ...] = (
    _Spec("host", "127.0.0.1", "address `serve` binds to", _text),
    _Spec("port", 8000, "TCP port `serve` listens on, 1-65535", _int(1, 65535)),
    _Spec("pipelines_dir", DEFAULT_PIPELINES_DIR, "directory of pipeline definition JSON files", _existing_dir),
    _Spec("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES, "largest accepted JPEG frame in bytes, 1 KiB-64 MiB", _int(1024, 64 * 1024 * 1024)),
    _Spec(
        "max_frame_pixels",
        DEFAULT_MAX_FRAME_PIXELS,
        "largest image a frame may declare, width x height (the default is 4K UHD, 3840x2160), 1-400000000",
        _int(1, 400_000_000),
    ),
    _Spec(
        "decode_budget_bytes",
        128 * 1024 * 1024,
        "bytes all decoded frames may hold at once, across worker threads; a frame that does not fit waits, "
        "1 MiB-64 GiB, at least MAX_FRAME_PIXELS x 11",
        _int(1024 * 1024, 64 * 1024 * 1024 * 1024),
    ),
    _Spec("max_sessions", 32, "concurrent WebSocket sessions before server_busy, 1-10000", _int(1, 10_000)),
    _Spec("buffer_frames", _POLICY.buffer_capacity, "frames a session keeps waiting behind the one in flight, 1-64", _int(1, 64)),
    _Spec("drop_threshold", _POLICY.drop_threshold, "lag fraction above which waiting frames are dropped, 0-1", _float(0.0, 1.0)),
    _Spec("slowdown_threshold", _POLICY.slowdown_threshold, "recent drop rate above which slow_down is sent, 0-1", _float(0.0, 1.0)),
    _Spec("slowdown_repeat_ms", round(_POLICY.slowdown_repeat_ms), "repeat interval of slow_down while the rate stays high, 100-600000 ms", _int(100, 600_000)),
    _Spec("drop_policy", "latest", "which waiting frames are dropped under overload: latest (the newest frame wins) or every_nth (frames whose index is a multiple of KEEP_EVERY are kept last, a steady sample)", _choice(("latest", "every_nth"))),
    _Spec("keep_every", DEFAULT_KEEP_EVERY, "the sample interval N of drop_policy=every_nth, 2-1000", _int(2, 1000)),
    _Spec("frame_timeout_ms", round(DEFAULT_FRAME_TIMEOUT_S * 1000), "per-frame pipeline deadline in ms, 10-600000", _int(10, 600_000)),
    _Spec("inference_workers", 4, "worker threads running pipelines, 1-256", _int(1, 256)),
    _Spec("executor", "threads", "where pipelines run: threads (worker threads in this process) or ray (actors on a Ray cluster, see docs/deployment.md)", _choice(("threads", "ray"))),
    _Spec("ray_address", None, "with EXECUTOR=ray: host:port of a running Ray cluster's head; unset starts a local Ray instance in-process", _ray_address),
    _Spec("ray_actors", 2, "with EXECUTOR=ray: pipeline actors this front end starts on the cluster, 1-1024", _int(1, 1024)),
    _Spec("ray_actor_cpus", 1.0, "with EXECUTOR=ray: CPUs each actor reserves in the cluster's scheduler, 0.01-256", _float(0.01, 256.0)),
    _Spec(
        "ray_reconnect_s",
        5.0,
        "with EXECUTOR=ray and RAY_ADDRESS: most seconds between attempts to rejoin a lost cluster (the first after 0.5 s, then doubling), 0.5-300",
        _float(0.5, 300.0),
    ),
    _Spec("event_loop", "uvloop", "event loop of the server: uvloop (libuv, faster) or asyncio (the standard library's)", _choice(("uvloop", "asyncio"))),
    _Spec("idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S, "seconds a session may go without a frame before it is closed with idle_timeout (3008), 1-86400", _float(1.0, 86_400.0)),
    _Spec("send_timeout_s", 5.0, "seconds a reply may wait for a client that does not read before its connection is cut, 0.1-600", _float(0.1, 600.0)),
    _Spec("header_timeout_s", 5.0, "seconds an HTTP request head (an upgrade included) may take to arrive before 408, 0.1-300", _float(0.1, 300.0)),
    _Spec("body_timeout_s", 30.0, "seconds an HTTP request body may take to arrive before 408, 0.1-3600", _float(0.1, 3600.0)),
    _Spec("ws_max_fragments", 4096, "fragments one WebSocket message may arrive in before the connection is closed with 1008, 1-1000000", _int(1, 1_000_000)),
    _Spec("ws_max_control_frames_per_s", 20, "pings and pongs a client may send per second (burst of the same size) before close 1008, 1-10000", _int(1, 10_000)),
    _Spec("shutdown_timeout_s", 15.0, "seconds sessions get to finish at shutdown (keep above the frame timeout), 0-600", _float(0.0, 600.0)),
    _Spec("plugins", (), "extra plugins, comma-separated module:factory references, each returning a plugin", _plugin_refs),
    _Spec("yolo_model", None, "path of a YOLOv8-style ONNX model; unset leaves the yolo pipeline unavailable", _optional_file),
    _Spec("yolo_labels", None, "optional labels file, one class name per line", _optional_file),
    _Spec("yolo_confidence", 0.25, "YOLO confidence threshold, 0-1", _float(0.0, 1.0)),
    _Spec("yolo_iou", 0.45, "YOLO NMS IoU threshold, 0-1", _float(0.0, 1.0)),
    _Spec("api_keys_file", None, "file of API keys, one per line (`[NAME ]KEY` or `[NAME ]sha256:<hex>`); set, every endpoint but /health and the page at / needs one", _api_keys_file),
    _Spec("max_sessions_per_key", 0, "concurrent sessions one API key may hold in the whole server, 0 (no limit besides MAX_SESSIONS)-10000", _int(0, 10_000)),
    _Spec("allowed_origins", (), "browser origins (scheme://host[:port], comma-separated) allowed besides no Origin, loopback origins and the server's own; `*` for any", _list_or_any(_is_origin, "scheme://host[:port] with http or https")),
    _Spec("allowed_hosts", (), "Host header names (comma-separated) accepted besides loopback names and the bind address; `*` for any", _list_or_any(_is_host, "a host name or IP address without port")),
    _Spec("tls_cert_file", None, "PEM certificate chain; with TLS_KEY_FILE the server speaks https/wss only", _optional_file),
    _Spec("tls_key_file", None, "PEM private key of TLS_CERT_FILE (unencrypted)", _optional_file),
    _Spec(
        "onnx_providers",
        ("CPUExecutionProvider",),
        "ONNX Runtime execution providers of the YOLO model, comma-separated in priority order "
        "(CPU, CUDA, TensorRT, ...); each must be available in the installed onnxruntime",
        _onnx_providers,
    ),
    _Spec("log_level", "info", "log level: debug, info, warning, error, critical", _choice(_LOG_LEVELS)),
)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str
    port: int
    pipelines_dir: Path
    max_frame_bytes: int
    max_frame_pixels: int
    decode_budget_bytes: int
    max_sessions: int
    buffer_frames: int
    drop_threshold: float
    slowdown_threshold: float
    slowdown_repeat_ms: int
    drop_policy: str
    keep_every: int
    frame_timeout_ms: int
    inference_workers: int
    executor: str
    ray_address: str | None
    ray_actors: int
    ray_actor_cpus: float
    ray_reconnect_s: float
    event_loop: str
    idle_timeout_s: float
    send_timeout_s: float
    header_timeout_s: float
    body_timeout_s: float
    ws_max_fragments: int
    ws_max_control_frames_per_s: int
    shutdown_timeout_s: float
    plugins: tuple[str, ...]
    yolo_model: Path | None
    yolo_labels: Path | None
    yolo_confidence: float
    yolo_iou: float
    api_keys_file: KeyFile | None
    max_sessions_per_key: int
    allowed_origins: tuple[str, ...] | None
    allowed_hosts: tuple[str, ...] | None
    tls_cert_file: Path | None
    tls_key_file: Path | None
    onnx_providers: tuple[str, ...]
    log_level: str

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
        for spec in _SPECS:
            variable = PREFIX + spec.name.upper()
            raw = env.get(variable)
            values[spec.name] = spec.default if raw is None else spec.parse(variable, raw)
            if raw is not None:
                given.add(spec.name)
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
        return [(PREFIX + spec.name.upper(), _describe_default(spec.default), spec.doc) for spec in _SPECS]


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
        return ",".join(default)
    return str(default)
