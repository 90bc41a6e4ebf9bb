"""The page in real headless Chromium over WebRTC: the fake camera clip, the browser, the page and reading its canvas.

The camera is Chromium's file-backed fake device playing a Y4M made here: the
astronaut's face (the 192 x 192 patch of tests.support.media.moving_face_clip)
moving left to right across a grey 640 x 480 picture, FACE_STEP_PX a frame.
Only loopback: Chromium may gather candidates on the machine's interfaces too,
so the page's WHIP offer goes out with its 127.0.0.1 candidates only (the
test edits the POST body on its way, nothing else), and the server gathers on
127.0.0.1 only (WEBRTC_ENV).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from tests.support.media import FACE_JPEG, moving_face_clip

CHROMIUM = Path("/usr/bin/chromium")
BOX_RGB = (0x00, 0xE6, 0x76)  # the page's box colour, #00e676
WIDTH, HEIGHT = 640, 480
CLIP_FRAMES = 20
CLIP_FPS = 15
FACE_CROP = (129, 19)  # the patch moving_face_clip pastes: its top-left corner in face-astronaut.jpg, and its side
FACE_PATCH = 192
FACE_TOP = (HEIGHT - FACE_PATCH) // 2
FACE_STEP_PX = (WIDTH - FACE_PATCH) / (CLIP_FRAMES - 1)  # ~23.6 px a frame: a result drawn on the wrong frame misses


def face_left(index: int) -> int:
    """Where frame `index` of the clip has the face patch's left edge."""
    return round(index * (WIDTH - FACE_PATCH) / (CLIP_FRAMES - 1))


def clip_jpegs() -> list[bytes]:
    return moving_face_clip(CLIP_FRAMES, width=WIDTH, height=HEIGHT, quality=95)


def write_y4m(path: Path, jpegs: list[bytes], fps: int) -> Path:
    """An uncompressed 4:2:0 Y4M of the JPEGs, which Chromium's fake camera plays in a loop."""
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for jpeg in jpegs:
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            out.write(b"FRAME\n" + cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def face_patch() -> np.ndarray[Any, Any]:
    image = cv2.imread(str(FACE_JPEG))
    return image[FACE_CROP[1] : FACE_CROP[1] + FACE_PATCH, FACE_CROP[0] : FACE_CROP[0] + FACE_PATCH]


def launch(playwright: Any, camera: Path) -> Any:
    assert CHROMIUM.exists(), "headless Chromium is missing: `make test` installs it (apt-get install chromium)"
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=[
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}",
            "--allow-loopback-in-peer-connection",
        ],
    )


def loopback_offer(sdp: str) -> str:
    """The offer with its 127.0.0.1 candidates only."""
    lines = sdp.split("\r\n")
    kept = [line for line in lines if not line.startswith("a=candidate:") or " 127.0.0.1 " in line]
    assert any(line.startswith("a=candidate:") for line in kept), "Chromium offered no 127.0.0.1 candidate"
    return "\r\n".join(kept)


class PageWatch:
    """A page, with everything it asked of anyone but the server, its errors and its WHIP exchanges."""

    def __init__(self, context: Any, port: int) -> None:
        self.page = context.new_page()
        self.host = f"127.0.0.1:{port}"
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.whip: list[tuple[str, str, int]] = []  # (method, path, status)
        self.page.on("request", self._request)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        self.page.on("response", self._response)
        self.page.route(lambda url: urlsplit(url).path == "/v1/whip", self._offer)

    def _request(self, request: Any) -> None:
        if urlsplit(request.url).netloc != self.host and not request.url.startswith(("data:", "blob:")):
            self.foreign.append(request.url)

    def _response(self, response: Any) -> None:
        path = urlsplit(response.url).path
        if path.startswith("/v1/whip"):
            self.whip.append((response.request.method, path, response.status))

    def _offer(self, route: Any) -> None:
        request = route.request
        if request.method == "POST" and request.post_data:
            route.continue_(post_data=loopback_offer(request.post_data))
        else:
            route.continue_()

    def wait_whip(self, method: str, timeout_s: float = 10.0) -> list[tuple[str, int]]:
        """The (path, status) of this page's WHIP requests with `method`, once there is one."""
        deadline = time.monotonic() + timeout_s
        while not any(m == method for m, _, _ in self.whip) and time.monotonic() < deadline:
            self.page.wait_for_timeout(100)
        return [(path, status) for m, path, status in self.whip if m == method]

    def value(self, element_id: str) -> int:
        return int(self.page.get_attribute(f"#{element_id}", "data-value"))

    def text(self, element_id: str) -> str:
        return self.page.inner_text(f"#{element_id}")

    def wait_answered(self, at_least: int, timeout_ms: int = 45_000) -> None:
        self.page.wait_for_function(f"Number(document.getElementById('answered').dataset.value) >= {at_least}", timeout=timeout_ms)

    def overlay(self) -> np.ndarray[Any, Any]:
        """The overlay canvas as it is now (BGRA), read in one go."""
        url = self.page.evaluate("document.getElementById('overlay').toDataURL('image/png')")
        data = base64.b64decode(url.split(",", 1)[1])
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def box_pixels(picture: np.ndarray[Any, Any]) -> tuple[int, int, int, int] | None:
    """The bounding box of the box-coloured, opaque pixels of a BGRA picture."""
    b, g, r, a = (picture[..., i].astype(int) for i in range(4))
    mask = (abs(r - BOX_RGB[0]) < 8) & (abs(g - BOX_RGB[1]) < 8) & (abs(b - BOX_RGB[2]) < 8) & (a > 200)
    ys, xs = np.nonzero(mask)
    return None if not len(xs) else (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def find_face(picture: np.ndarray[Any, Any]) -> tuple[int, int, float]:
    """Where the face patch is in a BGRA picture: its top-left corner and the match score (1 is a perfect match)."""
    gray = cv2.cvtColor(picture[..., :3], cv2.COLOR_BGR2GRAY)
    patch = cv2.cvtColor(face_patch(), cv2.COLOR_BGR2GRAY)
    scores = cv2.matchTemplate(gray, patch, cv2.TM_CCOEFF_NORMED)
    _, best, _, (x, y) = cv2.minMaxLoc(scores)
    return x, y, float(best)


@pytest.fixture(scope="module")
def fake_camera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_y4m(tmp_path_factory.mktemp("camera") / "moving-face.y4m", clip_jpegs(), CLIP_FPS)


@pytest.fixture(scope="module")
def browser(fake_camera: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = launch(playwright, fake_camera)
        yield launched
        launched.close()
