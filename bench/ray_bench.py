"""The Ray executor against the thread executor, and a simulated two-node Ray cluster on one machine.

    .venv/bin/python bench/ray_bench.py [--seconds 8] [--rounds 2] [--streams 4] [--only local|cluster]

[1] local: the same `faces` frames (the 640x480 face frame of bench/pipeline_costs.py) through
    the thread executor and the Ray executor with a local in-process cluster, in one process, in
    interleaved rounds. One stream sending frame after frame gives the latency of each and so the
    per-frame overhead of Ray (the round trip to an actor and back); `--streams` streams at once,
    each with one frame in flight as a session has, give the throughput of each and their ratio
    (goal >= 0.85). Both run 4 pipeline threads: 4 worker threads, or 2 actors of 2 threads.

[2] cluster: `ray start --head --num-cpus 1` pinned to core 0 (taskset) and, later, a second
    node `ray start --address HEAD --num-cpus 1` pinned to core 1, so each node has one core as a
    one-core machine would. A front end here is a separate process that joins the cluster as the
    server does (RayFrameExecutor, one actor of one thread) and feeds it two streams of `faces`
    frames. Baseline: one front end, head node only. Scaled: both nodes, two front ends at once.
    Reported: frames/s of each, the ratio (goal >= 1.6) and the node each actor ran on.

The front ends here are the executor without the WebSocket layer in front of it, which is the
part that scales with the front end itself. Multi-node Ray refuses the loopback address, so the
two-node cluster uses this machine's own address (Ray picks it) and a random token (RAY_AUTH_TOKEN).
Shared machines are noisy: run it more than once, when the machine is quiet, and read the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PIPELINE = "faces"


def _face_frame() -> bytes:
    from pipeline_costs import _face_frame as frame

    return frame()


# Executors under test ----------------------------------------------------------------


class _ThreadsExecutor:
    """The thread executor: the worker pool the server uses, running the in-process service."""

    def __init__(self, workers: int) -> None:
        from adapters.container import Container
        from adapters.settings import Settings
        from adapters.worker_pool import ThreadWorkerPool

        self.video = Container(settings=Settings.from_env({})).video_service()
        self.pool = ThreadWorkerPool(workers)

    async def run(self, index: int, frame: bytes, stream_id: str) -> dict[str, Any]:
        return await self.pool.run(lambda: self.video.run_on_frame(PIPELINE, index, frame, stream_id=stream_id), timeout_s=30)

    def close(self) -> None:
        self.pool.shutdown()


class _RayExecutor:
    def __init__(self, env: dict[str, str]) -> None:
        from adapters.container import Container
        from adapters.executors.ray import RayFrameExecutor
        from adapters.settings import Settings

        settings = Settings.from_env({"FORGESYTE_STREAM_EXECUTOR": "ray", **env})
        container = Container(settings=settings)
        self.executor = RayFrameExecutor(settings, container.video_service(), container.metrics())

    async def run(self, index: int, frame: bytes, stream_id: str) -> dict[str, Any]:
        from adapters.executors.ray import FrameJob

        return await self.executor.run(FrameJob(PIPELINE, index, frame, stream_id), timeout_s=30)

    def close(self) -> None:
        self.executor.shutdown()


Runner = Callable[[int, bytes, str], Awaitable[dict[str, Any]]]


async def _latency_ms(run: Runner, frame: bytes, frames: int) -> float:
    """Median of one stream's frames, each sent when the previous one is answered."""
    times = []
    for index in range(frames):
        started = time.perf_counter()
        await run(index, frame, "latency")
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


async def _throughput(run: Runner, frame: bytes, streams: int, seconds: float) -> float:
    """Frames per second of `streams` streams, each with one frame in flight at a time."""
    deadline = time.perf_counter() + seconds
    done = [0] * streams

    async def stream(number: int) -> None:
        index = 0
        while time.perf_counter() < deadline:
            await run(index, frame, f"stream-{number}")
            index += 1
            done[number] += 1

    started = time.perf_counter()
    await asyncio.gather(*(stream(n) for n in range(streams)))
    return sum(done) / (time.perf_counter() - started)


def _local(args: argparse.Namespace) -> dict[str, Any]:
    frame = _face_frame()
    threads = _ThreadsExecutor(workers=4)
    ray = _RayExecutor(
        {"FORGESYTE_STREAM_RAY_ACTORS": "2", "FORGESYTE_STREAM_RAY_ACTOR_CPUS": "1", "FORGESYTE_STREAM_INFERENCE_WORKERS": "2"}
    )
    runs: dict[str, dict[str, list[float]]] = {"threads": {"latency": [], "fps": []}, "ray": {"latency": [], "fps": []}}

    async def measure() -> None:
        for kind, executor in (("threads", threads), ("ray", ray)):  # warm-up: models loaded, actors' first frames
            await _throughput(executor.run, frame, args.streams, 1.0)
        for round_number in range(args.rounds):
            for kind, executor in (("threads", threads), ("ray", ray)):
                latency = await _latency_ms(executor.run, frame, args.latency_frames)
                fps = await _throughput(executor.run, frame, args.streams, args.seconds)
                runs[kind]["latency"].append(latency)
                runs[kind]["fps"].append(fps)
                print(f"  round {round_number + 1} {kind:7s}  latency {latency:7.2f} ms   {args.streams} streams {fps:6.1f} frames/s", flush=True)

    try:
        asyncio.run(measure())
    finally:
        ray.close()
        threads.close()
    summary = {kind: {key: statistics.median(values) for key, values in figures.items()} for kind, figures in runs.items()}
    overhead = summary["ray"]["latency"] - summary["threads"]["latency"]
    ratio = summary["ray"]["fps"] / summary["threads"]["fps"]
    print(
        f"[1] local: threads {summary['threads']['fps']:.1f} frames/s, {summary['threads']['latency']:.2f} ms/frame; "
        f"ray {summary['ray']['fps']:.1f} frames/s, {summary['ray']['latency']:.2f} ms/frame; "
        f"overhead {overhead:+.2f} ms/frame; throughput ratio ray/threads {ratio:.2f} (goal >= 0.85)",
        flush=True,
    )
    return {"threads": summary["threads"], "ray": summary["ray"], "overhead_ms": overhead, "ratio": ratio, "runs": runs}


