"""Every shell command the docs tell a user to run is run here, as written.

The blocks are the fenced sh/bash/shell/console blocks of README.md, docs/,
contracts/README.md and clients/python/README.md (tests/docs/shell_blocks.py).
Each one is either in RUNS below or marked `<!-- illustrative: REASON -->`
right before it in the Markdown; a block that is neither fails the build, and
so does a table entry whose block is gone.

A runnable block runs with only what RUNS lists substituted: ports (8000 -> a
free port; FORGESYTE_STREAM_PORT where the command names none), hosts (0.0.0.0
-> 127.0.0.1, HOST -> 127.0.0.1), file names (video.mp4 -> a clip made here,
a model or plugin the example names -> one made here, the bare
`forgesyte-stream` of a doc written for an installed package ->
.venv/bin/forgesyte-stream) and the pid a command is told to signal. Each
substitution must still match the doc, so a doc edit that moves a command
shows up here. Every command runs through `bash -e -c` from the repository
root, with os.environ minus every FORGESYTE_* variable (a developer's shell or
another test cannot move what a doc promises) plus the block's own
substitutions. A command that starts a server (`make serve`, `forgesyte-stream
serve`) is started in the background in its own process group, waited for on
/health, the document's next commands run against it, and it gets SIGTERM
before the next server or at the end, and must exit within 30 s.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from contracts.targets import free_port, wait_until_healthy
from tests.docs.shell_blocks import ROOT, ShellBlock, all_shell_blocks, is_server, shell_blocks, strip_comment, without_background
from tests.support.media import moving_face_clip

VENV_BIN = ROOT / ".venv" / "bin"
SERVER_START_S = 90.0
SERVER_STOP_S = 30.0

Check = Callable[["Values"], None]


@dataclass
class Values:
    """What a document's substitutions are filled in from: made once per document."""

    port: int
    tmp: Path
    pid: int = 0  # of the server running now
    ray_port: int = 0  # a Ray head's port, for the Ray recipe

    def fill(self, template: str) -> str:
        # A pid of 0 would make `kill -TERM {pid}` signal the test's own process group.
        assert self.pid > 0 or "{pid}" not in template, f"{template!r} names the server's pid, but no server was started before it"
        return template.format(port=self.port, tmp=self.tmp, pid=self.pid, venv_bin=VENV_BIN, ray_port=self.ray_port)


