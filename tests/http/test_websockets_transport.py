"""The alternate websockets transport serves /health and /metrics as the Litestar app does, and drains the same way."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.media import jpeg
from tests.support.server import RunningServer, start_server


@pytest.fixture(scope="module")
def server():
    running = start_server(transport="websockets")
    yield running
    running.stop()


def test_health_counts_the_open_sessions(server: RunningServer) -> None:
    idle = server.health()
    assert idle["status"] == "ok" and idle["sessions_active"] == 0 and idle["pipelines"] > 0
    assert set(idle) == {"status", "sessions_active", "sessions_active_server", "pipelines", "busy_workers", "executor"}

    async def while_open() -> dict:
        async with connect(server.ws("probe"), proxy=None) as ws:
            await ws.send(jpeg())
            await ws.recv()
            return await asyncio.to_thread(server.health)

    during = asyncio.run(while_open())
    assert during["sessions_active"] == during["sessions_active_server"] == 1
    server.wait_for(lambda health: health["sessions_active"] == 0)


def test_metrics_are_the_prometheus_exposition_with_the_streams_counts(server: RunningServer) -> None:
    async def one_frame() -> None:
        async with connect(server.ws("probe"), proxy=None) as ws:
            await ws.send(jpeg())
            await ws.recv()

    asyncio.run(one_frame())
    response = httpx.get(f"{server.http}/metrics", timeout=5, trust_env=False)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert 'stream_frames_processed_total{pipeline_id="probe"}' in response.text
    openmetrics = httpx.get(f"{server.http}/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=5, trust_env=False)
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")


def test_other_paths_are_404_naming_what_is_served(server: RunningServer) -> None:
    response = httpx.get(f"{server.http}/v1/pipelines", timeout=5, trust_env=False)
    assert response.status_code == 404 and "/health" in response.text


def test_http_answers_say_the_connection_closes_so_pooled_clients_never_reuse_it(server: RunningServer) -> None:
    """The library closes the connection after any answer but the upgrade; a client that kept it got no answer."""
    with httpx.Client(trust_env=False, timeout=5) as client:
        responses = [client.get(f"{server.http}{path}") for path in ("/health", "/metrics", "/nowhere") * 20]
    assert [r.status_code for r in responses] == [200, 200, 404] * 20
    assert all(r.headers["connection"] == "close" for r in responses)


def test_shutdown_drains_through_the_shared_routine() -> None:
    running = start_server(transport="websockets")
    assert running.stop(signal.SIGTERM) == 0
    assert '"draining_sessions"' in running.log_text()


def test_with_api_keys_metrics_needs_a_key_and_health_stays_open(tmp_path) -> None:
    """The same access policy as under Litestar: /health is public, /metrics is not."""
    key = "k-" + "7" * 30
    keys = tmp_path / "keys.txt"
    keys.write_text(f"ops {key}\n", encoding="utf-8")
    running = start_server({"FORGESYTE_STREAM_API_KEYS_FILE": str(keys)}, transport="websockets")
    try:
        assert httpx.get(f"{running.http}/health", timeout=5, trust_env=False).status_code == 200
        refused = httpx.get(f"{running.http}/metrics", timeout=5, trust_env=False)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        allowed = httpx.get(f"{running.http}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=5, trust_env=False)
        assert allowed.status_code == 200 and "stream_sessions_active" in allowed.text
    finally:
        running.stop()
    assert key not in running.log_text()
