"""The executor settings: parsed once, refused with the variable named (no cluster needed)."""

from __future__ import annotations

import pytest

from adapters.settings import Settings, SettingsError


def test_the_thread_executor_is_the_default_and_ray_is_chosen_explicitly() -> None:
    assert Settings.from_env({}).executor == "threads"
    settings = Settings.from_env(
        {
            "FORGESYTE_STREAM_EXECUTOR": "Ray",
            "FORGESYTE_STREAM_RAY_ADDRESS": " 10.0.0.5:6379 ",
            "FORGESYTE_STREAM_RAY_ACTORS": "8",
            "FORGESYTE_STREAM_RAY_ACTOR_CPUS": "0.5",
        }
    )
    assert (settings.executor, settings.ray_address, settings.ray_actors, settings.ray_actor_cpus) == ("ray", "10.0.0.5:6379", 8, 0.5)
    assert Settings.from_env({"FORGESYTE_STREAM_EXECUTOR": "ray", "FORGESYTE_STREAM_RAY_ADDRESS": ""}).ray_address is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FORGESYTE_STREAM_EXECUTOR": "dask"}, r"FORGESYTE_STREAM_EXECUTOR='dask' is not accepted; expected one of threads, ray"),
        ({"FORGESYTE_STREAM_EXECUTOR": "ray", "FORGESYTE_STREAM_RAY_ADDRESS": "head-node"}, r"FORGESYTE_STREAM_RAY_ADDRESS='head-node' is not a Ray cluster address; expected host:port"),
        ({"FORGESYTE_STREAM_EXECUTOR": "ray", "FORGESYTE_STREAM_RAY_ADDRESS": "head:70000"}, r"FORGESYTE_STREAM_RAY_ADDRESS='head:70000' is not a Ray"),
        ({"FORGESYTE_STREAM_EXECUTOR": "ray", "FORGESYTE_STREAM_RAY_ACTORS": "0"}, r"FORGESYTE_STREAM_RAY_ACTORS=0 is out of range; expected an integer in \[1, 1024\]"),
        ({"FORGESYTE_STREAM_EXECUTOR": "ray", "FORGESYTE_STREAM_RAY_ACTOR_CPUS": "0"}, r"FORGESYTE_STREAM_RAY_ACTOR_CPUS=0 is out of range"),
        ({"FORGESYTE_STREAM_RAY_ADDRESS": "127.0.0.1:6379"}, r"FORGESYTE_STREAM_RAY_ADDRESS is set but FORGESYTE_STREAM_EXECUTOR=threads"),
        ({"FORGESYTE_STREAM_EXECUTOR": "threads", "FORGESYTE_STREAM_RAY_ACTORS": "4"}, r"FORGESYTE_STREAM_RAY_ACTORS is set but FORGESYTE_STREAM_EXECUTOR=threads"),
    ],
)
def test_bad_executor_settings_stop_start_up_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_several_workers_on_ray_need_a_shared_cluster_address() -> None:
    import subprocess
    import sys

    from tests.support.server import ROOT

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "FORGESYTE_STREAM_EXECUTOR": "ray"}
    completed = subprocess.run(
        [sys.executable, "-m", "adapters.entrypoints.cli", "serve", "--workers", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 2, completed.stderr
    assert "--workers=2 with FORGESYTE_STREAM_EXECUTOR=ray needs FORGESYTE_STREAM_RAY_ADDRESS" in completed.stderr


def test_serve_refuses_to_start_when_the_cluster_does_not_answer() -> None:
    import os
    import subprocess
    import sys

    from tests.support.server import ROOT, free_port

    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FORGESYTE_STREAM_EXECUTOR": "ray", "FORGESYTE_STREAM_RAY_ADDRESS": address}
    completed = subprocess.run(
        [sys.executable, "-m", "adapters.entrypoints.cli", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert f"configuration error: FORGESYTE_STREAM_RAY_ADDRESS='{address}': no Ray cluster answers there" in completed.stderr
