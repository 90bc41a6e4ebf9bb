"""A front end and a cluster set up the way Ray's own tools do it: `ray start --head` with its defaults.

Since Ray 2.60, `ray start --head` turns token authentication on whenever a
token exists (`RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH`, `~/.ray/auth_token`),
while `ray.init(address=...)` sends none unless `RAY_AUTH_MODE=token`. Here
the token is where `ray get-auth-token --generate` puts it, in a HOME of the
test's own, and neither side is told `RAY_AUTH_MODE`.

The cluster runs in a PID namespace the test creates (`unshare --pid`), so
that `ray stop` there stops this cluster only, not every Ray process on the
machine (other tests' clusters included); everything listens on 127.0.0.1.
The front end is the real `forgesyte-stream serve`, outside the namespace,
talked to over a real WebSocket.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.client import StreamClient
from tests.ray.conftest import ray_env
from tests.support.media import FACE_JPEG
from tests.support.server import RunningServer, free_port, start_server

RAY_CLI = str(Path(sys.executable).with_name("ray"))
# The front end retries a lost cluster at most this far apart (FORGESYTE_STREAM_RAY_RECONNECT_S).
RECONNECT_S = 2.0
# The documented bound once the head answers again: RECONNECT_S, then joining and starting the actors.
REJOIN_BOUND_S = 30.0


class NamespacedCluster:
    """A shell that is PID 1 of a new PID namespace and runs `ray` commands sent to it, one at a time.

    When it ends (its stdin closed, or unshare killed), the kernel kills every
    process left in the namespace: no Ray process outlives the test.
    """

    def __init__(self, env: dict[str, str], log: Path) -> None:
        if shutil.which("unshare") is None or os.geteuid() != 0:
            pytest.skip("a PID namespace of the test's own needs unshare (util-linux) and root")
        loop = f'while IFS= read -r line; do bash -c "$line" >>{log} 2>&1; echo "rc=$?"; done'
        self.log = log
        self.shell = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "bash", "-c", loop],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, command: str) -> None:
        assert self.shell.stdin is not None and self.shell.stdout is not None
        self.shell.stdin.write(command + "\n")
        self.shell.stdin.flush()
        answer = self.shell.stdout.readline().strip()
        if answer != "rc=0":
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            pytest.fail(f"{command!r} in the cluster's namespace: {answer or 'no answer (unshare needs root)'}\n{tail}")

    def close(self) -> None:
        if self.shell.poll() is None:
            self.shell.kill()  # --kill-child: PID 1 of the namespace dies, and with it every process there
        self.shell.wait(timeout=30)


@pytest.fixture
def ray_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, dict[str, str]]]:
    """A HOME holding ~/.ray/auth_token, and the environment both sides run with: no RAY_AUTH_* set."""
    root = Path(tempfile.mkdtemp(prefix="fsr-", dir="/tmp"))  # short: Ray's socket paths live under it
    home = root / "home"
    home.mkdir()
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    # Ray's own switch for a machine-local cluster: without it `--node-ip-address 127.0.0.1` is
    # replaced by the machine's interface address.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    env = dict(os.environ)
    generated = subprocess.run([RAY_CLI, "get-auth-token", "--generate"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert generated.returncode == 0, generated.stderr
    assert (home / ".ray" / "auth_token").stat().st_size > 0
    yield root, env
    shutil.rmtree(root, ignore_errors=True)


def _head_command(port: int, temp_dir: Path) -> str:
    return (
        f"{RAY_CLI} start --head --port {port} --node-ip-address 127.0.0.1 --num-cpus 2 "
        f"--include-dashboard=false --disable-usage-stats --temp-dir {temp_dir}"
    )


async def _one_frame(client: StreamClient) -> dict:
    await client.send_raw(FACE_JPEG.read_bytes())
    return await asyncio.wait_for(client.recv(), timeout=30)


def _cluster(health: dict) -> str:
    return (health.get("executor") or {}).get("cluster", "")


def test_a_front_end_joins_ray_start_defaults_and_rejoins_the_cluster_after_ray_stop_and_start(
    ray_home: tuple[Path, dict[str, str]],
) -> None:
    root, env = ray_home
    port = free_port()
    cluster = NamespacedCluster(env, root / "cluster.log")
    server: RunningServer | None = None
    try:
        cluster.run(_head_command(port, root / "ray"))
        server = start_server(
            ray_env(f"127.0.0.1:{port}", FORGESYTE_STREAM_RAY_ACTORS="1", FORGESYTE_STREAM_RAY_RECONNECT_S=str(RECONNECT_S)),
            timeout=120,
        )
        assert _cluster(server.health()) == "ok"
        pid = server.process.pid

        async def scenario() -> dict:
            assert server is not None
            client = await StreamClient.connect(server.ws("faces"))
            before = await _one_frame(client)
            assert before["result"]["faces"], before

            cluster.run(f"{RAY_CLI} stop")
            lost = await asyncio.to_thread(server.wait_for, lambda h: _cluster(h) == "unreachable", 60.0, 0.2)
            failed = await _one_frame(client)
            assert failed.get("error") == "pipeline_failure", failed

            cluster.run(_head_command(port, root / "ray"))
            back = time.monotonic()
            rejoined = await asyncio.to_thread(server.wait_for, lambda h: _cluster(h) == "ok", REJOIN_BOUND_S, 0.2)
            rejoin_s = time.monotonic() - back
            # The same session, never closed: its frames go through again.
            after = await _one_frame(client)
            assert after["result"]["faces"], after
            await client.close()
            return {"lost": lost, "rejoined": rejoined, "rejoin_s": rejoin_s}

        outcome = asyncio.run(scenario())
        assert server.process.poll() is None and server.process.pid == pid, "the front end was not restarted"
        print(f"rejoined {outcome['rejoin_s']:.1f} s after `ray start --head` returned")
        assert outcome["lost"]["status"] == "degraded", outcome["lost"]
        assert outcome["rejoined"]["status"] == "ok", outcome["rejoined"]
        token = (root / "home" / ".ray" / "auth_token").read_text().strip()
        assert token not in server.log_text()
    finally:
        if server is not None:
            server.stop()
        cluster.close()


@pytest.mark.parametrize("token", ["wrong", "none"])
def test_a_refused_or_missing_token_stops_start_up_naming_where_the_token_is_read(
    ray_home: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    root, env = ray_home
    port = free_port()
    cluster = NamespacedCluster(env, root / "cluster.log")
    try:
        cluster.run(_head_command(port, root / "ray"))
        secret = "f" * 64
        if token == "wrong":
            monkeypatch.setenv("RAY_AUTH_TOKEN", secret)
        else:
            monkeypatch.setenv("HOME", str(root))  # a HOME without .ray/auth_token
        with pytest.raises(RuntimeError, match="exited with 2") as refused:
            start_server(ray_env(f"127.0.0.1:{port}", FORGESYTE_STREAM_RAY_ACTORS="1"), timeout=120)
        output = str(refused.value)
        lines = [line for line in output.splitlines() if "FORGESYTE_STREAM_RAY_ADDRESS" in line]
        assert len(lines) == 1, output
        for setting in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"):
            assert setting in lines[0], lines[0]
        assert secret not in output
        assert (root / "home" / ".ray" / "auth_token").read_text().strip() not in output
    finally:
        cluster.close()
