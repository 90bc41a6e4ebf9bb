"""The hexagonal layering, checked on the source: which layer may import what.

Every import form counts (`import x`, `import x.y as z`, `from x import y`,
`from . import y`, `from ..x import y`, imports inside functions or under
TYPE_CHECKING), because a forbidden import hidden in a function body still
couples the layer to the library.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("domain", "application", "adapters")
ADAPTER_ONLY = frozenset(
    {
        "litestar",
        "uvicorn",
        "prometheus_client",
        "structlog",
        "cv2",
        "onnxruntime",
        "numpy",
        "rapidocr",
        "supervision",
        "dependency_injector",
        "msgspec",
    }
)
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name
    line: int

    @property
    def top(self) -> str:
        return self.module.split(".")[0]


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def scan_source(source: str, module: str, *, package: bool = False) -> list[Import]:
    """Every module a source imports, relative imports resolved against `module`."""
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                found.append(Import(node.module, node.lineno))
                continue
            base = module.split(".") if package else module.split(".")[:-1]
            if node.level - 1 > 0:
                base = base[: len(base) - (node.level - 1)]
            if node.module:
                found.append(Import(".".join([*base, node.module]), node.lineno))
            else:
                # `from . import a, b` imports the submodules (or names of) the package itself.
                found.extend(Import(".".join([*base, alias.name]), node.lineno) for alias in node.names)
    return found


def source_files(layer: str) -> list[Path]:
    return sorted(path for path in (ROOT / layer).rglob("*.py") if "node_modules" not in path.parts)


def imports_of(path: Path) -> list[Import]:
    return scan_source(path.read_text(encoding="utf-8"), module_name(path), package=is_package(path))


def allowed_for(layer: str) -> set[str] | None:
    """Top-level names the layer may import; None means anything not forbidden elsewhere."""
    if layer == "domain":
        return {"domain"}
    if layer == "application":
        return {"domain", "application"}
    return None


def violations(layer: str, imports: list[Import], where: str) -> list[str]:
    problems = []
    own = allowed_for(layer)
    for item in imports:
        if own is not None and item.top not in STDLIB and item.top not in own:
            problems.append(f"{where}:{item.line} imports {item.module} ({layer} may import only the standard library and {sorted(own)})")
        if layer != "adapters" and item.top in ADAPTER_ONLY:
            problems.append(f"{where}:{item.line} imports {item.module}, which only adapters/ may import")
    return problems


# The scanner itself --------------------------------------------------------------


def test_scanner_sees_every_import_form() -> None:
    source = """
import os
import numpy as np, json
import cv2.data
from litestar import Litestar
from . import sibling
from .pipeline import thing
from .. import domain_helpers
from ..domain.frame import Frame
def later():
    import msgspec
    from structlog import get_logger
if False:
    from uvicorn import Config
"""
    names = {item.module for item in scan_source(source, "application.sub.module")}
    assert names == {
        "os",
        "numpy",
        "json",
        "cv2.data",
        "litestar",
        "application.sub.sibling",
        "application.sub.pipeline",
        "application.domain_helpers",
        "application.domain.frame",
        "msgspec",
        "structlog",
        "uvicorn",
    }


def test_scanner_resolves_relative_imports_inside_a_package_init() -> None:
    names = {item.module for item in scan_source("from . import x\nfrom .y import z\n", "adapters.plugins", package=True)}
    assert names == {"adapters.plugins.x", "adapters.plugins.y"}


@pytest.mark.parametrize(
    ("layer", "source", "culprit"),
    [
        ("domain", "import numpy\n", "numpy"),
        ("domain", "from application.ports import Plugin\n", "application.ports"),
        ("domain", "def f():\n    from litestar import get\n", "litestar"),
        ("application", "from adapters.settings import Settings\n", "adapters.settings"),
        ("application", "import cv2\n", "cv2"),
        ("application", "from msgspec import json\n", "msgspec"),
        ("application", "import requests\n", "requests"),
    ],
)
def test_scanner_reports_a_forbidden_import(layer: str, source: str, culprit: str) -> None:
    problems = violations(layer, scan_source(source, f"{layer}.synthetic"), f"{layer}/synthetic.py")
    assert problems
    assert all(culprit in problem for problem in problems)


def test_scanner_accepts_allowed_imports() -> None:
    source = "from __future__ import annotations\nimport math\nfrom collections.abc import Mapping\nfrom domain import Frame\nfrom .ports import Plugin\n"
    assert violations("application", scan_source(source, "application.synthetic"), "application/synthetic.py") == []


def test_the_layers_have_sources() -> None:
    for layer in LAYERS:
        assert source_files(layer), layer
    assert (ROOT / "adapters" / "container.py") in source_files("adapters")


# The real code ----------------------------------------------------------------------


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_follow_the_hexagon(layer: str) -> None:
    problems: list[str] = []
    for path in source_files(layer):
        problems.extend(violations(layer, imports_of(path), str(path.relative_to(ROOT))))
    assert problems == []


def test_exactly_one_adapter_imports_dependency_injector_and_it_is_the_container() -> None:
    importers = [
        str(path.relative_to(ROOT))
        for layer in LAYERS
        for path in source_files(layer)
        if any(item.top == "dependency_injector" for item in imports_of(path))
    ]
    assert importers == ["adapters/container.py"]


def test_adapter_only_libraries_are_not_in_the_standard_library() -> None:
    # Otherwise the domain rule above would let them through as "standard library".
    assert not ADAPTER_ONLY & STDLIB
