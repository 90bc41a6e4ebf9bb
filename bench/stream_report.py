"""Statistics and printing of bench/stream_bench.py: percentiles, the overload table and the summary of checks.

The numbers each phase measures are turned into the table rows and the
PASS/MISS summary here, so that stream_bench.py holds the run itself.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.stream_client import Overload

# Statistics and printing -------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def decile_median_ms(result: Overload, which: str) -> tuple[float, int, int]:
    """Median latency (ms) of the first, middle or last 10% of frames, by send order; (value, samples, censored)."""
    n = result.sent
    tenth = max(1, n // 10)
    start = {"first": 0, "middle": (n - tenth) // 2, "last": n - tenth}[which]
    values, censored = result.latencies(range(start, start + tenth))
    return (statistics.median(values) * 1000.0 if values else float("nan")), len(values), censored


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


@dataclass
class OverloadSummary:
    label: str
    processing_ms: float
    result: Overload

    def stats(self) -> dict[str, Any]:
        r = self.result
        values, censored = r.latencies(range(r.sent))
        ms = [v * 1000.0 for v in values]
        first, first_n, first_c = decile_median_ms(r, "first")
        middle, middle_n, middle_c = decile_median_ms(r, "middle")
        last, last_n, last_c = decile_median_ms(r, "last")
        return {
            "p50": percentile(ms, 50),
            "p95": percentile(ms, 95),
            "max": max(ms) if ms else float("nan"),
            "censored": censored,
            "first": first,
            "middle": middle,
            "last": last,
            "decile_samples": (first_n, middle_n, last_n),
            "decile_censored": (first_c, middle_c, last_c),
            "drop_rate": r.count("dropped") / r.sent,
        }


def print_overload(summaries: list[OverloadSummary], cost_ms: float, expected_drop: float) -> None:
    columns = [s.label for s in summaries]
    stats = [s.stats() for s in summaries]
    width = 26

    def row(name: str, cells: list[str]) -> None:
        print(f"  {name:<34}" + "".join(f"{c:>{width}}" for c in cells))

    def lower_bound(value: float, censored: int, digits: int = 1) -> str:
        return ("≥" if censored else "") + fmt(value, digits)

    row("", columns)
    row("processing time (ping-pong median)", [f"{s.processing_ms:.1f} ms" for s in summaries])
    row("frames sent", [f"{s.result.sent} in {s.result.send_seconds:.2f} s" for s in summaries])
    row("actual send rate", [f"{(s.result.sent - 1) / s.result.send_seconds:.1f} fps" if s.result.send_seconds else "n/a" for s in summaries])
    row("answered with a result", [str(s.result.count("result")) for s in summaries])
    row(
        "answered dropped",
        [
            f"{s.result.count('dropped')} "
            + ("(" + ", ".join(f"{k} {v}" for k, v in sorted(s.result.drop_causes().items())) + ")" if s.result.drop_causes() else "")
            for s in summaries
        ],
    )
    row("answered with an error", [str(s.result.count("error")) for s in summaries])
    row("no reply by cut-off / duplicated", [f"{len(s.result.missing)} / {len(s.result.duplicated)}" for s in summaries])
    row("drop rate (dropped/sent)", [f"{st['drop_rate']:.3f} (exp {expected_drop:.3f})" for st in stats])
    for key, name in (("p50", "p50 latency"), ("p95", "p95 latency")):
        row(
            f"{name}  ms (/processing)",
            [
                f"{lower_bound(st[key], st['censored'])} ({lower_bound(st[key] / s.processing_ms, st['censored'], 2)}x)"
                for s, st in zip(summaries, stats)
            ],
        )
    row("max latency ms", [lower_bound(st["max"], st["censored"]) for st in stats])
    for key, name, position in (("first", "first 10% of frames", 0), ("middle", "middle 10%", 1), ("last", "last 10%", 2)):
        row(
            f"  median latency, {name}",
            [f"{lower_bound(st[key], st['decile_censored'][position])} ms (n={st['decile_samples'][position]})" for st in stats],
        )
    row("last 10% / first 10%", [lower_bound(st["last"] / st["first"], st["decile_censored"][2], 2) + "x" for st in stats])
    row("slow_down warnings", [str(len(s.result.warnings)) for s in summaries])
    row("wait for replies after last send", [f"{s.result.drain_wait_s:.2f} s (budget {s.result.drain_budget_s:.1f})" for s in summaries])
    if any(st["censored"] for st in stats):
        print("  ≥: frames still unanswered at the cut-off count with latency (cut-off - send time), a lower bound.")
    for s in summaries:
        for w in s.result.warnings:
            print(
                f"  {s.label} slow_down at +{w['_at'] - s.result.send_times[0]:.2f} s: drop_rate={w.get('drop_rate')} "
                f"suggested_fps={w.get('suggested_fps')} processing_ms={w.get('processing_ms')} interval_ms={w.get('interval_ms')}"
            )
        if s.result.other:
            print(f"  {s.label}: {len(s.result.other)} message(s) without frame_index, first: {s.result.other[0]}")
        if s.result.unknown_indices:
            print(f"  {s.label}: replies for frames never sent: {s.result.unknown_indices[:10]}")
        if s.result.missing and s.label.startswith("ForgeSyte"):
            print(f"  {s.label}: frames with no reply: {s.result.missing[:20]}")
        if s.result.duplicated:
            print(f"  {s.label}: frames with more than one reply: {s.result.duplicated[:20]}")


@dataclass
class Check:
    name: str
    value: str
    target: str
    passed: bool | None  # None: could not be measured


def print_summary(checks: list[Check]) -> None:
    print("\nSummary")
    name_w = max(len(c.name) for c in checks) + 2
    value_w = max(12, max(len(c.value) for c in checks) + 2)
    target_w = max(8, max(len(c.target) for c in checks) + 2)
    print(f"  {'check':<{name_w}}{'measured':<{value_w}}{'target':<{target_w}}result")
    print("  " + "-" * (name_w + value_w + target_w + 6))
    for c in checks:
        result = "-" if c.passed is None and c.target in ("(info)", "") else ("PASS" if c.passed else "MISS")
        if c.passed is None and c.value == "error":
            result = "ERROR"
        print(f"  {c.name:<{name_w}}{c.value:<{value_w}}{c.target:<{target_w}}{result}")
