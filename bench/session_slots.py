"""What admitting a session costs in the slot table the workers of `serve --workers N` share.

    .venv/bin/python bench/session_slots.py [--workers 4] [--sizes 32,256,1000]

For each pool size: `--workers` tables (one per worker; their locks conflict as
separate processes' would) fill the pool, then one more table times refusing a
connection at the full pool, the /health count (in_use), and taking the one slot
freed by a release. Two layouts: `scattered`, each worker's slots every
`--workers`-th (the worst case: no two of a worker's locks are adjacent, so none
merge), and `blocks`, each worker's slots side by side (what a worker starting
at its own place tends to produce). Median of `--repeat` runs, in milliseconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.transports.shared.session_slots import SharedSlotTable, slot_directory  # noqa: E402
from application.sessions import SlotToken  # noqa: E402


def timed(action: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def measure(size: int, workers: int, layout: str, repeat: int) -> dict[str, float]:
    with slot_directory() as directory:
        tables = [SharedSlotTable(directory, size) for _ in range(workers)]
        held: list[tuple[SharedSlotTable, SlotToken]] = []
        for i in range(size):
            table = tables[i % workers] if layout == "scattered" else tables[i * workers // size]
            if layout == "blocks" and i % (size // workers or 1) == 0:
                table._cursor[None] = i  # noqa: SLF001 - place this worker's block
            token = table.acquire()
            assert token is not None
            held.append((table, token))
        probe = SharedSlotTable(directory, size)
        refuse = timed(lambda: probe.acquire(), repeat)
        count = timed(lambda: probe.in_use(), repeat)
        assert probe.in_use() == size
        owner, token = random.Random(size).choice(held)
        owner.release(token)
        start = time.perf_counter()
        found = probe.acquire()
        take = (time.perf_counter() - start) * 1000
        assert found is not None and found.index == token.index
        return {"refuse_full_ms": refuse, "in_use_ms": count, "take_last_free_ms": take}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--sizes", default="32,256,1000")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"{'slots':>6} {'layout':>10} {'refuse (full)':>14} {'in_use':>10} {'take last free':>15}   ms, {args.workers} workers")
    for size in (int(s) for s in args.sizes.split(",")):
        for layout in ("scattered", "blocks"):
            figures = measure(size, args.workers, layout, args.repeat)
            print(
                f"{size:>6} {layout:>10} {figures['refuse_full_ms']:>14.3f} {figures['in_use_ms']:>10.3f} {figures['take_last_free_ms']:>15.3f}"
            )


if __name__ == "__main__":
    main()
