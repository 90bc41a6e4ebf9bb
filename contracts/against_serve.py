"""The contract suite against a server it did not start: `forgesyte-stream serve`, run as an operator would.

    python -m contracts.against_serve [pytest arguments]

Starts `forgesyte-stream serve` on a free 127.0.0.1 port with the suite's
pipelines and fault plugin (the setup contracts/README.md asks of any
target), then runs `pytest contracts --target ws://127.0.0.1:PORT` with a
`--target-shutdown` that sends the server SIGTERM, exactly as another team
would point the suite at their deployment. Exits with pytest's status.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from contracts.targets import ROOT, SUITE_IDLE_TIMEOUT_S, LocalServer, free_port, server_environment


def main(argv: Sequence[str] | None = None) -> int:
    port = free_port()
    serve = Path(sys.executable).parent / "forgesyte-stream"
    if not serve.is_file():
        print(f"{serve} is missing: install the project first (`make setup`)", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="contract-serve-"))
    log_path = directory / "server.log"
    # The server requires an API key, which the suite is given as an operator would give it.
    api_key = secrets.token_urlsafe(24)
    keys_file = directory / "api-keys"
    keys_file.write_text(f"contract-suite {api_key}\n", encoding="utf-8")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(serve), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=server_environment(FORGESYTE_STREAM_API_KEYS_FILE=str(keys_file)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LocalServer("forgesyte-stream serve", process, port, log_path)
    return run_suite_against(server, ["--api-key", api_key, *(argv if argv is not None else sys.argv[1:])])


def run_suite_against(server: LocalServer, extra_args: Sequence[str]) -> int:
    """`pytest contracts --target ws://127.0.0.1:PORT`, SIGTERM as its shutdown; stops the server after; pytest's status."""
    try:
        command = [
            sys.executable,
            "-m",
            "pytest",
            "contracts",
            "--target",
            f"ws://127.0.0.1:{server.port}",
            "--target-shutdown",
            f"kill -TERM {server.process.pid}",
            "--idle-timeout-s",
            str(SUITE_IDLE_TIMEOUT_S),
            *extra_args,
        ]
        status = subprocess.run(command, cwd=ROOT, check=False).returncode
    finally:
        code = server.stop()
    if status != 0:
        print(f"{server.kind} exited with {code}; its log ({server.log_path}) ends with:\n{server.log_tail()}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
