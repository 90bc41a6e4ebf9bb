"""The servers the contract suite runs against: ones it starts itself, or any running one.

`--target` (or FORGESYTE_CONTRACT_TARGET, comma-separated) names them:

- `litestar`: the project's server (`python -m adapters.entrypoints.cli serve`, Litestar
  on uvicorn), started on 127.0.0.1 with the suite's pipelines;
- `websockets`: the same application behind the alternate adapter
  (`forgesyte-stream serve --transport websockets`), which has no HTTP API;
- `ws://HOST:PORT`: a server that is already running. It must serve the
  pipelines of contracts/pipelines/ under their ids (or others named with
  `--pipeline ROLE=ID`) and be started with the document's default frame limit
  (or say its own with `--max-frame-bytes`). The last case shuts it down to
  reach shutting_down/1012, by running `--target-shutdown CMD`.

Without any, the suite runs against `litestar` and `websockets`.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from contracts.client import StreamClient
from contracts.coverage import ContractCoverage

ROOT = Path(__file__).resolve().parent.parent
PIPELINES_DIR = Path(__file__).resolve().parent / "pipelines"
FAULT_PLUGIN = "contracts.fault_plugin:ContractFaultPlugin"
STREAM_PATH = "/ws/video/stream"

# What each case needs of a pipeline -> the id contracts/pipelines gives it.
ROLES: dict[str, str] = {
    "result": "probe",  # answers every frame at once from its header
    "decode": "decode",  # decodes the image
    "slow": "slow",  # 100 ms per frame
    "failing": "failing",  # pipeline_failure on even frames, results on odd ones
    "crash": "crash",  # internal_error
    "tracked": "tracked",  # a moving object with a tracker_id, a line and a zone (tracker_id, line_counts, zone_counts)
}

SELF_STARTED: dict[str, list[str]] = {
    "litestar": ["-m", "adapters.entrypoints.cli", "serve"],
    "websockets": ["-m", "adapters.entrypoints.cli", "serve", "--transport", "websockets"],
}
HAS_HTTP = {"litestar": True, "websockets": False}
# The idle timeout of the servers the suite starts: short, so the idle_timeout case takes seconds.
SUITE_IDLE_TIMEOUT_S = 3.0


class TargetUnavailable(RuntimeError):
    """The target did not start or cannot be reached; the message says what it printed or tried."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_listening(host: str, port: int, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def server_environment(**extra: str) -> dict[str, str]:
    """The environment of a self-started server: the document's defaults plus the suite's pipelines.

    The exceptions are the idle timeout, SUITE_IDLE_TIMEOUT_S instead of a minute,
    and WebRTC media gathered on 127.0.0.1, where the suite's WHIP publisher is.

    Inherited FORGESYTE_STREAM_* settings are dropped, so a developer's shell
    cannot move the limits the suite assumes.
    """
    environment = {key: value for key, value in os.environ.items() if not key.startswith("FORGESYTE_STREAM_")}
    environment.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
            "FORGESYTE_STREAM_PIPELINES_DIR": str(PIPELINES_DIR),
            "FORGESYTE_STREAM_PLUGINS": FAULT_PLUGIN,
            "FORGESYTE_STREAM_IDLE_TIMEOUT_S": str(SUITE_IDLE_TIMEOUT_S),
            # WebRTC media on loopback, where the suite's WHIP publisher gathers (contracts/test_webrtc_contract.py).
            "FORGESYTE_STREAM_WEBRTC_HOST_ADDRESSES": "127.0.0.1",
            **extra,
        }
    )
    return environment


@dataclass
class LocalServer:
    """A server process this suite started; its output goes to a log file shown when something fails."""

    kind: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 30.0) -> int:
        self.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=5)


def spawn_server(
    kind: str, port: int, env: Mapping[str, str], *, extra_args: Sequence[str] = (), stdout: IO[Any] | int, text: bool = False
) -> subprocess.Popen[Any]:
    """The one way tests/, contracts/ and bench/ start a server of `kind` on 127.0.0.1:`port`."""
    command = [sys.executable, *SELF_STARTED[kind], "--host", "127.0.0.1", "--port", str(port), *extra_args]
    return subprocess.Popen(
        command, cwd=ROOT, env=dict(env), stdout=stdout, stderr=subprocess.STDOUT, text=text, bufsize=1 if text else -1
    )


