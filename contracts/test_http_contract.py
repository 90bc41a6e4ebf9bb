"""The HTTP side: schemathesis against the OpenAPI document the target itself publishes.

Every check is on (`--checks all`): no 5xx, only documented status codes,
content types and response schemas as declared, invalid input refused, valid
input accepted, 405s with an Allow header. Generation is deterministic and the
example count bounded, so it takes seconds; on failure the assertion message
is schemathesis's report, with a curl line reproducing each failing case.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from contracts.targets import ROOT, Target

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


@pytest.mark.needs_http
def test_schemathesis_finds_no_failure_with_every_check_on(target: Target, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    command = [
        str(schemathesis),
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
    }
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found failures (exit {run.returncode}):\n{report}"
    assert "No issues found" in report, report