@dataclass(frozen=True)
class Run:
    """How one block runs.

    `substitutions`: (as the doc writes it, what runs instead), every
    occurrence replaced, each required to occur. `env`: added to the
    environment (a port for a server whose command names none, a plugin's
    directory). `prepare`: makes the files the substitutions name.
    `server_checks`: one per server command of the block, in order, called
    once it is healthy. `expect_output`: patterns the block's output must
    hold. `expect_files`: files the block must leave behind.
    """

    substitutions: tuple[tuple[str, str], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    prepare: Callable[[Values], None] | None = None
    server_checks: tuple[Check, ...] = ()
    expect_output: tuple[str, ...] = ()
    expect_files: tuple[str, ...] = ()
    timeout_s: float = 120.0
    # Run after the document's server has stopped, even on failure: what the block started outside
    # the harness's process groups (a Ray head that `ray start` daemonised).
    cleanup: tuple[str, ...] = ()


# A port for a server command that names none (`make serve`, a bare `forgesyte-stream serve`).
SERVER_PORT = {"FORGESYTE_STREAM_PORT": "{port}"}
# Docs written for an installed package call it by name; in this checkout it is the virtualenv's.
INSTALLED_SERVE = ("forgesyte-stream serve", "{venv_bin}/forgesyte-stream serve")


def _executor_is_ray_and_ok(values: Values) -> None:
    health = _get(values, "/health")
    assert isinstance(health, dict) and health["executor"]["kind"] == "ray", health
    deadline = time.monotonic() + 60
    while health["status"] != "ok" and time.monotonic() < deadline:  # type: ignore[index]
        time.sleep(0.5)
        health = _get(values, "/health")
    assert health["status"] == "ok", health  # type: ignore[index]


def _ray_port(values: Values) -> None:
    values.ray_port = free_port()
    (values.tmp / "home").mkdir(exist_ok=True)


def _get(values: Values, path: str) -> object:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{values.port}{path}", timeout=10) as response:
        return json.load(response)


def _pipeline_available(pipeline_id: str) -> Check:
    def check(values: Values) -> None:
        pipeline = _get(values, f"/v1/pipelines/{pipeline_id}")
        assert isinstance(pipeline, dict) and pipeline.get("available") is True, f"{pipeline_id}: {pipeline}"

    return check


def _serves_defaults(values: Values) -> None:
    ids = {pipeline["id"] for pipeline in _get(values, "/v1/pipelines")}  # type: ignore[attr-defined]
    assert {"faces", "motion", "probe"} <= ids, ids


def _venv_up_to_date(values: Values) -> None:
    """`make serve` reinstalls .venv when its stamp is older than the lock or a pyproject; not under a running test."""
    stale = subprocess.run(["make", "-q", ".venv/.installed"], cwd=ROOT, capture_output=True, check=False).returncode != 0
    if stale:
        pytest.fail("`make serve` would reinstall .venv (requirements.lock or a pyproject.toml is newer than .venv/.installed): run `make setup` first")


def _make_clip(values: Values) -> None:
    """video.mp4 of the README: a few frames of the astronaut's face moving across, as mp4v."""
    frames = [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for data in moving_face_clip(6, width=320, height=240)]
    writer = cv2.VideoWriter(str(values.tmp / "video.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    for frame in frames:
        writer.write(frame)
    writer.release()
    assert (values.tmp / "video.mp4").stat().st_size > 0


def _make_yolo_model_and_plugin(values: Values) -> None:
    """The configuration examples' YOLO model (a constant YOLOv8-layout ONNX graph) and the `acme_vision` plugin with a pipeline."""
    from tests.plugins.test_yolo import _build_model

    _build_model(values.tmp / "yolov8n.onnx")
    package = values.tmp / "site" / "acme_vision"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "plugin.py").write_text(
        textwrap.dedent(
            '''
            from application.ports import Availability


            class _Acme:
                plugin_id = "acme"

                def tools(self):
                    return {"size": lambda inputs, context: {"bytes": len(context.image_bytes)}}

                def availability(self):
                    return Availability(True)


            def make_plugin():
                return _Acme()
            '''
        ),
        encoding="utf-8",
    )
    pipelines = values.tmp / "pipelines"
    pipelines.mkdir()
    node = {"id": "size", "plugin_id": "acme", "tool_id": "size"}
    pipeline = {"id": "acme_size", "name": "Frame size", "nodes": [node], "edges": [], "entry_nodes": ["size"], "output_nodes": ["size"]}
    (pipelines / "acme_size.json").write_text(json.dumps(pipeline), encoding="utf-8")


RUNS: dict[tuple[str, str], Run] = {
    ("README.md", "make serve"): Run(env=SERVER_PORT, prepare=_venv_up_to_date, server_checks=(_serves_defaults,)),
    ("README.md", ".venv/bin/forgesyte-stream-client stream tests/data/face-astronaut.jpg --url ws://127.0.0.1:8000 --pipeline faces --jsonl -"): Run(
        substitutions=(("ws://127.0.0.1:8000", "ws://127.0.0.1:{port}"), ("video.mp4", "{tmp}/video.mp4"), ("out.mp4", "{tmp}/out.mp4")),
        prepare=_make_clip,
        expect_output=(r'"frame_index": ?0, "result": \{"faces": \[\{',),
        expect_files=("{tmp}/out.mp4",),
    ),
    ("docs/gating.md", ".venv/bin/forgesyte-stream run-file video.mp4 --pipeline faces_gated"): Run(
        substitutions=(("video.mp4", "{tmp}/video.mp4"),),
        prepare=_make_clip,
        expect_output=(r'"frame_index": ?0, ?"result": ?\{"faces": ?\[\{.*"carried": ?false', r'"carried": ?true, ?"carried_frames": ?1'),
    ),
    ("docs/configuration.md", "FORGESYTE_STREAM_HOST=0.0.0.0 FORGESYTE_STREAM_INFERENCE_WORKERS=3 FORGESYTE_STREAM_MAX_SESSIONS=8 FORGESYTE_STREAM_BUFFER_FRAMES=2 forgesyte-stream serve"): Run(
        substitutions=(
            ("FORGESYTE_STREAM_HOST=0.0.0.0", "FORGESYTE_STREAM_HOST=127.0.0.1"),
            ("/srv/models/yolov8n.onnx", "{tmp}/yolov8n.onnx"),
            ("/etc/forgesyte/pipelines", "{tmp}/pipelines"),
            INSTALLED_SERVE,
        ),
        env={**SERVER_PORT, "PYTHONPATH": "{tmp}/site"},
        prepare=_make_yolo_model_and_plugin,
        server_checks=(_serves_defaults, _pipeline_available("yolo"), _pipeline_available("acme_size")),
    ),
    ("docs/deployment.md", "forgesyte-stream serve"): Run(
        substitutions=(INSTALLED_SERVE,), env=SERVER_PORT, server_checks=(_serves_defaults, _serves_defaults)
    ),
    # The Ray recipe as ray start sets it up, token authentication on: the token goes to a HOME of the
    # test's own, the head gets a free port, and `ray stop` (which stops every Ray process it can see;
    # nothing else runs Ray while this test does) ends it afterwards.
    ("docs/deployment.md", "ray get-auth-token --generate >/dev/null"): Run(
        substitutions=(
            ("ray get-auth-token", "{venv_bin}/ray get-auth-token"),
            ("=0 ray start", "=0 {venv_bin}/ray start"),
            ("6379", "{ray_port}"),
            INSTALLED_SERVE,
        ),
        env={**SERVER_PORT, "HOME": "{tmp}/home"},
        prepare=_ray_port,
        server_checks=(_executor_is_ray_and_ok,),
        cleanup=("{venv_bin}/ray stop --force",),
        timeout_s=180.0,
    ),
    ("contracts/README.md", "FORGESYTE_STREAM_PIPELINES_DIR=contracts/pipelines FORGESYTE_STREAM_PLUGINS=contracts.fault_plugin:ContractFaultPlugin FORGESYTE_STREAM_IDLE_TIMEOUT_S=5 PYTHONPATH=. .venv/bin/forgesyte-stream serve --host 0.0.0.0 --port 8000 &"): Run(
        substitutions=(("--host 0.0.0.0", "--host 127.0.0.1"), ("--port 8000", "--port {port}"), ("ws://HOST:8000", "ws://127.0.0.1:{port}"), ("<pid>", "{pid}")),
        # The whole suite, its idle_timeout case waiting out the 5 s the recipe gives the server.
        expect_output=(r"every declared message, error code, close code and drop cause was reached", r"\d+ passed"),
        timeout_s=240.0,
    ),
    # The WebRTC example: a server told to gather on loopback, the client too; the face boxed in the one frame's result.
    ("docs/client-guide.md", "FORGESYTE_STREAM_WEBRTC_HOST_ADDRESSES=127.0.0.1 .venv/bin/forgesyte-stream serve --port 8000 &"): Run(
        substitutions=(("--port 8000", "--port {port}"), ("ws://127.0.0.1:8000", "ws://127.0.0.1:{port}")),
        expect_output=(r'"reply": \{"frame_index": 0, "result": \{"faces": \[\{', r'"rtp_timestamp": \d+', r"1 frames: 1 results, 0 dropped"),
    ),
    ("docs/metrics-and-logging.md", "promtool check rules deploy/prometheus/rules.yml"): Run(expect_output=(r"SUCCESS: \d+ rules found",), timeout_s=60.0),
}


def _blocks() -> list[ShellBlock]:
    return all_shell_blocks()


def _runnable_documents() -> list[str]:
    return sorted({block.document for block in _blocks() if block.illustrative is None})


def test_every_shell_block_is_run_or_marked_illustrative_with_a_reason() -> None:
    blocks = _blocks()
    assert blocks, "no shell blocks found: the collector is broken"
    unaccounted = [f"{block.where()}: {block.first_command}" for block in blocks if block.illustrative is None and block.key not in RUNS]
    assert not unaccounted, (
        "shell blocks neither run by tests/docs/test_doc_commands.py (RUNS) nor marked "
        "`<!-- illustrative: REASON -->` right before them:\n" + "\n".join(unaccounted)
    )
    runnable = {block.key for block in blocks if block.illustrative is None}
    stale = sorted(set(RUNS) - runnable)
    assert not stale, f"RUNS names blocks the docs no longer hold (or that are now illustrative): {stale}"


def test_the_collector_reads_markers_continuations_prompts_and_backgrounds(tmp_path: Path) -> None:
    document = tmp_path / "doc.md"
    document.write_text(
        textwrap.dedent(
            """
            <!-- illustrative: needs a camera -->

            ```sh
            camera 0
            ```

            ```bash
            A=1 \\
            B=2 serve --port 8000 &   # comment & more
            # a comment line
            echo 'a # b'  # trailing
            ```

            ```console
            $ forgesyte-stream settings
            FORGESYTE_STREAM_HOST=127.0.0.1
            ```

            ```python
            print("not a shell block")
            ```
            """
        ),
        encoding="utf-8",
    )
    camera, server, console = shell_blocks(document, tmp_path)
    assert (camera.illustrative, server.illustrative, console.illustrative) == ("needs a camera", None, None)
    assert server.commands() == ["A=1 B=2 serve --port 8000 &   # comment & more", "echo 'a # b'  # trailing"]
    assert server.key == ("doc.md", "A=1 B=2 serve --port 8000 &")
    assert without_background(server.commands()[0]) == "A=1 B=2 serve --port 8000"
    assert strip_comment(server.commands()[1]) == "echo 'a # b'"
    assert console.commands() == ["forgesyte-stream settings"]
    assert is_server("FOO=1 .venv/bin/forgesyte-stream serve --workers 2") and is_server("make serve")
    assert not is_server("forgesyte-stream settings") and not is_server("make test")


def _environment(run: Run, values: Values) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("FORGESYTE_")}
    environment.update({key: values.fill(value) for key, value in run.env.items()})
    return environment


def _check_substitutions(block: ShellBlock, run: Run) -> None:
    for written, _ in run.substitutions:
        assert written in block.text, f"{block.where()}: the substitution {written!r} no longer matches the block:\n{block.text}"


def _substituted(command: str, run: Run, values: Values) -> str:
    """Filled in when the command is about to run, so that `{pid}` is the server started before it."""
    for written, instead in run.substitutions:
        if written in command:
            command = command.replace(written, values.fill(instead))
    return command


@dataclass
class Background:
    """A server command started by the harness, in its own process group."""

    command: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-6000:]

    def stop(self) -> None:
        """SIGTERM to the group; the server must be gone within SERVER_STOP_S."""
        group = self.process.pid
        _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + SERVER_STOP_S
        while time.monotonic() < deadline and (self.process.poll() is None or _group_alive(group)):
            time.sleep(0.1)
        if self.process.poll() is None or _group_alive(group):
            _signal_group(group, signal.SIGKILL)
            self.process.wait(timeout=10)
            raise AssertionError(f"`{self.command}` did not stop within {SERVER_STOP_S} s of SIGTERM:\n{self.output()}")
        assert "Traceback" not in self.output(), f"`{self.command}` logged a traceback:\n{self.output()}"


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _start(command: str, environment: Mapping[str, str], values: Values, where: str) -> Background:
    log = values.tmp / f"server-{time.monotonic_ns()}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            ["bash", "-e", "-c", command], cwd=ROOT, env=dict(environment), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Background(command, process, log)
    if not wait_until_healthy(values.port, SERVER_START_S, alive=lambda: process.poll() is None):
        try:
            server.stop()
        finally:
            pytest.fail(f"{where}: `{command}` did not answer /health on port {values.port} (exit {process.poll()}):\n{server.output()}")
    values.pid = process.pid
    return server


