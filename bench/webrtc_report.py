"""Statistics and tables of bench/webrtc_bench.py: what each StreamRun amounts to, transport beside transport.

Kept apart from the script so that webrtc_bench.py holds the run itself;
percentiles, the Check rows and the summary table are bench/stream_report.py's,
so that every benchmark prints its verdicts the same way.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.stream_report import fmt, percentile
from bench.webrtc_client import StreamRun


@dataclass
class Pooled:
    """One transport's runs of the clip phase, pooled over rounds (latency samples are kept, not averaged)."""

    label: str
    runs: list[StreamRun] = field(default_factory=list)
    server_bytes: int = 0
    server_frames: int = 0
    # CPU seconds over the runs: this (client) process, all threads, and the server process.
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0

    @property
    def sent(self) -> int:
        return sum(r.sent for r in self.runs)

    def count(self, kind: str) -> int:
        return sum(r.count(kind) for r in self.runs)

    def latencies_ms(self) -> list[float]:
        return [latency * 1000.0 for r in self.runs for _, latency, _ in r.results()]

    def bytes_per_frame(self) -> float:
        return sum(r.payload_bytes for r in self.runs) / max(1, self.sent)

    def server_bytes_per_frame(self) -> float:
        return self.server_bytes / self.server_frames if self.server_frames else float("nan")

    def boxed_share(self) -> float:
        """Share of results with at least one face box (the clip shows one face in every frame)."""
        results = [m for r in self.runs for _, _, m in r.results()]
        boxed = sum(1 for m in results if m["result"].get("faces"))
        return boxed / len(results) if results else float("nan")

    def missing(self) -> int:
        return self.count("missing")

    def duplicated(self) -> int:
        return sum(len(r.duplicated) for r in self.runs)

    def unmatched(self) -> int:
        return sum(len(r.unmatched) for r in self.runs)

    def decoded(self) -> int | None:
        values = [r.decoded for r in self.runs]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _row(name: str, cells: Sequence[str], width: int = 22) -> None:
    print(f"  {name:<36}" + "".join(f"{c:>{width}}" for c in cells))


def print_clip(pooled: Sequence[Pooled], baseline: Pooled, *, faces: bool = True) -> None:
    """The clip phase's table: wire bytes, answers, face boxes (`faces`) and latency, each transport in a column."""
    base_bytes = baseline.bytes_per_frame()
    base_p95 = percentile(baseline.latencies_ms(), 95)
    _row("", [p.label for p in pooled])
    _row("frames sent (all rounds)", [str(p.sent) for p in pooled])
    _row("decoded by the server", [str(p.decoded()) if p.decoded() is not None else "-" for p in pooled])
    _row("payload bytes/frame (client)", [f"{p.bytes_per_frame():,.0f}" for p in pooled])
    _row("bytes/frame (server counter)", [f"{p.server_bytes_per_frame():,.0f}" for p in pooled])
    _row("÷ WebSocket JPEG bytes", [f"{p.bytes_per_frame() / base_bytes:.3f}" for p in pooled])
    _row("answered: result / dropped", [f"{p.count('result')} / {p.count('dropped')}" for p in pooled])
    _row("error / missing / duplicated", [f"{p.count('error')} / {p.missing()} / {p.duplicated()}" for p in pooled])
    _row("replies naming no frame sent", [str(p.unmatched()) for p in pooled])
    if faces:
        _row("results with a face box", [f"{p.boxed_share():.1%}" for p in pooled])
    for q in (50, 95, 99):
        _row(f"latency p{q} ms", [fmt(percentile(p.latencies_ms(), q)) for p in pooled])
    _row("client CPU ms/frame (this process)", [f"{p.client_cpu_s * 1000 / max(1, p.sent):.1f}" for p in pooled])
    _row("server CPU ms/frame", [f"{p.server_cpu_s * 1000 / max(1, p.sent):.1f}" for p in pooled])
    _row("p95 ÷ WebSocket p95", [f"{percentile(p.latencies_ms(), 95) / base_p95:.2f}" for p in pooled])
    _row("p50 − WebSocket p50 ms", [fmt(percentile(p.latencies_ms(), 50) - percentile(baseline.latencies_ms(), 50)) for p in pooled])
    for p in pooled:
        for r in p.runs:
            if r.origin_source and r.origin_source != "sender":
                print(f"  {r.label}: RTP origin taken from the {r.origin_source} (the sender's was not readable)")
            if r.unmatched:
                print(f"  {r.label}: {len(r.unmatched)} replies naming no frame sent, first: {r.unmatched[0]}")
            if r.other:
                print(f"  {r.label}: {len(r.other)} message(s) without a frame, first: {r.other[0]}")


