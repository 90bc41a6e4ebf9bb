"""Giving memory back to the system after a burst, on glibc.

A burst of large messages or request bodies (a hundred connections of a few
MB each) is freed by Python when it ends, but glibc's malloc keeps much of
what it freed: its heaps shrink only from the top, and its mmap threshold
rises on its own each time a large mapped buffer is freed, so later large
buffers land in the heaps too. After 100 stalled 6.5 MB bodies the server
stayed 170-200 MB above its level before, for good.

A daemon thread looks every TRIM_INTERVAL_S at how much the heaps hold free
(mallinfo2) and, above TRIM_SLACK_BYTES, calls malloc_trim(0), which hands
every free page back, inside the heaps too, not only at their top. Both are
called through ctypes, which releases the GIL; malloc's own thresholds are
left as they are, so the per-frame path keeps reusing heap memory as before.

Elsewhere than glibc 2.33 or later neither call exists; start-up says so in
the log and the process keeps what its allocator keeps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

import structlog

log = structlog.get_logger("forgesyte.memory")

TRIM_INTERVAL_S = 1.0
# Free memory the heaps may hold at a look without malloc_trim running.
TRIM_SLACK_BYTES = 16 * 1024 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


class _Glibc:
    def __init__(self, libc: ctypes.CDLL) -> None:
        self._malloc_trim = libc.malloc_trim
        self._malloc_trim.argtypes = [ctypes.c_size_t]
        self._malloc_trim.restype = ctypes.c_int
        self._mallinfo2 = libc.mallinfo2
        self._mallinfo2.argtypes = []
        self._mallinfo2.restype = _MallInfo2

    def free_in_heaps(self) -> int:
        return int(self._mallinfo2().fordblks)

    def trim(self) -> None:
        self._malloc_trim(0)


def _glibc() -> _Glibc | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return _Glibc(ctypes.CDLL(name))
    except (OSError, AttributeError):  # not glibc, or a glibc before 2.33 (no mallinfo2)
        return None


_started: list[threading.Thread] = []


def start_memory_return() -> bool:
    """Start the trimming thread, once per process; whether it runs (logged either way)."""
    if _started:
        return True
    glibc = _glibc()
    if glibc is None:
        log.info("memory_return", running=False, reason="not glibc 2.33 or later: memory freed after a burst stays with the process")
        return False
    thread = threading.Thread(target=_trim_forever, args=(glibc,), name="forgesyte-malloc-trim", daemon=True)
    thread.start()
    _started.append(thread)
    log.info("memory_return", running=True, interval_s=TRIM_INTERVAL_S, slack_bytes=TRIM_SLACK_BYTES)
    return True


def _trim_forever(glibc: _Glibc) -> None:
    """Give free heap pages back whenever more than the slack has piled up."""
    wake = threading.Event()
    while not wake.wait(TRIM_INTERVAL_S):
        if glibc.free_in_heaps() > TRIM_SLACK_BYTES:
            glibc.trim()
