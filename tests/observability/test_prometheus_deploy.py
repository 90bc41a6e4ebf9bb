"""deploy/prometheus/rules.yml and deploy/grafana/forgesyte-stream.json against a real Prometheus scraping a real server.

Debian's /usr/bin/prometheus (`make test` installs it) scrapes the server on
127.0.0.1 every second while a client overloads the slow pipeline; every
recording rule and every dashboard query must return series, and the drop-rate
alert must fire. The rules are loaded as shipped except for the alerts' `for:`
durations, shortened so that an alert can fire within the test.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from contracts.client import StreamClient
from contracts.targets import free_port
from tests.observability.support import FRAME
from tests.support.server import ROOT, RunningServer, start_server

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "forgesyte-stream.json"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

pytestmark = pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="needs Debian's prometheus package (make test installs it)")


def _shipped_rules() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return loaded


def _recording_rules() -> list[str]:
    return [rule["record"] for group in _shipped_rules()["groups"] for rule in group["rules"] if "record" in rule]


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "warning"})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def prometheus(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("prometheus")
    rules = _shipped_rules()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "1s"
    (directory / "rules.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(directory / "rules.yml")],
        "scrape_configs": [{"job_name": "forgesyte-stream", "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/-/ready", timeout=2, trust_env=False).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"prometheus did not become ready: {process.communicate()[1][-2000:]}")
        time.sleep(0.1)
    yield base
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def load(server: RunningServer) -> Iterator[None]:
    """One client sending 50 fps to the 100 ms pipeline for the module's duration: drops, latency, node durations."""
    stop = threading.Event()

    async def overload() -> None:
        client = await StreamClient.connect(server.ws("slow"))
        reader = asyncio.create_task(_drain(client))
        try:
            while not stop.is_set():
                await client.send_paced(FRAME, 10, 0.02)
        finally:
            reader.cancel()
            await client.close()

    thread = threading.Thread(target=lambda: asyncio.run(overload()), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=15)


async def _drain(client: StreamClient) -> None:
    while True:
        await client.recv(timeout=30)


def _query(prometheus: str, expr: str) -> list[Any]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5, trust_env=False)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {response.status_code} {body}"
    result: list[Any] = body["data"]["result"]
    return result


def _wait_for_series(prometheus: str, queries: list[tuple[str, str]], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    empty = queries
    while empty and time.monotonic() < deadline:
        empty = [(name, expr) for name, expr in empty if not _query(prometheus, expr)]
        if empty:
            time.sleep(0.5)
    assert not empty, f"no series within {timeout}s for: {empty}"


def test_promtool_accepts_the_shipped_rules() -> None:
    run = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_every_recording_rule_and_dashboard_query_returns_series_under_load(prometheus: str, load: None) -> None:
    records = _recording_rules()
    assert len(records) >= 8
    _wait_for_series(prometheus, [(record, record) for record in records] + _dashboard_queries())
    # The figures describe the load: the slow pipeline drops most of 50 fps, and takes at least 100 ms a frame.
    assert float(_query(prometheus, 'forgesyte:stream_drop_ratio:rate1m{pipeline_id="slow"}')[0]["value"][1]) > 0.2
    assert float(_query(prometheus, 'forgesyte:stream_node_duration_seconds:p95_1m{pipeline_id="slow",node_id="sleep"}')[0]["value"][1]) >= 0.1
    assert float(_query(prometheus, "stream_executor_up")[0]["value"][1]) == 1.0


def test_the_drop_rate_alert_fires_for_the_overloaded_slow_pipeline(prometheus: str, load: None) -> None:
    deadline = time.monotonic() + 40
    alerts: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=5, trust_env=False).json()["data"]["alerts"]
        if any(a["labels"]["alertname"] == "ForgeSyteStreamHighDropRate" and a["state"] == "firing" for a in alerts):
            break
        time.sleep(0.5)
    firing = {(a["labels"]["alertname"], a["labels"].get("pipeline_id")) for a in alerts if a["state"] == "firing"}
    assert ("ForgeSyteStreamHighDropRate", "slow") in firing, alerts
    # Nothing else is wrong with this server: no other alert fires.
    assert {name for name, _ in firing} == {"ForgeSyteStreamHighDropRate"}, firing