# The simulated two-node cluster ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


class _Node:
    """One `ray start --block` in its own process group, pinned to a core: stopped by its group id."""

    def __init__(self, arguments: list[str], core: int, env: dict[str, str], log: Path) -> None:
        pin = ["taskset", "-c", str(core)] if _has_taskset() else []
        self.log = log
        self.process = subprocess.Popen(
            [*pin, _ray_cli(), "start", "--block", "--disable-usage-stats", "--num-cpus", "1", *arguments],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _group_alive(self.process.pid):
                self.process.poll()
                time.sleep(0.2)
            if not _group_alive(self.process.pid):
                return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies still count for killpg; a group of zombies only is gone.
    states = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return any(not state.startswith("Z") for state in states)


def _has_taskset() -> bool:
    return subprocess.run(["which", "taskset"], capture_output=True).returncode == 0


def _nodes_alive(env: dict[str, str], address: str, expected: int, timeout_s: float) -> None:
    code = (
        "import ray, sys, time\n"
        f"ray.init(address={address!r}, log_to_driver=False, logging_level='error')\n"
        f"deadline = time.time() + {timeout_s}\n"
        f"while sum(n['Alive'] for n in ray.nodes()) < {expected} and time.time() < deadline: time.sleep(0.2)\n"
        f"sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= {expected} else 1)\n"
    )
    if subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode != 0:
        raise RuntimeError(f"the cluster at {address} did not reach {expected} live node(s) within {timeout_s:g} s")


def _front_ends(count: int, address: str, env: dict[str, str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """`count` front-end processes feeding the cluster at once; each prints its JSON report."""
    start_at = time.time() + 25.0  # every front end has joined and built its actor by then
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--front-end", address, "--seconds", str(args.seconds), "--start-at", str(start_at)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(count)
    ]
    reports = []
    for process in processes:
        out, err = process.communicate(timeout=start_at - time.time() + args.seconds + 120)
        if process.returncode != 0:
            raise RuntimeError(f"a front end failed ({process.returncode}):\n{err[-3000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def _front_end(address: str, seconds: float, start_at: float) -> int:
    env = {
        "FORGESYTE_STREAM_RAY_ADDRESS": address,
        "FORGESYTE_STREAM_RAY_ACTORS": "1",
        "FORGESYTE_STREAM_RAY_ACTOR_CPUS": "1",
        "FORGESYTE_STREAM_INFERENCE_WORKERS": "1",  # one core per node: one pipeline thread per actor
    }
    frame = _face_frame()
    executor = _RayExecutor(env)
    try:
        node = executor.executor.health()["actors"][0]["node_id"]
        asyncio.run(_throughput(executor.run, frame, 2, 1.0))  # warm-up
        time.sleep(max(0.0, start_at - time.time()))
        fps = asyncio.run(_throughput(executor.run, frame, 2, seconds))
    finally:
        executor.close()
    print(json.dumps({"fps": fps, "node_id": node}))
    return 0


def _cluster(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    port = _free_port()
    # Not ray.util.get_node_ip_address(): after [1] this process is in single-machine mode (127.0.0.1).
    node_ip = ray._private.services.node_ip_address_from_perspective()
    address = f"{node_ip}:{port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"ray-bench-{os.getpid()}"
    logs.mkdir(exist_ok=True)
    nodes: list[_Node] = []
    try:
        nodes.append(_Node(["--head", "--port", str(port), "--include-dashboard=false"], 0, env, logs / "head.log"))
        _nodes_alive(env, address, 1, 60)
        one = _front_ends(1, address, env, args)
        print(f"  one front end, one node: {one[0]['fps']:.1f} frames/s", flush=True)
        nodes.append(_Node(["--address", address], 1, env, logs / "node.log"))
        _nodes_alive(env, address, 2, 60)
        two = _front_ends(2, address, env, args)
        total = sum(report["fps"] for report in two)
        used = sorted({report["node_id"][:12] for report in two})
        each = " + ".join(f"{report['fps']:.1f}" for report in two)
        print(f"  two front ends, two nodes: {each} = {total:.1f} frames/s on nodes {used}", flush=True)
    finally:
        for node in reversed(nodes):
            node.stop()
    ratio = total / one[0]["fps"]
    print(
        f"[2] cluster: one front end + one node {one[0]['fps']:.1f} frames/s; two front ends + two nodes {total:.1f} frames/s; "
        f"ratio {ratio:.2f} (goal >= 1.6); actors ran on {len(used)} node(s)",
        flush=True,
    )
    return {"one": one, "two": two, "ratio": ratio, "nodes_used": len(used), "pinned": _has_taskset()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each throughput run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the local comparison")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams of the local throughput runs")
    parser.add_argument("--latency-frames", type=int, default=30, help="frames of the one-stream latency runs")
    parser.add_argument("--only", choices=("local", "cluster"), help="run one of the two parts")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--front-end", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.front_end:
        return _front_end(args.front_end, args.seconds, args.start_at)
    load = os.getloadavg()
    print(f"cores {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    figures: dict[str, Any] = {"load_average": load}
    if args.only in (None, "local"):
        figures["local"] = _local(args)
    if args.only in (None, "cluster"):
        figures["cluster"] = _cluster(args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
