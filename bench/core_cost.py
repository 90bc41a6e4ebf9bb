"""The application core's cost per frame, in process: CPU time and (optionally) allocations.

StreamService.serve over an in-memory transport with the `probe` pipeline
(header-only, answered on the event loop): what remains is the stream
protocol, the pump, the session, the pipeline engine and the observers (logs
and metrics), without sockets or a web framework. The CPU time of 5,000
frames is the difference between a 6,000-frame and a 1,000-frame session, so
start-up and teardown cancel out; seven repetitions, median and minimum.

    .venv/bin/python bench/core_cost.py [ROOT]

Allocations: preload a malloc counter and route Python's allocator to malloc
(bench/mcount.c; needs a C compiler), and the same run also reports the
allocations per frame, which do not depend on the machine's load:

    gcc -O2 -shared -fPIC -o /tmp/libmcount.so bench/mcount.c -ldl
    PYTHONMALLOC=malloc LD_PRELOAD=/tmp/libmcount.so .venv/bin/python bench/core_cost.py

ROOT (default: this checkout) lets the same script measure another checkout
of the project, so that two versions can be compared on one machine.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

from adapters.container import build_container  # noqa: E402
from adapters.observability.logs import configure_logging  # noqa: E402
from adapters.settings import Settings  # noqa: E402
from application.ports import Inbound, InboundKind  # noqa: E402

try:
    _counter: Any = ctypes.CDLL(None).mcount
    _counter.restype = ctypes.c_ulonglong
except AttributeError:
    _counter = None
FAULT_MODULE = "tests.support.fault_plugins" if (ROOT / "tests/support/fault_plugins.py").exists() else "contracts.fault_plugin"
FRAME = (ROOT / "tests/data/face-astronaut.jpg").read_bytes()


class MemoryTransport:
    """Delivers the same frame `frames` times, then a close; replies are counted and dropped."""

    client = "memory:1"

    def __init__(self, frames: int) -> None:
        self.frames, self.read, self.sent = frames, 0, 0
        self.frame = Inbound(InboundKind.BINARY, FRAME)
        self.bye = Inbound(InboundKind.DISCONNECT, close_code=1000)

    async def receive(self) -> Inbound:
        self.read += 1
        return self.frame if self.read <= self.frames else self.bye

    async def send_json(self, message: Any) -> None:
        self.sent += 1

    async def close(self, code: int, reason: str = "") -> None:
        return None

    def attach_session(self, session: Any) -> None:
        return None


def main() -> int:
    settings = Settings.from_env(
        {
            "FORGESYTE_STREAM_PIPELINES_DIR": str(ROOT / "tests/pipelines"),
            "FORGESYTE_STREAM_PLUGINS": f"{FAULT_MODULE}:FaultPlugin,{FAULT_MODULE}:UnavailablePlugin",
            "FORGESYTE_STREAM_LOG_LEVEL": "warning",
        }
    )
    configure_logging("warning")
    service = build_container(settings).stream_service()

    async def session(frames: int) -> tuple[int, float]:
        transport = MemoryTransport(frames)
        allocations = _counter() if _counter is not None else 0
        cpu = time.process_time()
        await service.serve(transport, "probe")
        assert transport.sent == frames, f"{transport.sent} replies to {frames} frames"
        return (_counter() - allocations if _counter is not None else 0), time.process_time() - cpu

    async def measure() -> tuple[list[float], list[float]]:
        await session(200)
        allocations, cpu_us = [], []
        for _ in range(7):
            short = await session(1000)
            long = await session(6000)
            allocations.append((long[0] - short[0]) / 5000)
            cpu_us.append((long[1] - short[1]) / 5000 * 1e6)
        return allocations, cpu_us

    try:
        import uvloop  # the server's default loop (FORGESYTE_STREAM_EVENT_LOOP)

        allocations, cpu_us = uvloop.run(measure())
    except ImportError:
        allocations, cpu_us = asyncio.run(measure())
    print(f"{ROOT}: CPU per frame {statistics.median(cpu_us):.1f} us median, {min(cpu_us):.1f} us min (7 runs of 5,000 frames)")
    if _counter is not None:
        print(f"{ROOT}: allocations per frame {statistics.median(allocations):.1f} (malloc calls with PYTHONMALLOC=malloc)")
    else:
        print("allocations: not counted (preload bench/mcount.c to count them; see the docstring)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
