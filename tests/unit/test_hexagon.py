"""The one hexagon rule import-linter cannot say: domain/ and application/ import only the standard library.

The other rules (layers, forbidden frameworks, the container alone importing
dependency_injector, the client standing alone, no cycles) are contracts in
pyproject.toml's [tool.importlinter], checked by `lint-imports` in `make lint`.
A forbidden contract names the packages it forbids; this test closes the gap
for a library nobody thought to list. grimp builds the same graph lint-imports
uses, so imports inside functions and under TYPE_CHECKING count too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import pytest

STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}
ALLOWED = {"domain": {"domain"}, "application": {"domain", "application"}}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("domain", "application", include_external_packages=True, cache_dir=None)


def outside_imports(graph: grimp.ImportGraph, layer: str) -> list[str]:
    problems = []
    for module in sorted(graph.find_descendants(layer) | {layer}):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            top = imported.split(".")[0]
            if top not in STDLIB and top not in ALLOWED[layer]:
                problems.append(f"{module} imports {imported}")
    return problems


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_the_standard_library_and_inner_layers(graph: grimp.ImportGraph, layer: str) -> None:
    assert graph.find_descendants(layer), f"{layer} has no modules: the check would pass on nothing"
    assert outside_imports(graph, layer) == []


def test_the_check_sees_a_third_party_import_inside_a_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "domain"
    package.mkdir()
    (package / "__init__.py").write_text("def f() -> None:\n    import requests\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "domain", raising=False)
    synthetic = grimp.build_graph("domain", include_external_packages=True, cache_dir=None)
    assert outside_imports(synthetic, "domain") == ["domain imports requests"]
