"""The client package stands alone: installing it pulls nothing of the server, and its code imports nothing of it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "python"
SERVER_DISTRIBUTIONS = {"litestar", "uvicorn", "onnxruntime", "rapidocr", "dependency-injector", "forgesyte-stream", "uvloop", "structlog", "prometheus-client"}
# Import names the client may use: the standard library, itself, and its declared dependencies.
ALLOWED_IMPORTS = {"forgesyte_stream_client", "websockets", "pydantic", "numpy", "cv2", "supervision", "av", "tqdm"}
# The [webrtc] extra's imports, and the only modules that may use them (the package imports without them).
EXTRA_IMPORTS = {"aiortc": {"webrtc.py", "webrtc_session.py"}, "aioice": {"webrtc.py"}}


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-")


@pytest.mark.timeout(240)
def test_installing_the_client_into_a_clean_environment_pulls_no_server_package(tmp_path: Path) -> None:
    """pip resolves the package as for an empty environment (--ignore-installed) and reports what it would install."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--disable-pip-version-check",
         "--report", str(report), str(PACKAGE)],
        capture_output=True, text=True, timeout=230, check=False,
    )
    assert done.returncode == 0, done.stderr
    installed = {_normalise(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    assert "forgesyte-stream-client" in installed
    assert {"websockets", "pydantic", "supervision", "opencv-python-headless"} <= installed
    assert not installed & SERVER_DISTRIBUTIONS, sorted(installed & SERVER_DISTRIBUTIONS)
    assert "opencv-python" not in installed  # supervision >= 0.31.2 no longer forces the GUI build


def test_the_client_imports_only_the_standard_library_and_its_declared_dependencies() -> None:
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, str] = {}
    for path in (PACKAGE / "forgesyte_stream_client").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                top = name.split(".")[0]
                if top in EXTRA_IMPORTS and path.name in EXTRA_IMPORTS[top]:
                    continue
                if top not in stdlib and top not in ALLOWED_IMPORTS and top != "__future__":
                    found[top] = str(path.relative_to(ROOT))
    assert not found, f"imports outside the client's declared dependencies: {found}"


def test_the_package_declares_the_console_script_and_no_server_dependency() -> None:
    import tomllib

    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == "forgesyte-stream-client"
    assert project["scripts"] == {"forgesyte-stream-client": "forgesyte_stream_client.cli:main"}
    declared = {_normalise(dep.split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip()) for dep in project["dependencies"]}
    assert not declared & SERVER_DISTRIBUTIONS


def test_the_webrtc_extra_is_optional_and_the_package_imports_without_it() -> None:
    import tomllib

    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra = {_normalise(dep.split(">")[0].split("<")[0].split("=")[0].strip()) for dep in project["optional-dependencies"]["webrtc"]}
    assert extra == {"aiortc", "aioice"}
    code = "import sys; sys.modules['aiortc'] = sys.modules['aioice'] = None; import forgesyte_stream_client, forgesyte_stream_client.cli"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
