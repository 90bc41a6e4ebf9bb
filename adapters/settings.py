"""Every setting, read once from the environment at start-up into one frozen object.

A bad value stops start-up with a message naming the variable, the accepted
range and what was given: a server that silently falls back to a default is
harder to operate than one that refuses to start.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "FORGESYTE_STREAM_"
DEFAULT_PIPELINES_DIR = Path(__file__).resolve().parent / "pipelines"
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


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


def _text(variable: str, raw: str) -> str:
    if not raw.strip():
        raise SettingsError(f"{variable} is empty; expected a host name or address")
    return raw.strip()


_SPECS: tuple[_Spec, ...] = (
    _Spec("host", "127.0.0.1", "address `serve` binds to", _text),
    _Spec("port", 8000, "TCP port `serve` listens on, 1-65535", _int(1, 65535)),
    _Spec("pipelines_dir", DEFAULT_PIPELINES_DIR, "directory of pipeline definition JSON files", _existing_dir),
    _Spec("max_frame_bytes", 5 * 1024 * 1024, "largest accepted JPEG frame in bytes, 1 KiB-64 MiB", _int(1024, 64 * 1024 * 1024)),
    _Spec("max_frame_pixels", 40_000_000, "largest decoded image, width x height, 1-400 megapixels", _int(1, 400_000_000)),
    _Spec("max_sessions", 32, "concurrent WebSocket sessions before server_busy, 1-10000", _int(1, 10_000)),
    _Spec("buffer_frames", 4, "frames a session keeps waiting behind the one in flight, 1-64", _int(1, 64)),
    _Spec("drop_threshold", 0.10, "lag fraction above which waiting frames are dropped, 0-1", _float(0.0, 1.0)),
    _Spec("slowdown_threshold", 0.30, "recent drop rate above which slow_down is sent, 0-1", _float(0.0, 1.0)),
    _Spec("slowdown_repeat_ms", 5000, "repeat interval of slow_down while the rate stays high, 100-600000 ms", _int(100, 600_000)),
    _Spec("frame_timeout_ms", 10_000, "per-frame pipeline deadline in ms, 10-600000", _int(10, 600_000)),
    _Spec("inference_workers", 4, "worker threads running pipelines, 1-256", _int(1, 256)),
    _Spec("executor", "threads", "where pipelines run: threads (worker threads in this process) or ray (actors on a Ray cluster, see docs/deployment.md)", _choice(("threads", "ray"))),
    _Spec("ray_address", None, "with EXECUTOR=ray: host:port of a running Ray cluster's head; unset starts a local Ray instance in-process", _ray_address),
    _Spec("ray_actors", 2, "with EXECUTOR=ray: pipeline actors this front end starts on the cluster, 1-1024", _int(1, 1024)),
    _Spec("ray_actor_cpus", 1.0, "with EXECUTOR=ray: CPUs each actor reserves in the cluster's scheduler, 0.01-256", _float(0.01, 256.0)),
    _Spec("event_loop", "uvloop", "event loop of the server: uvloop (libuv, faster) or asyncio (the standard library's)", _choice(("uvloop", "asyncio"))),
    _Spec("idle_timeout_s", 60.0, "seconds a session may go without a frame before it is closed with idle_timeout (3008), 1-86400", _float(1.0, 86_400.0)),
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
    _Spec("log_level", "info", "log level: debug, info, warning, error, critical", _choice(_LOG_LEVELS)),
)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str
    port: int
    pipelines_dir: Path
    max_frame_bytes: int
    max_frame_pixels: int
    max_sessions: int
    buffer_frames: int
    drop_threshold: float
    slowdown_threshold: float
    slowdown_repeat_ms: int
    frame_timeout_ms: int
    inference_workers: int
    executor: str
    ray_address: str | None
    ray_actors: int
    ray_actor_cpus: float
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
    log_level: str

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
        if self.slowdown_threshold <= self.drop_threshold:
            raise SettingsError(
                f"{PREFIX}SLOWDOWN_THRESHOLD={self.slowdown_threshold} must be above "
                f"{PREFIX}DROP_THRESHOLD={self.drop_threshold}; expected drop_threshold < slowdown_threshold <= 1"
            )

    @staticmethod
    def documentation() -> list[tuple[str, str, str]]:
        """(variable, default, meaning) for every setting: the README table is generated from this."""
        return [(PREFIX + spec.name.upper(), _describe_default(spec.default), spec.doc) for spec in _SPECS]


def _describe_default(default: Any) -> str:
    if default is None or default == ():
        return "unset"
    if default == DEFAULT_PIPELINES_DIR:
        return "adapters/pipelines (shipped)"
    return str(default)