# Health checks go straight to the server, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_until_healthy(
    port: int, timeout_s: float, alive: Callable[[], bool], *, tls: ssl.SSLContext | None = None
) -> bool:
    """Poll GET /health (both transports serve it, without a key) until it answers 200."""
    url = f"{'https' if tls is not None else 'http'}://127.0.0.1:{port}/health"
    opener = _DIRECT if tls is None else urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            with opener.open(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


def start_local(kind: str, timeout_s: float = 60.0, api_key: str | None = None) -> LocalServer:
    """Start a server of `kind`; with `api_key`, it requires that key (FORGESYTE_STREAM_API_KEYS_FILE)."""
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix=f"contract-{kind}-"))
    log_path = directory / "server.log"
    extra: dict[str, str] = {}
    if api_key is not None:
        keys_file = directory / "api-keys"
        keys_file.write_text(f"contract-suite {api_key}\n", encoding="utf-8")
        extra["FORGESYTE_STREAM_API_KEYS_FILE"] = str(keys_file)
    with log_path.open("wb") as log:
        process = spawn_server(kind, port, server_environment(**extra), stdout=log)
    server = LocalServer(kind, process, port, log_path)
    if not wait_until_healthy(port, timeout_s, alive=lambda: process.poll() is None):
        code = server.stop()
        raise TargetUnavailable(f"{kind} server did not answer /health on port {port} (exit status {code}):\n{server.log_tail()}")
    return server


@dataclass
class Target:
    """One server under test, as the cases see it."""

    name: str
    ws_base: str
    http_base: str | None
    coverage: ContractCoverage
    max_frame_bytes: int
    idle_timeout_s: float
    pipelines: Mapping[str, str] = field(default_factory=lambda: dict(ROLES))
    shutdown: Callable[[], None] | None = None
    local: LocalServer | None = None
    # The key the target requires (FORGESYTE_STREAM_API_KEYS_FILE); None: it requires none.
    api_key: str | None = None

    def url(self, pipeline_id: str | None) -> str:
        return self.ws_base + STREAM_PATH + ("" if pipeline_id is None else f"?pipeline_id={pipeline_id}")

    def pipeline(self, role: str) -> str:
        return self.pipelines[role]

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key is not None else {}

    async def open(
        self,
        role: str | None = None,
        *,
        pipeline_id: str | None = None,
        reply_timeout_s: float = 15.0,
        headers: Mapping[str, str] | None = None,
        subprotocols: list[str] | None = None,
    ) -> StreamClient:
        """A client on the pipeline serving `role`, or on an explicit `pipeline_id` (None: no query at all).

        It presents the target's key in `Authorization` unless `headers` or
        `subprotocols` say how to authenticate instead (`{}` and None: not at all).
        """
        chosen = self.pipeline(role) if role is not None else pipeline_id
        return await StreamClient.connect(
            self.url(chosen),
            contract=self.coverage.contract,
            observer=self.coverage,
            reply_timeout_s=reply_timeout_s,
            headers=self.auth_headers() if headers is None and subprotocols is None else headers,
            subprotocols=subprotocols,
        )

    def describe(self) -> str:
        if self.local is not None:
            return f"{self.name} (self-started on port {self.local.port}; log {self.local.log_path}):\n{self.local.log_tail()}"
        return f"{self.name} ({self.ws_base})"


def parse_target(value: str) -> tuple[str, str | None]:
    """A --target value -> (name, ws base URL or None for a self-started kind)."""
    value = value.strip()
    if value in SELF_STARTED:
        return value, None
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.hostname or parts.port is None:
        raise ValueError(f"--target {value!r}: expected {' or '.join(SELF_STARTED)}, or ws://HOST:PORT")
    return value, f"{parts.scheme}://{parts.hostname}:{parts.port}"


def foreign_http_base(ws_base: str) -> str:
    parts = urlsplit(ws_base)
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.hostname}:{parts.port}"
