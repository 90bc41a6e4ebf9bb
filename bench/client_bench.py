"""The Python client's own cost: `forgesyte-stream-client stream` of a file against the benchmark's raw client.

Run: .venv/bin/python bench/client_bench.py [--quick]

Both send the same 50,000-byte 640x480 JPEG (bench/stream_bench.py's frame)
to the `probe` pipeline of one real `forgesyte-stream serve`, in the same
run, rounds interleaved (raw, CLI, raw, CLI, ...):

- raw: stream_bench.py's ping-pong client (one frame, wait for its reply,
  repeat) on a bare `websockets` connection, the frame held in memory;
- CLI: `forgesyte-stream-client stream FILE --pipeline probe --quiet`, FILE
  an MJPEG made of the same frame repeated, read from disk (split into its
  JPEGs by a reading thread) and sent as it is (JPEG passthrough) under the
  CLI's default file pacing (two frames in flight), each reply parsed into a
  typed result and counted. The CLI's
  main() runs in this process, so that many short interleaved rounds fit in
  a minute (a shared machine's load changes by the second); --process runs
  it as its own process instead, as a user does.

A third client shows what reading the file costs: the raw ping-pong client
again, but reading each frame from the same file with PyAV's demuxer (about
40 us a frame, holding the GIL; the CLI splits raw MJPEG itself, for less).

The CLI's figure is the one it prints itself: frames answered from its first
send to its last reply (process start-up, about a second of imports, is
reported apart). Target: median CLI fps / median raw fps >= 0.9. Like
stream_bench.py it reports and does not assert; exit 1 only when a phase
could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stream_bench  # noqa: E402

TARGET_RATIO = 0.9
_SUMMARY = re.compile(r"(\d+) frames: (\d+) results, (\d+) dropped.*?; ([\d.]+) frames/s answered")


async def ping_pong_from_file(url: str, video: Path, frames: int) -> float:
    """stream_bench's ping-pong, each frame read from `video` with PyAV's demuxer; frames per second."""
    import json

    import av
    from websockets.asyncio.client import connect

    with av.open(str(video)) as container:
        packets = (bytes(p) for p in container.demux(video=0) if p.size)
        async with connect(url, **stream_bench.CLIENT_OPTIONS) as ws:
            started = time.perf_counter()
            for index in range(frames):
                await ws.send(next(packets))
                message = json.loads(await ws.recv())
                if message.get("frame_index") != index or "result" not in message:
                    raise stream_bench.BenchError(f"expected the result of frame {index}, got {message}")
            return frames / (time.perf_counter() - started)


def cli_command() -> list[str]:
    beside = Path(sys.executable).parent / "forgesyte-stream-client"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "forgesyte_stream_client.cli"]


def run_cli(video: Path, url: str, frames: int, *, own_process: bool) -> tuple[float, float]:
    """(fps the CLI reports, wall-clock seconds of the whole run)."""
    args = ["stream", str(video), "--url", url, "--pipeline", "probe", "--quiet"]
    started = time.perf_counter()
    if own_process:
        done = subprocess.run([*cli_command(), *args], capture_output=True, text=True, timeout=300, check=False)
        code, stderr = done.returncode, done.stderr
    else:
        from forgesyte_stream_client import cli

        captured = io.StringIO()
        with contextlib.redirect_stderr(captured):
            code = cli.main(args)
        stderr = captured.getvalue()
    wall = time.perf_counter() - started
    found = _SUMMARY.search(stderr)
    if code != 0 or found is None:
        raise stream_bench.BenchError(f"the CLI failed ({code}): {stderr.strip()[-500:]}")
    total, results, dropped, fps = int(found[1]), int(found[2]), int(found[3]), float(found[4])
    if total != frames or results != frames or dropped:
        raise stream_bench.BenchError(f"the CLI answered {results}/{total} of {frames} frames with results ({dropped} dropped)")
    return fps, wall


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 15")
    parser.add_argument("--frames", type=int, default=1000, help="frames per client per round (default 1000)")
    parser.add_argument("--process", action="store_true", help="run the CLI as its own process in every round")
    args = parser.parse_args(argv)
    rounds, frames = (5 if args.quick else 15), args.frames
    frame = stream_bench.make_frame()
    workdir = Path(tempfile.mkdtemp(prefix="forgesyte-client-bench-"))
    server = None
    try:
        pipelines = workdir / "pipelines"
        pipelines.mkdir()
        stream_bench.write_pipelines(pipelines, 60.0)
        video = workdir / "frames.mjpeg"
        video.write_bytes(frame.data * frames)  # raw MJPEG: the JPEGs one after the other
        server = stream_bench.start_forgesyte(pipelines, workdir / "server.log")
        base = f"ws://{stream_bench.HOST}:{server.port}"
        print(f"Client benchmark: {rounds} rounds x {frames} frames of {len(frame.data):,} bytes to `probe`, server :{server.port}")
        print(f"{'round':>5}  {'raw fps':>9}  {'raw+file fps':>12}  {'CLI fps':>9}  {'CLI/raw':>7}  {'CLI/raw+file':>12}  {'CLI run s':>9}")
        raw_fps: list[float] = []
        file_fps: list[float] = []
        cli_fps: list[float] = []
        for round_no in range(1, rounds + 1):
            raw = asyncio.run(stream_bench.ping_pong(server.url("probe"), frame.data, seconds=60, max_frames=frames, warmup=20))
            from_file = asyncio.run(ping_pong_from_file(server.url("probe"), video, frames))
            fps, wall = run_cli(video, base, frames, own_process=args.process)
            raw_fps.append(raw.fps)
            file_fps.append(from_file)
            cli_fps.append(fps)
            print(f"{round_no:>5}  {raw.fps:>9.0f}  {from_file:>12.0f}  {fps:>9.0f}  {fps / raw.fps:>7.2f}  {fps / from_file:>12.2f}  {wall:>9.2f}")
        ratio = statistics.median(cli_fps) / statistics.median(raw_fps)
        file_ratio = statistics.median(cli_fps) / statistics.median(file_fps)
        verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
        print(f"\nmedians: raw {statistics.median(raw_fps):.0f} fps, raw reading the file {statistics.median(file_fps):.0f} fps, "
              f"CLI {statistics.median(cli_fps):.0f} fps")
        print(f"CLI / raw client: {ratio:.2f} (target >= {TARGET_RATIO}) {verdict}")
        print(f"CLI / raw client reading the same file: {file_ratio:.2f} (information: the client's cost beyond reading the file)")
        return 0
    except stream_bench.BenchError as error:
        print(f"\nERROR: {error}")
        return 1
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
