"""Regenerates the clients' message types from asyncapi.yaml; `--check` only compares.

    python -m contracts.generate_models          # (make models) rewrite every generated file
    python -m contracts.generate_models --check  # exit 1 when one of them is stale

Three consumers get the same types: the contract suite (contracts/generated/),
the Python client package (clients/python/forgesyte_stream_client/generated/,
the same pydantic models, so that the package needs nothing from this
repository at run time) and the browser page (clients/web/messages.js, JSDoc
typedefs and the contract's constants, made by contracts/jsdoc_types.py).

The generator is asyncapi-python's codegen (PyPI `asyncapi-python[codegen]`,
pinned in requirements.lock), which turns the document's message payloads into
pydantic v2 models through datamodel-code-generator. It also writes routers
and an application class for its own AMQP and in-memory runtime; those have no
WebSocket transport and are not used, so only the message models are kept.
The generator stamps its output with the time of the run: that line is
replaced by the SHA-256 of the source document, which makes the output a pure
function of the document and lets a test tell a stale copy at a glance
(contracts/test_generated_models.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from contracts.asyncapi_doc import DEFAULT_PATH
from contracts.jsdoc_types import render_jsdoc

ROOT = Path(__file__).resolve().parent.parent
GENERATED_DIR = Path(__file__).resolve().parent / "generated"
MODELS_FILE = GENERATED_DIR / "messages.py"
CLIENT_GENERATED_DIR = ROOT / "clients" / "python" / "forgesyte_stream_client" / "generated"
WEB_TYPES_FILE = ROOT / "clients" / "web" / "messages.js"
GENERATOR = "asyncapi-python"
SOURCE_HASH_PREFIX = "# source-sha256: "

_INIT = '''"""Models generated from asyncapi.yaml; regenerate with `make models`, never edit by hand.

messages.py holds one pydantic model per message payload (FrameResultPayload,
FrameDroppedPayload, ...) and one root model per message (FrameResult, ...).
"""
'''


class GenerationError(RuntimeError):
    """The generator failed or produced no message models; its output is in the message."""


def document_hash(document: Path = DEFAULT_PATH) -> str:
    return hashlib.sha256(document.read_bytes()).hexdigest()


def recorded_hash(models_file: Path = MODELS_FILE) -> str | None:
    """The hash of the document the committed models were generated from, None when not recorded."""
    for line in models_file.read_text(encoding="utf-8").splitlines()[:10]:
        if line.startswith(SOURCE_HASH_PREFIX):
            return line[len(SOURCE_HASH_PREFIX):].strip()
    return None


def _codegen_command() -> list[str]:
    beside = Path(sys.executable).parent / "asyncapi-python-codegen"
    found = str(beside) if beside.exists() else shutil.which("asyncapi-python-codegen")
    if found is None:
        raise GenerationError("asyncapi-python-codegen is not installed; run `make setup` (it is pinned in requirements.lock)")
    return [found]


def _version() -> str:
    from importlib.metadata import version

    return version(GENERATOR)


def render_models(document: Path = DEFAULT_PATH) -> dict[str, str]:
    """File name -> content of contracts/generated/ for this document (nothing is written)."""
    with tempfile.TemporaryDirectory(prefix="asyncapi-codegen-") as scratch:
        out = Path(scratch) / "package"
        env = {**os.environ, "PYTHONWARNINGS": "ignore::FutureWarning"}
        run = subprocess.run(
            [*_codegen_command(), str(document), str(out), "--force"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        produced = out / "messages" / "json" / "__init__.py"
        if run.returncode != 0 or not produced.is_file():
            raise GenerationError(f"asyncapi-python-codegen failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
        code = produced.read_text(encoding="utf-8")
    header = (
        f"# Generated from asyncapi.yaml by {GENERATOR} {_version()} (codegen); do not edit by hand.\n"
        "# Regenerate with `make models` (python -m contracts.generate_models).\n"
        f"{SOURCE_HASH_PREFIX}{document_hash(document)}\n"
    )
    # The generator's own first lines name a temporary schema file and the time of the run.
    body = re.sub(r"\A(#[^\n]*\n)+", "", code)
    if "class FrameResultPayload" not in body:
        raise GenerationError("the generator produced no FrameResultPayload model; is the document's payload schema intact?")
    return {"__init__.py": _INIT, "messages.py": header + body}


_CLIENT_INIT = _INIT.replace(
    "never edit by hand.", "never edit by hand.\n\nThe same models as the server repository's contracts/generated/, copied into the package."
)


def render(document: Path = DEFAULT_PATH) -> dict[Path, str]:
    """Path -> content of every generated file for this document (nothing is written)."""
    models = render_models(document)
    files: dict[Path, str] = {GENERATED_DIR / name: content for name, content in models.items()}
    files[CLIENT_GENERATED_DIR / "__init__.py"] = _CLIENT_INIT
    files[CLIENT_GENERATED_DIR / "messages.py"] = models["messages.py"]
    files[WEB_TYPES_FILE] = render_jsdoc(yaml.safe_load(document.read_text(encoding="utf-8")), document_hash(document))
    return files


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def stale_files(document: Path = DEFAULT_PATH) -> list[str]:
    """Repository paths of the generated files that differ from what the generator makes of `document` now."""
    return [
        _name(path)
        for path, content in render(document).items()
        if not path.is_file() or path.read_text(encoding="utf-8") != content
    ]


def write(document: Path = DEFAULT_PATH) -> list[Path]:
    written = []
    for path, content in render(document).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contracts.generate_models", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the generated models are stale")
    parser.add_argument("--document", type=Path, default=DEFAULT_PATH, help="the AsyncAPI document (default: asyncapi.yaml)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_files(args.document)
            if stale:
                print(f"generated types are stale ({', '.join(stale)}): run `make models`", file=sys.stderr)
                return 1
            print("generated types are up to date")
            return 0
        for path in write(args.document):
            print(f"wrote {_name(path)}")
        return 0
    except GenerationError as error:
        print(f"generate_models: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
