"""What the attack tests share: a /health prober, the server process's memory (and its units), and the flood payloads.

Memory is read from /proc/PID/status (VmRSS, and VmHWM, the peak since it was
last reset through /proc/PID/clear_refs), so each figure is the server
process's own, measured while the attack runs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

from contracts.raw_websocket import OP_BINARY, OP_CONT, OP_PING, frame
from tests.support.server import RunningServer

# The promise of docs/security.md: /health answers within this while any one connection misbehaves.
HEALTH_BOUND_S = 0.100

# Units the memory attack tests (test_memory_frame_attacks, test_memory_session_attacks) measure in.
MB = 1_000_000
MiB = 1024 * 1024


def process_status(pid: int) -> dict[str, int]:
    """The process's resident memory now (VmRSS) and at its peak (VmHWM), in bytes."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":")
                values[name] = int(value.split()[0]) * 1024
    return values


def reset_peak(pid: int) -> int:
    """Reset the process's peak RSS to its current RSS; return that RSS in bytes."""
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")
    return process_status(pid)["VmRSS"]


def rss_kib(server: RunningServer) -> int:
    with open(f"/proc/{server.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")


@dataclass
class HealthProbe:
    """Polls /health from its own thread and keeps every latency."""

    server: RunningServer
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> HealthProbe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(trust_env=False, timeout=10) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get(f"{self.server.http}/health").status_code
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                    continue
                self.latencies.append(time.perf_counter() - started)
                if status != 200:
                    self.failures.append(f"status {status}")
                self._stop.wait(0.01)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def check(self) -> str:
        assert not self.failures, self.failures[:3]
        assert len(self.latencies) >= 20, f"only {len(self.latencies)} /health probes ran"
        summary = (
            f"/health over {len(self.latencies)} probes: median {self.percentile(0.5) * 1000:.1f} ms, "
            f"p95 {self.percentile(0.95) * 1000:.1f} ms, max {max(self.latencies) * 1000:.1f} ms"
        )
        # p95 rather than the maximum: this machine's other load (two cores shared with the test
        # runner) can delay any single probe; an event loop held by the attack delays all of them.
        assert self.percentile(0.95) < HEALTH_BOUND_S, summary
        return summary


def error_records(server: RunningServer) -> list[str]:
    return [line for line in server.lines if '"level": "error"' in line or '"level":"error"' in line or "Traceback" in line]


# One connection must not hold the event loop: what it sends.


def flood_of_empty_continuations() -> bytes:
    return frame(OP_BINARY, b"\xff", fin=False) + frame(OP_CONT, b"", fin=False) * 40_000


def ping_flood() -> bytes:
    return frame(OP_PING, b"abcd") * 40_000


def large_frame_then_empty_continuations() -> bytes:
    # Slices follow frame boundaries: one large frame is parsed whole, the flood behind it still in small slices.
    return frame(OP_BINARY, b"\xff" * 60_000, fin=False) + frame(OP_CONT, b"", fin=False) * 40_000


def megabyte_in_one_byte_fragments() -> bytes:
    return frame(OP_BINARY, b"\xff", fin=False) + frame(OP_CONT, b"\x00", fin=False) * 150_000