@dataclass
class OverloadFigures:
    """One overload run reduced to the numbers the table and the checks need."""

    label: str
    run: StreamRun
    processing_ms: float
    rss_kib: list[int]
    # The denominator of the drop rate: frames the session saw (decoded, for WebRTC; sent, for the WebSocket).
    frames: int = 0

    def __post_init__(self) -> None:
        self.frames = self.run.decoded if self.run.decoded is not None else self.run.sent

    def latencies_ms(self) -> list[float]:
        return [latency * 1000.0 for _, latency, _ in self.run.results()]

    def decile_ms(self, which: str) -> float:
        """Median latency of the results among the first / last 10 % of frames sent."""
        n = self.run.sent
        tenth = max(1, n // 10)
        frames = range(0, tenth) if which == "first" else range(n - tenth, n)
        values = [latency * 1000.0 for frame, latency, _ in self.run.results() if frame in frames]
        return statistics.median(values) if values else float("nan")

    def drop_rate(self) -> float:
        return self.run.count("dropped") / self.frames if self.frames else float("nan")

    def rss_growth(self) -> float:
        """RSS at the end ÷ RSS one sample in (past the session's own start-up)."""
        if len(self.rss_kib) < 3:
            return float("nan")
        return self.rss_kib[-1] / self.rss_kib[1]


def print_overload(figures: Sequence[OverloadFigures], expected_drop: float) -> None:
    _row("", [f.label for f in figures], 26)

    def row(name: str, cells: Sequence[str]) -> None:
        _row(name, cells, 26)

    row("processing time (ping-pong median)", [f"{f.processing_ms:.1f} ms" for f in figures])
    row("frames sent / seen by the session", [f"{f.run.sent} / {f.frames}" for f in figures])
    row("send rate", [f"{(f.run.sent - 1) / (f.run.sent_at[-1] - f.run.sent_at[0]):.1f} fps" for f in figures])
    row("answered: result / dropped", [f"{f.run.count('result')} / {f.run.count('dropped')}" for f in figures])
    row("error / missing / duplicated", [f"{f.run.count('error')} / {f.run.count('missing')} / {len(f.run.duplicated)}" for f in figures])
    row("drop rate (dropped ÷ seen)", [f"{f.drop_rate():.3f} (exp {expected_drop:.3f})" for f in figures])
    for q in (50, 95):
        row(
            f"p{q} latency ms (÷ processing)",
            [f"{fmt(percentile(f.latencies_ms(), q))} ({percentile(f.latencies_ms(), q) / f.processing_ms:.2f}x)" for f in figures],
        )
    row("median latency first / last 10 %", [f"{fmt(f.decile_ms('first'))} / {fmt(f.decile_ms('last'))} ms" for f in figures])
    row("server RSS first / max / last MiB", [_rss(f.rss_kib) for f in figures])
    row("slow_down warnings", [str(len(f.run.warnings)) for f in figures])


def _rss(samples: Sequence[int]) -> str:
    if len(samples) < 3:
        return "n/a"
    return f"{samples[1] / 1024:.0f} / {max(samples) / 1024:.0f} / {samples[-1] / 1024:.0f}"
