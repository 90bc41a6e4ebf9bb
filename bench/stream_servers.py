"""The processes bench/stream_bench.py measures: the real server and the baselines it is compared with.

The ForgeSyte server (`forgesyte-stream serve`, or the same application on the
websockets adapter) with the benchmark's pipelines, and the baseline servers,
a bare echo and a plain FIFO, each run as a child process of stream_bench.py
(`--serve echo|fifo`). Kept apart from stream_bench.py so that the script holds
the run itself; bench/client_bench.py reaches these through stream_bench.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.targets import free_port, spawn_server, wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
# The script the baselines run in (`stream_bench.py --serve echo|fifo`).
STREAM_BENCH = Path(__file__).resolve().with_name("stream_bench.py")

HOST = "127.0.0.1"
KNOWN_COST_PIPELINE = "known_cost"
# A near-free tool that is not header-only, so it goes through the worker pool: shows the thread hand-off cost.
POOLED_PIPELINE = "pooled_count"
FAULT_PLUGIN = "contracts.fault_plugin:FaultPlugin"


class BenchError(RuntimeError):
    """A phase could not be measured (the server misbehaved in a way that stops the measurement)."""


# Baseline servers, run in a child process of this script (--serve echo|fifo) -----


async def serve_baseline(kind: str, cost_ms: float) -> None:
    from websockets.asyncio.server import serve

    cost_s = cost_ms / 1000.0

    async def echo(ws: Any) -> None:
        index = 0
        async for message in ws:
            if isinstance(message, bytes):
                await ws.send(json.dumps({"frame_index": index, "echo": len(message)}))
                index += 1

    async def fifo(ws: Any) -> None:
        """Every frame processed, strictly in order, one at a time, at the same cost; nothing is dropped."""
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def process() -> None:
            index = 0
            while True:
                await queue.get()
                started = time.perf_counter()
                await asyncio.to_thread(time.sleep, cost_s)
                slept_ms = (time.perf_counter() - started) * 1000.0
                await ws.send(json.dumps({"frame_index": index, "result": {"sleep": {"slept_ms": slept_ms}}}))
                index += 1

        worker = asyncio.create_task(process())
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    queue.put_nowait(message)
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    handler = echo if kind == "echo" else fifo
    async with serve(handler, HOST, 0, compression=None, max_size=None, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"READY {port}", flush=True)
        await stop.wait()


# Process management --------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[Any]
    port: int
    log_path: Path | None = None

    def url(self, pipeline_id: str | None = None) -> str:
        suffix = f"/ws/video/stream?pipeline_id={pipeline_id}" if pipeline_id else "/"
        return f"ws://{HOST}:{self.port}{suffix}"

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_baseline(kind: str, cost_ms: float, *, uvloop: bool = False) -> Child:
    command = [sys.executable, str(STREAM_BENCH), "--serve", kind, "--cost-ms", str(cost_ms), *(["--uvloop"] if uvloop else [])]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 15)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("READY "):
        process.kill()
        process.wait()
        raise BenchError(f"the {kind} baseline server did not start (got {line!r})")
    return Child(f"{kind} (uvloop)" if uvloop else kind, process, int(line.split()[1]))


def write_pipelines(directory: Path, cost_ms: float) -> None:
    shutil.copy(ROOT / "tests" / "pipelines" / "probe.json", directory / "probe.json")
    known_cost = {
        "id": KNOWN_COST_PIPELINE,
        "name": f"Known cost: {cost_ms:g} ms",
        "nodes": [{"id": "sleep", "plugin_id": "fault", "tool_id": "sleep", "params": {"ms": cost_ms}}],
        "edges": [],
        "entry_nodes": ["sleep"],
        "output_nodes": ["sleep"],
    }
    (directory / f"{KNOWN_COST_PIPELINE}.json").write_text(json.dumps(known_cost, indent=2))
    pooled = {
        "id": POOLED_PIPELINE,
        "name": "A per-stream counter, run in the worker pool",
        "nodes": [{"id": "count", "plugin_id": "fault", "tool_id": "count"}],
        "edges": [],
        "entry_nodes": ["count"],
        "output_nodes": ["count"],
    }
    (directory / f"{POOLED_PIPELINE}.json").write_text(json.dumps(pooled, indent=2))


def start_forgesyte(
    pipelines_dir: Path, log_path: Path, timeout_s: float = 60.0, *, transport: str = "litestar", extra_env: Mapping[str, str] | None = None
) -> Child:
    """The real server: `forgesyte-stream serve` (Litestar on uvicorn), or the same application on the websockets adapter.

    `extra_env` adds to (or overrides) its environment: bench/webrtc_bench.py gives it the WebRTC host addresses.
    """
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FORGESYTE_STREAM_PIPELINES_DIR": str(pipelines_dir),
        "FORGESYTE_STREAM_PLUGINS": FAULT_PLUGIN,
        "FORGESYTE_STREAM_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    with open(log_path, "wb") as log:
        process = spawn_server(transport, port, env, stdout=log)
    child = Child(f"forgesyte-{transport}", process, port, log_path)
    if wait_until_healthy(port, timeout_s, alive=lambda: process.poll() is None):
        return child
    if process.poll() is not None:
        raise BenchError(f"the ForgeSyte server ({transport}) exited with {process.returncode} during start-up:\n{child.log_tail()}")
    child.stop()
    raise BenchError(f"the ForgeSyte server ({transport}) did not start within {timeout_s:g} s:\n{child.log_tail()}")
