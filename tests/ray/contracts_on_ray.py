"""The contract suite against `forgesyte-stream serve` running its pipelines on Ray.

    python -m tests.ray.contracts_on_ray [pytest arguments]        # make contracts-ray

As contracts/against_serve.py does for the default server: `serve` on a free
127.0.0.1 port with the suite's pipelines and fault plugin, here with
FORGESYTE_STREAM_EXECUTOR=ray and no cluster address, so the server starts a
local Ray instance in its own process (127.0.0.1 only); then
`pytest contracts --target ws://127.0.0.1:PORT` with SIGTERM as the target's
shutdown. The contract is the same whichever executor runs the pipelines.
Exits with pytest's status.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from contracts.against_serve import run_suite_against
from contracts.targets import (
    ROOT,
    LocalServer,
    free_port,
    server_environment,
)


def main(argv: Sequence[str] | None = None) -> int:
    port = free_port()
    serve = Path(sys.executable).parent / "forgesyte-stream"
    log_path = Path(tempfile.mkdtemp(prefix="contract-ray-")) / "server.log"
    environment = server_environment(
        FORGESYTE_STREAM_EXECUTOR="ray",
        FORGESYTE_STREAM_RAY_ACTORS="2",
        FORGESYTE_STREAM_RAY_ACTOR_CPUS="0.5",
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(serve), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LocalServer("forgesyte-stream serve (ray)", process, port, log_path)
    executor = _wait_for_executor(port, process)
    if executor != "ray":
        print(f"the server reports executor {executor!r}, not 'ray'; its log ends with:\n{server.log_tail()}", file=sys.stderr)
        server.stop()
        return 1
    return run_suite_against(server, list(argv if argv is not None else sys.argv[1:]))


def _wait_for_executor(port: int, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> str | None:
    """The executor kind /health reports, once the server answers (Ray's start-up takes seconds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False).json()
            executor = health.get("executor") or {}
            return executor.get("kind") if isinstance(executor, dict) else str(executor)
        except httpx.TransportError:
            time.sleep(0.2)
    return None


if __name__ == "__main__":
    sys.exit(main())
