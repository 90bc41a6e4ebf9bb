"""What a target was driven into, against what asyncapi.yaml declares.

The contract suite's cases are written against the document, but a case can
be deleted, or the document can grow a message no case provokes. Every
client the suite opens reports its traffic here, and the session-end check
(contracts/test_zz_coverage.py) fails when a declared message, error code,
close code or drop cause was never reached, or when anything undeclared
arrived.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from contracts.asyncapi_doc import Contract

CATEGORIES = ("message", "error code", "close code", "drop cause")


class ContractCoverage:
    """A TrafficObserver (contracts.client) that counts what it sees, per declared item."""

    def __init__(self, contract: Contract, *, keyless: bool = False) -> None:
        """`keyless`: the target requires no API key, so unauthorized (and its 3000) cannot be reached."""
        self.contract = contract
        self.keyless = keyless
        self.reached: dict[str, Counter[Any]] = {category: Counter() for category in CATEGORIES}
        self.undeclared_messages: list[str] = []

    # TrafficObserver ----------------------------------------------------------------

    def received(self, name: str, message: Mapping[str, Any]) -> None:
        self.reached["message"][name] += 1
        if isinstance(message.get("error"), str):
            self.reached["error code"][message["error"]] += 1
        if message.get("dropped") is True:
            self.reached["drop cause"][message.get("cause")] += 1

    def undeclared(self, raw: str | bytes, reason: str) -> None:
        shown = raw if isinstance(raw, str) else f"<{len(raw)} binary bytes>"
        self.undeclared_messages.append(f"{shown[:300]}: {reason}")

    def closed(self, close_code: int | None, error_code: str | None) -> None:
        if close_code is not None:
            self.reached["close code"][close_code] += 1

    # Questions ------------------------------------------------------------------------

    def declared(self) -> dict[str, set[Any]]:
        declared = {
            "message": set(self.contract.server_messages()),
            "error code": set(self.contract.error_codes()),
            "close code": set(self.contract.close_codes()),
            "drop cause": set(self.contract.drop_causes()),
        }
        if self.keyless:
            declared["message"].discard("UnauthorizedError")
            declared["error code"].discard("unauthorized")
            declared["close code"].discard(3000)
        return declared

    def missing(self) -> dict[str, list[Any]]:
        """Declared items no case reached, by category (only categories with something missing)."""
        declared = self.declared()
        gaps = {category: sorted(declared[category] - set(self.reached[category]), key=str) for category in CATEGORIES}
        return {category: items for category, items in gaps.items() if items}

    def unexpected(self) -> list[str]:
        """Everything the server sent that the document does not declare: messages, and close codes."""
        found = list(self.undeclared_messages)
        declared_closes = set(self.contract.close_codes())
        found.extend(
            f"close code {code} ({count}x) is not in x-close-codes"
            for code, count in sorted(self.reached["close code"].items())
            if code not in declared_closes
        )
        return found

    def report(self) -> str:
        lines = []
        for category, items in self.missing().items():
            lines.append(f"declared {category}s no case reached: {', '.join(map(str, items))}")
        lines.extend(f"undeclared: {item}" for item in self.unexpected())
        if not lines:
            lines.append("every declared message, error code, close code and drop cause was reached; nothing undeclared")
        reached = {category: dict(sorted(counts.items(), key=lambda kv: str(kv[0]))) for category, counts in self.reached.items()}
        lines.append(f"reached: {reached}")
        return "\n".join(lines)
