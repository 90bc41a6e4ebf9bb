"""Transport and backpressure benchmark of the WebSocket stream, in one run.

Run: .venv/bin/python bench/stream_bench.py [--quick]

Shared machines are noisy, so every number is reported against a baseline
measured in the same run, by the same client code, with the same frame:

1. Transport. Frames/s of the `probe` pipeline (reads the JPEG header only)
   over one connection, ping-pong (send a frame, wait for its reply), 50 KB
   JPEG frames, against a bare `websockets` echo server in its own process.
   Runs are interleaved (echo, server, echo, server, ...); the medians and
   their ratio server/echo are reported. Target: ratio >= 0.8. The same echo
   server on uvloop, the server's own event loop, gives the like-for-like
   ratio. Target: >= 0.85.

2. Overload. A pipeline of known cost C (fault.sleep, C = 60 ms) and a client
   sending every C/3 (3x capacity) on an absolute schedule while receiving in
   another task. Latency (send -> reply) of frames answered with a result is
   divided by the processing time measured just before by ping-pong on the
   same pipeline. Drop rate is compared with 1 - capacity/send rate (~2/3).
   Contrast: a plain FIFO server (same cost, one frame at a time, no
   dropping) under the same schedule, whose latency grows for as long as the
   overload lasts. Targets: p95/processing <= 2.5, drop rate within 0.05 of
   the expected value, exactly one reply per frame, flat latency.

The client here is a bare `websockets` connection, not the test kit's
`contracts.client.StreamClient`: a benchmark's client must cost as little as
possible, and the kit validates every message against asyncapi.yaml and
parses it into a model, work that would be counted against the server. It
must also read the echo baseline's messages, which the contract does not
declare, with the same code as the server's, or the ratio would compare two
clients. Correctness is the kit's job (tests/, contracts/); this client
checks only what its numbers need (frame order, one reply per frame).

The benchmark reports and does not assert: it exits 0 whatever the numbers,
and 1 only when a phase could not run (a server failed, a connection broke).
bench/README.md explains every number.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# The frame, the client, the reports and the servers are in bench/stream_*.py; bench/client_bench.py reaches
# CLIENT_OPTIONS, HOST and the rest through this module, so they are imported here too.
from bench.stream_client import (  # noqa: E402 -- after the sys.path line
    CLIENT_OPTIONS,  # noqa: F401 -- for bench/client_bench.py
    BenchFrame,
    make_frame,
    overload,
    ping_pong,
)
from bench.stream_report import Check, OverloadSummary, percentile, print_overload, print_summary  # noqa: E402
from bench.stream_servers import (  # noqa: E402
    HOST,  # noqa: F401 -- for bench/client_bench.py
    KNOWN_COST_PIPELINE,
    POOLED_PIPELINE,
    BenchError,
    Child,
    serve_baseline,
    start_baseline,
    start_forgesyte,
    write_pipelines,
)

# Targets (the summary table prints them next to the measured values).
TARGET_TRANSPORT_RATIO = 0.8
# The same comparison with the echo server on uvloop, the event loop the server runs on: like for like.
TARGET_LIKE_FOR_LIKE_RATIO = 0.85
TARGET_P95_OVER_PROCESSING = 2.5
TARGET_DROP_RATE_TOLERANCE = 0.05
TARGET_FLAT_LAST_OVER_FIRST = 1.5
FIFO_GROWTH_AT_LEAST = 5.0


@dataclass(frozen=True)
class Profile:
    name: str
    transport_rounds: int
    transport_seconds: float
    transport_max_frames: int
    warmup_frames: int
    cost_ms: float
    processing_frames: int
    overload_seconds: float
    drain_cap_s: float


FULL = Profile(
    "full",
    transport_rounds=5,
    transport_seconds=2.0,
    transport_max_frames=20_000,
    warmup_frames=20,
    cost_ms=60.0,
    processing_frames=15,
    overload_seconds=6.0,
    drain_cap_s=14.0,
)
QUICK = Profile(
    "quick",
    transport_rounds=3,
    transport_seconds=1.0,
    transport_max_frames=8_000,
    warmup_frames=10,
    cost_ms=60.0,
    processing_frames=10,
    overload_seconds=4.0,
    drain_cap_s=3.0,
)


# The run ------------------------------------------------------------------------------


async def run_benchmark(
    profile: Profile, frame: BenchFrame, forgesyte: Child, echo: Child, fifo: Child, alternate: Child, echo_uvloop: Child
) -> tuple[list[Check], bool]:
    checks: list[Check] = []
    failed = False

    # 1. Transport ------------------------------------------------------------------------
    print("\n[1] Transport: `probe` pipeline vs bare websockets echo server (separate process), 1 connection, ping-pong,")
    print(
        f"    {len(frame.data):,}-byte frames, {profile.transport_rounds} interleaved rounds of {profile.transport_seconds:g} s each "
        f"(after {profile.warmup_frames} warm-up frames per connection)"
    )
    echo_fps: list[float] = []
    server_fps: list[float] = []
    pooled_fps: list[float] = []
    alternate_fps: list[float] = []
    echo_uvloop_fps: list[float] = []
    echo_lat: list[float] = []
    server_lat: list[float] = []
    try:
        print(
            f"  {'round':<7}{'echo fps':>12}{'server fps':>13}{'ratio':>8}{'echo p50 ms':>13}{'server p50 ms':>15}"
            f"{'pooled fps':>12}{'ratio':>8}{'ws-adapter fps':>16}{'ratio':>8}"
        )
        for round_number in range(1, profile.transport_rounds + 1):
            runs = {}
            for name, url in (
                ("echo", echo.url()),
                ("server", forgesyte.url("probe")),
                ("pooled", forgesyte.url(POOLED_PIPELINE)),
                ("alternate", alternate.url("probe")),
                ("echo_uvloop", echo_uvloop.url()),
            ):
                runs[name] = await asyncio.wait_for(
                    ping_pong(
                        url, frame.data, seconds=profile.transport_seconds, max_frames=profile.transport_max_frames, warmup=profile.warmup_frames
                    ),
                    timeout=profile.transport_seconds + 30,
                )
            echo_fps.append(runs["echo"].fps)
            server_fps.append(runs["server"].fps)
            pooled_fps.append(runs["pooled"].fps)
            alternate_fps.append(runs["alternate"].fps)
            echo_uvloop_fps.append(runs["echo_uvloop"].fps)
            echo_lat += runs["echo"].latencies_s
            server_lat += runs["server"].latencies_s
            print(
                f"  {round_number:<7}{runs['echo'].fps:>12,.0f}{runs['server'].fps:>13,.0f}{runs['server'].fps / runs['echo'].fps:>8.2f}"
                f"{runs['echo'].median_ms:>13.3f}{runs['server'].median_ms:>15.3f}"
                f"{runs['pooled'].fps:>12,.0f}{runs['pooled'].fps / runs['echo'].fps:>8.2f}"
                f"{runs['alternate'].fps:>16,.0f}{runs['alternate'].fps / runs['echo'].fps:>8.2f}"
            )
        echo_median = statistics.median(echo_fps)
        server_median = statistics.median(server_fps)
        ratio = server_median / echo_median
        pooled_median = statistics.median(pooled_fps)
        alternate_median = statistics.median(alternate_fps)
        print(
            f"  {'median':<7}{echo_median:>12,.0f}{server_median:>13,.0f}{ratio:>8.2f}"
            f"{statistics.median(echo_lat) * 1000:>13.3f}{statistics.median(server_lat) * 1000:>15.3f}"
            f"{pooled_median:>12,.0f}{pooled_median / echo_median:>8.2f}"
            f"{alternate_median:>16,.0f}{alternate_median / echo_median:>8.2f}"
        )
        echo_uvloop_median = statistics.median(echo_uvloop_fps)
        print(
            f"  the server runs on uvloop (FORGESYTE_STREAM_EVENT_LOOP); the same echo server on uvloop: "
            f"{echo_uvloop_median:,.0f} fps, server / that = {server_median / echo_uvloop_median:.2f} (like for like)"
        )
        print(
            "  ws-adapter: the same application service and `probe` pipeline on adapters.transports.websockets.server "
            "(no Litestar, no uvicorn): the gap to `server` is the HTTP framework's share"
        )
        print(
            "  server: `probe` (header-only, runs on the event loop); pooled: `fault.count` through the worker pool "
            f"(thread hand-off: {(1 / pooled_median - 1 / server_median) * 1e6:,.0f} us per frame)"
        )
        print(
            f"  latency p99: echo {percentile(echo_lat, 99) * 1000:.3f} ms, server {percentile(server_lat, 99) * 1000:.3f} ms; "
            f"server time per frame above echo: {(1 / server_median - 1 / echo_median) * 1e6:,.0f} us"
        )
        checks.append(
            Check(
                "transport: probe fps / echo fps (medians)",
                f"{ratio:.2f} ({server_median:,.0f} / {echo_median:,.0f})",
                f">= {TARGET_TRANSPORT_RATIO}",
                ratio >= TARGET_TRANSPORT_RATIO,
            )
        )
        checks.append(Check("transport: pooled fps / echo fps (medians)", f"{pooled_median / echo_median:.2f}", "(info)", None))
        checks.append(Check("transport: ws-adapter probe fps / echo fps", f"{alternate_median / echo_median:.2f}", "(info)", None))
        like_for_like = server_median / echo_uvloop_median
        checks.append(
            Check(
                "transport: probe fps / echo-on-uvloop fps",
                f"{like_for_like:.2f} ({server_median:,.0f} / {echo_uvloop_median:,.0f})",
                f">= {TARGET_LIKE_FOR_LIKE_RATIO}",
                like_for_like >= TARGET_LIKE_FOR_LIKE_RATIO,
            )
        )
    except Exception as error:  # noqa: BLE001 - a benchmark reports what broke and goes on
        failed = True
        print(f"  ERROR: transport phase failed: {error!r}")
        checks.append(Check("transport: probe fps / echo fps (medians)", "error", f">= {TARGET_TRANSPORT_RATIO}", None))
        checks.append(Check("transport: probe fps / echo-on-uvloop fps", "error", f">= {TARGET_LIKE_FOR_LIKE_RATIO}", None))

    # 2. Overload --------------------------------------------------------------------------
    cost = profile.cost_ms
    interval_s = cost / 3.0 / 1000.0
    print(
        f"\n[2] Overload: `{KNOWN_COST_PIPELINE}` pipeline (fault.sleep {cost:g} ms) vs a plain FIFO websockets server "
        f"(same cost, in order, no dropping);"
    )
    print(
        f"    client sends every {interval_s * 1000:.1f} ms (3x capacity) for {profile.overload_seconds:g} s on an absolute "
        f"schedule, receiving in another task; latency = send -> reply, result frames only"
    )
    summaries: list[OverloadSummary] = []
    for label, url in (("ForgeSyte", forgesyte.url(KNOWN_COST_PIPELINE)), ("FIFO baseline", fifo.url())):
        try:
            processing = await asyncio.wait_for(ping_pong(url, frame.data, seconds=60, max_frames=profile.processing_frames, warmup=2), timeout=60)
            result = await asyncio.wait_for(
                overload(
                    url,
                    frame.data,
                    interval_s=interval_s,
                    seconds=profile.overload_seconds,
                    processing_s=processing.median_ms / 1000.0,
                    drain_cap_s=profile.drain_cap_s,
                ),
                timeout=profile.overload_seconds + profile.drain_cap_s + 30,
            )
            summaries.append(OverloadSummary(label, processing.median_ms, result))
        except Exception as error:  # noqa: BLE001
            failed = True
            print(f"  ERROR: overload phase on {label} failed: {error!r}")

    forge = next((s for s in summaries if s.label == "ForgeSyte"), None)
    baseline = next((s for s in summaries if s.label == "FIFO baseline"), None)
    expected_drop = 2.0 / 3.0
    if forge is not None:
        # Capacity is what the pipeline really sustains: one frame per measured processing time.
        expected_drop = max(0.0, 1.0 - interval_s * 1000.0 / forge.processing_ms)
    if summaries:
        print(
            f"  expected drop rate = 1 - capacity/send rate = 1 - {interval_s * 1000:.1f}/{forge.processing_ms if forge else cost:.1f}"
            f" = {expected_drop:.3f} (2/3 at exactly {cost:g} ms)"
        )
        print_overload(summaries, cost, expected_drop)

    if forge is not None:
        st = forge.stats()
        r = forge.result
        p95_ratio = st["p95"] / forge.processing_ms
        checks.append(
            Check(
                "overload: ForgeSyte p95 latency / processing",
                f"{p95_ratio:.2f} ({st['p95']:.0f} / {forge.processing_ms:.0f} ms)",
                f"<= {TARGET_P95_OVER_PROCESSING}",
                p95_ratio <= TARGET_P95_OVER_PROCESSING and not st["censored"],
            )
        )
        checks.append(Check("overload: ForgeSyte p50 latency / processing", f"{st['p50'] / forge.processing_ms:.2f}", "(info)", None))
        checks.append(
            Check(
                "overload: ForgeSyte drop rate",
                f"{st['drop_rate']:.3f}",
                f"{expected_drop:.3f} ± {TARGET_DROP_RATE_TOLERANCE}",
                abs(st["drop_rate"] - expected_drop) <= TARGET_DROP_RATE_TOLERANCE,
            )
        )
        ok_replies = not r.missing and not r.duplicated and not r.unknown_indices and r.count("unexpected") == 0
        checks.append(
            Check(
                "overload: exactly one reply per frame",
                f"{len(r.missing)} missing, {len(r.duplicated)} duplicated",
                "0 missing, 0 duplicated",
                ok_replies,
            )
        )
        growth = st["last"] / st["first"]
        checks.append(
            Check(
                "overload: ForgeSyte latency last/first 10%",
                f"{growth:.2f} ({st['first']:.0f} -> {st['last']:.0f} ms)",
                f"<= {TARGET_FLAT_LAST_OVER_FIRST} (flat)",
                growth <= TARGET_FLAT_LAST_OVER_FIRST,
            )
        )
        checks.append(Check("overload: slow_down warnings", str(len(r.warnings)), ">= 1", len(r.warnings) >= 1))
    else:
        for name in ("overload: ForgeSyte p95 latency / processing", "overload: ForgeSyte drop rate", "overload: exactly one reply per frame"):
            checks.append(Check(name, "error", "", None))
    if baseline is not None:
        st = baseline.stats()
        mark = "≥" if st["censored"] else ""
        checks.append(Check("contrast: FIFO p95 latency / processing", f"{mark}{st['p95'] / baseline.processing_ms:.1f}", "(info)", None))
        growth = st["last"] / st["first"]
        last_mark = "≥" if st["decile_censored"][2] else ""
        checks.append(
            Check(
                "contrast: FIFO latency last/first 10%",
                f"{last_mark}{growth:.1f} ({st['first']:.0f} -> {last_mark}{st['last']:.0f} ms)",
                f">= {FIFO_GROWTH_AT_LEAST:g} (grows)",
                growth >= FIFO_GROWTH_AT_LEAST,
            )
        )
    return checks, failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Transport and backpressure benchmark of the ForgeSyte Stream WebSocket.")
    parser.add_argument("--quick", action="store_true", help="shorter runs (~25 s instead of ~60 s)")
    parser.add_argument("--serve", choices=("echo", "fifo"), help=argparse.SUPPRESS)
    parser.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cost-ms", type=float, default=FULL.cost_ms, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        if args.uvloop:
            import uvloop

            uvloop.run(serve_baseline(args.serve, args.cost_ms))
        else:
            asyncio.run(serve_baseline(args.serve, args.cost_ms))
        return 0

    profile = QUICK if args.quick else FULL
    began = time.perf_counter()
    import cv2
    import uvicorn
    import websockets

    print(f"ForgeSyte Stream transport & backpressure benchmark ({profile.name} mode)")
    print(
        f"  Python {platform.python_version()}, websockets {websockets.__version__}, uvicorn {uvicorn.__version__}, "
        f"OpenCV {cv2.__version__}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    frame = make_frame()
    print(f"  frame: {frame.width}x{frame.height} JPEG, {len(frame.data):,} bytes (quality {frame.quality}, {frame.padding} bytes of COM padding)")

    children: list[Child] = []
    workdir = Path(tempfile.mkdtemp(prefix="forgesyte-bench-"))
    previous_sigterm = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed = False
    try:
        pipelines_dir = workdir / "pipelines"
        pipelines_dir.mkdir()
        write_pipelines(pipelines_dir, profile.cost_ms)
        t0 = time.perf_counter()
        forgesyte = start_forgesyte(pipelines_dir, workdir / "server.log")
        children.append(forgesyte)
        alternate = start_forgesyte(pipelines_dir, workdir / "websockets-adapter.log", transport="websockets")
        children.append(alternate)
        echo = start_baseline("echo", profile.cost_ms)
        children.append(echo)
        echo_uvloop = start_baseline("echo", profile.cost_ms, uvloop=True)
        children.append(echo_uvloop)
        fifo = start_baseline("fifo", profile.cost_ms)
        children.append(fifo)
        print(
            f"  servers up in {time.perf_counter() - t0:.1f} s: ForgeSyte :{forgesyte.port} (pid {forgesyte.process.pid}), "
            f"echo :{echo.port}, FIFO :{fifo.port}"
        )
        checks, failed = asyncio.run(run_benchmark(profile, frame, forgesyte, echo, fifo, alternate, echo_uvloop))
        print_summary(checks)
        if forgesyte.process.poll() is not None:
            failed = True
            print(f"\nThe ForgeSyte server exited with {forgesyte.process.returncode} during the run:\n{forgesyte.log_tail()}")
        else:
            log_tail = forgesyte.log_tail(10)
            if log_tail.strip():
                print(f"\nServer log (warnings and above), last lines:\n{log_tail}")
    except BenchError as error:
        failed = True
        print(f"\nERROR: {error}")
    finally:
        for child in reversed(children):
            child.stop()
        signal.signal(signal.SIGTERM, previous_sigterm)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nTotal run time {time.perf_counter() - began:.1f} s" + ("; some phases failed (exit 1)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
