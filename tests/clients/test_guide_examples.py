"""The client guide's examples do what the guide says, run as a reader would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2

from tests.support.server import RunningServer

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "client-guide.md"


def _block_after(heading: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    found = re.search(re.escape(heading) + r".*?```python\n(.*?)```", text, re.S)
    assert found, f"no python block after {heading!r} in {GUIDE.name}"
    return found.group(1)


def test_the_raw_python_example_fails_loudly_when_no_camera_opens(tmp_path: Path, server: RunningServer) -> None:
    assert not cv2.VideoCapture(0).isOpened(), "this machine has a camera; the test needs one without"
    script = tmp_path / "example.py"
    script.write_text(_block_after("### Python (bare `websockets`)").replace("ws://127.0.0.1:8000", f"ws://127.0.0.1:{server.port}"))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "camera 0 could not be opened" in done.stderr


def test_the_readmes_python_example_runs(tmp_path: Path, server: RunningServer) -> None:
    import numpy as np

    readme = GUIDE.parents[1] / "README.md"
    (block,) = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)[:1]
    video = tmp_path / "video.mp4"
    image = cv2.imread(str(GUIDE.parents[1] / "tests" / "data" / "face-astronaut.jpg"))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, image.shape[1::-1])
    for _ in range(3):
        writer.write(np.ascontiguousarray(image))
    writer.release()
    script = tmp_path / "example.py"
    script.write_text(block.replace("ws://127.0.0.1:8000", f"ws://127.0.0.1:{server.port}").replace('"video.mp4"', repr(str(video))))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False,
                          cwd=GUIDE.parents[1])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("[('face', Box(") and lines[1:] == [f"{i} Result(frame_index={i})" for i in range(3)]
