"""The `forgesyte-stream` command as a user runs it: real subprocesses, real exit codes and output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from adapters.settings import Settings
from tests.support.server import ROOT, free_port

SHIPPED_PIPELINES = ROOT / "adapters" / "pipelines"
TIMEOUT_S = 60


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any FORGESYTE_STREAM_* setting, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FORGESYTE_STREAM_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapters.entrypoints.cli", *args],
        cwd=ROOT,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def serve(**env: str) -> subprocess.CompletedProcess[str]:
    """`serve` on a free port; with a bad configuration it must exit before binding anything."""
    return cli("serve", "--host", "127.0.0.1", "--port", str(free_port()), env=clean_env(**env))


def assert_refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


# settings ---------------------------------------------------------------------------------


def test_settings_prints_every_variable() -> None:
    result = cli("settings")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    printed = [line.split("\t")[0] for line in lines]
    expected = [variable for variable, _, _ in Settings.documentation()]
    assert printed == expected
    for name in (
        "FORGESYTE_STREAM_HOST",
        "FORGESYTE_STREAM_PORT",
        "FORGESYTE_STREAM_PIPELINES_DIR",
        "FORGESYTE_STREAM_MAX_FRAME_BYTES",
        "FORGESYTE_STREAM_MAX_SESSIONS",
        "FORGESYTE_STREAM_DROP_THRESHOLD",
        "FORGESYTE_STREAM_SLOWDOWN_THRESHOLD",
        "FORGESYTE_STREAM_FRAME_TIMEOUT_MS",
        "FORGESYTE_STREAM_PLUGINS",
        "FORGESYTE_STREAM_YOLO_MODEL",
        "FORGESYTE_STREAM_LOG_LEVEL",
    ):
        assert name in printed
    for line in lines:
        variable, default, meaning = line.split("\t")
        assert variable.startswith("FORGESYTE_STREAM_") and default and meaning.strip(), line
    defaults = dict(line.split("\t")[:2] for line in lines)
    assert defaults["FORGESYTE_STREAM_MAX_FRAME_BYTES"] == "5242880"
    assert defaults["FORGESYTE_STREAM_DROP_THRESHOLD"] == "0.1"


# bad configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "fragments"),
    [
        ("FORGESYTE_STREAM_DROP_THRESHOLD", "abc", ("abc", "[0.0, 1.0]")),
        ("FORGESYTE_STREAM_DROP_THRESHOLD", "1.5", ("1.5", "[0.0, 1.0]")),
        ("FORGESYTE_STREAM_DROP_THRESHOLD", "-0.1", ("-0.1", "[0.0, 1.0]")),
        ("FORGESYTE_STREAM_SLOWDOWN_THRESHOLD", "0.05", ("0.05", "FORGESYTE_STREAM_DROP_THRESHOLD")),
        ("FORGESYTE_STREAM_MAX_SESSIONS", "0", ("[1, 10000]",)),
        ("FORGESYTE_STREAM_YOLO_MODEL", "/nonexistent.onnx", ("/nonexistent.onnx",)),
    ],
)
def test_serve_refuses_bad_configuration(variable: str, value: str, fragments: tuple[str, ...]) -> None:
    assert_refused(serve(**{variable: value}), variable, *fragments)


def test_serve_refuses_an_out_of_range_port_from_the_environment() -> None:
    # No --port here: the environment variable is the one being checked.
    result = cli("serve", env=clean_env(FORGESYTE_STREAM_PORT="70000"))
    assert_refused(result, "FORGESYTE_STREAM_PORT", "70000", "[1, 65535]")


def test_serve_refuses_an_out_of_range_port_flag() -> None:
    result = cli("serve", "--port", "70000")
    assert_refused(result, "--port", "70000", "1-65535")


# bad pipeline definitions -------------------------------------------------------------------


def write_pipeline(directory: Path, name: str, document: dict | str) -> Path:
    path = directory / name
    path.write_text(document if isinstance(document, str) else json.dumps(document, indent=2), encoding="utf-8")
    return path


def test_pipeline_with_a_cycle_is_refused_naming_file_and_node(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        "loopy.json",
        {
            "id": "loopy",
            "nodes": [
                {"id": "start", "plugin_id": "probe", "tool_id": "frame_info"},
                {"id": "spin_a", "plugin_id": "probe", "tool_id": "frame_info"},
                {"id": "spin_b", "plugin_id": "probe", "tool_id": "frame_info"},
            ],
            "edges": [
                {"from_node": "start", "to_node": "spin_a"},
                {"from_node": "spin_a", "to_node": "spin_b"},
                {"from_node": "spin_b", "to_node": "spin_a"},
            ],
            "entry_nodes": ["start"],
            "output_nodes": ["spin_b"],
        },
    )
    result = serve(FORGESYTE_STREAM_PIPELINES_DIR=str(tmp_path), FORGESYTE_STREAM_PLUGINS="")
    assert_refused(result, str(path), "cycle", "'spin_a'")


def test_pipeline_with_an_unknown_plugin_is_refused_naming_it(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        "spooky-file.json",
        {
            "id": "ghostly",
            "nodes": [{"id": "haunt", "plugin_id": "ghost_plugin", "tool_id": "boo"}],
            "edges": [],
            "entry_nodes": ["haunt"],
            "output_nodes": ["haunt"],
        },
    )
    result = serve(FORGESYTE_STREAM_PIPELINES_DIR=str(tmp_path), FORGESYTE_STREAM_PLUGINS="")
    assert_refused(result, str(path), "ghost_plugin", "haunt", "ghostly")


def test_pipeline_with_an_unknown_tool_is_refused_naming_file_node_and_tool(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        "wrong-tool.json",
        {
            "id": "faces_typo",
            "nodes": [{"id": "detect", "plugin_id": "opencv", "tool_id": "face_detekt"}],
            "edges": [],
            "entry_nodes": ["detect"],
            "output_nodes": ["detect"],
        },
    )
    result = serve(FORGESYTE_STREAM_PIPELINES_DIR=str(tmp_path), FORGESYTE_STREAM_PLUGINS="")
    assert_refused(result, str(path), "faces_typo", "'detect'", "unknown tool 'face_detekt'")


def test_a_gate_naming_an_output_its_node_does_not_produce_stops_start_up_naming_file_and_node(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        "gated.json",
        {
            "id": "gated_typo",
            "nodes": [
                {"id": "change", "plugin_id": "opencv", "tool_id": "change_detect"},
                {"id": "faces", "plugin_id": "opencv", "tool_id": "face_detect", "gate": {"node": "change", "output": "moved"}},
            ],
            "edges": [{"from_node": "change", "to_node": "faces"}],
            "entry_nodes": ["change"],
            "output_nodes": ["faces"],
        },
    )
    result = serve(FORGESYTE_STREAM_PIPELINES_DIR=str(tmp_path), FORGESYTE_STREAM_PLUGINS="")
    assert_refused(result, str(path), "node 'faces'", "output 'moved'", "['changed', 'change']")


def test_a_cycle_through_a_gate_stops_start_up(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        "loop.json",
        {
            "id": "gate_loop",
            "nodes": [
                {"id": "start", "plugin_id": "opencv", "tool_id": "change_detect"},
                {"id": "a", "plugin_id": "opencv", "tool_id": "change_detect", "gate": {"node": "b", "output": "changed"}},
                {"id": "b", "plugin_id": "opencv", "tool_id": "change_detect", "gate": {"node": "a", "output": "changed"}},
            ],
            "edges": [{"from_node": "start", "to_node": "a"}],
            "entry_nodes": ["start"],
            "output_nodes": ["b"],
        },
    )
    result = serve(FORGESYTE_STREAM_PIPELINES_DIR=str(tmp_path), FORGESYTE_STREAM_PLUGINS="")
    assert_refused(result, str(path), "gate_loop", "cycle")


def test_pipeline_with_invalid_json_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "broken.json", '{\n  "id": "broken",\n  "nodes": [\n    {"id": "a",,}\n  ]\n}\n')
    result = serve(FORGESYTE_STREAM_PIPELINES_DIR=str(tmp_path), FORGESYTE_STREAM_PLUGINS="")
    assert_refused(result, str(path), "line 4")


def test_run_file_also_refuses_a_bad_pipelines_dir(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "broken.json", "[1, 2")
    env = clean_env(FORGESYTE_STREAM_PIPELINES_DIR=str(tmp_path), FORGESYTE_STREAM_PLUGINS="")
    result = cli("run-file", str(tmp_path / "any.avi"), "--pipeline", "motion", env=env)
    assert_refused(result, str(path))


# run-file ------------------------------------------------------------------------------------


def write_video(path: Path, frames: int = 12, width: int = 160, height: int = 120) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (width, height))
    assert writer.isOpened()
    try:
        for index in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            x = 10 + index * 10
            image[40:80, x : x + 40] = 255
            writer.write(image)
    finally:
        writer.release()
    assert path.stat().st_size > 0
    return path


def run_file_env(**extra: str) -> dict[str, str]:
    return clean_env(FORGESYTE_STREAM_PIPELINES_DIR=str(SHIPPED_PIPELINES), FORGESYTE_STREAM_PLUGINS="", **extra)


def test_run_file_prints_one_json_line_per_processed_frame(tmp_path: Path) -> None:
    video = write_video(tmp_path / "square.avi")
    result = cli("run-file", str(video), "--pipeline", "motion", "--stride", "2", "--max-frames", "3", env=run_file_env())
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    replies = [json.loads(line) for line in lines]
    assert [reply["frame_index"] for reply in replies] == [0, 2, 4]
    for reply in replies:
        assert set(reply) == {"frame_index", "result"}
        assert set(reply["result"]) == {"motion"}
        assert set(reply["result"]["motion"]) >= {"detected", "ratio", "regions", "warming_up"}
    first, *later = [reply["result"]["motion"] for reply in replies]
    assert first["warming_up"] is True and first["detected"] is False
    assert all(motion["warming_up"] is False for motion in later)
    assert any(motion["detected"] is True and motion["regions"] for motion in later), later


def test_run_file_without_stride_processes_every_frame(tmp_path: Path) -> None:
    video = write_video(tmp_path / "square.avi", frames=5)
    result = cli("run-file", str(video), "--pipeline", "probe", env=run_file_env())
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert [reply["frame_index"] for reply in replies] == [0, 1, 2, 3, 4]
    assert all(reply["result"]["width"] == 160 and reply["result"]["height"] == 120 for reply in replies)


@pytest.mark.parametrize("kind", ["missing", "garbage"])
def test_run_file_on_an_unreadable_file_fails_cleanly(tmp_path: Path, kind: str) -> None:
    video = tmp_path / "clip.avi"
    if kind == "garbage":
        video.write_bytes(b"this is not a video file" * 100)
    result = cli("run-file", str(video), "--pipeline", "motion", env=run_file_env())
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr, result.stderr
    assert "cannot read video file" in result.stderr
    assert str(video) in result.stderr


def test_run_file_with_an_unknown_pipeline_fails_cleanly(tmp_path: Path) -> None:
    video = write_video(tmp_path / "square.avi", frames=3)
    result = cli("run-file", str(video), "--pipeline", "nope", env=run_file_env())
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert "invalid_pipeline" in result.stderr and "nope" in result.stderr


def test_run_file_refuses_a_zero_stride(tmp_path: Path) -> None:
    video = write_video(tmp_path / "square.avi", frames=3)
    result = cli("run-file", str(video), "--pipeline", "motion", "--stride", "0", env=run_file_env())
    assert_refused(result, "--stride=0", "expected at least 1")


def test_run_file_refuses_a_zero_max_frames(tmp_path: Path) -> None:
    video = write_video(tmp_path / "square.avi", frames=3)
    result = cli("run-file", str(video), "--pipeline", "motion", "--max-frames", "0", env=run_file_env())
    assert_refused(result, "--max-frames=0", "expected at least 1")


# an unusable model ------------------------------------------------------------------------


def not_a_model(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"this is not an ONNX protobuf")
    return path


def test_serve_refuses_an_unusable_yolo_model_in_one_line(tmp_path: Path) -> None:
    model = not_a_model(tmp_path)
    result = serve(FORGESYTE_STREAM_YOLO_MODEL=str(model))
    assert_refused(result, "model configuration error", str(model), "does not load in ONNX Runtime")


def test_run_file_refuses_an_unusable_yolo_model_in_one_line(tmp_path: Path) -> None:
    video = write_video(tmp_path / "square.avi", frames=3)
    model = not_a_model(tmp_path)
    result = cli("run-file", str(video), "--pipeline", "motion", env=run_file_env(FORGESYTE_STREAM_YOLO_MODEL=str(model)))
    assert_refused(result, "model configuration error", str(model))
    assert result.stdout == ""


def test_serve_with_workers_exits_with_the_workers_start_up_failure(tmp_path: Path) -> None:
    """Every worker refusing the configuration must not leave a supervisor that exits 0 (or runs on)."""
    model = not_a_model(tmp_path)
    result = cli(
        "serve", "--host", "127.0.0.1", "--port", str(free_port()), "--workers", "2",
        env=clean_env(FORGESYTE_STREAM_YOLO_MODEL=str(model)),
    )
    assert_refused(result, "model configuration error", str(model))
    assert '"worker_failed"' in result.stdout, result.stdout
