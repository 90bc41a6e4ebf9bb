"""forgesyte-stream-client as a person runs it: a real process, a real server, files it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from tests.clients.support import RefusingServer
from tests.support.media import FACE_JPEG
from tests.support.server import RunningServer, free_port

FRAMES = 12


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "forgesyte_stream_client.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture(scope="module")
def face_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The astronaut drifting right, as an MP4 (mpeg4, not JPEG frames: the client decodes and re-encodes)."""
    path = tmp_path_factory.mktemp("video") / "face.mp4"
    image = cv2.imread(str(FACE_JPEG))
    height, width = image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (width, height))
    for i in range(FRAMES):
        writer.write(cv2.warpAffine(image, np.float32([[1, 0, 3 * i], [0, 1, 0]]), (width, height)))
    writer.release()
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def test_stream_a_video_file_writes_one_jsonl_line_and_one_annotated_frame_per_source_frame(
    server: RunningServer, face_video: Path, tmp_path: Path
) -> None:
    jsonl, annotated = tmp_path / "out.jsonl", tmp_path / "out.mp4"
    done = cli("stream", str(face_video), "--url", f"ws://127.0.0.1:{server.port}", "--pipeline", "faces",
               "--jsonl", str(jsonl), "--annotate", str(annotated))
    assert done.returncode == 0, done.stderr
    assert f"{FRAMES} frames: {FRAMES} results, 0 dropped" in done.stderr
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["frame_index"] for line in lines] == list(range(FRAMES))
    for line in lines:
        assert line["latency_ms"] > 0 and line["sent_at"] > 0
        (face,) = line["reply"]["result"]["faces"]
    # The face moves right with the video: the boxes follow it.
    first, last = lines[0]["reply"]["result"]["faces"][0]["box"], lines[-1]["reply"]["result"]["faces"][0]["box"]
    assert last["x1"] - first["x1"] > 3 * (FRAMES - 1) / 2

    source, drawn = decoded_frames(face_video), decoded_frames(annotated)
    assert len(drawn) == len(source) == FRAMES
    box = {k: int(v) for k, v in lines[5]["reply"]["result"]["faces"][0]["box"].items()}
    # The box's left edge is drawn: along it the annotated frame differs from the source far more than codec noise.
    edge = (slice(box["y1"] + 5, box["y2"] - 5), slice(max(0, box["x1"] - 1), box["x1"] + 2))
    inside = (slice(box["y1"] + 20, box["y2"] - 20), slice(box["x1"] + 20, box["x2"] - 20))
    edge_change = np.abs(drawn[5][edge].astype(int) - source[5][edge].astype(int)).mean()
    inside_change = np.abs(drawn[5][inside].astype(int) - source[5][inside].astype(int)).mean()
    assert edge_change > 40 and inside_change < 15, (edge_change, inside_change)


def test_a_folder_of_jpegs_is_sent_as_it_is(server: RunningServer, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(FACE_JPEG.read_bytes())
    done = cli("stream", str(folder), "--url", f"ws://127.0.0.1:{server.port}", "--pipeline", "probe", "--jsonl", "-", "--quiet")
    assert done.returncode == 0, done.stderr
    replies = [json.loads(line)["reply"] for line in done.stdout.splitlines()]
    assert [r["result"]["bytes"] for r in replies] == [FACE_JPEG.stat().st_size] * 3


def test_a_raw_mjpeg_file_sends_each_of_its_jpegs_as_it_is(server: RunningServer, tmp_path: Path) -> None:
    """The frames of an MJPEG file reach the server byte for byte: `probe` reports each one's size."""
    image = cv2.imread(str(FACE_JPEG))
    jpegs = [cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes() for quality in (30, 60, 90, 45, 75)]
    video = tmp_path / "clip.mjpeg"
    video.write_bytes(b"".join(jpegs))
    done = cli("stream", str(video), "--url", f"ws://127.0.0.1:{server.port}", "--pipeline", "probe", "--jsonl", "-", "--quiet")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["frame_index"] for line in lines] == list(range(len(jpegs)))
    assert [line["reply"]["result"]["bytes"] for line in lines] == [len(jpeg) for jpeg in jpegs]
    assert f"{len(jpegs)} frames: {len(jpegs)} results, 0 dropped" in done.stderr


def test_pipeline_failures_complete_the_stream_with_exit_status_3(server: RunningServer, tmp_path: Path) -> None:
    done = cli("stream", str(FACE_JPEG), "--url", f"ws://127.0.0.1:{server.port}", "--pipeline", "failing", "--quiet")
    assert done.returncode == 3, done.stderr
    assert "1 failed" in done.stderr


@pytest.mark.parametrize(
    ("source", "url", "pipeline", "expected"),
    [
        ("9", None, "faces", "camera 9 could not be opened"),
        ("rtsp://127.0.0.1:{port}/cam", None, "faces", "could not be opened"),
        (str(FACE_JPEG), "ws://127.0.0.1:{port}", "faces", "cannot connect to ws://127.0.0.1:"),
        (str(FACE_JPEG), None, "nope", "invalid_pipeline"),
        ("/no/such/file.mp4", None, "faces", "no such file"),
    ],
)
def test_failures_are_one_line_and_a_non_zero_exit(server: RunningServer, source: str, url: str | None, pipeline: str, expected: str) -> None:
    port = free_port()
    done = cli("stream", source.format(port=port), "--url", (url or f"ws://127.0.0.1:{server.port}").format(port=port), "--pipeline", pipeline, "--quiet")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("forgesyte-stream-client: error: ") and expected in lines[0], done.stderr


