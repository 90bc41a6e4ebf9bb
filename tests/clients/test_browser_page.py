"""The page at / in real headless Chromium (Debian's chromium, driven by Playwright), fed a fake camera.

The camera is Chromium's file-backed fake device playing an MJPEG made here
from tests/data/face-astronaut.jpg. `make test` installs chromium; run
without it, these tests fail saying so (they do not skip). They stream over
the page's WebSocket transport (`transport=websocket`; WebRTC is the page's
default): tests/webrtc/test_browser_webrtc.py runs its WebRTC transport.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import httpx
import numpy as np
import pytest

from tests.support.media import FACE_JPEG
from tests.support.server import RunningServer, start_server

CHROMIUM = Path("/usr/bin/chromium")
BOX_RGB = (0x00, 0xE6, 0x76)  # the page's box colour, #00e676
FRAMES = 20
SHIFT_PX = 2  # per frame, so the fake camera shows movement


@pytest.fixture(scope="module")
def fake_camera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = cv2.imread(str(FACE_JPEG))
    height, width = image.shape[:2]
    path = tmp_path_factory.mktemp("camera") / "face.mjpeg"
    with path.open("wb") as out:
        for i in range(FRAMES):
            shifted = cv2.warpAffine(image, np.float32([[1, 0, SHIFT_PX * (i % 5)], [0, 1, 0]]), (width, height))
            out.write(cv2.imencode(".jpg", shifted, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return path


@pytest.fixture(scope="module")
def browser(fake_camera: Path) -> Iterator[object]:
    assert CHROMIUM.exists(), "headless Chromium is missing: `make test` installs it (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={fake_camera}",
            ],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: object, server: RunningServer) -> Iterator[object]:
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.foreign_requests = []  # everything the page asks of anyone but the server
    page.errors = []

    def on_request(request: object) -> None:
        host = urlsplit(request.url).netloc  # type: ignore[attr-defined]
        if host != f"127.0.0.1:{server.port}" and not request.url.startswith("data:"):  # type: ignore[attr-defined]
            page.foreign_requests.append(request.url)  # type: ignore[attr-defined]

    page.on("request", on_request)
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


def overlay_box(page: object) -> tuple[int, int, int, int] | None:
    """The bounding box of the page's box-coloured pixels on the overlay canvas, in video pixels."""
    found = page.evaluate(  # type: ignore[attr-defined]
        """([r, g, b]) => {
            const canvas = document.getElementById("overlay");
            if (!canvas.width) return null;
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let x1 = Infinity, y1 = Infinity, x2 = -1, y2 = -1;
            for (let i = 0; i < data.length; i += 4) {
                if (Math.abs(data[i] - r) < 8 && Math.abs(data[i + 1] - g) < 8 && Math.abs(data[i + 2] - b) < 8 && data[i + 3] > 200) {
                    const p = i / 4, x = p % canvas.width, y = Math.floor(p / canvas.width);
                    x1 = Math.min(x1, x); y1 = Math.min(y1, y); x2 = Math.max(x2, x); y2 = Math.max(y2, y);
                }
            }
            return x2 < 0 ? null : [x1, y1, x2, y2];
        }""",
        list(BOX_RGB),
    )
    return tuple(found) if found else None


def figure(page: object, name: str) -> str:
    return page.inner_text(f"#{name}")  # type: ignore[attr-defined]


def test_camera_autostart_draws_a_box_on_the_face_and_the_figures_move(page: object, server: RunningServer) -> None:
    expected = httpx.post(f"{server.http}/v1/pipelines/faces/frames", content=FACE_JPEG.read_bytes(),
                          headers={"Content-Type": "image/jpeg"}, timeout=30, trust_env=False).json()["result"]["faces"][0]["box"]
    page.goto(f"{server.http}/?pipeline=faces&source=camera&autostart=1&transport=websocket")  # type: ignore[attr-defined]
    page.wait_for_function("Number(document.getElementById('answered').dataset.value) >= 3", timeout=30_000)  # type: ignore[attr-defined]
    first_answered = int(page.get_attribute("#answered", "data-value"))  # type: ignore[attr-defined]

    box = overlay_box(page)
    assert box is not None, "no box drawn on the overlay"
    # The drawn box encloses the face the server finds in the same image (the camera shifts it by up to 8 px);
    # the label sits above it, so only the box's sides and bottom are compared.
    x1, _, x2, y2 = box
    assert abs(x1 - expected["x1"]) <= 8 + SHIFT_PX * 4 and abs(x2 - expected["x2"]) <= 8 + SHIFT_PX * 4 + 4
    assert abs(y2 - expected["y2"]) <= 12

    time.sleep(1.5)
    assert int(page.get_attribute("#answered", "data-value")) > first_answered  # type: ignore[attr-defined]
    assert float(figure(page, "answered-fps")) > 0 and float(figure(page, "sent-fps")) > 0
    assert figure(page, "p50").endswith(" ms") and figure(page, "p95").endswith(" ms")
    assert page.select_option("#pipeline", "faces") == ["faces"]  # type: ignore[attr-defined]
    assert page.inner_text("#status") == "streaming to faces"  # type: ignore[attr-defined]
    assert not page.errors and not page.foreign_requests, (page.errors, page.foreign_requests)  # type: ignore[attr-defined]

    page.click("#stop")  # type: ignore[attr-defined]
    page.wait_for_function("document.getElementById('status').textContent === 'stopped'")  # type: ignore[attr-defined]
    server.wait_for(lambda health: health["sessions_active"] == 0)


