"""The routes that serve the page and the OpenAPI viewer's assets, on an app built from them alone."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar
from litestar.testing import TestClient

from adapters.transports.litestar.app import WEB_CLIENT_DIR, browser_routes


def _client(web_dir: Path) -> TestClient:
    routes, openapi = browser_routes(web_dir)
    return TestClient(Litestar(route_handlers=routes, openapi_config=openapi))


def test_the_page_its_files_and_the_viewers_assets_are_served() -> None:
    with _client(WEB_CLIENT_DIR) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for src in ("/client/app.js", "/client/style.css"):
            assert src in page.text
            assert client.get(src).status_code == 200
        assert "export const CLOSE_CODES" in client.get("/client/messages.js").text
        for module in ("webrtc.js", "session.js", "view.js"):  # imported by app.js
            assert client.get(f"/client/{module}").status_code == 200
        assert client.get("/client/rtp-worker.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
        viewer = client.get("/schema")
        assert viewer.status_code == 200
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
            assert f"/static/openapi/{asset}" in viewer.text
            assert client.get(f"/static/openapi/{asset}").status_code == 200
        assert "http" not in viewer.text.split("<body>")[0].replace("http-equiv", "")  # nothing from elsewhere in the head
        assert client.get("/client/../adapters/settings.py").status_code == 404


def test_without_the_web_directory_the_page_says_so(tmp_path: Path) -> None:
    with _client(tmp_path / "missing") as client:
        response = client.get("/")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found" and "browser client is not installed" in response.json()["detail"]
