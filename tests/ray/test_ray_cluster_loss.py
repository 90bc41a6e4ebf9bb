"""A front end whose Ray cluster goes away while it serves: every frame fails, the process stays, health says so.

The front end runs in its own process (a process joins one cluster at a time, and
this test session's process is joined to the session's cluster); the cluster is a
head node of its own, started with `ray start --head` on 127.0.0.1 and killed by
its process group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ray.conftest import fault_env
from tests.support.server import ROOT, free_port

DRIVER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from adapters.container import Container, worker_pipeline_service
    from adapters.executors.ray.executor import RayFrameExecutor
    from application.ports import FrameJob
    from adapters.settings import Settings
    from tests.support.media import jpeg

    settings = Settings.from_env()
    container = Container(settings=settings)
    executor = RayFrameExecutor(settings, container.frame_service(), container.metrics(), worker_service=worker_pipeline_service)
    executor.open_stream("s")

    async def frame(index):
        try:
            result = await executor.run(FrameJob("counter", index, jpeg(), "s"), timeout_s=5)
            return {"ok": result.result["count"]}
        except Exception as error:
            return {"error": type(error).__name__, "code": getattr(error, "code", None), "detail": getattr(error, "detail", str(error))}

    def say(value):
        print(json.dumps(value), flush=True)

    say({"before": asyncio.run(frame(0)), "health": executor.health()})
    sys.stdin.readline()  # the cluster is gone now; its actor's process notices its raylet died moments later
    deadline = time.monotonic() + 30
    while executor.health()["cluster"] == "ok" and time.monotonic() < deadline:
        time.sleep(0.1)
    noticed = executor.health()
    started = time.monotonic()
    say({"after": [asyncio.run(frame(i)) for i in range(1, 4)], "seconds": time.monotonic() - started, "noticed": noticed})
    time.sleep(1)
    say({"health": executor.health()})
    """
)


@pytest.fixture
def doomed_head() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--port", str(port), "--num-cpus", "1", "--include-dashboard=false", "--disable-usage-stats"],
        env=os.environ.copy(),  # single-machine mode and the session's token, from conftest
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"127.0.0.1:{port}", head
    finally:
        _kill_group(head)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            continue
    # The group's other members (gcs_server, raylet) outlive the `ray start` process by moments.
    time.sleep(0.5)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_cluster_lost_while_serving_fails_each_frame_and_health_says_so(doomed_head: tuple[str, subprocess.Popen[bytes]]) -> None:
    address, head = doomed_head
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        **fault_env(
            FORGESYTE_STREAM_EXECUTOR="ray",
            FORGESYTE_STREAM_RAY_ADDRESS=address,
            FORGESYTE_STREAM_RAY_ACTORS="1",
        ),
    }
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert driver.stdout is not None and driver.stdin is not None
        first = json.loads(driver.stdout.readline() or "null") or pytest.fail(f"driver failed: {driver.stderr.read() if driver.stderr else ''}")
        assert first["before"] == {"ok": 1}
        assert first["health"]["cluster"] == "ok"
        _kill_group(head)
        driver.stdin.write("go\n")
        driver.stdin.flush()
        after = json.loads(driver.stdout.readline())
        for outcome in after["after"]:
            assert outcome.get("code") == "pipeline_failure", after
        assert after["seconds"] < 20, "frames fail within their deadline, not after Ray's reconnect timeout"
        assert after["noticed"]["cluster"] == "unreachable", after["noticed"]
        # Still so a while later: no replacement can start without the cluster.
        health = json.loads(driver.stdout.readline())["health"]
        assert health["cluster"] == "unreachable", health
        assert health["actors"][0]["state"] == "dead"
        assert driver.poll() is None  # the front end is still up
    finally:
        # Its Ray shutdown would wait for the dead cluster: this process is the test's own, ended by its id.
        driver.kill()
        driver.wait()