@pytest.fixture
def values(tmp_path: Path) -> Iterator[Values]:
    yield Values(port=free_port(), tmp=tmp_path)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("document", _runnable_documents())
def test_the_documents_commands_run_as_written(document: str, values: Values) -> None:
    server: Background | None = None
    cleanups: list[tuple[str, Mapping[str, str]]] = []
    try:
        for block in (block for block in _blocks() if block.document == document and block.illustrative is None):
            run = RUNS.get(block.key)
            if run is None:
                pytest.fail(f"{block.where()}: {block.key[1]!r} is not in RUNS (test_every_shell_block_is_run_or_marked_illustrative_with_a_reason says more)")
            if run.prepare is not None:
                run.prepare(values)
            environment = _environment(run, values)
            cleanups.extend((values.fill(command), environment) for command in run.cleanup)
            checks = list(run.server_checks)
            output = ""
            _check_substitutions(block, run)
            for written in block.commands():
                command = _substituted(written, run, values)
                if is_server(command):
                    if server is not None:
                        server.stop()
                        values.pid = 0
                    server = _start(without_background(command), environment, values, block.where())
                    if checks:
                        checks.pop(0)(values)
                    continue
                try:
                    done = subprocess.run(
                        ["bash", "-e", "-c", command], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=run.timeout_s, check=False
                    )
                except subprocess.TimeoutExpired as expired:
                    pytest.fail(f"{block.where()}: `{command}` ran past {run.timeout_s} s:\n{expired.stdout}\n{expired.stderr}")
                output += done.stdout + done.stderr
                assert done.returncode == 0, f"{block.where()}: `{command}` exited with {done.returncode}:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
            assert not checks, f"{block.where()}: {len(checks)} server check(s) left over: the block starts fewer servers than RUNS expects"
            for pattern in run.expect_output:
                assert re.search(pattern, output), f"{block.where()}: the output holds nothing like {pattern!r}:\n{output[-6000:]}"
            for path in run.expect_files:
                assert Path(values.fill(path)).is_file(), f"{block.where()}: {values.fill(path)} was not written"
    finally:
        try:
            if server is not None:
                server.stop()
        finally:
            for command, environment in cleanups:
                subprocess.run(["bash", "-c", command], cwd=ROOT, env=dict(environment), capture_output=True, timeout=120, check=False)
