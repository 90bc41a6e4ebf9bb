"""The Ray executor against the thread executor, and a simulated two-node Ray cluster on one machine.

    .venv/bin/python bench/ray_bench.py [--seconds 8] [--rounds 2] [--streams 4] [--only local|cluster]

[1] local: the same `faces` frames (the 640x480 face frame of bench/pipeline_costs.py) through
    the thread executor and the Ray executor with a local in-process cluster, in one process, in
    interleaved rounds. One stream sending frame after frame gives the latency of each and so the
    per-frame overhead of Ray (each frame's round trip less the pipeline's own duration, as the
    actor or thread measured it: the hand-off to an actor and back against the hand-off to a
    thread and back, free of the noise in the tool's cost); `--streams` streams at once,
    each with one frame in flight as a session has, give the throughput of each and their ratio
    (goal >= 0.85). Both run 4 pipeline threads: 4 worker threads, or 2 actors of 2 threads.

[2] cluster: two network namespaces this benchmark creates (root only), joined by a veth pair:
    `ray start --head --num-cpus 1` in the head's (10.203.0.1) pinned to core 0 (taskset) and, later,
    a second node `ray start --address HEAD --num-cpus 1` in the other (10.203.0.2) pinned to core 1,
    so each node has one core and an address of its own as a one-core machine would. A front end here is a separate process that joins the cluster as the
    server does (RayFrameExecutor, one actor of one thread) and feeds it two streams of `faces`
    frames. Baseline: one front end, head node only. Scaled: both nodes, two front ends at once.
    Rounds alternate the two (the second node is started and stopped each round). Reported:
    frames/s of each, the ratio (goal >= 1.6), the node each actor ran on, and the CPU the actors
    actually got (their process CPU time over the window): on a shared machine other work takes
    part of each core, so frames per actor CPU-second, two ÷ one, says whether a second node
    added capacity at the same cost per frame whatever the other load did.

The front ends here are the executor without the WebSocket layer in front of it, which is the
part that scales with the front end itself; they run in the head's namespace, next to its raylet,
as a front end runs next to a node of its own. Multi-node Ray refuses the loopback address, and
the machine's own address is not the benchmark's to use: the nodes talk over the veth pair only,
with a random token (RAY_AUTH_TOKEN). The namespaces, and every process left in them, are removed
on exit, on failure and on SIGTERM or SIGINT. Needs `ip` (iproute2) and taskset (util-linux).
Shared machines are noisy: run it more than once, when the machine is quiet, and read the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
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

from ray_nodes import HEAD_IP, NODE_IP, Namespaces, Node, check_namespaces_possible, has_taskset, wait_nodes  # noqa: E402 -- after the sys.path lines

PIPELINE = "faces"


def _face_frame() -> bytes:
    from pipeline_costs import _face_frame as frame

    return frame()


# Executors under test ----------------------------------------------------------------


class _Durations:
    """A PipelineObserver keeping the last pipeline duration: a round trip minus it is what the executor costs."""

    def __init__(self) -> None:
        self.last_ms = 0.0

    def node_finished(self, pipeline_id: str, node_id: str, duration_ms: float, *, failed: bool) -> None:
        return None

    def node_skipped(self, pipeline_id: str, node_id: str) -> None:
        return None

    def pipeline_finished(self, pipeline_id: str, duration_ms: float, *, failed: bool) -> None:
        self.last_ms = duration_ms


class _Executor:
    """A frame executor as the server builds it (the container's frame_executor), timed by a recorder."""

    def __init__(self, env: dict[str, str]) -> None:
        from dependency_injector import providers

        from adapters.container import Container
        from adapters.settings import Settings

        self.durations = _Durations()
        container = Container(settings=Settings.from_env(env))
        container.pipeline_observer.override(providers.Object(self.durations))
        self.executor = container.frame_executor()

    async def run(self, index: int, frame: bytes, stream_id: str) -> dict[str, Any]:
        from application.ports import FrameJob

        return (await self.executor.run(FrameJob(PIPELINE, index, frame, stream_id), timeout_s=30)).to_json()

    def close(self) -> None:
        self.executor.shutdown()


Runner = Callable[[int, bytes, str], Awaitable[dict[str, Any]]]


def _threads(workers: int) -> _Executor:
    return _Executor({"FORGESYTE_STREAM_INFERENCE_WORKERS": str(workers)})


def _ray(env: dict[str, str]) -> _Executor:
    return _Executor({"FORGESYTE_STREAM_EXECUTOR": "ray", **env})


async def _latency_ms(executor: _Executor, frame: bytes, frames: int) -> tuple[float, float]:
    """One stream's frames, each sent when the previous one is answered: median round trip, and median
    round trip less the pipeline's own duration (what the executor adds to each frame)."""
    run, durations = executor.run, executor.durations
    times, plumbing = [], []
    for index in range(frames):
        started = time.perf_counter()
        await run(index, frame, "latency")
        elapsed = (time.perf_counter() - started) * 1000.0
        times.append(elapsed)
        plumbing.append(elapsed - durations.last_ms)
    return statistics.median(times), statistics.median(plumbing)


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
    threads = _threads(workers=4)
    ray = _ray({"FORGESYTE_STREAM_RAY_ACTORS": "2", "FORGESYTE_STREAM_RAY_ACTOR_CPUS": "1", "FORGESYTE_STREAM_INFERENCE_WORKERS": "2"})
    runs: dict[str, dict[str, list[float]]] = {kind: {"latency": [], "plumbing": [], "fps": []} for kind in ("threads", "ray")}

    async def measure() -> None:
        for executor in (threads, ray):  # warm-up: models loaded, actors' first frames
            await _throughput(executor.run, frame, args.streams, 1.0)
        for round_number in range(args.rounds):
            # Alternating which goes first, so that load rising or falling during a run favours neither.
            order = (("threads", threads), ("ray", ray))
            for kind, executor in order if round_number % 2 == 0 else order[::-1]:
                latency, plumbing = await _latency_ms(executor, frame, args.latency_frames)
                fps = await _throughput(executor.run, frame, args.streams, args.seconds)
                runs[kind]["latency"].append(latency)
                runs[kind]["plumbing"].append(plumbing)
                runs[kind]["fps"].append(fps)
                print(
                    f"  round {round_number + 1} {kind:7s}  latency {latency:7.2f} ms (executor's part {plumbing:5.2f} ms)   "
                    f"{args.streams} streams {fps:6.1f} frames/s (load average {os.getloadavg()[0]:.2f})",
                    flush=True,
                )

    try:
        asyncio.run(measure())
    finally:
        ray.close()
        threads.close()
    summary = {kind: {key: statistics.median(values) for key, values in figures.items()} for kind, figures in runs.items()}
    overhead = summary["ray"]["plumbing"] - summary["threads"]["plumbing"]
    ratio = summary["ray"]["fps"] / summary["threads"]["fps"]
    print(
        f"[1] local: threads {summary['threads']['fps']:.1f} frames/s, {summary['threads']['latency']:.2f} ms/frame "
        f"({summary['threads']['plumbing']:.2f} ms of it the executor's); "
        f"ray {summary['ray']['fps']:.1f} frames/s, {summary['ray']['latency']:.2f} ms/frame "
        f"({summary['ray']['plumbing']:.2f} ms the executor's); "
        f"Ray's overhead {overhead:+.2f} ms/frame; throughput ratio ray/threads {ratio:.2f} (goal >= 0.85)",
        flush=True,
    )
    return {"threads": summary["threads"], "ray": summary["ray"], "overhead_ms": overhead, "ratio": ratio, "runs": runs}


# The simulated two-node cluster (its namespaces and `ray start` nodes: bench/ray_nodes.py) ----------------------------


def _front_ends(count: int, address: str, env: dict[str, str], seconds: float, prefix: list[str]) -> list[dict[str, Any]]:
    """`count` front-end processes feeding the cluster at the same time; each prints its JSON report.

    Each joins the cluster, builds its actor and warms it up, says "ready" and waits; all start together.
    """
    processes = [
        subprocess.Popen(
            [*prefix, sys.executable, __file__, "--front-end", address, "--seconds", str(seconds)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        for _ in range(count)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a front end did not start (exit status {process.wait()})")
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        reports = []
        for process in processes:
            out, _ = process.communicate(timeout=seconds + 120)
            if process.returncode != 0:
                raise RuntimeError(f"a front end failed with exit status {process.returncode}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _front_end(address: str, seconds: float) -> int:
    env = {
        "FORGESYTE_STREAM_RAY_ADDRESS": address,
        "FORGESYTE_STREAM_RAY_ACTORS": "1",
        "FORGESYTE_STREAM_RAY_ACTOR_CPUS": "1",
        "FORGESYTE_STREAM_INFERENCE_WORKERS": "1",  # one core per node: one pipeline thread per actor
    }
    import ray

    from adapters.executors.ray.cluster import NAMESPACE

    frame = _face_frame()
    executor = _ray(env)
    try:
        [actor] = executor.executor.health()["actors"]
        handle = ray.get_actor(actor["name"], namespace=NAMESPACE)
        asyncio.run(_throughput(executor.run, frame, 2, 1.0))  # warm-up
        print("ready", flush=True)
        sys.stdin.readline()
        cpu_before, started = ray.get(handle.cpu_seconds.remote()), time.perf_counter()
        fps = asyncio.run(_throughput(executor.run, frame, 2, seconds))
        cpu_share = (ray.get(handle.cpu_seconds.remote()) - cpu_before) / (time.perf_counter() - started)
    finally:
        executor.close()
    print(json.dumps({"fps": fps, "node_id": actor["node_id"], "cpu_share": cpu_share}), flush=True)
    return 0


def _cluster(args: argparse.Namespace) -> dict[str, Any]:
    check_namespaces_possible()
    port = 6379  # the namespace's own: no other process listens there
    address = f"{HEAD_IP}:{port}"
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
    head: Node | None = None
    worker: Node | None = None
    rounds: list[dict[str, Any]] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def interrupted(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # through the finally below, which removes the namespaces

    for sig in previous:
        signal.signal(sig, interrupted)
    namespaces = Namespaces()
    try:
        namespaces.create()  # removed in the finally below even if it fails half-way
        in_head, in_node = namespaces.run_in(namespaces.head), namespaces.run_in(namespaces.node)
        head = Node(
            ["--head", "--port", str(port), "--node-ip-address", HEAD_IP, "--include-dashboard=false", "--temp-dir", str(logs / "ray")],
            0,
            env,
            logs / "head.log",
            in_head,
        )
        wait_nodes(env, address, 1, 60, in_head)
        for round_number in range(args.rounds):
            one = _front_ends(1, address, env, args.seconds, in_head)
            worker = Node(["--address", address, "--node-ip-address", NODE_IP], 1, env, logs / f"node-{round_number}.log", in_node)
            wait_nodes(env, address, 2, 60, in_head)
            two = _front_ends(2, address, env, args.seconds, in_head)
            worker.stop()
            worker = None
            wait_nodes(env, address, 1, 60, in_head)
            total = sum(report["fps"] for report in two)
            used = sorted({report["node_id"][:12] for report in two})
            each = " + ".join(f"{report['fps']:.1f}" for report in two)
            one_share = one[0]["cpu_share"]
            two_share = sum(report["cpu_share"] for report in two)
            # Frames per CPU-second the actors got: what the machine's other load cannot move.
            efficiency = (total / two_share) / (one[0]["fps"] / one_share)
            rounds.append(
                {
                    "one": one[0]["fps"],
                    "two": total,
                    "ratio": total / one[0]["fps"],
                    "nodes_used": len(used),
                    "one_cpu_share": one_share,
                    "two_cpu_share": two_share,
                    "per_cpu_second_ratio": efficiency,
                }
            )
            print(
                f"  round {round_number + 1}: one front end, one node {one[0]['fps']:.1f} frames/s "
                f"(its actor got {one_share:.2f} of a core); two front ends, two nodes {each} = {total:.1f} frames/s "
                f"on nodes {used} (their actors got {two_share:.2f} cores); ratio {total / one[0]['fps']:.2f}; "
                f"frames per actor CPU-second, two ÷ one: {efficiency:.2f} (load average {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    finally:
        for node in (worker, head):
            if node is not None:
                node.stop()
        namespaces.remove()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    one_fps = statistics.median(r["one"] for r in rounds)
    two_fps = statistics.median(r["two"] for r in rounds)
    efficiency = statistics.median(r["per_cpu_second_ratio"] for r in rounds)
    print(
        f"[2] cluster: one front end + one node {one_fps:.1f} frames/s; two front ends + two nodes {two_fps:.1f} frames/s; "
        f"ratio of medians {two_fps / one_fps:.2f} (goal >= 1.6); frames per actor CPU-second, two ÷ one, median "
        f"{efficiency:.2f}; actors ran on {min(r['nodes_used'] for r in rounds)} node(s) in every round; "
        f"cores pinned: {has_taskset()}; nodes {HEAD_IP} and {NODE_IP} in network namespaces over a veth pair",
        flush=True,
    )
    return {
        "rounds": rounds,
        "one": one_fps,
        "two": two_fps,
        "ratio": two_fps / one_fps,
        "per_cpu_second_ratio": efficiency,
        "pinned": has_taskset(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each throughput run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the local comparison")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams of the local throughput runs")
    parser.add_argument("--latency-frames", type=int, default=30, help="frames of the one-stream latency runs")
    parser.add_argument("--only", choices=("local", "cluster"), help="run one of the two parts")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--front-end", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.front_end:
        return _front_end(args.front_end, args.seconds)
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
