"""The HTTP side: schemathesis against the OpenAPI document the target itself publishes.

Every check is on (`--checks all`): no 5xx, only documented status codes,
content types and response schemas as declared, invalid input refused, valid
input accepted, 405s with an Allow header. Generation is deterministic and the
example count bounded, so it takes seconds; on failure the assertion message
is schemathesis's report, with a curl line reproducing each failing case.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from contracts.frames import jpeg
from contracts.targets import ROOT, Target
from contracts.whip_client import offer_sdp

SCHEMA_PATH = "/schema/openapi.json"
FAULT_ROLES = ("failing", "crash")
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def _direct_environment() -> dict[str, str]:
    """The environment without proxy settings: the target is reached directly, never through a proxy."""
    return {key: value for key, value in os.environ.items() if key.lower() not in _PROXY_VARIABLES}


@pytest.mark.needs_http
def test_the_target_publishes_an_openapi_document(target: Target) -> None:
    response = httpx.get(f"{target.http_base}{SCHEMA_PATH}", headers=target.auth_headers(), timeout=10, trust_env=False)
    assert response.status_code == 200
    document = response.json()
    assert str(document.get("openapi", "")).startswith("3.")
    assert "/v1/pipelines/{pipeline_id}/frames" in document["paths"]


class _OpenStream:
    """A stream kept open (a frame every half second, well inside the idle timeout) while schemathesis runs.

    GET /v1/streams/{stream_id} then has a real id to answer 200 for, whose
    body schemathesis checks against the schema, besides the 404s.
    """

    def __init__(self, target: Target) -> None:
        self._target = target
        self._stop = threading.Event()
        self._opened = threading.Event()
        self.address = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        client = await self._target.open("result")
        try:
            host, port = client.connection.local_address[:2]
            self.address = f"{host}:{port}"
            self._opened.set()
            while not self._stop.is_set():
                await client.send_raw(jpeg())
                await client.recv()
                await asyncio.sleep(0.5)
        finally:
            await client.close()

    def __enter__(self) -> str:
        """The open stream's session id, as GET /v1/streams lists it."""
        self._thread.start()
        assert self._opened.wait(15), "the stream did not open"
        http_base = self._target.http_base
        assert http_base is not None
        for _ in range(100):
            listed = httpx.get(f"{http_base}/v1/streams", headers=self._target.auth_headers(), timeout=10, trust_env=False).json()
            mine = [stream["session_id"] for stream in listed if stream["remote_address"] == self.address]
            if mine:
                return str(mine[0])
            time.sleep(0.05)
        raise AssertionError(f"the open stream from {self.address} is not listed by GET /v1/streams")

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def _open_whip_session(target: Target) -> str:
    """A WHIP session opened with a real offer (its publisher never connects, so it lasts until the connect timeout); '' when the target serves no WHIP."""
    assert target.http_base is not None
    document = httpx.get(f"{target.http_base}/schema/openapi.json", headers=target.auth_headers(), timeout=10, trust_env=False).json()
    if "/v1/whip" not in document.get("paths", {}):
        return ""
    sdp = asyncio.run(offer_sdp())
    answer = httpx.post(
        f"{target.http_base}/v1/whip?pipeline_id={target.pipeline('result')}",
        content=sdp.encode(),
        headers={"content-type": "application/sdp", **target.auth_headers()},
        timeout=30,
        trust_env=False,
    )
    assert answer.status_code == 201, answer.text
    return answer.headers["location"].rsplit("/", 1)[1]


@pytest.mark.needs_http
def test_schemathesis_finds_no_failure_with_every_check_on(target: Target, tmp_path: Path) -> None:
    with _OpenStream(target) as stream_id:
        _run_schemathesis(target, tmp_path, stream_id, _open_whip_session(target))


def _run_schemathesis(target: Target, tmp_path: Path, stream_id: str, whip_session: str) -> None:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    command = [
        str(schemathesis),
        "--config-file",
        str(ROOT / "contracts" / "schemathesis.toml"),
        "run",
        f"{target.http_base}{SCHEMA_PATH}",
        "--checks",
        "all",
        "--max-examples",
        "30",
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "15",
        "--no-color",
        *(part for name, value in target.auth_headers().items() for part in ("--header", f"{name}: {value}")),
    ]
    env = {
        **_direct_environment(),
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "contracts.schemathesis_hooks",
        "FORGESYTE_CONTRACT_FAULT_PIPELINES": ",".join(target.pipeline(role) for role in FAULT_ROLES),
        "FORGESYTE_CONTRACT_OPEN_STREAM": stream_id,
        "FORGESYTE_CONTRACT_WHIP_SESSION": whip_session,
    }
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found failures (exit {run.returncode}):\n{report}"
    assert "No issues found" in report, report
