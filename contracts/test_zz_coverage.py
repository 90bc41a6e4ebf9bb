"""The session-end check: every declared item was reached on every target, and nothing undeclared was seen.

It runs after all of a target's cases (contracts/conftest.py orders it so) and
reads only what their clients recorded, so it needs no server. Deleting the
only case that provokes a message, or declaring a message no case provokes,
makes it fail, naming what was not reached.
"""

from __future__ import annotations

import pytest

from contracts.coverage import ContractCoverage


@pytest.mark.coverage_check
def test_every_declared_message_code_and_cause_was_reached_and_nothing_else_arrived(
    target_name: str, coverages: dict[str, ContractCoverage]
) -> None:
    coverage = coverages.get(target_name)
    assert coverage is not None, f"no case ran against {target_name}"
    assert not coverage.missing() and not coverage.unexpected(), f"{target_name}:\n{coverage.report()}"
