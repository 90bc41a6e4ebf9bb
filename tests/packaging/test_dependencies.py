"""pyproject.toml declares what the server imports, at versions the lock has, and ships what it reads.

`pip install .` installs only what pyproject.toml declares; requirements.lock
(the development environment) holds much more, so an import that only the lock
satisfies works in every test here and fails for the first user who installs
the package. These tests read the source, not a running server: every module
under domain/, application/ and adapters/ (top-level imports, function-level
ones and TYPE_CHECKING ones alike), mapped to the distribution that provides
the module in this environment.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from setuptools import find_packages

from adapters.entrypoints.compat import SUPPORTED_RANGES

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("domain", "application", "adapters")
# Ray is heavy and optional: only the executor that uses it may import it, and only the [ray] extra declares it.
RAY_MODULES = {"adapters/executors/ray/cluster.py", "adapters/executors/ray/actor.py"}
RAY_EXTRA = "ray"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(entries: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, entries)}


def _third_party_imports() -> Iterator[tuple[str, str]]:
    """(module path relative to the repository, top-level name) for every import of a non-stdlib, non-project module."""
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), filename=relative)):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in LAYERS:
                        yield relative, top


@functools.cache
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions(top: str) -> set[str]:
    return {canonicalize_name(d) for d in _providers().get(top, [])}


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split(";")[0].split("==")
            pins[canonicalize_name(name.split("[")[0].strip())] = version.strip()
    return pins


def test_every_import_is_declared() -> None:
    project = _pyproject()["project"]
    base = _requirements(project["dependencies"])
    ray_extra = _requirements(project["optional-dependencies"][RAY_EXTRA])
    problems: list[str] = []
    seen = 0
    for module, top in _third_party_imports():
        seen += 1
        distributions = _distributions(top)
        if not distributions:
            problems.append(f"{module} imports {top}, which no installed distribution provides (install it from requirements.lock)")
            continue
        if module in RAY_MODULES and distributions & ray_extra.keys():
            continue
        if distributions & ray_extra.keys() and not distributions & base.keys():
            problems.append(f"{module} imports {top}, which only the [{RAY_EXTRA}] extra declares; only {sorted(RAY_MODULES)} may")
            continue
        if not distributions & base.keys():
            problems.append(f"{module} imports {top}: distribution {' or '.join(sorted(distributions))} is not in pyproject.toml [project.dependencies]")
    assert seen > 20, "the walk found the imports"
    assert not problems, "\n".join(sorted(set(problems)))


def test_ray_only_in_its_extra() -> None:
    project = _pyproject()["project"]
    assert "ray" not in _requirements(project["dependencies"]), "Ray is optional: the [ray] extra, not the base dependencies"
    assert "ray" in _requirements(project["optional-dependencies"][RAY_EXTRA])
    importers = {module for module, top in _third_party_imports() if top == "ray"}
    assert importers == RAY_MODULES


def test_declared_versions_hold_the_locked_ones() -> None:
    """The development environment (the lock) is the one the suite tests, so every declared range must contain it."""
    project = _pyproject()["project"]
    declared = [*project["dependencies"], *(entry for extra in project["optional-dependencies"].values() for entry in extra)]
    pins = _lock()
    problems = []
    for requirement in map(Requirement, declared):
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement} is declared but requirements.lock does not pin {name}")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement} excludes the locked {name}=={pins[name]}")
    assert not problems, "\n".join(problems)


def test_startup_check_names_the_declared_ranges() -> None:
    """adapters/entrypoints/compat.py reports the supported range; it must be the one pip enforces."""
    base = _requirements(_pyproject()["project"]["dependencies"])
    for distribution, supported in SUPPORTED_RANGES.items():
        assert SpecifierSet(supported) == base[canonicalize_name(distribution)].specifier, distribution


def test_every_package_and_the_page_ship() -> None:
    """The package list is written out (for adapters.web); a new subpackage must be added to it."""
    setuptools_table = _pyproject()["tool"]["setuptools"]
    found = find_packages(where=str(ROOT), include=[f"{layer}*" for layer in LAYERS])
    assert sorted(setuptools_table["packages"]) == sorted([*found, "adapters.web"])
    web = ROOT / setuptools_table["package-dir"]["adapters.web"]
    assert (web / "index.html").is_file()
    patterns = setuptools_table["package-data"]["adapters.web"]
    shipped = {path.name for pattern in patterns for path in web.glob(pattern)}
    assert shipped == {path.name for path in web.iterdir() if path.is_file()}, "every file of the page matches package-data"
    assert setuptools_table["package-data"]["adapters.pipelines"] == ["*.json"]
