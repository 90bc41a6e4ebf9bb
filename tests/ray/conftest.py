"""One real local Ray cluster for the whole test session, bound to 127.0.0.1 only.

Ray takes seconds to start, so every test of the Ray executor shares it. The
cluster runs in this process (`ray.init`); servers started by the tests join it
at its address, as front ends join a production cluster.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import FAULT_PLUGINS, TEST_PIPELINES, RunningServer, start_server

# Before Ray is imported: single-machine mode (everything on 127.0.0.1), no usage reports, and a
# token of this session's own (servers started by the tests inherit it) rather than ~/.ray/auth_token.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))

# Logical CPUs the session's cluster offers: room for two executors of two actors (one each) and a replacement.
CLUSTER_CPUS = 6


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The GCS address (127.0.0.1:port) of the session's cluster."""
    import ray

    from adapters.executors.ray.cluster import NAMESPACE

    context = ray.init(
        address="local",
        num_cpus=CLUSTER_CPUS,
        include_dashboard=False,
        namespace=NAMESPACE,
        log_to_driver=False,
        logging_level="warning",
    )
    address = context.address_info["gcs_address"]
    assert address.startswith("127.0.0.1:"), address
    yield address
    ray.shutdown()


def ray_env(address: str, **extra: str) -> dict[str, str]:
    """The environment of a server that runs its pipelines on the session's cluster."""
    return {
        "FORGESYTE_STREAM_EXECUTOR": "ray",
        "FORGESYTE_STREAM_RAY_ADDRESS": address,
        "FORGESYTE_STREAM_RAY_ACTORS": "2",
        "FORGESYTE_STREAM_RAY_ACTOR_CPUS": "1",
        **extra,
    }


def fault_env(**extra: str) -> dict[str, str]:
    return {
        "FORGESYTE_STREAM_PIPELINES_DIR": str(TEST_PIPELINES),
        "FORGESYTE_STREAM_PLUGINS": FAULT_PLUGINS,
        **extra,
    }


def actor(name: str) -> Any:
    import ray

    from adapters.executors.ray.cluster import NAMESPACE

    return ray.get_actor(name, namespace=NAMESPACE)


@pytest.fixture(scope="package")
def server(ray_cluster: str) -> Iterator[RunningServer]:
    """tests/stream's server (same settings), with its pipelines on the session's Ray cluster."""
    running = start_server(
        ray_env(
            ray_cluster,
            FORGESYTE_STREAM_FRAME_TIMEOUT_MS="500",
            FORGESYTE_STREAM_MAX_FRAME_BYTES="100000",
            FORGESYTE_STREAM_WEBRTC_HOST_ADDRESSES="127.0.0.1",  # tests/ray/test_webrtc_on_ray.py
        )
    )
    executor = running.health().get("executor") or {}
    assert executor.get("kind") == "ray" and executor.get("cluster") == "ok", executor
    yield running
    running.stop()


@pytest.fixture(scope="package")
def shipped_server(ray_cluster: str) -> Iterator[RunningServer]:
    """The shipped pipelines (tracking included) served with their pipelines on the session's Ray cluster."""
    from tests.support.server import ROOT

    running = start_server(
        ray_env(ray_cluster, FORGESYTE_STREAM_PIPELINES_DIR=str(ROOT / "adapters" / "pipelines"), FORGESYTE_STREAM_PLUGINS="")
    )
    assert (running.health().get("executor") or {}).get("kind") == "ray"
    yield running
    running.stop()
