"""The simulated two-node Ray cluster of bench/ray_bench.py: its network namespaces and its `ray start` nodes.

Two network namespaces joined by a veth pair (a /24 that exists only inside
them), and one `ray start --block` per node, in its own process group, pinned
to a core when taskset is there. Kept apart from ray_bench.py, which holds the
measurements ([1] local, [2] cluster) and the front ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


# The two-node cluster's network: a /24 that exists only inside the benchmark's namespaces.
HEAD_IP = "10.203.0.1"
NODE_IP = "10.203.0.2"


class Namespaces:
    """Two network namespaces joined by a veth pair, removed with whatever still runs in them."""

    def __init__(self) -> None:
        self.head, self.node = f"fsr-head-{os.getpid()}", f"fsr-node-{os.getpid()}"
        self._created: list[str] = []

    def create(self) -> None:
        tag = str(os.getpid())
        for name in (self.head, self.node):
            ip("netns", "add", name)
            self._created.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        # Interface names are at most 15 characters; each end lives in one namespace only.
        head_end, node_end = f"fsrh{tag}"[:15], f"fsrn{tag}"[:15]
        ip("link", "add", head_end, "netns", self.head, "type", "veth", "peer", "name", node_end, "netns", self.node)
        for name, end, address in ((self.head, head_end, HEAD_IP), (self.node, node_end, NODE_IP)):
            ip("-n", name, "addr", "add", f"{address}/24", "dev", end)
            ip("-n", name, "link", "set", end, "up")

    def run_in(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", name]

    def remove(self) -> None:
        for name in reversed(self._created):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)  # the veth pair goes with it
        self._created.clear()


def ip(*arguments: str) -> None:
    completed = subprocess.run(["ip", *arguments], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"ip {' '.join(arguments)}: {completed.stderr.strip()}")


def check_namespaces_possible() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/ray_bench.py: the two-node cluster creates network namespaces: run it as root (or --only local)")
    if shutil.which("ip") is None:
        raise SystemExit("bench/ray_bench.py: `ip` not found: install iproute2 (apt-get install -y iproute2), or --only local")


class Node:
    """One `ray start --block` in its own process group, in a namespace, pinned to a core: stopped by its group id."""

    def __init__(self, arguments: list[str], core: int, env: dict[str, str], log: Path, prefix: list[str]) -> None:
        pin = ["taskset", "-c", str(core)] if has_taskset() else []
        self.log = log
        self.process = subprocess.Popen(
            [*prefix, *pin, ray_cli(), "start", "--block", "--disable-usage-stats", "--num-cpus", "1", *arguments],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and group_alive(self.process.pid):
                self.process.poll()
                time.sleep(0.2)
            if not group_alive(self.process.pid):
                return


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies still count for killpg; a group of zombies only is gone.
    states = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return any(not state.startswith("Z") for state in states)


def has_taskset() -> bool:
    return subprocess.run(["which", "taskset"], capture_output=True).returncode == 0


def wait_nodes(env: dict[str, str], address: str, count: int, timeout_s: float, prefix: list[str]) -> None:
    """Until exactly `count` nodes are alive (a stopped node unregisters before the next phase places actors)."""
    code = (
        "import ray, sys, time\n"
        f"ray.init(address={address!r}, log_to_driver=False, logging_level='error')\n"
        "alive = lambda: sum(n['Alive'] for n in ray.nodes())\n"
        f"deadline = time.time() + {timeout_s}\n"
        f"while alive() != {count} and time.time() < deadline: time.sleep(0.2)\n"
        f"sys.exit(0 if alive() == {count} else 1)\n"
    )
    if subprocess.run([*prefix, sys.executable, "-c", code], env=env, capture_output=True).returncode != 0:
        raise RuntimeError(f"the cluster at {address} did not reach {count} live node(s) within {timeout_s:g} s")
