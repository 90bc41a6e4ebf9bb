"""What the operator's view costs per frame: the live streams' statistics, and OpenTelemetry tracing at 10 % sampling.

Run: .venv/bin/python bench/observability_cost.py [--rounds N] [--seconds S] [--baseline-tree DIR]

The like-for-like transport ratio of bench/stream_bench.py (frames/s of the
header-only `probe` pipeline over one ping-pong connection, 50 KB frames,
divided by a bare websockets echo server on uvloop) is measured in one run,
rounds interleaved, for:

- `baseline`: the server from DIR (`--baseline-tree`, a checkout of the
  commit before the live statistics and tracing, made with
  `git archive <commit> | tar -x -C DIR`), when given;
- `stats`: this checkout as it ships (live statistics on, tracing off);
- `traced`: this checkout with OTEL_TRACES_EXPORTER=otlp and a
  parentbased_traceidratio sampler at 0.1, exporting over OTLP/HTTP to a sink
  on 127.0.0.1 in a process of its own (it answers 200 and counts bytes).

Each round runs the servers (and the echo) one after the other, starting one
further along the list each round.

Each round's ratio is a server's fps over the echo's fps in that round; the
costs are the medians over rounds of the paired differences between two
servers' ratios, so the machine's drift between rounds cancels. Reports,
never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from contracts.targets import SELF_STARTED, free_port, wait_until_healthy  # noqa: E402
from bench.stream_client import make_frame, ping_pong  # noqa: E402
from bench.stream_servers import FAULT_PLUGIN, BenchError, Child, start_baseline, write_pipelines  # noqa: E402


class _Sink(BaseHTTPRequestHandler):
    """The OTLP receiver: answers 200, counts requests and bytes (printed when it stops)."""

    requests = 0
    received_bytes = 0

    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        _Sink.requests += 1
        _Sink.received_bytes += len(body)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


def serve_sink(port: int) -> None:
    """Run in a process of its own, so that receiving spans costs the measuring client nothing."""
    sink = ThreadingHTTPServer(("127.0.0.1", port), _Sink)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=sink.shutdown).start())
    print("READY", flush=True)
    sink.serve_forever()
    print(f"OTLP sink: {_Sink.requests} export requests, {_Sink.received_bytes:,} bytes", flush=True)


def start_server(name: str, tree: Path, pipelines: Path, log: Path, extra_env: dict[str, str]) -> Child:
    """`forgesyte-stream serve` from `tree` (run from there, so its code is the one imported)."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "FORGESYTE_STREAM_PIPELINES_DIR": str(pipelines),
        "FORGESYTE_STREAM_PLUGINS": FAULT_PLUGIN,
        "FORGESYTE_STREAM_LOG_LEVEL": "warning",
        **extra_env,
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, *SELF_STARTED["litestar"], "--host", "127.0.0.1", "--port", str(port)],
            cwd=tree,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    child = Child(name, process, port, log)
    if not wait_until_healthy(port, 60, alive=lambda: process.poll() is None):
        child.stop()
        raise BenchError(f"{name} did not start:\n{child.log_tail()}")
    return child


async def measure(servers: list[Child], echo: Child, frame: bytes, rounds: int, seconds: float) -> dict[str, list[float]]:
    """Interleaved rounds; each round starts one server further along, so no server always runs first or last."""
    children = [echo, *servers]
    fps: dict[str, list[float]] = {child.name: [] for child in children}
    print(f"  {'round':<7}" + "".join(f"{name:>15}" for name in fps))
    for number in range(rounds):
        row: dict[str, float] = {}
        for child in children[number % len(children):] + children[: number % len(children)]:
            url = child.url() if child is echo else child.url("probe")
            run = await ping_pong(url, frame, seconds=seconds, max_frames=50_000, warmup=20)
            fps[child.name].append(run.fps)
            row[child.name] = run.fps
        print(f"  {number + 1:<7}" + "".join(f"{row[name]:>15,.0f}" for name in fps))
    return fps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--baseline-tree", type=Path, help="a checkout of the commit to compare with (git archive <commit> | tar -x -C DIR)")
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sink:
        serve_sink(args.sink)
        return 0

    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, __file__, "--sink", str(sink_port)], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    if sink.stdout.readline().strip() != "READY":
        raise SystemExit("the OTLP sink did not start")
    traced_env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink_port}/v1/traces",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }
    frame = make_frame()
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="forgesyte-observability-bench-") as workdir:
        work = Path(workdir)
        pipelines = work / "pipelines"
        pipelines.mkdir()
        write_pipelines(pipelines, 60.0)
        try:
            echo = start_baseline("echo", 60.0, uvloop=True)
            children.append(echo)
            servers: list[Child] = []
            if args.baseline_tree is not None:
                servers.append(start_server("baseline", args.baseline_tree.resolve(), pipelines, work / "baseline.log", {}))
            servers.append(start_server("stats", ROOT, pipelines, work / "stats.log", {}))
            servers.append(start_server("traced", ROOT, pipelines, work / "traced.log", traced_env))
            children.extend(servers)
            print(f"`probe` ping-pong, {args.rounds} interleaved rounds of {args.seconds:g} s, frames/s; echo = websockets echo on uvloop")
            fps = asyncio.run(measure(servers, echo, frame.data, args.rounds, args.seconds))
        except BenchError as error:
            print(f"ERROR: {error}")
            return 1
        finally:
            for child in reversed(children):
                child.stop()
            sink.terminate()
            sink_report = sink.communicate(timeout=10)[0].strip()
    echo = fps.pop("echo (uvloop)")
    # Each round's ratios share that round's echo, so the machine's drift between rounds cancels in their differences.
    ratios = {name: [value / base for value, base in zip(values, echo, strict=True)] for name, values in fps.items()}
    print("\nlike-for-like ratio (server fps / echo-on-uvloop fps of the same round), median over rounds:")
    for name, values in ratios.items():
        print(f"  {name:<9} {statistics.median(values):.3f}")

    def paired(a: str, b: str) -> float:
        return statistics.median(x - y for x, y in zip(ratios[a], ratios[b], strict=True))

    if "baseline" in ratios:
        print(f"  live statistics cost: median of per-round (baseline - stats) = {paired('baseline', 'stats'):+.3f} (budget 0.02)")
    print(f"  tracing at 10 % cost: median of per-round (stats - traced) = {paired('stats', 'traced'):+.3f} (budget 0.03)")
    print(f"  {sink_report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