def test_only_available_pipelines_are_offered_and_an_unknown_one_is_named(page: object, server: RunningServer) -> None:
    pipelines = httpx.get(f"{server.http}/v1/pipelines", timeout=10, trust_env=False).json()
    page.goto(f"{server.http}/?pipeline=offline&autostart=1")  # type: ignore[attr-defined]
    page.wait_for_function("document.getElementById('status').classList.contains('error')")  # type: ignore[attr-defined]
    offered = page.eval_on_selector_all("#pipeline option", "options => options.map(o => o.value)")  # type: ignore[attr-defined]
    assert sorted(offered) == sorted(p["id"] for p in pipelines if p["available"])
    assert "offline" in [p["id"] for p in pipelines] and "offline" not in offered
    assert "'offline' is unknown or unavailable" in page.inner_text("#status")  # type: ignore[attr-defined]


PAGE_KEY = "page-test-key-0123456789"
_OFFERED_PROTOCOLS = """(() => {
    const Real = window.WebSocket;
    window.offeredProtocols = [];
    window.WebSocket = function (url, protocols) { window.offeredProtocols.push(protocols); return new Real(url, protocols); };
    Object.assign(window.WebSocket, Real);
    window.WebSocket.prototype = Real.prototype;
})();"""


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(f"page {PAGE_KEY}\n", encoding="utf-8")
    running = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "info", "FORGESYTE_STREAM_API_KEYS_FILE": str(keys)})
    yield running
    running.stop()


def test_a_key_in_the_query_is_offered_as_the_bearer_subprotocol_and_leaves_the_address_bar(
    browser: object, keyed_server: RunningServer
) -> None:
    """On a server that requires keys: the page's files are public, the key lists pipelines and opens the stream."""
    context = browser.new_context()  # type: ignore[attr-defined]
    try:
        page = context.new_page()
        page.add_init_script(_OFFERED_PROTOCOLS)
        page.goto(f"{keyed_server.http}/?pipeline=probe&source=camera&autostart=1&transport=websocket&key={PAGE_KEY}")
        page.wait_for_function("window.offeredProtocols.length > 0")
        assert page.evaluate("window.offeredProtocols") == [[f"forgesyte.bearer.{PAGE_KEY}"]]
        assert "key=" not in page.url
        page.wait_for_function("Number(document.getElementById('answered').dataset.value) >= 3", timeout=30_000)
        assert "error" not in (page.get_attribute("#status", "class") or "")
    finally:
        context.close()


def test_a_wrong_key_is_reported_as_refused(browser: object, keyed_server: RunningServer) -> None:
    context = browser.new_context()  # type: ignore[attr-defined]
    try:
        page = context.new_page()
        page.goto(f"{keyed_server.http}/?pipeline=probe&source=camera&autostart=1&transport=websocket&key=not-the-key-0123456789")
        page.wait_for_function("document.getElementById('status').classList.contains('error')", timeout=15_000)
        assert "401" in page.inner_text("#status")
    finally:
        context.close()


def test_the_openapi_viewer_renders_without_any_request_off_the_server(page: object, server: RunningServer) -> None:
    page.goto(f"{server.http}/schema")  # type: ignore[attr-defined]
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)  # type: ignore[attr-defined]
    assert "ForgeSyte Stream" in page.inner_text(".swagger-ui .info .title")  # type: ignore[attr-defined]
    assert page.locator(".opblock-summary-path", has_text="/v1/pipelines").count() >= 1  # type: ignore[attr-defined]
    assert not page.foreign_requests, page.foreign_requests  # type: ignore[attr-defined]


def _stream_rows(page: object) -> list[list[str]]:
    return page.eval_on_selector_all(  # type: ignore[attr-defined]
        "#streams tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )


def test_the_operator_table_lists_the_pages_own_stream_and_refreshes_until_it_ends(page: object, server: RunningServer) -> None:
    page.goto(f"{server.http}/?pipeline=probe&source=camera&autostart=1&transport=websocket")  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "[...document.querySelectorAll('#streams tbody tr')].some(r => r.cells[1].textContent === 'probe' && Number(r.cells[7].textContent) > 0)",
        timeout=30_000,
    )
    (row,) = [r for r in _stream_rows(page) if r[1] == "probe"]
    listed = httpx.get(f"{server.http}/v1/streams", timeout=5, trust_env=False).json()
    (stream,) = [s for s in listed if s["pipeline_id"] == "probe"]
    assert row[0] == stream["session_id"][:8] and row[2] == "litestar" and row[3] == "anonymous"
    assert row[4] == stream["remote_address"] and row[12].endswith(" ms") and row[14].startswith("probe ")
    # The table refreshes by itself: the answered count grows while the camera streams.
    first = int(row[7])
    page.wait_for_function(  # type: ignore[attr-defined]
        f"[...document.querySelectorAll('#streams tbody tr')].some(r => r.cells[1].textContent === 'probe' && Number(r.cells[7].textContent) > {first})",
        timeout=15_000,
    )
    assert "open · updated" in page.inner_text("#streams-note")  # type: ignore[attr-defined]
    page.click("#stop")  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "![...document.querySelectorAll('#streams tbody tr')].some(r => r.cells[1].textContent === 'probe')", timeout=15_000
    )
    assert not page.errors and not page.foreign_requests, (page.errors, page.foreign_requests)  # type: ignore[attr-defined]
