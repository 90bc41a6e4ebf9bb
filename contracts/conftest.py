"""The contract suite's command line, targets and ordering; see contracts/README.md.

    pytest contracts                                   # self-started litestar and websockets servers
    pytest contracts --target ws://10.0.0.5:8000 --target-shutdown 'ssh box systemctl stop forgesyte'

Every case that talks to a server takes the `target` fixture and runs once per
target. Items are ordered so that each target's cases run together, its
shutdown case last (it ends the server), followed by the session-end coverage
check for that target (contracts/test_zz_coverage.py).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from contracts.asyncapi_doc import Contract, load_contract
from contracts.coverage import ContractCoverage
from contracts.targets import (
    HAS_HTTP,
    ROLES,
    SUITE_IDLE_TIMEOUT_S,
    Target,
    TargetUnavailable,
    foreign_http_base,
    parse_target,
    start_local,
    wait_until_listening,
)

DEFAULT_TARGETS = ("litestar", "websockets")
TARGET_ENV = "FORGESYTE_CONTRACT_TARGET"
SHUTDOWN_ENV = "FORGESYTE_CONTRACT_SHUTDOWN"
API_KEY_ENV = "FORGESYTE_CONTRACT_API_KEY"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("contract", "ForgeSyte Stream contract suite (contracts/)")
    group.addoption(
        "--target",
        action="append",
        default=[],
        help=f"litestar, websockets (self-started) or ws://HOST:PORT (running); repeatable; env {TARGET_ENV}; default: litestar and websockets",
    )
    group.addoption(
        "--target-shutdown",
        default=os.environ.get(SHUTDOWN_ENV),
        help=f"shell command that makes a ws:// target begin a graceful shutdown, as SIGTERM does; env {SHUTDOWN_ENV}",
    )
    group.addoption("--target-http", default=None, help="HTTP base URL of a ws:// target's API (default: its host and port); 'none' if it has none")
    group.addoption("--target-wait", type=float, default=60.0, help="seconds to wait for a ws:// target to accept connections")
    group.addoption("--pipeline", action="append", default=[], help=f"ROLE=ID: the target's pipeline for a role ({', '.join(ROLES)})")
    group.addoption(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"the API key a ws:// target requires (env {API_KEY_ENV}); without it the target is taken to require none",
    )
    group.addoption("--max-frame-bytes", type=int, default=None, help="the target's FORGESYTE_STREAM_MAX_FRAME_BYTES (default: the document's)")
    group.addoption(
        "--idle-timeout-s", type=float, default=None, help="the target's FORGESYTE_STREAM_IDLE_TIMEOUT_S (default: the document's)"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ends_target: the case shuts its target down, so it runs after the target's other cases")
    config.addinivalue_line("markers", "coverage_check: the session-end check of a target; runs after all of its cases")
    config.addinivalue_line("markers", "needs_http: the case talks to the target's HTTP API")


def target_values(config: pytest.Config) -> list[str]:
    values = list(config.getoption("--target")) or [v for v in os.environ.get(TARGET_ENV, "").split(",") if v.strip()]
    return [value.strip() for value in values] or list(DEFAULT_TARGETS)


def _has_http(config: pytest.Config, name: str) -> bool:
    if name in HAS_HTTP:
        return HAS_HTTP[name]
    return (config.getoption("--target-http") or "").lower() != "none"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = target_values(metafunc.config)
    for name in names:
        parse_target(name)
    if "target" in metafunc.fixturenames:
        metafunc.parametrize("target", names, indirect=True, scope="session")
    if "target_name" in metafunc.fixturenames:
        metafunc.parametrize("target_name", names, scope="session")


def _target_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    return callspec.params.get("target", callspec.params.get("target_name"))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A target without an HTTP API has no HTTP cases: deselected, visibly, rather than skipped.
    no_http = [item for item in items if item.get_closest_marker("needs_http") and not _has_http(config, str(_target_of(item)))]
    if no_http:
        config.hook.pytest_deselected(items=no_http)
        items[:] = [item for item in items if item not in no_http]
    order = {name: position for position, name in enumerate(target_values(config))}

    def key(indexed: tuple[int, pytest.Item]) -> tuple[int, int, int]:
        position, item = indexed
        name = _target_of(item)
        phase = 2 if item.get_closest_marker("coverage_check") else 1 if item.get_closest_marker("ends_target") else 0
        return (-1 if name is None else order.get(name, len(order)), phase, position)

    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


@pytest.fixture(scope="session")
def contract() -> Contract:
    return load_contract()


COVERAGES = pytest.StashKey[dict[str, ContractCoverage]]()


@pytest.fixture(scope="session")
def coverages(request: pytest.FixtureRequest, contract: Contract) -> dict[str, ContractCoverage]:
    """One coverage record per target, kept after the target's server is gone (and shown in the summary)."""
    return request.config.stash.setdefault(COVERAGES, {})


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    for name, coverage in config.stash.get(COVERAGES, {}).items():
        terminalreporter.write_sep("-", f"contract coverage: {name}")
        terminalreporter.write_line(coverage.report())


