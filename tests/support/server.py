"""Real servers for tests: `forgesyte-stream serve` in a subprocess on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from contracts.targets import free_port, spawn_server, wait_until_healthy

ROOT = Path(__file__).resolve().parents[2]
TEST_PIPELINES = ROOT / "tests" / "pipelines"
FAULT_PLUGINS = "contracts.fault_plugin:FaultPlugin,contracts.fault_plugin:UnavailablePlugin"


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None
    # TLS servers: https/wss, and what httpx verifies their certificate with (an ssl.SSLContext).
    tls: Any = None

    @property
    def http(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def ws(self, pipeline_id: str | None = None, **query: str) -> str:
        params = dict(query)
        if pipeline_id is not None:
            params["pipeline_id"] = pipeline_id
        suffix = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/ws/video/stream" + (f"?{suffix}" if suffix else "")

    def health(self) -> dict:
        return httpx.get(f"{self.http}/health", timeout=5, trust_env=False, verify=self.tls or True).json()

    def wait_for(self, predicate, timeout: float = 10.0, interval: float = 0.05) -> dict:
        """Poll /health until predicate(health) holds; fail with the last value seen."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            last = self.health()
            if predicate(last):
                return last
            time.sleep(interval)
        raise AssertionError(f"condition not met within {timeout}s; last /health: {last}")

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code


def start_server(
    env: Mapping[str, str] | None = None,
    *,
    extra_args: list[str] | None = None,
    timeout: float = 60.0,
    tls: Any = None,
    transport: str = "litestar",
    port: int | None = None,
) -> RunningServer:
    """Start a server on a free port (or on `port`) and wait until its /health answers (both transports serve it).

    `tls`: an ssl.SSLContext trusting the server's certificate, when the env turns TLS on. `port`: for a
    test that starts a second server where the first one was.
    """
    port = free_port() if port is None else port
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FORGESYTE_STREAM_PIPELINES_DIR": str(TEST_PIPELINES),
        "FORGESYTE_STREAM_PLUGINS": FAULT_PLUGINS,
        "FORGESYTE_STREAM_LOG_LEVEL": "debug",
        **(env or {}),
    }
    process = spawn_server(transport, port, environment, extra_args=extra_args or (), stdout=subprocess.PIPE, text=True)
    server = RunningServer(process=process, port=port, tls=tls)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            server.lines.append(line.rstrip("\n"))

    server._reader = threading.Thread(target=pump, daemon=True)
    server._reader.start()
    if wait_until_healthy(port, timeout, alive=lambda: process.poll() is None, tls=tls):
        return server
    if process.poll() is not None:
        server.stop()
        raise RuntimeError(f"server exited with {process.returncode} during start-up:\n{server.log_text()}")
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not answer /health within {timeout}s:\n{server.log_text()}")
