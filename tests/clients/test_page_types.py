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


def test_the_page_type_checks_against_the_generated_message_types() -> None:
    assert TSC.exists(), "TypeScript is missing: run `make setup` (npm ci in contracts/node)"
    done = subprocess.run(
        [str(TSC), "--checkJs", "--allowJs", "--noEmit", "--strict", "--target", "es2022", "--module", "es2022",
         "--moduleResolution", "bundler", "--lib", "es2022,dom", str(ROOT / "clients" / "web" / "app.js")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