def _pipelines(config: pytest.Config) -> dict[str, str]:
    chosen = dict(ROLES)
    for pair in config.getoption("--pipeline"):
        role, _, pipeline_id = pair.partition("=")
        if role not in ROLES or not pipeline_id:
            raise pytest.UsageError(f"--pipeline {pair!r}: expected ROLE=ID with ROLE one of {', '.join(ROLES)}")
        chosen[role] = pipeline_id
    return chosen


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest, contract: Contract, coverages: dict[str, ContractCoverage]) -> Iterator[Target]:
    name, ws_base = parse_target(request.param)
    config = request.config
    # Self-started targets require a key made for this run, so that the secured configuration is the one checked.
    api_key = secrets.token_urlsafe(24) if ws_base is None else config.getoption("--api-key")
    coverage = coverages.setdefault(name, ContractCoverage(contract, keyless=api_key is None))
    limit = config.getoption("--max-frame-bytes") or int(contract.message("Frame")["payload"]["x-max-bytes"])
    idle_timeout_s = config.getoption("--idle-timeout-s") or float(contract.message("IdleTimeoutError")["x-default-timeout-s"])
    if ws_base is None:
        local = start_local(name, api_key=api_key)
        yield Target(
            name=name,
            ws_base=f"ws://127.0.0.1:{local.port}",
            http_base=f"http://127.0.0.1:{local.port}" if HAS_HTTP[name] else None,
            coverage=coverage,
            max_frame_bytes=limit,
            idle_timeout_s=SUITE_IDLE_TIMEOUT_S,
            pipelines=_pipelines(config),
            shutdown=local.terminate,
            local=local,
            api_key=api_key,
        )
        local.stop()
        return
    host, port = ws_base.rsplit("//", 1)[1].rsplit(":", 1)
    if not wait_until_listening(host, int(port), config.getoption("--target-wait")):
        raise TargetUnavailable(f"{ws_base} did not accept a connection within {config.getoption('--target-wait')} s")
    command = config.getoption("--target-shutdown")
    http = config.getoption("--target-http")

    def shutdown() -> None:
        if not command:
            raise pytest.UsageError(
                f"the shutdown case needs a way to shut {ws_base} down: pass --target-shutdown CMD (or {SHUTDOWN_ENV})"
            )
        subprocess.run(command, shell=True, check=True, timeout=60)

    yield Target(
        name=name,
        ws_base=ws_base,
        http_base=None if (http or "").lower() == "none" else (http or foreign_http_base(ws_base)),
        coverage=coverage,
        max_frame_bytes=limit,
        idle_timeout_s=idle_timeout_s,
        pipelines=_pipelines(config),
        shutdown=shutdown,
        api_key=api_key,
    )
