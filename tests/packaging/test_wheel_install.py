"""The server as a user gets it: the wheel built from this tree, installed alone into a fresh venv.

Nothing of the checkout or of the development venv is visible to it: the venv
has no system site-packages, pip resolves the wheel's declared dependencies
from the configured package index (not from requirements.lock), and the server
runs from a directory outside the checkout with no PYTHONPATH. It must start,
serve the browser page and the OpenAPI YAML, and run a shipped pipeline with
tracking (supervision) on a real face over a real WebSocket.

Ray is not installed here (it is heavy); tests/packaging/test_dependencies.py
checks that what the Ray executor imports is declared under the [ray] extra.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

from contracts.targets import free_port, wait_until_healthy
from tests.support.server import ROOT

# Building, resolving and installing from the index takes 1-2 minutes, past the suite's default limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FACE = ROOT / "tests" / "data" / "face-astronaut.jpg"
PIPELINE = "faces_tracked"
INSTALL_TIMEOUT_S = 600
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _run(command: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> float:
    """Run to completion; the seconds it took. The output is shown only when it fails."""
    started = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return time.monotonic() - started


def _clean_environment() -> dict[str, str]:
    """This process's environment without what would point the installed server at the checkout or the dev venv."""
    dropped = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")
    return {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("FORGESYTE_STREAM_")}


def _source_copy(destination: Path) -> Path:
    """The working tree's files as git sees them (ignored ones left out), so the build leaves nothing in the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = ROOT / relative
        if source.is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _get(url: str) -> tuple[int, bytes]:
    with _DIRECT.open(url, timeout=10) as response:
        return response.status, response.read()


def test_the_installed_wheel_serves_the_page_and_tracks_a_face(tmp_path: Path) -> None:
    environment = _clean_environment()
    source = _source_copy(tmp_path / "src")
    wheelhouse = tmp_path / "wheelhouse"
    build_s = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(source), "-w", str(wheelhouse)],
                   cwd=tmp_path, timeout=300, env=environment)
    (wheel,) = wheelhouse.glob("forgesyte_stream-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=120, env=environment)
    python = venv / "bin" / "python"
    install_s = _run([str(python), "-m", "pip", "install", "--quiet", "--prefer-binary", "--no-compile", str(wheel)],
                     cwd=tmp_path, timeout=INSTALL_TIMEOUT_S, env=environment)
    print(f"wheel built in {build_s:.1f} s, installed with its dependencies in {install_s:.1f} s")

    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    located = subprocess.run([str(python), "-c", "import adapters; print(adapters.__file__)"],
                             cwd=run_dir, env=environment, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(located).is_relative_to(venv), f"the server's code comes from {located}, not the installed package"

    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(venv / "bin" / "forgesyte-stream"), "serve"],
            cwd=run_dir,
            env={**environment, "FORGESYTE_STREAM_PORT": str(port), "FORGESYTE_STREAM_HOST": "127.0.0.1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        healthy = wait_until_healthy(port, 90, alive=lambda: server.poll() is None)
        assert healthy, f"the installed server did not answer /health (exit {server.poll()}):\n{log_path.read_text()[-6000:]}"
        base = f"http://127.0.0.1:{port}"

        status, page = _get(f"{base}/")
        assert status == 200 and b"<html" in page.lower()
        status, script = _get(f"{base}/client/app.js")
        assert status == 200 and script
        status, schema = _get(f"{base}/schema/openapi.yaml")
        assert status == 200 and b"openapi:" in schema
        status, body = _get(f"{base}/v1/pipelines")
        assert status == 200 and PIPELINE in body.decode()

        with connect(f"ws://127.0.0.1:{port}/ws/video/stream?pipeline_id={PIPELINE}", open_timeout=10, max_size=None) as websocket:
            websocket.send(FACE.read_bytes())
            reply = json.loads(websocket.recv(timeout=60))
        assert reply.get("frame_index") == 0 and "result" in reply, reply
        faces = reply["result"]["faces"]
        assert len(faces) >= 1 and faces[0]["label"] == "face" and "box" in faces[0], reply
        assert "tracker_id" in faces[0], reply  # the tracking plugin (supervision) ran
        assert "centre" in reply["result"]["line_counts"], reply
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait(timeout=5)
    # A single process exits by re-raising the signal once shut down (docs/failure-modes.md).
    log_text = log_path.read_text()
    assert code == -signal.SIGTERM and "Application shutdown complete" in log_text, f"exit {code} after SIGTERM:\n{log_text[-4000:]}"