def test_api_key_from_the_environment_and_unauthorized_is_one_line() -> None:
    with RefusingServer() as refusing:
        done = cli("stream", str(FACE_JPEG), "--url", f"ws://127.0.0.1:{refusing.port}", "--pipeline", "faces", "--quiet",
                   env={"FORGESYTE_STREAM_API_KEY": "from-env"})
    assert refusing.seen.authorization == ["Bearer from-env"]
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("forgesyte-stream-client: error: unauthorized") and line.endswith("unknown API key, close 3000"), line


def test_realtime_plays_a_file_at_its_native_rate(server: RunningServer, face_video: Path, tmp_path: Path) -> None:
    """12 frames at 10 fps take about 1.1 s however fast the server is; every frame is accounted for."""
    import time

    jsonl = tmp_path / "out.jsonl"
    started = time.perf_counter()
    done = cli("stream", str(face_video), "--url", f"ws://127.0.0.1:{server.port}", "--pipeline", "probe", "--realtime",
               "--jsonl", str(jsonl), "--quiet")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["frame_index"] for line in lines] == list(range(FRAMES))
    answered = [line for line in lines if "result" in line["reply"]]
    assert len(answered) >= FRAMES // 2
    # Frame k is read k/10 s after frame 0 (never earlier), and sent only after it was read.
    start = lines[0]["captured_at"]
    for line in lines:
        assert line["captured_at"] - start >= line["frame_index"] / 10 - 0.005
    assert lines[-1]["captured_at"] - start < (FRAMES - 1) / 10 + 1.0
    assert all(line["sent_at"] >= line["captured_at"] for line in answered)
    assert time.perf_counter() - started >= (FRAMES - 1) / 10


def _serve_on(port: int) -> RunningServer:
    """The restart test needs the second server where the first one was."""
    from tests.support.server import start_server

    return start_server({"FORGESYTE_STREAM_LOG_LEVEL": "info"}, port=port)


def test_a_server_restart_mid_stream_is_ridden_out_with_every_frame_answered(tmp_path: Path) -> None:
    """SIGTERM (1012) during a file stream, a new server on the same port: the CLI reconnects and finishes."""
    import time

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i:03d}.jpg").write_bytes(FACE_JPEG.read_bytes())
    port = free_port()
    first = _serve_on(port)
    second = None
    jsonl = tmp_path / "out.jsonl"
    streaming = subprocess.Popen(
        [sys.executable, "-m", "forgesyte_stream_client.cli", "stream", str(folder), "--url", f"ws://127.0.0.1:{port}",
         "--pipeline", "slow", "--jsonl", str(jsonl), "--reconnect-attempts", "10", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not jsonl.exists() or len(jsonl.read_text().splitlines()) < 5):
            time.sleep(0.05)
        first.stop()
        second = _serve_on(port)
        _, stderr = streaming.communicate(timeout=90)
    finally:
        if streaming.poll() is None:
            streaming.kill()
        for server in (first, second):
            if server is not None:
                server.stop()
    assert streaming.returncode == 0, stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    frames = [r for r in records if "frame_index" in r]
    reconnects = [r["reconnect"] for r in records if "reconnect" in r]
    assert [r["frame_index"] for r in frames] == list(range(30))
    assert all("result" in r["reply"] for r in frames), [r["reply"] for r in frames if "result" not in r["reply"]]
    assert reconnects and reconnects[0]["close_code"] == 1012 and reconnects[0]["error"] == "shutting_down"
    assert frames[0]["connection"] == 0 and frames[-1]["connection"] >= 1  # the end of the file went over the new server


def test_streams_prints_the_servers_open_streams_as_a_table_and_as_json(server: RunningServer) -> None:
    import asyncio

    from contracts.client import StreamClient

    async def scenario() -> tuple[str, subprocess.CompletedProcess[str], subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        client = await StreamClient.connect(f"ws://127.0.0.1:{server.port}/ws/video/stream?pipeline_id=probe")
        for _ in range(5):
            await client.send_raw(FACE_JPEG.read_bytes())
            await client.recv()
        host, port = client.connection.local_address[:2]
        table = await asyncio.to_thread(cli, "streams", "--url", f"ws://127.0.0.1:{server.port}")
        as_json = await asyncio.to_thread(cli, "streams", "--url", f"http://127.0.0.1:{server.port}", "--json")
        unknown = await asyncio.to_thread(cli, "streams", "--url", f"http://127.0.0.1:{server.port}", "--id", "no-such-stream")
        await client.close()
        return f"{host}:{port}", table, as_json, unknown

    address, table, as_json, unknown = asyncio.run(scenario())
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:4] == ["session", "pipeline", "transport", "key"]
    (mine,) = [row for row in rows if address in row]
    assert mine.split()[1:3] == ["probe", "litestar"] and mine.split()[6:8] == ["5", "5"]
    assert as_json.returncode == 0, as_json.stderr
    (stream,) = [s for s in json.loads(as_json.stdout) if s["remote_address"] == address]
    assert stream["frames_answered"] == 5 and mine.startswith(stream["session_id"][:8])
    assert unknown.returncode == 1 and "404" in unknown.stderr and "no-such-stream" in unknown.stderr
