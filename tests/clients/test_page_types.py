"""The page's script type-checks against the typedefs generated from asyncapi.yaml (TypeScript's checkJs, strict).

This is what makes the generated clients/web/messages.js more than a comment:
a message field the page reads that the contract does not declare, or a
declared one it misuses, fails here. TypeScript is pinned in
contracts/node/package-lock.json (`make test` installs it with the validator).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TSC = ROOT / "contracts" / "node" / "node_modules" / ".bin" / "tsc"


def _tsc(script: str, lib: str) -> subprocess.CompletedProcess[str]:
    assert TSC.exists(), "TypeScript is missing: run `make setup` (npm ci in contracts/node)"
    return subprocess.run(
        [str(TSC), "--checkJs", "--allowJs", "--noEmit", "--strict", "--target", "es2022", "--module", "es2022",
         "--moduleResolution", "bundler", "--lib", lib, str(ROOT / "clients" / "web" / script)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_the_page_type_checks_against_the_generated_message_types() -> None:
    done = _tsc("app.js", "es2022,dom")  # and the modules it imports: webrtc.js, streams.js, messages.js
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_pages_encoded_frame_worker_type_checks_as_a_worker() -> None:
    done = _tsc("rtp-worker.js", "es2022,webworker")
    assert done.returncode == 0, done.stdout + done.stderr
