"""Settings.from_env: defaults, refusal of every bad value with the variable named, and the docs table."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from adapters.settings import DEFAULT_PIPELINES_DIR, PREFIX, Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.pipelines_dir == DEFAULT_PIPELINES_DIR
    assert settings.max_frame_bytes == 5242880
    assert settings.max_frame_pixels == 3840 * 2160
    assert settings.decode_budget_bytes == 128 * 1024 * 1024
    assert settings.max_sessions == 32
    assert settings.buffer_frames == 4
    assert settings.drop_threshold == 0.10
    assert settings.slowdown_threshold == 0.30
    assert settings.slowdown_repeat_ms == 5000
    assert settings.frame_timeout_ms == 10_000
    assert settings.inference_workers == 4
    assert settings.event_loop == "uvloop"
    assert settings.shutdown_timeout_s == 15.0
    assert settings.plugins == ()
    assert settings.yolo_model is None
    assert settings.yolo_labels is None
    assert settings.yolo_confidence == 0.25
    assert settings.yolo_iou == 0.45
    assert settings.log_level == "info"


def test_the_shipped_pipelines_dir_exists() -> None:
    assert DEFAULT_PIPELINES_DIR.is_dir()
    assert sorted(p.stem for p in DEFAULT_PIPELINES_DIR.glob("*.json"))


def test_values_are_read_from_the_environment(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    env = {
        "FORGESYTE_STREAM_HOST": " 0.0.0.0 ",
        "FORGESYTE_STREAM_PORT": "9001",
        "FORGESYTE_STREAM_PIPELINES_DIR": str(tmp_path),
        "FORGESYTE_STREAM_MAX_FRAME_BYTES": "2048",
        "FORGESYTE_STREAM_MAX_SESSIONS": "3",
        "FORGESYTE_STREAM_DROP_THRESHOLD": "0.2",
        "FORGESYTE_STREAM_SLOWDOWN_THRESHOLD": "0.5",
        "FORGESYTE_STREAM_FRAME_TIMEOUT_MS": "300",
        "FORGESYTE_STREAM_PLUGINS": "a.b:C, d:E ,",
        "FORGESYTE_STREAM_YOLO_MODEL": str(model),
        "FORGESYTE_STREAM_LOG_LEVEL": "DEBUG",
    }
    settings = Settings.from_env(env)
    assert settings.host == "0.0.0.0"
    assert settings.port == 9001
    assert settings.pipelines_dir == tmp_path
    assert settings.max_frame_bytes == 2048
    assert settings.max_sessions == 3
    assert settings.drop_threshold == 0.2
    assert settings.slowdown_threshold == 0.5
    assert settings.frame_timeout_ms == 300
    assert settings.plugins == ("a.b:C", "d:E")
    assert settings.yolo_model == model
    assert settings.log_level == "debug"


def test_an_empty_yolo_model_means_unset() -> None:
    assert Settings.from_env({"FORGESYTE_STREAM_YOLO_MODEL": "  "}).yolo_model is None


def test_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env({"FORGESYTE_STREAM_PORT": "9001"}, port=9002, host="::1")
    assert settings.port == 9002 and settings.host == "::1"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("FORGESYTE_STREAM_DROP_THRESHOLD", "abc", "[0.0, 1.0]"),
        ("FORGESYTE_STREAM_DROP_THRESHOLD", "1.5", "[0.0, 1.0]"),
        ("FORGESYTE_STREAM_DROP_THRESHOLD", "-0.1", "[0.0, 1.0]"),
        ("FORGESYTE_STREAM_DROP_THRESHOLD", "nan", "[0.0, 1.0]"),
        ("FORGESYTE_STREAM_SLOWDOWN_THRESHOLD", "2", "[0.0, 1.0]"),
        ("FORGESYTE_STREAM_PORT", "70000", "[1, 65535]"),
        ("FORGESYTE_STREAM_PORT", "0", "[1, 65535]"),
        ("FORGESYTE_STREAM_PORT", "http", "[1, 65535]"),
        ("FORGESYTE_STREAM_HOST", "   ", "host"),
        ("FORGESYTE_STREAM_PIPELINES_DIR", "/nonexistent/pipelines", "directory"),
        ("FORGESYTE_STREAM_MAX_FRAME_BYTES", "100", "[1024, 67108864]"),
        ("FORGESYTE_STREAM_MAX_FRAME_BYTES", "1e6", "integer"),
        ("FORGESYTE_STREAM_MAX_FRAME_PIXELS", "0", "[1, 400000000]"),
        ("FORGESYTE_STREAM_DECODE_BUDGET_BYTES", "1000", "[1048576, 68719476736]"),
        ("FORGESYTE_STREAM_MAX_SESSIONS", "0", "[1, 10000]"),
        ("FORGESYTE_STREAM_BUFFER_FRAMES", "65", "[1, 64]"),
        ("FORGESYTE_STREAM_SLOWDOWN_REPEAT_MS", "99", "[100, 600000]"),
        ("FORGESYTE_STREAM_FRAME_TIMEOUT_MS", "5", "[10, 600000]"),
        ("FORGESYTE_STREAM_INFERENCE_WORKERS", "0", "[1, 256]"),
        ("FORGESYTE_STREAM_EVENT_LOOP", "trio", "uvloop, asyncio"),
        ("FORGESYTE_STREAM_SHUTDOWN_TIMEOUT_S", "-1", "[0.0, 600.0]"),
        ("FORGESYTE_STREAM_PLUGINS", "no_colon_here", "module:factory"),
        ("FORGESYTE_STREAM_YOLO_MODEL", "/nonexistent.onnx", "/nonexistent.onnx"),
        ("FORGESYTE_STREAM_YOLO_LABELS", "/nonexistent.txt", "/nonexistent.txt"),
        ("FORGESYTE_STREAM_YOLO_CONFIDENCE", "1.01", "[0.0, 1.0]"),
        ("FORGESYTE_STREAM_YOLO_IOU", "x", "[0.0, 1.0]"),
        ("FORGESYTE_STREAM_LOG_LEVEL", "verbose", "debug, info, warning, error, critical"),
    ],
)
def test_each_bad_value_is_refused_naming_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    message = str(caught.value)
    assert variable in message
    assert expected in message


def test_slowdown_threshold_must_be_above_drop_threshold() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"FORGESYTE_STREAM_SLOWDOWN_THRESHOLD": "0.05"})
    message = str(caught.value)
    assert "FORGESYTE_STREAM_SLOWDOWN_THRESHOLD" in message and "FORGESYTE_STREAM_DROP_THRESHOLD" in message
    with pytest.raises(SettingsError):
        Settings.from_env({"FORGESYTE_STREAM_SLOWDOWN_THRESHOLD": "0.10"})
    assert Settings.from_env({"FORGESYTE_STREAM_SLOWDOWN_THRESHOLD": "0.11"}).slowdown_threshold == 0.11


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


@pytest.mark.parametrize("max_frame_bytes", [1024, 2048, 5242880, 64 * 1024 * 1024])
def test_ws_max_size_is_above_the_frame_limit(max_frame_bytes: int) -> None:
    settings = Settings.from_env({"FORGESYTE_STREAM_MAX_FRAME_BYTES": str(max_frame_bytes)})
    assert settings.ws_max_size > settings.max_frame_bytes


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_documentation_covers_every_field() -> None:
    documented = [variable for variable, _, _ in Settings.documentation()]
    expected = [PREFIX + field.name.upper() for field in msgspec.structs.fields(Settings)]
    assert sorted(documented) == sorted(expected)
    assert len(documented) == len(set(documented))
    for variable, default, meaning in Settings.documentation():
        assert variable.startswith("FORGESYTE_STREAM_")
        assert default, variable
        assert meaning.strip(), variable


def test_documentation_defaults_match_the_real_defaults() -> None:
    docs = {variable: default for variable, default, _ in Settings.documentation()}
    assert docs["FORGESYTE_STREAM_DROP_THRESHOLD"] == "0.1"
    assert docs["FORGESYTE_STREAM_SLOWDOWN_THRESHOLD"] == "0.3"
    assert docs["FORGESYTE_STREAM_MAX_FRAME_BYTES"] == "5242880"
    assert docs["FORGESYTE_STREAM_MAX_FRAME_PIXELS"] == "8294400"
    assert docs["FORGESYTE_STREAM_YOLO_MODEL"] == "unset"
    assert docs["FORGESYTE_STREAM_PLUGINS"] == "unset"


def test_uvloop_without_the_package_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real_find_spec(name, *a))
    with pytest.raises(SettingsError, match="FORGESYTE_STREAM_EVENT_LOOP=uvloop.*not installed.*asyncio"):
        Settings.from_env({})
    assert Settings.from_env({"FORGESYTE_STREAM_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"


def test_the_defaults_come_from_the_domain() -> None:
    from domain import DEFAULT_MAX_FRAME_BYTES, BackpressurePolicy

    settings = Settings.from_env({})
    policy = BackpressurePolicy()
    assert (settings.buffer_frames, settings.drop_threshold, settings.slowdown_threshold) == (
        policy.buffer_capacity,
        policy.drop_threshold,
        policy.slowdown_threshold,
    )
    assert settings.slowdown_repeat_ms == policy.slowdown_repeat_ms
    assert settings.max_frame_bytes == DEFAULT_MAX_FRAME_BYTES


def test_the_drop_policy_is_chosen_by_setting() -> None:
    from adapters.container import _policy
    from domain.sampling import KeepEveryNthPolicy

    every_nth = _policy(Settings.from_env({"FORGESYTE_STREAM_DROP_POLICY": "every_nth", "FORGESYTE_STREAM_KEEP_EVERY": "5"}))
    assert isinstance(every_nth, KeepEveryNthPolicy) and every_nth.keep_every == 5
    assert type(_policy(Settings.from_env({}))).__name__ == "BackpressurePolicy"
    with pytest.raises(SettingsError, match="FORGESYTE_STREAM_DROP_POLICY"):
        Settings.from_env({"FORGESYTE_STREAM_DROP_POLICY": "oldest"})
    with pytest.raises(SettingsError, match="FORGESYTE_STREAM_KEEP_EVERY"):
        Settings.from_env({"FORGESYTE_STREAM_KEEP_EVERY": "1"})


def test_a_decode_budget_below_one_largest_frame_is_refused_naming_both_variables() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"FORGESYTE_STREAM_MAX_FRAME_PIXELS": "10000000", "FORGESYTE_STREAM_DECODE_BUDGET_BYTES": "100000000"})
    message = str(caught.value)
    assert "FORGESYTE_STREAM_DECODE_BUDGET_BYTES=100000000" in message
    assert "FORGESYTE_STREAM_MAX_FRAME_PIXELS=10000000" in message
    assert "110000000" in message
    assert (
        Settings.from_env({"FORGESYTE_STREAM_MAX_FRAME_PIXELS": "10000000", "FORGESYTE_STREAM_DECODE_BUDGET_BYTES": "110000000"}).decode_budget_bytes
        == 110_000_000
    )


def test_the_budget_rule_matches_what_the_decoder_charges_for_its_largest_frame() -> None:
    from adapters.media.codec import OpenCvJpegDecoder
    from adapters.settings import DECODE_BYTES_PER_PIXEL

    assert OpenCvJpegDecoder(max_pixels=1000).largest_memory_needed() == 1000 * DECODE_BYTES_PER_PIXEL


def _doc_table(path: Path) -> dict[str, str]:
    """Variable -> default of a markdown table whose first column is a `FORGESYTE_STREAM_*` name."""
    rows: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        cells[0] = cells[0].strip("`")
        if len(cells) >= 3 and cells[0].startswith(PREFIX):
            rows[cells[0]] = cells[1]
    return rows


@pytest.mark.parametrize("document", ["README.md", "docs/configuration.md"])
def test_the_docs_tables_match_forgesyte_stream_settings(document: str) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    printed = subprocess.run(
        [sys.executable, "-m", "adapters.entrypoints.cli", "settings"], cwd=root, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    declared = {variable: default for variable, default, _ in (line.split("\t") for line in printed.splitlines() if line.startswith(PREFIX))}
    assert declared == {variable: default for variable, default, _ in Settings.documentation()}
    documented = _doc_table(root / document)
    assert sorted(documented) == sorted(declared)
    for variable, default in declared.items():
        # The docs may add a gloss after the value, such as "(5 MiB)"; the value itself must be the declared one.
        assert f"`{default.split()[0]}" in documented[variable] or documented[variable].startswith(default.split()[0]), (variable, default)
